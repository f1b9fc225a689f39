//! The gateway against hostile clients (SPEC §8): each bound is driven past its limit over a
//! real connection, and a real `sftp` login still works beside the attack.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, password_login_with, wait_until};

/// Runs a hostile client of `tests/clients/` as school-a-user against `g` with `args` after
/// the port, user and key file; returns what it printed (it must succeed).
fn hostile_client(g: &Gateway, script: &str, args: &[&str]) -> String {
    common::python_client(g, "school-a-user", script, args)
}

/// Lines of the gateway's log that contain `needle`.
fn count(g: &Gateway, needle: &str) -> usize {
    g.log().matches(needle).count()
}

/// A TCP connection from 127.0.0.1 that, if `hello`, sends an SSH version line, and then
/// stalls.
fn stalled(port: u16, hello: bool) -> TcpStream {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    if hello {
        socket.write_all(b"SSH-2.0-stalled\r\n").unwrap();
    }
    socket
}

/// Whether the server has closed `s` (EOF or reset) within `within`, reading what it sends.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

#[test]
fn exactly_auth_attempts_failed_requests_per_connection() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 200, ban_after_failures: 50, auth_attempts: 3 }",
    );
    g.add_password_user("pw-user", "school-a", "correct horse battery staple");
    // An OpenSSH client willing to ask for a password six times gets three answers.
    let (ok, text, _) = password_login_with(
        &g,
        "pw-user",
        "wrong password",
        &["-o", "NumberOfPasswordPrompts=6"],
    );
    assert!(!ok, "{text}");
    wait_until("the failures logged", Duration::from_secs(10), || {
        count(&g, "authentication failure for pw-user") >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&g, "authentication failure for pw-user"),
        3,
        "{}",
        g.log()
    );

    let batch = g.path("ls-batch");
    std::fs::write(&batch, "ls /\n").unwrap();
    // Refused key probes count too: three unknown keys exhaust the attempts, and the right key
    // offered fourth is never tried.
    let mut args: Vec<String> = g.ssh_options();
    for i in 0..3 {
        let k = g.path(&format!("stranger-{i}"));
        assert!(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&k)
                .status()
                .unwrap()
                .success()
        );
        args.extend(["-i".into(), k.display().to_string()]);
    }
    args.extend([
        "-i".into(),
        g.key_path("school-a-user").display().to_string(),
    ]);
    let out = Command::new("sftp")
        .args(&args)
        .arg("-P")
        .arg(g.port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg("school-a-user@127.0.0.1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fourth key must not be reached");
    assert_eq!(
        count(&g, "refused key probe for school-a-user"),
        3,
        "{}",
        g.log()
    );
    // The right key first logs in.
    let r = g.sftp("school-a-user", "ls /\n");
    assert!(r.ok, "{}", r.all());
}

#[test]
fn stalled_connections_are_closed_after_the_login_grace_time() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 200, ban_after_failures: 50, login_grace_s: 2 }",
    );
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..8).map(|i| stalled(g.port, i % 2 == 0)).collect();
    // A real login beside them works.
    let r = g.sftp("school-a-user", "ls /\n");
    assert!(r.ok, "{}", r.all());
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(6)),
            "a stalled connection is still open after {:?}",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the grace time"
    );
    wait_until("the time-out logged", Duration::from_secs(5), || {
        g.log()
            .contains("not authenticated within limits.login_grace_s")
    });
    // Logged once a minute per address, not once per connection.
    assert_eq!(
        count(&g, "not authenticated within limits.login_grace_s"),
        1,
        "{}",
        g.log()
    );
    // An authenticated session outlives the grace time.
    let mut session = g.open_session("school-a-user", &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        session.try_wait().unwrap().is_none(),
        "an authenticated session was closed"
    );
    let _ = session.kill();
    let _ = session.wait();
}

#[test]
fn connections_beyond_max_startups_are_closed_at_once() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 200, ban_after_failures: 50, max_startups: 50, \
         max_startups_per_address: 4, login_grace_s: 30 }",
    );
    // The harness's own probe of the port is still ending: let it go first.
    std::thread::sleep(Duration::from_millis(500));
    let mut held: Vec<TcpStream> = (0..4).map(|_| stalled(g.port, true)).collect();
    // Give the server a moment to count them.
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2)),
        "the fifth unauthenticated connection from one address was kept: {}",
        g.log()
    );
    // From another address a real login still works.
    let r = g.sftp_with("school-a-user", "ls /\n", &["-o", "BindAddress=127.0.0.2"]);
    assert!(r.ok, "{}", r.all());
    wait_until("the refusal logged", Duration::from_secs(5), || {
        g.log().contains("max_startups_per_address")
    });
    // When the stalled ones go, the address is admitted again.
    held.clear();
    std::thread::sleep(Duration::from_millis(300));
    let r = g.sftp("school-a-user", "ls /\n");
    assert!(r.ok, "{}", r.all());
}

