//! Transfers through the real gateway with the real OpenSSH clients: routing, naming, commit
//! rules, recall and rename, roles, folders, broadcasts.

mod common;

use common::{Gateway, noise};

crate::on_both_backends! {
    /// Every allowed direction arrives byte-identical; every denied one fails and stores nothing.
    fn routing_matrix() {
        let g = Gateway::start();
        let payload = noise(300_000, 1);
        let src = g.file("payload.bin", &payload);
        let src = src.display();

        // (sender, upload folder, receiver, where the receiver finds it)
        let allowed = [
            (
                "school-a-user",
                "/outbox/coordinator",
                "cap-user",
                "/inbox/school-a",
            ),
            (
                "school-a-user",
                "/outbox/dsl",
                "cap-user",
                "/inbox/school-a",
            ),
            (
                "prov-a-user",
                "/outbox/coordinator",
                "cap-user",
                "/inbox/prov-a",
            ),
            ("prov-a-user", "/outbox/dsl", "cap-user", "/inbox/prov-a"),
            (
                "cap-user",
                "/outbox/school-a/coordinator",
                "school-a-user",
                "/inbox",
            ),
            (
                "cap-user",
                "/outbox/school-a/dsl",
                "school-a-user",
                "/inbox",
            ),
            (
                "cap-user",
                "/outbox/prov-a/coordinator",
                "prov-a-user",
                "/inbox",
            ),
            ("cap-user", "/outbox/prov-a/dsl", "prov-a-user", "/inbox"),
        ];
        for (i, (from, folder, to, inbox)) in allowed.iter().enumerate() {
            let name = format!("allowed-{i}.bin");
            g.sftp_ok(from, &format!("put {src} {folder}/{name}\n"));
            let dest = g.path(&format!("got-{i}.bin"));
            g.sftp_ok(to, &format!("get {inbox}/{name} {}\n", dest.display()));
            assert_eq!(std::fs::read(&dest).unwrap(), payload, "{from} -> {to}");
        }
        let blobs_before = g.stored_blobs().len();
        assert_eq!(blobs_before, allowed.len());

        let denied = [
            ("school-a-user", "/outbox/school-b/coordinator"),
            ("school-a-user", "/outbox/school-b/dsl"),
            ("school-a-user", "/outbox/prov-a/coordinator"),
            ("prov-a-user", "/outbox/prov-b/dsl"),
            ("prov-a-user", "/outbox/school-a/coordinator"),
            ("school-a-user", "/outbox/no-such-org/coordinator"),
            ("cap-user", "/outbox/cap/coordinator"),
        ];
        for (from, folder) in denied {
            let r = g.sftp(from, &format!("put {src} {folder}/denied.bin\n"));
            assert!(!r.ok, "{from} -> {folder} must be denied");
            assert!(
                r.all().contains("Permission denied"),
                "{from} -> {folder}: {}",
                r.all()
            );
        }
        assert_eq!(
            g.stored_blobs().len(),
            blobs_before,
            "a denied transfer stores nothing"
        );
        for user in [
            "school-b-user",
            "prov-a-user",
            "prov-b-user",
            "school-a-user",
        ] {
            let listing = g.sftp_ok(user, "ls -1 /inbox\n");
            assert!(
                !listing.contains("denied.bin"),
                "{user} received a denied file"
            );
        }
        let audit = g.sql("SELECT detail FROM audit WHERE action = 'transfer denied'");
        assert_eq!(audit.lines().count(), denied.len(), "{audit}");
        assert!(
            audit.contains("may exchange files only with the hub"),
            "{audit}"
        );
        assert!(
            audit.contains("the hub cannot send files to itself"),
            "{audit}"
        );
        // The reason also reaches the server log, naming the rule (and never whether the
        // organisation named exists).
        assert!(g.log().contains(
            "a school may exchange files only with the hub (send to /outbox/coordinator or /outbox/dsl)"
        ));
        assert!(!g.log().contains("never with a school"));
    }

    fn same_name_twice_gets_a_copy_number_and_nothing_is_overwritten() {
        let g = Gateway::start();
        let one = g.file("one/report.pdf", b"first version");
        let two = g.file("two/report.pdf", b"second version");
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/report.pdf\nput {} /outbox/coordinator/report.pdf\n",
                one.display(),
                two.display()
            ),
        );
        let listing = g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n");
        assert!(
            listing.contains("report.pdf") && listing.contains("report (2).pdf"),
            "{listing}"
        );
        let (a, b) = (g.path("a.pdf"), g.path("b.pdf"));
        g.sftp_ok(
            "cap-user",
            &format!(
                "get /inbox/school-a/report.pdf {}\nget \"/inbox/school-a/report (2).pdf\" {}\n",
                a.display(),
                b.display()
            ),
        );
        assert_eq!(std::fs::read(a).unwrap(), b"first version");
        assert_eq!(std::fs::read(b).unwrap(), b"second version");
    }

    /// WinSCP and FileZilla upload to NAME.filepart and rename to NAME: only the rename commits.
    fn temporary_names_commit_on_rename() {
        let g = Gateway::start();
        let f = g.file("plan.pdf", b"support plan");
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/plan.pdf.filepart\nls -1 /outbox/coordinator\n",
                f.display()
            ),
        );
        // The session ended before the rename: nothing was delivered and nothing is kept.
        assert!(
            !g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n")
                .contains("plan")
        );
        assert!(g.stored_blobs().is_empty());
        assert!(common::walk(&g.path("data/spool")).is_empty());

        let out = g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/plan.pdf.filepart\nls -1 /outbox/coordinator\n\
                 rename /outbox/coordinator/plan.pdf.filepart /outbox/coordinator/plan.pdf\n",
                f.display()
            ),
        );
        assert!(
            out.contains("plan.pdf.filepart"),
            "the partial file is listed until renamed: {out}"
        );
        let listing = g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n");
        assert!(
            listing.contains("plan.pdf") && !listing.contains("filepart"),
            "{listing}"
        );
        let audit = g.sql("SELECT action FROM audit WHERE action = 'upload aborted'");
        assert_eq!(
            audit.lines().count(),
            1,
            "the abandoned partial file is audited"
        );
    }

    /// WinSCP replaces a file it sent: delete NAME, then rename NAME.filepart to NAME.
    fn recall_and_replace_before_download_then_fixed() {
        let g = Gateway::start();
        let v1 = g.file("v1/risk.docx", b"version one");
        let v2 = g.file("v2/risk.docx", b"version two");
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/dsl/risk.docx\n", v1.display()),
        );
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/dsl/risk.docx.filepart\nrm /outbox/dsl/risk.docx\n\
                 rename /outbox/dsl/risk.docx.filepart /outbox/dsl/risk.docx\n",
                v2.display()
            ),
        );
        let got = g.path("got.docx");
        let listing = g.sftp_ok(
            "cap-user",
            &format!(
                "ls -1 /inbox/school-a\nget /inbox/school-a/risk.docx {}\n",
                got.display()
            ),
        );
        assert!(
            !listing.contains("(2)"),
            "the recalled version is gone: {listing}"
        );
        assert_eq!(std::fs::read(&got).unwrap(), b"version two");

        // Downloaded: the sender can no longer recall or rename it, and it leaves the outbox.
        let r = g.sftp(
            "school-a-user",
            "ls -1 /outbox/dsl\nrm /outbox/dsl/risk.docx\n",
        );
        assert!(!r.ok);
        let listed: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with("sftp>"))
            .collect();
        assert!(
            listed.is_empty(),
            "downloaded files leave the outbox: {listed:?}"
        );
        let audit = g.sql(
            "SELECT action || ':' || outcome FROM audit WHERE action IN ('recall', 'download')",
        );
        assert!(
            audit.contains("recall:ok") && audit.contains("download:ok"),
            "{audit}"
        );
        let downloaded =
            g.sql("SELECT downloaded_by FROM deliveries WHERE downloaded_at IS NOT NULL");
        assert_eq!(downloaded.trim(), "cap-user");
    }

    fn sender_may_rename_until_downloaded() {
        let g = Gateway::start();
        let f = g.file("draft.txt", b"draft");
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/draft-1a2b3c4d\n\
                 rename /outbox/coordinator/draft-1a2b3c4d /outbox/coordinator/draft.txt\n",
                f.display()
            ),
        );
        let listing = g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n");
        assert!(
            listing.contains("draft.txt") && !listing.contains("1a2b3c4d"),
            "{listing}"
        );
        // Renaming out of the folder, or onto another organisation, is refused.
        let r = g.sftp(
            "school-a-user",
            "rename /outbox/coordinator/draft.txt /outbox/dsl/draft.txt\n",
        );
        assert!(!r.ok, "{}", r.all());
        let r = g.sftp(
            "school-a-user",
            "rename /outbox/coordinator/draft.txt /outbox/school-b/coordinator/draft.txt\n",
        );
        assert!(!r.ok, "{}", r.all());
    }

    fn outbox_cannot_be_read_back_and_inbox_is_read_only() {
        let g = Gateway::start();
        let f = g.file("a.txt", b"secret");
        g.sftp_ok(
            "school-a-user",
            &format!("put {} /outbox/coordinator/a.txt\n", f.display()),
        );
        let r = g.sftp(
            "school-a-user",
            &format!("get /outbox/coordinator/a.txt {}\n", g.path("x").display()),
        );
        assert!(
            !r.ok && r.all().contains("Permission denied"),
            "{}",
            r.all()
        );
        let r = g.sftp(
            "cap-user",
            &format!("put {} /inbox/school-a/b.txt\n", f.display()),
        );
        assert!(!r.ok, "{}", r.all());
    }

    /// A DSL file is invisible to a user who is only a coordinator.
    fn role_visibility() {
        let g = Gateway::start();
        g.add_user("a-coord", "school-a", &["coordinator"]);
        g.add_user("a-dsl", "school-a", &["dsl"]);
        let s = g.file("concern.pdf", b"safeguarding");
        let c = g.file("timetable.pdf", b"timetable");
        g.sftp_ok(
            "cap-user",
            &format!(
                "put {} /outbox/school-a/dsl/concern.pdf\nput {} /outbox/school-a/coordinator/timetable.pdf\n",
                s.display(),
                c.display()
            ),
        );
        let coord = g.sftp_ok("a-coord", "ls -1 /inbox\n");
        assert!(
            coord.contains("timetable.pdf") && !coord.contains("concern.pdf"),
            "{coord}"
        );
        let r = g.sftp(
            "a-coord",
            &format!("get /inbox/concern.pdf {}\n", g.path("x").display()),
        );
        assert!(!r.ok);
        let dsl = g.sftp_ok("a-dsl", "ls -1 /inbox\n");
        assert!(
            dsl.contains("concern.pdf") && !dsl.contains("timetable.pdf"),
            "{dsl}"
        );
        let other = g.sftp_ok("school-b-user", "ls -1 /inbox\n");
        assert!(!other.contains(".pdf"), "{other}");
    }

    /// A folder put into an outbox keeps its relative paths in the recipient's inbox.
    fn folder_upload_keeps_relative_paths() {
        let g = Gateway::start();
        g.file("case/plan.pdf", b"plan");
        g.file("case/notes/meeting.txt", b"notes");
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put -r {} /outbox/coordinator/\n",
                g.path("files/case").display()
            ),
        );
        let listing = g.sftp_ok(
            "cap-user",
            "ls -1 /inbox/school-a\nls -1 /inbox/school-a/case\nls -1 /inbox/school-a/case/notes\n",
        );
        assert!(
            listing.contains("case/plan.pdf") || listing.contains("plan.pdf"),
            "{listing}"
        );
        assert!(listing.contains("meeting.txt"), "{listing}");
        let got = g.path("meeting.txt");
        g.sftp_ok(
            "cap-user",
            &format!(
                "get /inbox/school-a/case/notes/meeting.txt {}\n",
                got.display()
            ),
        );
        assert_eq!(std::fs::read(got).unwrap(), b"notes");
    }

    fn hub_broadcast_reaches_every_active_school() {
        let g = Gateway::start();
        g.cli_ok(&[
            "org", "add", "--kind", "school", "--slug", "school-c", "--name", "C",
        ]);
        g.cli_ok(&["org", "disable", "school-c"]);
        let f = g.file("term-dates.pdf", b"dates");
        g.sftp_ok(
            "cap-user",
            &format!("put {} /outbox/all-schools/coordinator/\n", f.display()),
        );
        for user in ["school-a-user", "school-b-user"] {
            assert!(
                g.sftp_ok(user, "ls -1 /inbox\n").contains("term-dates.pdf"),
                "{user}"
            );
        }
        assert!(
            !g.sftp_ok("prov-a-user", "ls -1 /inbox\n")
                .contains("term-dates.pdf")
        );
        let n = g.sql("SELECT COUNT(*) FROM deliveries");
        assert_eq!(
            n.trim(),
            "2",
            "one delivery per active school, one stored blob"
        );
        assert_eq!(g.stored_blobs().len(), 1);
    }

    /// Resuming is refused with a clear message; the partial file can be deleted.
    fn resume_is_refused() {
        let g = Gateway::start();
        let f = g.file("big.bin", &noise(100_000, 2));
        let r = g.sftp(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/big.bin.part\nreput {} /outbox/coordinator/big.bin.part\n",
                f.display(),
                f.display()
            ),
        );
        assert!(!r.ok, "{}", r.all());
        let log = g.log();
        assert!(!log.contains("panicked"), "{log}");
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/big.bin.part\nrm /outbox/coordinator/big.bin.part\n",
                f.display()
            ),
        );
        assert!(g.stored_blobs().is_empty());
    }

    /// `scp` (which speaks SFTP) uploads and downloads and gets an exit status.
    fn scp_round_trip() {
        let g = Gateway::start();
        let payload = noise(70_000, 3);
        let f = g.file("register.csv", &payload);
        let up = g.scp(
            "prov-a-user",
            &[
                f.to_str().unwrap(),
                "prov-a-user@127.0.0.1:/outbox/coordinator/register.csv",
            ],
        );
        assert!(up.ok, "{}", up.all());
        let dest = g.path("back.csv");
        let down = g.scp(
            "cap-user",
            &[
                "cap-user@127.0.0.1:/inbox/prov-a/register.csv",
                dest.to_str().unwrap(),
            ],
        );
        assert!(down.ok, "{}", down.all());
        assert_eq!(std::fs::read(dest).unwrap(), payload);
    }

    /// Deleting from an inbox hides the file for that organisation; the store keeps it.
    fn inbox_delete_hides_and_audits() {
        let g = Gateway::start();
        let f = g.file("x.txt", b"x");
        g.sftp_ok(
            "cap-user",
            &format!("put {} /outbox/school-a/coordinator/x.txt\n", f.display()),
        );
        g.sftp_ok("school-a-user", "rm /inbox/x.txt\n");
        assert!(
            !g.sftp_ok("school-a-user", "ls -1 /inbox\n")
                .contains("x.txt")
        );
        assert_eq!(
            g.stored_blobs().len(),
            1,
            "the store keeps it until retention"
        );
        assert!(
            g.sql("SELECT action FROM audit")
                .contains("inbox delete")
        );
    }
}

