//! Malware scanning (SPEC §7) against a real clamd (Debian's clamav-daemon) with a database of
//! its own: uploads over real `sftp` and paramiko, a real SMTP server for the alerts, drop
//! folders, clamd stopped and started again.

mod common;

use std::time::Duration;

use common::{
    Clamd, Gateway, SmtpServer, eicar, free_port, noise, python_client, smtp_config, upn,
    wait_until, walk,
};

/// The signature name clamd gives the test database's EICAR signature.
const SIGNATURE: &str = "Eicar-Test-Signature.UNOFFICIAL";

fn put_with_paramiko(g: &Gateway, user: &str, local: &std::path::Path, remote: &str) -> String {
    python_client(
        g,
        user,
        "put_file.py",
        &[local.to_str().expect("path"), remote],
    )
}

/// The names `ls -1` lists in `dir` (the batch's own echo left out).
fn listing(g: &Gateway, user: &str, dir: &str) -> Vec<String> {
    g.sftp_ok(user, &format!("ls -1 {dir}\n"))
        .lines()
        .filter(|l| !l.starts_with("sftp>") && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// No file under the gateway's data folder holds any of `needles` (plaintext never on disk).
fn assert_no_plaintext(g: &Gateway, needles: &[&[u8]]) {
    for f in walk(&g.path("data")) {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        for n in needles {
            assert!(!contains(&bytes, n), "plaintext in {}", f.display());
        }
    }
}

/// The rows of a report as `column=value` maps.
fn report_rows(
    g: &Gateway,
    user: &str,
    report: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let dest = g.path(&format!("{user}-{}", common::rand_suffix()));
    g.sftp_ok(user, &format!("get /reports/{report} {}\n", dest.display()));
    let mut r = csv::Reader::from_path(&dest).expect("report");
    let headers = r.headers().expect("header").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("row");
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

crate::on_both_backends! {
    /// EICAR is refused at CLOSE, alone, after 5 MiB of other bytes, and as a `.filepart`
    /// before its rename: nothing is delivered or stored, the refusal is audited with the
    /// signature and sha-256, the hub's coordinator and DSL and the sender's coordinator are
    /// mailed, and transfers.csv tells the hub. A clean 20 MiB file after them arrives intact.
    fn infected_uploads_are_refused_at_close_and_alerted() {
        let smtp = SmtpServer::start(free_port());
        let clamd = Clamd::start();
        let g = Gateway::start_with(&format!(
            "{}{}",
            clamd.config("refuse"),
            smtp_config(smtp.port, "")
        ));
        let virus = g.file("letter.docx", &eicar());
        let said = put_with_paramiko(&g, "school-a-user", &virus, "/outbox/coordinator/letter.docx");
        assert_eq!(
            said.trim(),
            format!("ERROR: refused: malware detected ({SIGNATURE}); nothing was delivered")
        );

        // pysftp's way: paramiko ignores the failed CLOSE, but its confirming stat finds nothing.
        let said = python_client(
            &g,
            "school-a-user",
            "put_file.py",
            &[virus.to_str().unwrap(), "/outbox/coordinator/letter2.docx", "put"],
        );
        assert!(said.starts_with("ERROR:"), "{said}");

        let mut padded = noise(5 << 20, 1);
        padded.extend(eicar());
        padded.extend(noise(4096, 2));
        let padded_file = g.file("scan.pdf", &padded);
        let r = g.sftp(
            "school-a-user",
            &format!("put {} /outbox/dsl/scan.pdf\n", padded_file.display()),
        );
        assert!(!r.ok, "the close fails: {}", r.all());

        let r = g.sftp(
            "prov-a-user",
            &format!(
                "put {} /outbox/coordinator/plan.pdf.filepart\n\
                 rename /outbox/coordinator/plan.pdf.filepart /outbox/coordinator/plan.pdf\n",
                virus.display()
            ),
        );
        assert!(!r.ok, "{}", r.all());
        let said = put_with_paramiko(&g, "prov-a-user", &virus, "/outbox/coordinator/plan.pdf.filepart");
        assert!(said.contains("malware detected"), "refused at the close: {said}");

        for inbox in ["/inbox/school-a", "/inbox/prov-a"] {
            assert!(listing(&g, "cap-user", inbox).is_empty(), "{inbox}");
        }
        assert!(g.stored_blobs().is_empty(), "nothing stored");
        assert!(
            walk(&g.path("data/spool")).is_empty(),
            "no spool file left"
        );

        let clean = noise(20 << 20, 7);
        let clean_file = g.file("clean.bin", &clean);
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/clean.bin\n", clean_file.display()),
        );
        let got = g.path("got.bin");
        g.sftp_ok("cap-user", &format!("get /inbox/school-a/clean.bin {}\n", got.display()));
        assert!(std::fs::read(&got).unwrap() == clean, "byte-identical");

        let audit = g.sql(
            "SELECT actor || ' ' || outcome || ' ' || detail FROM audit WHERE action = 'upload refused' ORDER BY seq",
        );
        let sha = |b: &[u8]| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b))
        };
        assert_eq!(audit.lines().count(), 5, "{audit}");
        assert!(audit.contains("school-a-user malware"), "{audit}");
        assert!(audit.contains(&sha(&eicar())), "{audit}");
        assert!(audit.contains(&sha(&padded)), "{audit}");
        assert!(audit.contains(&format!("signature: {SIGNATURE}")), "{audit}");

        let hub_rows = report_rows(&g, "cap-user", "transfers.csv");
        let refused: Vec<_> = hub_rows.iter().filter(|r| r["scan"] == "refused").collect();
        assert_eq!(refused.len(), 5, "{hub_rows:?}");
        assert!(refused.iter().all(|r| r["to"].is_empty()));
        assert!(refused.iter().any(|r| r["from"] == "prov-a" && r["name"] == "plan.pdf.filepart"));
        let delivered: Vec<_> = hub_rows.iter().filter(|r| r["scan"] != "refused").collect();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0]["scan"], "clean");
        // A refused DSL file is the DSL's to see: a coordinator-only hub user does not.
        g.add_user("cap-coord", "cap", &["coordinator"]);
        let coord_rows = report_rows(&g, "cap-coord", "transfers.csv");
        let coord_refused: Vec<_> = coord_rows.iter().filter(|r| r["scan"] == "refused").collect();
        assert_eq!(coord_refused.len(), 4, "{coord_rows:?}");
        assert!(coord_refused.iter().all(|r| r["role"] == "coordinator"));
        let school_rows = report_rows(&g, "school-a-user", "transfers.csv");
        assert_eq!(school_rows.len(), 1, "a sender sees only what was delivered: {school_rows:?}");
        assert_eq!(school_rows[0]["scan"], "clean");

        // Five refusals: the hub's coordinator and DSL each hear of every one, the school's
        // coordinator of its three and the provider's of its two; and one transfer message.
        wait_until("the alerts", Duration::from_secs(60), || {
            smtp.messages()
                .iter()
                .filter(|m| m.subject.contains("refused as malware"))
                .count()
                >= 15
        });
        let mail = smtp.messages();
        let alerts: Vec<_> = mail
            .iter()
            .filter(|m| m.subject.contains("refused as malware"))
            .collect();
        let to = |addr: &str| alerts.iter().filter(|m| m.to.contains(addr)).count();
        assert_eq!(to("coord@cap.example.org"), 5);
        assert_eq!(to("dsl@cap.example.org"), 5);
        assert_eq!(to("coord@school-a.example.org"), 3);
        assert_eq!(to("coord@prov-a.example.org"), 2);
        assert_eq!(to("dsl@school-a.example.org"), 0);
        for m in &alerts {
            assert_eq!(m.priority, "1 (Highest)", "alerts go at once, high priority: {m:?}");
            for name in ["letter", "scan.pdf", "plan.pdf"] {
                assert!(!m.raw.contains(name), "no file name in mail: {}", m.raw);
            }
        }
        let hub_alert = alerts.iter().find(|m| m.to.contains("coord@cap")).unwrap();
        assert!(hub_alert.subject.contains("Org school-a") || hub_alert.subject.contains("Org prov-a"));

        assert_no_plaintext(&g, &[&eicar(), &clean[1 << 20..(1 << 20) + 64]]);
    }
}