/// ssh-audit's connection-rate (DHEat) test, in the burst it measures, with the default
/// throttle of 10 connections a second per address.
#[test]
fn the_dheat_rate_test_passes_in_a_burst() {
    let g = Gateway::start_with("limits: { connections_per_second: 10, ban_after_failures: 50 }");
    let out = Command::new("ssh-audit")
        .args(["-n", "-p", &g.port.to_string(), "127.0.0.1"])
        .output()
        .expect("ssh-audit must be installed (pip install ssh-audit; .ci/run does)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("kex-strict-s-v00@openssh.com"),
        "the audit ran: {report}"
    );
    let throttling: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("connection throttling") || l.contains("DHEat"))
        .collect();
    assert!(throttling.is_empty(), "{}", throttling.join("\n"));
}

/// A header line of megabytes is not echoed back whole: the CLOSE status and the receipt stay
/// short, whatever the file holds (SPEC §8).
#[test]
fn an_unreadable_header_is_not_echoed_whole() {
    let g = Gateway::start();
    let mut header = String::from("date,start,");
    header.push_str(&"x".repeat(2 << 20));
    header.push_str(",upn\n2026-11-23,09:00,y,z\n");
    let f = g.file("huge-header.csv", header.as_bytes());
    let r = g.sftp("prov-a-user", &format!("put {} /registers/\n", f.display()));
    assert!(!r.ok, "an unreadable file is refused at close");
    // The refusal the CLOSE carries is the job's outcome.
    let refusal = g.sql("SELECT outcome FROM ingest_jobs");
    assert!(refusal.contains("required columns missing"), "{refusal}");
    assert!(
        refusal.len() < 1_000,
        "the refusal is {} bytes long",
        refusal.len()
    );
    let receipt = g.sql("SELECT body FROM receipts");
    assert!(receipt.contains("required columns missing"), "{receipt}");
    assert!(
        receipt.len() < 4_000,
        "the receipt is {} bytes long",
        receipt.len()
    );
}

/// Two byte-identical registers put at the same moment by two users of one provider: the file
/// is applied once, and the other is receipted as already applied (decided inside the apply
/// transaction, not only before parsing).
#[test]
fn identical_files_at_the_same_moment_apply_once() {
    let g = Gateway::start();
    g.add_user("prov-a-second", "prov-a", &["coordinator"]);
    let learners: Vec<String> = (200..400).map(common::upn).collect();
    let learners: Vec<&str> = learners.iter().map(String::as_str).collect();
    g.enrol("school-a", &learners);
    g.place("prov-a", "C", &learners);
    let mut text = String::from("date,start,end,course,upn,surname,forename,status\n");
    for i in 0..300_000u32 {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
            + chrono::Days::new(u64::from(i / 200));
        text.push_str(&format!(
            "{day},09:00,12:00,C,{},T,S,present\n",
            learners[(i % 200) as usize]
        ));
    }
    let f = g.file("same.csv", text.as_bytes());
    let script = format!("put {} /registers/\n", f.display());
    let a = g.spawn_script("prov-a-user", &[], &script);
    let b = g.spawn_script("prov-a-second", &[], &script);
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    wait_until("both receipted", Duration::from_secs(60), || {
        g.sql("SELECT COUNT(*) FROM receipts r JOIN uploads u ON u.id = r.upload_id WHERE u.folder = 'registers'")
            .trim()
            == "2"
    });
    assert_eq!(g.sql("SELECT COUNT(*) FROM marks").trim(), "300000");
    assert_eq!(
        g.sql("SELECT COUNT(*) FROM receipts WHERE body LIKE '%ALREADY APPLIED%'")
            .trim(),
        "1"
    );
}

