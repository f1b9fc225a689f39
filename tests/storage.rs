//! Encryption at rest, the audit chain, interrupted uploads, limits and large downloads.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Gateway, noise, wait_until};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a9c";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn age_decrypt(identity: &std::path::Path, file: &std::path::Path) -> Vec<u8> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .expect("the age CLI must be installed (Debian package age)");
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

crate::on_both_backends! {
    fn files_are_age_encrypted_at_rest_and_the_age_cli_recovers_them() {
        // An escrow recipient made with the real age-keygen.
        let tmp = tempfile::tempdir().unwrap();
        let escrow_key = tmp.path().join("escrow.txt");
        let st = Command::new("age-keygen")
            .arg("-o")
            .arg(&escrow_key)
            .output()
            .unwrap();
        assert!(st.status.success());
        let escrow_text = std::fs::read_to_string(&escrow_key).unwrap();
        let recipient = escrow_text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string();
        let g = Gateway::start_with(&format!("escrow_recipients: [\"{recipient}\"]"));

        let mut content = noise(200_000, 9);
        content.extend_from_slice(MARKER);
        content.extend_from_slice(&noise(100_000, 10));
        let f = g.file("ehcp.pdf", &content);
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/dsl/ehcp.pdf\n", f.display()),
        );

        let blobs = g.stored_blobs();
        assert_eq!(blobs.len(), 1);
        let stored = std::fs::read(&blobs[0]).unwrap();
        assert!(
            stored.starts_with(b"age-encryption.org/v1\n"),
            "standard age header"
        );
        // No plaintext anywhere under data_dir: store, spool, database, logs.
        for p in common::walk(&g.path("data")) {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !contains(&bytes, MARKER),
                "plaintext found in {}",
                p.display()
            );
        }
        assert_eq!(
            age_decrypt(&g.path("keys/age-identities.txt"), &blobs[0]),
            content
        );
        assert_eq!(
            age_decrypt(&escrow_key, &blobs[0]),
            content,
            "escrow identity decrypts"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(g.path("keys/age-identities.txt"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    fn key_rotation_keeps_old_files_readable() {
        let g = Gateway::start();
        let old = g.file("old.txt", b"before rotation");
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/old.txt\n", old.display()),
        );
        let mut g = g;
        g.cli_ok(&["keys", "rotate"]);
        g.stop_server();
        g.start_server();
        let new = g.file("new.txt", b"after rotation");
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/new.txt\n", new.display()),
        );
        let (a, b) = (g.path("a.txt"), g.path("b.txt"));
        g.sftp_ok(
            "cap-user",
            &format!(
                "get /inbox/school-a/old.txt {}\nget /inbox/school-a/new.txt {}\n",
                a.display(),
                b.display()
            ),
        );
        assert_eq!(std::fs::read(a).unwrap(), b"before rotation");
        assert_eq!(std::fs::read(b).unwrap(), b"after rotation");
        let ids = std::fs::read_to_string(g.path("keys/age-identities.txt")).unwrap();
        assert_eq!(ids.matches("AGE-SECRET-KEY-").count(), 2);
    }

    fn audit_verify_detects_edits_and_removals() {
        let g = Gateway::start();
        let f = g.file("a.txt", b"a");
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/a.txt\n", f.display()),
        );
        let ok = g.cli_ok(&["audit", "verify"]);
        assert!(ok.contains("intact"), "{ok}");
        let n: i64 = g
            .sql("SELECT COUNT(*) FROM audit")
            .trim()
            .parse()
            .unwrap();
        assert!(
            n >= 12,
            "org and user additions, logins and the upload are audited ({n})"
        );

        // Edit one entry: verify fails and names it.
        g.sql("UPDATE audit SET outcome = 'denied' WHERE seq = 5");
        let r = g.cli(&["audit", "verify"]);
        assert!(!r.ok);
        assert!(r.stderr.contains("entry 5"), "{}", r.stderr);
        g.sql("UPDATE audit SET outcome = 'ok' WHERE seq = 5");
        assert!(
            g.cli(&["audit", "verify"]).ok,
            "restoring the entry restores the chain"
        );

        // Remove one entry.
        g.sql("DELETE FROM audit WHERE seq = 7");
        let r = g.cli(&["audit", "verify"]);
        assert!(!r.ok && r.stderr.contains("entry 7"), "{}", r.stderr);
    }

    fn audit_detects_removed_last_entries() {
        let g = Gateway::start();
        let last: i64 = g
            .sql("SELECT MAX(seq) FROM audit")
            .trim()
            .parse()
            .unwrap();
        g.sql(&format!("DELETE FROM audit WHERE seq = {last}"));
        let r = g.cli(&["audit", "verify"]);
        assert!(
            !r.ok && r.stderr.contains(&format!("entry {last}")),
            "{}",
            r.stderr
        );
    }

    /// A connection that drops mid-upload leaves no file anywhere, only an audit entry.
    fn interrupted_upload_leaves_nothing() {
        let g = Gateway::start();
        let f = g.file("huge.bin", &noise(64 * 1024 * 1024, 4));
        let batch = g.path("slow-batch");
        std::fs::write(
            &batch,
            format!("put {} /outbox/coordinator/huge.bin\n", f.display()),
        )
        .unwrap();
        // Throttled to ~2 MB/s so that it is surely mid-transfer when killed.
        let mut child = g
            .sftp_command(
                "school-a-user",
                &["-l", "16000", "-b", batch.to_str().unwrap()],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the upload to start", Duration::from_secs(20), || {
            common::walk(&g.path("data/spool")).iter().any(|p| {
                std::fs::metadata(p)
                    .map(|m| m.len() > 1_000_000)
                    .unwrap_or(false)
            })
        });
        child.kill().unwrap();
        child.wait().unwrap();
        wait_until(
            "the aborted upload to be cleaned",
            Duration::from_secs(20),
            || common::walk(&g.path("data/spool")).is_empty(),
        );
        assert!(g.stored_blobs().is_empty(), "no half file in the store");
        assert_eq!(g.sql("SELECT COUNT(*) FROM uploads").trim(), "0");
        assert!(
            !g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n")
                .contains("huge")
        );
        wait_until("the abort to be audited", Duration::from_secs(10), || {
            g.sql("SELECT COUNT(*) FROM audit WHERE action = 'upload aborted'")
                .trim()
                == "1"
        });
    }

    /// A stored file cut at a chunk boundary (a lost tail) is not served as a shorter file: its
    /// size no longer matches the record, and the download fails instead.
    fn a_cut_stored_file_is_refused_not_served_short() {
        let g = Gateway::start();
        // 200,000 bytes: three full 64 KiB chunks and a last one of 3,392 bytes (+16 tag each).
        let content = noise(200_000, 13);
        let f = g.file("plan.pdf", &content);
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/plan.pdf\n", f.display()),
        );
        let blobs = g.stored_blobs();
        assert_eq!(blobs.len(), 1);
        let stored = std::fs::read(&blobs[0]).unwrap();
        std::fs::write(&blobs[0], &stored[..stored.len() - (3_392 + 16)]).unwrap();
        let got = g.path("files/got.pdf");
        let r = g.sftp(
            "cap-user",
            &format!("get /inbox/school-a/plan.pdf {}\n", got.display()),
        );
        assert!(!r.ok, "a cut file must not download: {}", r.all());
        assert!(
            std::fs::read(&got).map_or(true, |b| b.len() < content.len()),
            "no whole file arrived"
        );
        assert!(
            g.log().contains("its record says 200000"),
            "the log names the mismatch:\n{}",
            g.log()
        );
    }

    /// The disk fills up mid-upload: the client gets an error, no half file stays in the spool
    /// or the store, the abort is audited with the reason, and the next file that fits goes
    /// through whole.
    fn a_full_disk_fails_the_upload_and_leaves_nothing() {
        let g = Gateway::configured("");
        let Some(disk) = common::SmallDisk::mount(&g.path("data"), "16m") else {
            return;
        };
        let mut g = g.seeded();
        let big = g.file("big.bin", &noise(40 * 1024 * 1024, 11));
        let r = g.sftp(
            "school-a-user",
            &format!("put {} /outbox/coordinator/big.bin\n", big.display()),
        );
        assert!(!r.ok, "a 40 MiB file cannot fit in 16 MiB: {}", r.all());
        wait_until("the spool to be emptied", Duration::from_secs(20), || {
            common::walk(&g.path("data/spool")).is_empty()
        });
        assert!(g.stored_blobs().is_empty(), "no half file in the store");
        assert_eq!(g.sql("SELECT COUNT(*) FROM uploads").trim(), "0");
        wait_until("the abort to be audited", Duration::from_secs(10), || {
            g.sql(
                "SELECT COUNT(*) FROM audit WHERE action = 'upload aborted' \
                 AND detail LIKE '%big.bin: the gateway''s storage is full%'",
            )
            .trim()
                == "1"
        });

        let content = noise(300_000, 12);
        let small = g.file("small.bin", &content);
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/small.bin\n", small.display()),
        );
        let got = g.path("files/got.bin");
        g.sftp_ok(
            "cap-user",
            &format!("get /inbox/school-a/small.bin {}\n", got.display()),
        );
        assert!(std::fs::read(&got).unwrap() == content, "the next file arrives whole");
        assert_eq!(g.stored_blobs().len(), 1);
        g.stop_server();
        drop(disk);
    }

    fn size_and_quota_limits_refuse_and_store_nothing() {
        let g = Gateway::start_with(
            "limits: { max_file_size: 100KiB, quota_per_org: 250KiB, connections_per_second: 200 }",
        );
        let big = g.file("big.bin", &noise(150_000, 5));
        let r = g.sftp(
            "school-a-user",
            &format!("put {} /outbox/coordinator/big.bin\n", big.display()),
        );
        assert!(!r.ok, "{}", r.all());
        assert!(g.stored_blobs().is_empty());
        assert!(common::walk(&g.path("data/spool")).is_empty());

        let ok = g.file("ok.bin", &noise(90_000, 6));
        for i in 0..2 {
            g.sftp_ok(
                "school-a-user",
                &format!("put {} /outbox/coordinator/ok-{i}.bin\n", ok.display()),
            );
        }
        let r = g.sftp(
            "school-a-user",
            &format!("put {} /outbox/coordinator/ok-3.bin\n", ok.display()),
        );
        assert!(!r.ok, "the third file exceeds the quota: {}", r.all());
        assert_eq!(g.stored_blobs().len(), 2);
        assert!(common::walk(&g.path("data/spool")).is_empty());
        // Another organisation has its own quota.
        g.sftp_ok(
            "school-b-user",
            &format!("put {} /outbox/coordinator/ok.bin\n", ok.display()),
        );
    }

    /// Many outstanding large reads (the russh channel-queue deadlock of the field notes) and
    /// pipelined large writes complete byte-identical. (The upload lets the client size its writes
    /// from limits@openssh.com: OpenSSH's own client cannot send `-B 262144` writes, which exceed
    /// its 256 KiB message limit; the download asks for 262144-byte reads and gets 261120.)
    fn large_transfer_with_many_outstanding_requests() {
        let g = Gateway::start();
        let content = noise(96 * 1024 * 1024, 7);
        let f = g.file("video.bin", &content);
        let up = g.sftp_with(
            "cap-user",
            &format!(
                "put {} /outbox/school-a/coordinator/video.bin\n",
                f.display()
            ),
            &["-R", "256"],
        );
        assert!(up.ok, "{}", up.all());
        let dest = g.path("video-back.bin");
        let mut child = g.spawn_script(
            "school-a-user",
            &["-R", "256", "-B", "262144"],
            &format!("get /inbox/video.bin {}\n", dest.display()),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "download failed");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "download hung");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(std::fs::read(&dest).unwrap() == content, "download differs");
    }

    /// A client that stops reading mid-download is dropped by the idle timeout; the server does
    /// not buffer the file for it.
    fn stalled_download_is_dropped_by_the_idle_timeout() {
        let g = Gateway::start_with("limits: { idle_timeout_s: 3, connections_per_second: 200 }");
        let content = noise(64 * 1024 * 1024, 8);
        let f = g.file("big.bin", &content);
        g.sftp_ok(
            "cap-user",
            &format!("put {} /outbox/school-a/coordinator/big.bin\n", f.display()),
        );
        let dest = g.path("partial.bin");
        let mut child = g.spawn_script(
            "school-a-user",
            &[],
            &format!("get /inbox/big.bin {}\n", dest.display()),
        );
        wait_until("the download to start", Duration::from_secs(20), || {
            std::fs::metadata(&dest)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        });
        // Freeze the client (sftp and its ssh child).
        let pid = child.id().to_string();
        let _ = Command::new("pkill").args(["-STOP", "-P", &pid]).status();
        let _ = Command::new("kill").args(["-STOP", &pid]).status();
        wait_until("the idle timeout", Duration::from_secs(30), || {
            g.log().contains("idle timeout")
        });
        let _ = Command::new("pkill").args(["-CONT", "-P", &pid]).status();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the frozen client's download cannot have completed"
        );
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM deliveries WHERE downloaded_at IS NOT NULL")
                .trim(),
            "0",
            "an incomplete download is not recorded as downloaded"
        );
    }

    fn invalid_config_fails_at_start_naming_the_key() {
        let g = Gateway::configured("limits: { sessions_per_user: lots }");
        let r = g.cli(&["serve"]);
        assert!(!r.ok);
        assert!(
            r.stderr.contains("limits.sessions_per_user"),
            "{}",
            r.stderr
        );
        let g = Gateway::configured("retention_dayz: 3");
        let r = g.cli(&["serve"]);
        assert!(!r.ok && r.stderr.contains("retention_dayz"), "{}", r.stderr);
        // Environment overrides are validated the same way.
        let g = Gateway::configured("");
        let out = common::apgate()
            .arg("--config")
            .arg(&g.config)
            .arg("serve")
            .env("APGATE_DATABASE__URL", "mysql://nope")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("database.url"));
    }

    /// After `keys rotate` and `keys reencrypt`, the old identity can be retired: the new identity
    /// alone (and the escrow identity) decrypt every stored file, with the real age CLI and through
    /// the gateway. A second run has nothing left to do.
    fn reencrypt_lets_an_old_identity_be_retired() {
        let tmp = tempfile::tempdir().unwrap();
        let escrow_key = tmp.path().join("escrow.txt");
        assert!(
            Command::new("age-keygen")
                .arg("-o")
                .arg(&escrow_key)
                .output()
                .unwrap()
                .status
                .success()
        );
        let recipient = std::fs::read_to_string(&escrow_key)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# public key: ").map(String::from))
            .unwrap();
        let mut g = Gateway::start_with(&format!("escrow_recipients: [\"{recipient}\"]"));
        let content = noise(700_000, 12);
        let f = g.file("plan.pdf", &content);
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/plan.pdf\n", f.display()),
        );
        g.cli_ok(&["keys", "rotate"]);
        let out = g.cli_ok(&["keys", "reencrypt"]);
        assert!(out.contains("1 stored file(s) re-encrypted"), "{out}");
        assert!(
            g.cli_ok(&["keys", "reencrypt"])
                .contains("0 stored file(s)"),
            "resumable: nothing left"
        );

        // Retire the old identity: keep only the newest in the identities file.
        let ids_path = g.path("keys/age-identities.txt");
        let ids = std::fs::read_to_string(&ids_path).unwrap();
        let newest = ids
            .lines()
            .rfind(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
            .to_string();
        std::fs::write(&ids_path, format!("{newest}\n")).unwrap();
        let blob = &g.stored_blobs()[0];
        assert_eq!(age_decrypt(&ids_path, blob), content);
        assert_eq!(age_decrypt(&escrow_key, blob), content);
        g.stop_server();
        g.start_server();
        let back = g.path("back.pdf");
        g.sftp_ok(
            "cap-user",
            &format!("get /inbox/school-a/plan.pdf {}\n", back.display()),
        );
        assert_eq!(std::fs::read(back).unwrap(), content);
        assert!(
            g.sql("SELECT COUNT(*) FROM audit WHERE action = 'keys reencrypt'")
                .trim()
                == "1"
        );
    }
}
