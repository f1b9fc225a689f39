//! Several `apgate serve` processes on one database and one store, as behind a TCP load
//! balancer: any node serves any file, every ingest file is applied once, every mail is sent
//! once, the audit chain stays whole, and bans and session limits hold on every node.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Gateway, noise, upn, wait_until};

crate::on_both_backends! {
    fn two_nodes_behave_as_one_gateway() {
        let g = Gateway::start_with(
            "mail: { group_seconds: 1 }\n\
             limits: { connections_per_second: 200, ban_after_failures: 4, ban_seconds: 600, sessions_per_user: 1 }",
        );
        let b = g.start_node();

        // Uploaded through A, downloaded through B.
        let data = noise(300_000, 11);
        let plan = g.file("plan.pdf", &data);
        g.sftp_ok("school-a-user", &format!("put {} /outbox/dsl/\n", plan.display()));
        g.talk_to(b.port);
        let got = g.path("got.pdf");
        g.sftp_ok("cap-user", &format!("get /inbox/school-a/plan.pdf {}\n", got.display()));
        assert_eq!(std::fs::read(&got).unwrap(), data);

        // Registers through both nodes, several at once: each applied exactly once.
        let placed: Vec<String> = (0..6u32).map(upn).collect();
        let placed: Vec<&str> = placed.iter().map(String::as_str).collect();
        g.enrol("school-a", &placed);
        g.place("prov-a", "MV", &placed[..3]);
        g.place("prov-b", "MV", &placed[3..]);
        let threads: Vec<_> = (0..6u32)
            .map(|i| {
                let text = format!(
                    "date,start,end,course,upn,surname,forename,status\n\
                     2026-11-23,09:00,12:00,MV,{},T,S,present\n\
                     2026-11-23,13:00,15:00,MV,{},T,S,late\n",
                    upn(i),
                    upn(i)
                );
                let f = g.file(&format!("reg-{i}.csv"), text.as_bytes());
                let port = if i % 2 == 0 { g.port } else { b.port };
                let user = if i < 3 { "prov-a-user" } else { "prov-b-user" };
                (f, port, user)
            })
            .collect();
        // One session per user at a time (the limit is 1): the two providers upload side by side.
        std::thread::scope(|s| {
            for user in ["prov-a-user", "prov-b-user"] {
                let mine: Vec<_> = threads.iter().filter(|t| t.2 == user).collect();
                let g = &g;
                s.spawn(move || {
                    for (f, port, user) in mine {
                        let r = g.sftp_to(*port, user, &format!("put {} /registers/\n", f.display()), &[]);
                        assert!(r.ok, "{}", r.all());
                    }
                });
            }
        });
        wait_until("every register applied", Duration::from_secs(30), || {
            g.sql("SELECT COUNT(*) FROM ingest_jobs WHERE state = 'pending'").trim() == "0"
        });
        assert_eq!(g.sql("SELECT COUNT(*) FROM marks").trim(), "12");
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM receipts r JOIN uploads u ON u.id = r.upload_id WHERE u.folder = 'registers'").trim(),
            "6"
        );

        // Mail: both nodes run a sender; each message goes out once.
        wait_until("the mail sent", Duration::from_secs(30), || {
            g.sql("SELECT COUNT(*) FROM mail WHERE state <> 'sent'").trim() == "0"
        });
        std::thread::sleep(Duration::from_secs(2));
        let sent: usize = g.sql("SELECT COUNT(*) FROM mail").trim().parse().unwrap();
        let files = common::walk(&g.path("data/mail"));
        assert!(sent >= 1);
        assert_eq!(files.len(), sent, "one .eml per message: {files:?}");

        // The audit chain written by both processes at once is whole.
        let verify = g.cli(&["audit", "verify"]);
        assert!(verify.ok, "{}", verify.all());

        // Sessions per user count across nodes: one open on A, a second refused on B.
        g.talk_to(g.port);
        let mut held = g.open_session("school-b-user", &[]);
        wait_until("the held session", Duration::from_secs(10), || {
            g.sql("SELECT COUNT(*) FROM live_sessions").trim() == "1"
        });
        g.talk_to(b.port);
        let second = g.sftp("school-b-user", "pwd\n");
        assert!(!second.ok, "a second session on the other node is refused");
        drop(held.stdin.take());
        assert!(held.wait_with_output().unwrap().status.success());
        wait_until("the session closed", Duration::from_secs(10), || {
            g.sql("SELECT COUNT(*) FROM live_sessions").trim() == "0"
        });
        assert!(g.sftp("school-b-user", "pwd\n").ok, "the place is free again");

        // Failed logins on A ban the address on B too.
        g.talk_to(g.port);
        for _ in 0..4 {
            let (ok, _, _) = common::password_login(&g, "nobody", "guess");
            assert!(!ok);
        }
        g.talk_to(b.port);
        let refused = g.sftp("school-a-user", "pwd\n");
        assert!(!refused.ok, "banned on every node");
        assert_eq!(g.sql("SELECT COUNT(*) FROM auth_failures WHERE banned_until IS NOT NULL AND kind = 'address'").trim(), "1");
    }
}

/// PostgreSQL goes away while a user is connected: the upload fails with an error and leaves
/// nothing; when the database is back, the same gateway works again without a restart.
#[test]
fn a_database_that_goes_away_fails_uploads_cleanly_and_recovers() {
    if std::env::var("APGATE_TEST_DATABASE_URL").is_err() {
        return common::on_postgres(|| {});
    }
    let pg = common::PgDatabase::create();
    let mut relay = common::TcpRelay::start(pg.port());
    let mut g = Gateway::start_with(&format!(
        "database: {{ url: \"{}\" }}",
        pg.url_through(relay.port)
    ));
    g.postgres = Some(pg);
    let f = g.file("a.pdf", b"first");
    g.sftp_ok(
        "school-a-user",
        &format!("put {} /outbox/coordinator/\n", f.display()),
    );
    let blobs = g.stored_blobs().len();

    // Logged in before the database goes away; the upload is tried after.
    let mut session = g.open_session("school-a-user", &["-b", "-"]);
    let mut stdin = session.stdin.take().unwrap();
    wait_until("the session", Duration::from_secs(10), || {
        g.sql("SELECT COUNT(*) FROM live_sessions").trim() == "1"
    });
    relay.down();
    let second = g.file("b.pdf", b"second");
    stdin
        .write_all(format!("put {} /outbox/coordinator/\n", second.display()).as_bytes())
        .unwrap();
    drop(stdin);
    let out = session.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the upload fails while the database is away"
    );
    assert_eq!(g.stored_blobs().len(), blobs, "nothing half-stored");
    assert!(
        common::walk(&g.path("data/spool")).is_empty(),
        "nothing left in the spool"
    );

    relay.up();
    let third = g.file("c.pdf", b"third");
    wait_until("the gateway to recover", Duration::from_secs(60), || {
        g.sftp(
            "school-a-user",
            &format!("put {} /outbox/coordinator/\n", third.display()),
        )
        .ok
    });
    assert_eq!(
        g.sql("SELECT name FROM uploads ORDER BY id"),
        "a.pdf\nc.pdf\n",
        "the failed upload left no record"
    );
    assert!(g.cli(&["audit", "verify"]).ok);
}