/// A school probing other organisations' folders learns nothing: an existing school, an
/// existing provider and a name nobody has get the same refusal, Permission denied, also for
/// the demo's own hint (a path that ends in `/`).
#[test]
fn a_school_probing_other_organisations_learns_nothing() {
    let g = Gateway::start();
    let f = g.file("x.txt", b"x");
    for target in ["school-b", "prov-a", "no-such-school"] {
        for dest in [
            format!("/outbox/{target}/coordinator/"),
            format!("/outbox/{target}/dsl/x.txt"),
        ] {
            let r = g.sftp("school-a-user", &format!("put {} {dest}\n", f.display()));
            assert!(!r.ok, "{dest}");
            assert!(r.all().contains("Permission denied"), "{dest}: {}", r.all());
        }
    }
    let denials = g.sql("SELECT detail FROM audit WHERE action = 'transfer denied' ORDER BY seq");
    let said: std::collections::BTreeSet<String> = denials
        .lines()
        .map(|l| {
            let message = l.split_once(": ").map_or(l, |(_, m)| m);
            message.to_string()
        })
        .collect();
    assert_eq!(said.len(), 1, "the refusals differ: {denials}");
    assert_eq!(denials.lines().count(), 6, "{denials}");
}

/// A recall stops a download under way, and a recalled file is never recorded as downloaded.
#[test]
fn a_recall_stops_a_download_under_way() {
    let g = Gateway::start();
    let data = common::noise(3_000_000, 7);
    let f = g.file("big.bin", &data);
    g.sftp_ok(
        "cap-user",
        &format!("put {} /outbox/school-a/coordinator/\n", f.display()),
    );
    let dest = g.path("got.bin");
    let started = Instant::now();
    // 2,000 kbit/s: twelve seconds for the whole file.
    let mut download = g.spawn_script(
        "school-a-user",
        &["-l", "2000"],
        &format!("get /inbox/big.bin {}\n", dest.display()),
    );
    std::thread::sleep(Duration::from_secs(2));
    g.sftp_ok("cap-user", "rm /outbox/school-a/coordinator/big.bin\n");
    let status = loop {
        if let Some(status) = download.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the download went on after the recall"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the download must fail");
    assert_eq!(
        g.sql("SELECT COUNT(*) FROM deliveries WHERE downloaded_at IS NOT NULL")
            .trim(),
        "0"
    );
    assert!(
        !g.sftp_ok("school-a-user", "ls -1 /inbox\n")
            .contains("big.bin")
    );
}

/// 1,500 out-of-order one-byte WRITEs each padded with 260 KB after its data, then 1,500
/// plain ones, pipelined on one session: the padded ones are refused as malformed (their
/// packets are not kept), the plain ones are held as the bytes they are, and the server's RSS
/// stays bounded (it grew by some 380 MiB when each held write kept its whole packet).
#[test]
fn padded_out_of_order_writes_hold_no_memory() {
    let g = Gateway::start();
    let pid = g.server_pid().unwrap().to_string();
    let text = hostile_client(&g, "padded_writes.py", &[&pid, "1500"]);
    let phases: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let rss = |i: usize| -> i64 { phases[i][2].parse().unwrap() };
    assert_eq!(
        phases[1][1], "5:1500",
        "padded writes are BAD_MESSAGE: {text}"
    );
    assert_eq!(
        phases[2][1], "0:1500",
        "plain out-of-order writes are held: {text}"
    );
    assert!(
        rss(2) - rss(0) < 64 * 1024,
        "the server grew by {} KiB: {text}",
        rss(2) - rss(0)
    );
    // Alive, and serving a new session.
    let r = g.sftp("school-b-user", "ls /\n");
    assert!(r.ok, "{}", r.all());
}

/// Folders made in an outbox are held by the session until files go in: their number is
/// bounded by limits.folders_per_session.
#[test]
fn folders_made_in_a_session_are_bounded() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 200, ban_after_failures: 50, folders_per_session: 20 }",
    );
    let mut batch = String::new();
    for i in 0..25 {
        batch.push_str(&format!("-mkdir /outbox/coordinator/d{i}\n"));
    }
    batch.push_str("ls -1 /outbox/coordinator\n");
    let out = g.sftp_ok("school-a-user", &batch);
    let made = out
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| {
            n.strip_prefix('d')
                .is_some_and(|i| i.parse::<u32>().is_ok())
        })
        .count();
    assert_eq!(made, 20, "{out}");
}

