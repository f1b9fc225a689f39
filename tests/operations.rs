//! What an operator relies on: config checking and logs fail2ban can read.

mod common;

use std::process::Command;

use common::{Gateway, password_login, scrape, series};

#[test]
fn check_config_names_the_key() {
    let g = Gateway::configured("");
    assert!(g.cli_ok(&["check-config"]).contains("config OK"));
    let bad = Gateway::configured("limits: { idle_timeout_s: -5 }");
    let r = bad.cli(&["check-config"]);
    assert!(
        !r.ok && r.stderr.contains("limits.idle_timeout_s"),
        "{}",
        r.all()
    );
    // Every problem is listed, each with its key.
    let two = Gateway::configured("retention_days: 0\nmail: { from: nobody, max_attempts: 0 }");
    let r = two.cli(&["check-config"]);
    assert!(!r.ok);
    for key in ["retention_days", "mail.from", "mail.max_attempts"] {
        assert!(
            r.stderr.contains(&format!("key `{key}`")),
            "{key}: {}",
            r.all()
        );
    }
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/apgate.example.yaml");
    let r = common::apgate()
        .arg("--config")
        .arg(&example)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "the example config is valid: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Failed logins from a real client produce lines the shipped fail2ban filter matches, one per
/// failure, with the address; nothing secret is logged.
#[test]
fn fail2ban_filter_matches_failed_logins() {
    let g = Gateway::start();
    g.add_password_user("pw-user", "school-a", "correct horse battery staple");
    for (user, pw) in [
        ("pw-user", "wrong password one"),
        ("pw-user", "wrong password two"),
        ("nobody", "guess"),
    ] {
        assert!(!password_login(&g, user, pw).0);
    }
    assert!(password_login(&g, "pw-user", "correct horse battery staple").0);
    let log = g.path("serve.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("wrong password") && !text.contains("battery"),
        "no password in the log"
    );
    assert!(!text.contains('\u{1b}'), "plain lines without colour codes");
    let filter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/fail2ban/filter.d/apgate.conf");
    let out = Command::new("fail2ban-regex")
        .arg(&log)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban) must be installed; .ci/run does");
    let report = String::from_utf8_lossy(&out.stdout);
    let matched = report
        .lines()
        .find(|l| l.starts_with("Lines:"))
        .and_then(|l| l.split(',').find(|p| p.contains("matched")))
        .and_then(|p| {
            p.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        });
    assert_eq!(matched, Some(3), "{report}");
    assert!(report.contains("127.0.0.1"), "{report}");
}

crate::on_both_backends! {
    /// Files older than retention_days leave the store and the inbox; their records stay.
    fn retention_deletes_old_content_and_keeps_the_record() {
        let g = Gateway::start_with("retention_days: 30");
        let old = g.file("old.pdf", b"old plan");
        let new = g.file("new.pdf", b"new plan");
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/old.pdf\n", old.display()),
        );
        // Received 40 days ago.
        let forty_days_ago = (chrono::Utc::now() - chrono::Days::new(40))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        g.sql(&format!(
            "UPDATE uploads SET created_at = '{forty_days_ago}' WHERE name = 'old.pdf'"
        ));
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/new.pdf\n", new.display()),
        );
        assert_eq!(g.stored_blobs().len(), 2);

        let out = g.cli_ok(&["retention", "run"]);
        assert!(out.contains("1 stored file(s) expired"), "{out}");
        assert_eq!(
            g.stored_blobs().len(),
            1,
            "the old file's content is gone from disk"
        );
        let inbox = g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n");
        assert!(
            !inbox.contains("old.pdf") && inbox.contains("new.pdf"),
            "{inbox}"
        );
        let transfers = g.cli_ok(&["report", "transfers"]);
        let old_row = transfers
            .lines()
            .find(|l| l.contains("old.pdf"))
            .expect("the record stays");
        assert!(old_row.ends_with('Z'), "expired_at is set: {old_row}");
        assert!(
            g.sql("SELECT detail FROM audit WHERE action = 'expire'")
                .contains("old.pdf")
        );
        assert!(g.cli_ok(&["audit", "verify"]).contains("intact"));

        // Later, as an operator checking ahead, everything is past its time.
        let later = (chrono::Utc::now() + chrono::Days::new(31))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        assert!(
            g.cli_ok(&["retention", "run", "--now", &later])
                .contains("1 stored file(s) expired")
        );
        assert!(g.stored_blobs().is_empty());
        let bad = g.cli(&["retention", "run", "--now", "next tuesday"]);
        assert!(!bad.ok && bad.stderr.contains("--now"), "{}", bad.all());
    }
}

/// `serve` tells systemd it is ready (Type=notify) once the listener is bound.
#[test]
fn serve_notifies_systemd_when_ready() {
    use std::os::unix::net::UnixDatagram;
    let g = Gateway::configured("");
    g.cli_ok(&["init"]);
    let socket_path = g.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut serve = common::apgate()
        .arg("--config")
        .arg(&g.config)
        .arg("serve")
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf);
    let listening = std::net::TcpStream::connect(("127.0.0.1", g.port)).is_ok();
    let _ = serve.kill();
    let _ = serve.wait();
    let message =
        String::from_utf8_lossy(&buf[..n.expect("a notification within 30 s")]).into_owned();
    assert!(message.starts_with("READY=1"), "{message}");
    assert!(listening, "ready means listening");
}

