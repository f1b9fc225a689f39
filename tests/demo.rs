//! `apgate demo` starts a working gateway and prints sftp commands that work when pasted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a printed command with `-b BATCH` added before its destination.
fn run_printed(command: &str, batch: &std::path::Path) -> std::process::Output {
    let mut words: Vec<String> = command.split_whitespace().map(String::from).collect();
    let dest = words.pop().expect("a destination");
    assert_eq!(words.remove(0), "sftp");
    Command::new("sftp")
        .args(words)
        .args(["-o", "BatchMode=yes", "-b"])
        .arg(batch)
        .arg(dest)
        .output()
        .expect("run sftp")
}

#[test]
fn demo_prints_commands_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = common::apgate()
        .args(["demo", "--port", &port.to_string(), "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);
    let mut commands = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("sftp ") {
            commands.push(line.clone());
        }
        if line.starts_with("Try:") {
            break;
        }
    }
    // Keep reading whatever else the demo prints.
    std::thread::spawn(move || lines.for_each(drop));
    assert_eq!(commands.len(), 3, "{commands:?}");
    common::wait_until(
        "the demo to listen",
        std::time::Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let school = commands
        .iter()
        .find(|c| c.contains("school-user@"))
        .unwrap();
    let hub = commands.iter().find(|c| c.contains("cap-staff@")).unwrap();
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, b"hello hub").unwrap();
    let batch = dir.path().join("b1");
    std::fs::write(
        &batch,
        format!("put {} /outbox/coordinator/\n", file.display()),
    )
    .unwrap();
    let out = run_printed(school, &batch);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&batch, "ls -1 /inbox/demo-school\n").unwrap();
    let out = run_printed(hub, &batch);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello.txt"));

    // The demo learner is placed with the demo provider: the register it leaves in clients/
    // is accepted at once and shows in the provider's training record.
    let provider = commands
        .iter()
        .find(|c| c.contains("provider-user@"))
        .unwrap();
    let register = dir.path().join("demo/clients/register.csv");
    let report = dir.path().join("training-records.csv");
    std::fs::write(
        &batch,
        format!(
            "put {} /registers/\nget /reports/training-records.csv {}\n",
            register.display(),
            report.display()
        ),
    )
    .unwrap();
    let out = run_printed(provider, &batch);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(report).unwrap();
    let row = report
        .lines()
        .find(|l| l.contains("B801200005001"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        row.starts_with(
            "Sam Taylor,B801200005001,demo-school,demo-provider,Motor Vehicle Level 1,"
        ) && row.contains(",active,1,1,1,"),
        "{row}"
    );
}