/// 20,000 tiny requests pipelined and never read: past limits.queued_requests_per_session the
/// session is ended, the server stays small and goes on serving.
#[test]
fn requests_that_are_never_read_end_the_session() {
    let g = Gateway::start();
    let pid = g.server_pid().unwrap().to_string();
    let text = hostile_client(&g, "flood_requests.py", &[&pid, "20000"]);
    let (state, rss) = text.trim().split_once(' ').unwrap();
    assert_eq!(state, "closed", "{text}");
    assert!(rss.parse::<i64>().unwrap() < 128 * 1024, "{text}");
    assert!(
        g.log().contains("client sent requests faster than allowed"),
        "{}",
        g.log()
    );
    let r = g.sftp("school-b-user", "ls /\n");
    assert!(r.ok, "{}", r.all());
}

/// Files one user uploads at once are bounded (limits.uploads_per_user), and together they hold
/// no more than the organisation's quota left (each was given the whole of it).
#[test]
fn uploads_in_flight_are_bounded_and_share_the_quota() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 200, ban_after_failures: 50, uploads_per_user: 4, \
         quota_per_org: 1MiB, max_file_size: 1MiB }",
    );
    let run = |count: &str, bytes: &str| hostile_client(&g, "many_uploads.py", &[count, bytes]);
    // Six files opened at once: four are taken, two refused.
    let text = run("6", "1000");
    assert!(text.contains("opened 4 refused 2"), "{text}");
    assert!(text.contains("written 4 failed 0"), "{text}");
    // Three files of 400 KB against a quota of 1 MiB: the third does not fit beside the two.
    let text = run("3", "400000");
    assert!(text.contains("opened 3 refused 0"), "{text}");
    assert!(text.contains("written 2 failed 1"), "{text}");
}

/// Thirty uploads and thirty downloads open at once on one session, each under way: the
/// gateway's threads do not grow with them (one pool encrypts and decrypts for every transfer;
/// it was two threads per upload and one per download).
#[test]
fn open_transfers_do_not_add_threads() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 200, ban_after_failures: 50, uploads_per_user: 64, \
         handles_per_session: 64 }",
    );
    let notice = g.file("notice.pdf", &common::noise(2_000_000, 3));
    g.sftp_ok(
        "cap-user",
        &format!(
            "put {} /outbox/school-a/coordinator/notice.pdf\n",
            notice.display()
        ),
    );
    let pid = g.server_pid().expect("running").to_string();
    let text = hostile_client(
        &g,
        "many_uploads.py",
        &["30", "100000", &pid, "/inbox/notice.pdf"],
    );
    assert!(text.contains("opened 30 refused 0"), "{text}");
    assert!(text.contains("written 30 failed 0"), "{text}");
    assert!(text.contains("reading 30"), "{text}");
    let threads: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("threads "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a thread count");
    assert!(threads < 40, "{threads} threads with 60 transfers open");
}