/// curl, as an MIS server's nightly job would run it (libssh2 1.10 on Debian 12, which needs
/// `ssh.compat_macs`): an upload into the outbox, a listing, and the hub's download of it.
#[test]
fn curl_uploads_lists_and_downloads() {
    let g = Gateway::start_with("ssh: { compat_macs: true }");
    let content = noise(700_000, 31);
    let src = g.file("register.bin", &content);
    let curl = |user: &str, args: &[&str]| {
        let key = g.key_path(user);
        let out = std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--insecure", "--max-time", "60"])
            .arg("--key")
            .arg(&key)
            .arg("--pubkey")
            .arg(key.with_extension("pub"))
            .args(["--user", &format!("{user}:")])
            .args(args)
            .output()
            .expect("curl must be installed");
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = format!("sftp://127.0.0.1:{}", g.port);
    let (ok, _, err) = curl(
        "school-a-user",
        &[
            "--upload-file",
            src.to_str().unwrap(),
            &format!("{base}/outbox/coordinator/register.bin"),
        ],
    );
    assert!(ok, "curl upload: {err}");
    let (ok, listing, err) = curl(
        "school-a-user",
        &["--list-only", &format!("{base}/outbox/coordinator/")],
    );
    assert!(ok, "curl listing: {err}");
    assert!(
        String::from_utf8_lossy(&listing).contains("register.bin"),
        "the outbox lists the pending transfer"
    );
    let (ok, body, err) = curl(
        "cap-user",
        &[&format!("{base}/inbox/school-a/register.bin")],
    );
    assert!(ok, "curl download: {err}");
    assert!(body == content, "the hub receives the file byte-identical");
    // A school cannot read another school's inbox through curl either.
    let (ok, _, _) = curl(
        "school-b-user",
        &[&format!("{base}/inbox/school-a/register.bin")],
    );
    assert!(!ok, "school-b must not reach school-a's files");
}