/// clamd stopped: uploads are refused with "try again later" and the operator's log says why;
/// once clamd is back, the same upload goes through as clean. With `on_error: deliver` it is
/// delivered and marked unscanned. A file over clamd's StreamMaxLength is never passed as clean.
#[test]
fn clamd_down_or_over_its_limit_follows_on_error() {
    let mut clamd = Clamd::start_with("StreamMaxLength 2M");
    let metrics = free_port();
    let g = Gateway::start_with(&format!(
        "{}metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\n",
        clamd.config("refuse")
    ));
    let doc = g.file("minutes.docx", b"minutes of the review meeting\n");
    let big = g.file("video.mp4", &noise(3 << 20, 3));

    let said = put_with_paramiko(&g, "school-a-user", &big, "/outbox/coordinator/video.mp4");
    assert!(
        said.contains("try again later"),
        "over the stream limit: {said}"
    );
    assert!(
        g.log().contains("size limit"),
        "the log says clamd's reason"
    );

    clamd.down();
    let said = put_with_paramiko(
        &g,
        "school-a-user",
        &doc,
        "/outbox/coordinator/minutes.docx",
    );
    assert!(
        said.starts_with("ERROR: refused: the file could not be checked for malware"),
        "{said}"
    );
    assert!(said.contains("try again later"), "{said}");
    assert!(g.log().contains("cannot be reached"), "{}", g.log());
    assert!(listing(&g, "cap-user", "/inbox/school-a").is_empty());

    clamd.up();
    let said = put_with_paramiko(
        &g,
        "school-a-user",
        &doc,
        "/outbox/coordinator/minutes.docx",
    );
    assert_eq!(said.trim(), "OK");
    assert_eq!(
        g.sql("SELECT scan FROM uploads").trim(),
        "clean",
        "scanned once clamd is back"
    );
    assert_eq!(
        g.sql("SELECT reason FROM refused_uploads ORDER BY id")
            .trim(),
        "unscanned\nunscanned"
    );

    clamd.down();
    let g2 = Gateway::start_with(&clamd.config("deliver"));
    let doc2 = g2.file("minutes.docx", b"minutes of the review meeting\n");
    let said = put_with_paramiko(
        &g2,
        "school-a-user",
        &doc2,
        "/outbox/coordinator/minutes.docx",
    );
    assert_eq!(said.trim(), "OK");
    let got = g2.path("got.docx");
    g2.sftp_ok(
        "cap-user",
        &format!("get /inbox/school-a/minutes.docx {}\n", got.display()),
    );
    assert_eq!(
        std::fs::read(&got).unwrap(),
        b"minutes of the review meeting\n"
    );
    let rows = report_rows(&g2, "cap-user", "transfers.csv");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["scan"], "unscanned");
    assert!(g2.log().contains("delivered unscanned"), "{}", g2.log());
}