/// The unit's sandboxing, as systemd rates it (exposure 2.0 or lower), where systemd is present.
#[test]
fn systemd_unit_exposure_is_low() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/apgate.service");
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
    else {
        eprintln!("systemd-analyze is not installed here: exposure not checked");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for apgate.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

/// SIGHUP reloads the config: new connections get the new banner while a live session goes on;
/// a broken file is refused and the running configuration kept.
#[test]
fn sighup_reloads_banner_without_dropping_sessions() {
    use std::io::Write;
    use std::time::Duration;
    let g = Gateway::start_with("banner: \"first banner\"");
    let banner_of_new_connection = || {
        let out = Command::new("sftp")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                g.path("known_hosts").display()
            ))
            .arg("-P")
            .arg(g.port.to_string())
            .arg("-i")
            .arg(g.key_path("school-b-user"))
            .args(["-b", "/dev/null", "school-b-user@127.0.0.1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(banner_of_new_connection().contains("first banner"));
    let mut live = g.open_session("school-a-user", &[]);
    common::wait_until("the live session", Duration::from_secs(10), || {
        g.sql("SELECT COUNT(*) FROM audit WHERE action = 'login' AND actor = 'school-a-user'")
            .trim()
            == "1"
    });

    // The reload also adds a drop folder.
    let folder = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("first banner", "second banner")
        + &format!(
            "drop_dirs: [ {{ path: \"{}\", org: school-a, kind: roster }} ]\n",
            folder.path().display()
        );
    std::fs::write(&g.config, text).unwrap();
    let pid = g.server_pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    common::wait_until("the reload", Duration::from_secs(10), || {
        g.log().contains("configuration reloaded")
    });
    assert!(banner_of_new_connection().contains("second banner"));
    let dropped = folder.path().join("roster.csv");
    std::fs::write(
        &dropped,
        "upn,surname,forename,date_of_birth,gender,year_group\n",
    )
    .unwrap();
    common::wait_until(
        "the new drop folder's file taken",
        Duration::from_secs(20),
        || !dropped.exists(),
    );
    assert!(
        !g.log().contains("take effect at the next restart"),
        "{}",
        g.log()
    );

    // A broken file: refused, the running configuration stays.
    std::fs::write(&g.config, "limits: { sessions_per_user: lots }\n").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    common::wait_until("the refused reload", Duration::from_secs(10), || {
        g.log()
            .contains("reload failed, keeping the current configuration")
    });
    assert!(g.log().contains("limits.sessions_per_user"));
    assert!(banner_of_new_connection().contains("second banner"));

    // The session opened before the reloads still works.
    let mut stdin = live.stdin.take().unwrap();
    stdin.write_all(b"ls /\n").unwrap();
    drop(stdin);
    let out = live.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("inbox"));
}

crate::on_both_backends! {
    fn metrics_endpoint_counts_real_traffic() {
        let port = common::free_port();
        let g = Gateway::start_with(&format!("metrics: {{ listen: \"127.0.0.1:{port}\" }}"));
        let data = common::noise(300_000, 7);
        let f = g.file("plan.pdf", &data);
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/\n", f.display()),
        );
        assert!(
            !g.sftp(
                "school-a-user",
                &format!(
                    "put {} /outbox/school-b/coordinator/denied.pdf\n",
                    f.display()
                )
            )
            .ok
        );
        let got = g.path("got.pdf");
        g.sftp_ok(
            "cap-user",
            &format!("get /inbox/school-a/plan.pdf {}\n", got.display()),
        );
        let (failed, _, _) = password_login(&g, "school-a-user", "wrong");
        assert!(!failed);

        let mut text = String::new();
        common::wait_until("sampled gauges", std::time::Duration::from_secs(20), || {
            text = scrape(port);
            series(&text, "apgate_mail_messages{state=\"waiting\"}") == Some(1.0)
        });
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(
            series(&text, "apgate_transfers_committed_total{source=\"sftp\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            series(&text, "apgate_transfers_denied_total"),
            Some(1.0),
            "{text}"
        );
        assert!(series(&text, "apgate_bytes_received_total") >= Some(300_000.0));
        assert_eq!(series(&text, "apgate_bytes_sent_total"), Some(300_000.0));
        assert!(series(&text, "apgate_login_failures_total") >= Some(1.0));
        assert_eq!(series(&text, "apgate_sessions"), Some(0.0));
        assert_eq!(series(&text, "apgate_bans{kind=\"address\"}"), Some(0.0));
        assert_eq!(
            series(&text, "apgate_ingest_jobs{state=\"pending\"}"),
            Some(0.0)
        );
        assert_eq!(
            series(&text, "apgate_mail_messages{state=\"dead\"}"),
            Some(0.0)
        );
        // Only counts: no user, organisation or file name is exported.
        for secret in ["school-a", "plan.pdf", "cap-user"] {
            assert!(!text.contains(secret), "`{secret}` in metrics");
        }
    }
}