/// A failed password for a user that exists and for one that does not: the same answer, in the
/// same time (medians of alternating attempts within 10 %), so that logins cannot be used to
/// find user names.
#[test]
fn unknown_and_known_users_get_the_same_answer_in_the_same_time() {
    let g = Gateway::start_with("limits: { connections_per_second: 200, ban_after_failures: 500 }");
    g.add_password_user("pw-user", "school-a", "correct horse battery staple");
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/clients/auth_timing.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([&g.port.to_string(), "pw-user", "nobody-at-all", "9"])
        .output()
        .expect("python3 with paramiko (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("auth_timing.py: {text}");
    let (times, answers) = text
        .trim()
        .split_once(' ')
        .map(|(a, rest)| {
            let (b, answers) = rest.split_once(' ').unwrap();
            (
                (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap()),
                answers.to_string(),
            )
        })
        .unwrap();
    let (known, unknown) = answers.split_once(" | ").unwrap();
    assert_eq!(known, unknown, "the answers differ");
    let (a, b) = times;
    assert!(
        (a - b).abs() <= 0.10 * a.max(b),
        "known {a} ms, unknown {b} ms"
    );
}

/// A memory figure of the gateway process from /proc (`VmRSS`, `VmHWM`), in KiB.
fn server_memory_kib(g: &Gateway, field: &str) -> i64 {
    let pid = g.server_pid().expect("a running gateway");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The resident memory of the gateway process, in KiB.
fn server_rss_kib(g: &Gateway) -> i64 {
    server_memory_kib(g, "VmRSS")
}

/// Twenty-eight malformed or hostile SFTP packets, each on a session of its own, then one
/// request before INIT and 5,000 opens on one session: each gets a status or ends its session
/// (never a crash), a fresh session and the real `sftp` work afterwards, and the server's
/// memory stays bounded.
#[test]
fn malformed_sftp_packets_get_a_status_or_end_the_session() {
    let g = Gateway::start();
    let notice = g.file("notice.pdf", &common::noise(100_000, 5));
    g.sftp_ok(
        "cap-user",
        &format!(
            "put {} /outbox/school-a/coordinator/notice.pdf\n",
            notice.display()
        ),
    );
    let before = server_rss_kib(&g);
    let out = hostile_client(
        &g,
        "malformed_packets.py",
        &["/inbox/notice.pdf", "/outbox/coordinator"],
    );
    let said = |case: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{case}: ")))
            .unwrap_or_else(|| panic!("no line for {case} in {out}"))
            .to_string()
    };
    // A bad length cannot be framed: the session ends.
    for case in [
        "length 0",
        "length 2^32-1",
        "length 1 GiB announced",
        "length over 256 KiB",
        "request before INIT",
    ] {
        assert_eq!(said(case), "closed", "{case}");
    }
    // A packet that frames but does not parse: SSH_FX_BAD_MESSAGE, and the session goes on.
    for case in [
        "type byte only",
        "id cut short",
        "string longer than its packet",
        "string length 2^32-1",
        "attrs with 2^32-1 extensions",
        "trailing bytes after a CLOSE",
        "rename without its second path",
        "write data longer than its packet",
    ] {
        assert_eq!(said(case), "status 5", "{case}");
    }
    // The rest are well formed but wrong: a status, never data.
    for case in [
        "INIT twice",
        "VERSION from the client",
        "unknown type 0",
        "unknown type 255",
        "unknown extension",
        "realpath of 64 KiB",
        "open with every flag",
        "close of a never-issued handle",
        "read with a 200 KB handle",
        "read at offset 2^64-1",
        "write at offset 2^64-100",
        "read on a closed handle",
        "readdir on a file handle",
        "read on a folder handle",
        "write on a read handle",
    ] {
        assert!(said(case).starts_with("status "), "{case}: {}", said(case));
    }
    assert_eq!(said("read at offset 2^64-1"), "status 1", "end of file");
    assert_eq!(
        said("read of 2^32-1 bytes"),
        "data",
        "a read is capped, not refused"
    );
    let opens = said("5000 opens");
    assert!(
        opens.contains("handle x64") && opens.contains("status 4 x4936"),
        "limits.handles_per_session: {opens}"
    );
    assert_eq!(said("fresh"), "ok");
    g.sftp_ok("school-a-user", "ls /inbox\n");
    let grown = server_rss_kib(&g) - before;
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    eprintln!("RSS grew by {grown} KiB over the malformed packets");
}

/// The peak resident memory of the gateway process, in KiB.
fn server_peak_rss_kib(g: &Gateway) -> i64 {
    server_memory_kib(g, "VmHWM")
}

/// 24 wrong passwords at once, each on a connection of its own: argon2 (19 MiB a check) runs
/// on one thread per core behind a semaphore, each thread reusing its memory, so the gateway's
/// peak memory grows by a few checks, not by all of them (these 24 logins grew it by 330 MiB
/// with the checks on the blocking pool, and by 16 MiB a login on two threads that allocated
/// fresh memory for each check), and every attempt is still answered.
#[test]
fn a_password_flood_runs_a_few_argon2_checks_at_a_time() {
    let g = Gateway::start_with(
        "limits: { connections_per_second: 500, ban_after_failures: 500, max_startups: 100, \
         max_startups_per_address: 100 }",
    );
    g.add_password_user("pw-user", "school-a", "correct horse battery staple");
    // One check first, so the allocator has taken its first argon2 block before the baseline.
    assert!(!password_login_with(&g, "pw-user", "wrong", &[]).0);
    let before = server_peak_rss_kib(&g);
    let gw = &g;
    std::thread::scope(|s| {
        let logins: Vec<_> = (0..24)
            .map(|i| {
                s.spawn(move || password_login_with(gw, "pw-user", &format!("wrong-{i}"), &[]))
            })
            .collect();
        for l in logins {
            let (ok, out, _) = l.join().expect("login thread");
            assert!(!ok, "{out}");
            assert!(out.contains("Permission denied"), "answered: {out}");
        }
    });
    let grown = server_peak_rss_kib(&g) - before;
    eprintln!("peak RSS grew by {grown} KiB during 24 password checks at once");
    assert!(grown < 150 * 1024, "peak RSS grew by {grown} KiB");
    assert!(password_login_with(&g, "pw-user", "correct horse battery staple", &[]).0);
}