/// An ingest file with EICAR in it applies nothing and is not stored; a drop-folder file with
/// it is moved to `quarantine/` beside the drop folder with a receipt, and the next clean file
/// in the same folder is ingested.
#[test]
fn infected_ingest_and_drop_folder_files_apply_nothing() {
    let clamd = Clamd::start();
    let parent = tempfile::tempdir().unwrap();
    let drop = parent.path().join("school-a-roster");
    std::fs::create_dir(&drop).unwrap();
    let g = Gateway::start_with(&format!(
        "{}drop_dirs: [ {{ path: \"{}\", org: school-a, kind: roster }} ]\n",
        clamd.config("refuse"),
        drop.display()
    ));
    let header = "upn,surname,forename,date_of_birth,gender,year_group\n";
    let mut infected = format!("{header}{},Taylor,Sam,2011-03-14,F,9\n", upn(61)).into_bytes();
    infected.extend(eicar());
    infected.push(b'\n');
    let f = g.file("roster.csv", &infected);
    let said = put_with_paramiko(&g, "school-a-user", &f, "/roster/roster.csv");
    assert!(said.contains("malware detected"), "{said}");
    assert_eq!(g.sql("SELECT COUNT(*) FROM learners").trim(), "0");
    assert_eq!(g.sql("SELECT COUNT(*) FROM ingest_jobs").trim(), "0");
    assert!(listing(&g, "school-a-user", "/receipts").is_empty());

    let dropped = drop.join("nightly.csv");
    std::fs::write(&dropped, &infected).unwrap();
    wait_until(
        "the infected drop file to be taken",
        Duration::from_secs(30),
        || !dropped.exists(),
    );
    let quarantine = parent.path().join("quarantine").join("school-a-roster");
    let kept: Vec<_> = walk(&quarantine);
    assert_eq!(kept.len(), 2, "the file and its receipt: {kept:?}");
    let file = kept
        .iter()
        .find(|p| p.to_string_lossy().ends_with("-nightly.csv"))
        .unwrap();
    assert_eq!(std::fs::read(file).unwrap(), infected, "moved, not changed");
    let receipt = std::fs::read_to_string(
        kept.iter()
            .find(|p| p.to_string_lossy().ends_with(".receipt.txt"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        receipt.contains(&format!("malware detected ({SIGNATURE})")),
        "{receipt}"
    );
    assert_eq!(g.sql("SELECT COUNT(*) FROM learners").trim(), "0");
    assert_eq!(
        g.sql("SELECT folder || ' ' || reason FROM refused_uploads ORDER BY id")
            .trim(),
        "roster malware\nroster malware"
    );

    let clean = drop.join("nightly-2.csv");
    std::fs::write(
        &clean,
        format!("{header}{},Taylor,Sam,2011-03-14,F,9\n", upn(61)),
    )
    .unwrap();
    wait_until(
        "the clean drop file to be ingested",
        Duration::from_secs(30),
        || !clean.exists(),
    );
    assert_eq!(g.sql("SELECT COUNT(*) FROM learners").trim(), "1");
    assert_eq!(g.sql("SELECT scan FROM uploads").trim(), "clean");
    assert_no_plaintext(&g, &[&eicar()]);
}

/// `check-config` warns when clamd does not answer and when its TemporaryDirectory (where it
/// writes what it scans) is not on a tmpfs.
#[test]
fn check_config_warns_about_clamd() {
    let mut clamd = Clamd::start();
    let g = Gateway::configured(&clamd.config("refuse"));
    let out = g.cli_ok(&["check-config"]);
    assert!(!out.contains("warning"), "{out}");

    let on_disk = g.path("clamd-disk.conf");
    std::fs::write(
        &on_disk,
        format!(
            "LocalSocket {}\nTemporaryDirectory {}\n",
            clamd.socket.display(),
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(&g.config).unwrap().replace(
        &clamd.conf.display().to_string(),
        &on_disk.display().to_string(),
    );
    std::fs::write(&g.config, config).unwrap();
    let out = g.cli_ok(&["check-config"]);
    assert!(
        out.contains("warning: clamd's TemporaryDirectory") && out.contains("not a tmpfs"),
        "{out}"
    );

    clamd.down();
    let out = g.cli_ok(&["check-config"]);
    assert!(out.contains("does not answer"), "{out}");
}

/// clamd on a TCP address finds the test file too; a "clamd" that takes the connection and
/// never reads or answers fails the upload after `scan.timeout_s`, whether the file fits in the
/// socket's buffer (no answer) or not (the write times out).
#[test]
fn clamd_over_tcp_and_a_clamd_that_never_answers() {
    let port = free_port();
    let clamd = Clamd::start_with(&format!("TCPSocket {port}\nTCPAddr 127.0.0.1"));
    let g = Gateway::start_with(&format!(
        "scan: {{ clamd: \"tcp:127.0.0.1:{port}\", timeout_s: 20 }}\n"
    ));
    let virus = g.file("letter.docx", &eicar());
    let said = put_with_paramiko(
        &g,
        "school-a-user",
        &virus,
        "/outbox/coordinator/letter.docx",
    );
    assert!(
        said.contains(&format!("malware detected ({SIGNATURE})")),
        "{said}"
    );
    let clean = g.file("clean.docx", b"a clean letter");
    let said = put_with_paramiko(
        &g,
        "school-a-user",
        &clean,
        "/outbox/coordinator/clean.docx",
    );
    assert_eq!(said.trim(), "OK");
    drop(clamd);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let g = Gateway::start_with(&format!(
        "scan: {{ clamd: \"unix:{}\", timeout_s: 2 }}\n",
        socket.display()
    ));
    let small = g.file("small.docx", b"a letter");
    let big = g.file("big.bin", &noise(8 << 20, 9));
    for (file, name) in [(&small, "small.docx"), (&big, "big.bin")] {
        let started = std::time::Instant::now();
        let said = put_with_paramiko(
            &g,
            "school-a-user",
            file,
            &format!("/outbox/coordinator/{name}"),
        );
        assert!(said.contains("try again later"), "{name}: {said}");
        assert!(started.elapsed() < Duration::from_secs(30), "{name}");
    }
    let log = g.log();
    assert!(log.contains("clamd gave no answer within 2 s"), "{log}");
    assert!(log.contains("failed while sending"), "{log}");
    assert!(listing(&g, "cap-user", "/inbox/school-a").is_empty());

    // With `deliver`, the same silent clamd delays uploads by the time-out; eight of them at
    // once hold every upload worker, and a download still goes at once (a pool of its own).
    let g = Gateway::start_with(&format!(
        "scan: {{ clamd: \"unix:{}\", timeout_s: 6, on_error: deliver }}\n\
         limits: {{ connections_per_second: 200, ban_after_failures: 50, uploads_per_user: 16 }}\n",
        socket.display()
    ));
    let letter = noise(3 << 20, 4);
    let f = g.file("letter.bin", &letter);
    g.sftp_ok(
        "cap-user",
        &format!(
            "put {} /outbox/school-a/coordinator/letter.bin\n",
            f.display()
        ),
    );
    let big = g.file("big.bin", &noise(8 << 20, 9));
    let uploads: Vec<_> = (0..8)
        .map(|i| {
            g.spawn_script(
                "school-b-user",
                &[],
                &format!("put {} /outbox/coordinator/big-{i}.bin\n", big.display()),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let got = g.path("letter-got.bin");
    g.sftp_ok(
        "school-a-user",
        &format!("get /inbox/letter.bin {}\n", got.display()),
    );
    let took = started.elapsed();
    assert!(std::fs::read(&got).unwrap() == letter);
    assert!(
        took < Duration::from_secs(4),
        "a download waited {took:?} behind uploads held by clamd"
    );
    for mut u in uploads {
        assert!(
            u.wait().unwrap().success(),
            "delivered unscanned after the time-out"
        );
    }
}
