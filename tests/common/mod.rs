//! A real gateway for integration tests: `apgate serve` on 127.0.0.1 on a free port, seeded
//! with the real CLI, driven with the real OpenSSH `sftp` and `scp`.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_apgate");

/// The `apgate` binary as the tests run it: the suite's own variables (`APGATE_TEST_*`) are not
/// passed on, since every other `APGATE_*` variable would be read as a config key.
pub fn apgate() -> Command {
    let mut c = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("APGATE_TEST_") {
            c.env_remove(name);
        }
    }
    c
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
    child: Option<Child>,
    extra_config: String,
    /// The port `sftp` and `scp` connect to: this gateway's, or another node's ([`Gateway::talk_to`]).
    client_port: std::sync::atomic::AtomicU16,
    /// The PostgreSQL database of this gateway (created for it, dropped with it), if any.
    pub postgres: Option<PgDatabase>,
    /// Environment variables `serve` is started with.
    pub env: Vec<(String, String)>,
}

/// A second `apgate serve` sharing a gateway's config, database, store and keys.
pub struct Node {
    pub port: u16,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

thread_local! {
    static ON_POSTGRES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a test body with the gateways it starts on PostgreSQL (`APGATE_TEST_DATABASE_URL`, a
/// URL to a database where the test may create and drop databases). Without the variable the
/// body is skipped, unless `APGATE_TEST_REQUIRE_POSTGRES=1` (CI), which makes that a failure.
pub fn on_postgres(body: impl FnOnce()) {
    if std::env::var("APGATE_TEST_DATABASE_URL").is_err() {
        assert!(
            std::env::var("APGATE_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "APGATE_TEST_REQUIRE_POSTGRES=1 but APGATE_TEST_DATABASE_URL is not set"
        );
        eprintln!("skipped: APGATE_TEST_DATABASE_URL is not set");
        return;
    }
    ON_POSTGRES.with(|p| p.set(true));
    body();
    ON_POSTGRES.with(|p| p.set(false));
}

/// A small tmpfs mounted over a folder, so that a test can fill the disk. Mounting needs root;
/// where it is refused the test is skipped, unless `APGATE_TEST_REQUIRE_TMPFS=1` (CI), which
/// makes that a failure. Unmounted when dropped.
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                std::env::var("APGATE_TEST_REQUIRE_TMPFS").as_deref() != Ok("1"),
                "APGATE_TEST_REQUIRE_TMPFS=1 but a tmpfs cannot be mounted: {why}"
            );
            eprintln!("skipped: cannot mount a tmpfs: {why}");
            return None;
        }
        Some(SmallDisk {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Declares each test twice: `name::sqlite` and `name::postgres` (see [`on_postgres`]).
#[macro_export]
macro_rules! on_both_backends {
    ($( $(#[$meta:meta])* fn $name:ident() $body:block )*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[test]
                fn sqlite() $body
                #[test]
                fn postgres() {
                    common::on_postgres(|| $body)
                }
            }
        )*
    };
}

/// A database created on the test PostgreSQL server for one gateway.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let admin_url =
            std::env::var("APGATE_TEST_DATABASE_URL").expect("APGATE_TEST_DATABASE_URL");
        let name = format!("apgate_t_{}", rand_suffix().replace('-', "_"));
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        // The same server and user, the new database.
        let (server, port, rest) = split_pg_url(&admin_url);
        let query = rest
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        PgDatabase {
            url: format!("{server}:{port}/{name}{query}"),
            admin_url,
            name,
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        split_pg_url(&self.url).1
    }

    /// This database's URL through another local port (a relay in front of the server).
    pub fn url_through(&self, port: u16) -> String {
        let (server, _, rest) = split_pg_url(&self.url);
        format!("{server}:{port}{rest}")
    }
}

/// A `postgres://` URL as (scheme, user and host; port, 5432 when not given; the path on).
fn split_pg_url(url: &str) -> (String, u16, String) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..host_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let (host, port) = match authority[host_start..].rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(5432)),
        None => (&authority[host_start..], 5432),
    };
    (
        format!("{}{}{host}", &url[..scheme_end], &authority[..host_start]),
        port,
        rest[host_end..].to_string(),
    )
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-q", "-X", &self.admin_url, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Runs SQL with the real `psql`; rows as `a|b`, NULL as empty (like `sqlite3`).
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-At",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Gateway {
    /// A gateway with the hub `cap`, schools `school-a` and `school-b`, providers `prov-a` and
    /// `prov-b`, and one user with both roles per organisation (`<slug>-user`).
    pub fn start() -> Gateway {
        Self::start_with("")
    }

    /// As [`Gateway::start`], with extra YAML appended to the config.
    pub fn start_with(extra_config: &str) -> Gateway {
        Self::configured(extra_config).seeded()
    }

    /// Initialises a configured gateway with the organisations and users of
    /// [`Gateway::start`], and starts it.
    pub fn seeded(self) -> Gateway {
        let g = self;
        g.cli_ok(&["init"]);
        for (slug, kind) in [
            ("cap", "hub"),
            ("school-a", "school"),
            ("school-b", "school"),
            ("prov-a", "provider"),
            ("prov-b", "provider"),
        ] {
            g.cli_ok(&[
                "org",
                "add",
                "--kind",
                kind,
                "--slug",
                slug,
                "--name",
                &format!("Org {slug}"),
                "--coordinator-email",
                &format!("coord@{slug}.example.org"),
                "--dsl-email",
                &format!("dsl@{slug}.example.org"),
            ]);
            g.add_user(&format!("{slug}-user"), slug, &["coordinator", "dsl"]);
        }
        g.spawn()
    }

    /// Only the config: nothing seeded, nothing running.
    pub fn configured(extra_config: &str) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("apgate-test-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let config = dir.path().join("apgate.yaml");
        std::fs::create_dir_all(dir.path().join("clients")).expect("clients dir");
        // Tests connect often from one address: relax throttling unless a test sets limits.
        let limits = if extra_config.contains("limits:") {
            ""
        } else {
            "limits: { connections_per_second: 200, ban_after_failures: 50 }\n"
        };
        let postgres = (ON_POSTGRES.with(|p| p.get()) && !extra_config.contains("database:"))
            .then(PgDatabase::create);
        let database = match &postgres {
            Some(pg) => format!("database: {{ url: \"{}\" }}\n", pg.url),
            None => String::new(),
        };
        let yaml = format!(
            "listen: 127.0.0.1:{port}\ndata_dir: ./data\nkeys_dir: ./keys\n{database}{limits}{extra_config}\n"
        );
        std::fs::write(&config, yaml).expect("write config");
        Gateway {
            dir,
            port,
            config,
            child: None,
            extra_config: extra_config.to_string(),
            client_port: std::sync::atomic::AtomicU16::new(port),
            postgres,
            env: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts another node: the same config but its own port, logging to `serve-<port>.log`.
    pub fn start_node(&self) -> Node {
        let port = free_port();
        let text = std::fs::read_to_string(&self.config)
            .expect("config")
            .replace(
                &format!("listen: 127.0.0.1:{}", self.port),
                &format!("listen: 127.0.0.1:{port}"),
            );
        let config = self.path(&format!("node-{port}.yaml"));
        std::fs::write(&config, text).expect("node config");
        let log = std::fs::File::create(self.path(&format!("serve-{port}.log"))).expect("log");
        let child = apgate()
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("RUST_LOG", "info,apgate=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start apgate serve");
        wait_until("the second node", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Node { port, child }
    }

    fn client_port(&self) -> u16 {
        self.client_port.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Points the `sftp` and `scp` helpers at another node's port.
    pub fn talk_to(&self, port: u16) {
        self.client_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn spawn(mut self) -> Gateway {
        self.start_server();
        self
    }

    pub fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("serve.log"))
            .expect("log file");
        let child = apgate()
            .args([
                "--config",
                self.config.to_str().unwrap_or_default(),
                "serve",
            ])
            .env("RUST_LOG", "info,apgate=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start apgate serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("apgate serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "apgate serve did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of the running `serve` (to signal it).
    pub fn server_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_stdin(args, "")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Run {
        use std::io::Write;
        let mut child = apgate()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run apgate");
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(stdin.as_bytes());
        }
        Run::from(child.wait_with_output().expect("apgate output"))
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let r = self.cli(args);
        assert!(r.ok, "apgate {args:?} failed:\n{}", r.all());
        r.stdout
    }

    /// Creates a key pair with `ssh-keygen` and a user with it.
    pub fn add_user(&self, username: &str, org: &str, roles: &[&str]) {
        let key = self.key_path(username);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", username, "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen");
        assert!(st.success());
        let pubkey = format!("{}.pub", key.display());
        let mut args = vec!["user", "add", "--org", org, "--username", username];
        for r in roles {
            args.extend(["--role", r]);
        }
        args.extend(["--key-file", &pubkey]);
        self.cli_ok(&args);
    }

    /// A coordinator of `org` who logs in with a password only.
    pub fn add_password_user(&self, username: &str, org: &str, password: &str) {
        let r = self.cli_stdin(
            &[
                "user",
                "add",
                "--org",
                org,
                "--username",
                username,
                "--role",
                "coordinator",
                "--password-stdin",
            ],
            &format!("{password}\n"),
        );
        assert!(r.ok, "{}", r.all());
    }

    pub fn key_path(&self, username: &str) -> PathBuf {
        self.path("clients").join(username)
    }

    /// The client options every test connection uses (batch mode, this gateway's known_hosts).
    pub fn ssh_options(&self) -> Vec<String> {
        [
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-o".to_string(),
            format!("UserKnownHostsFile={}", self.path("known_hosts").display()),
        ])
        .collect()
    }

    pub fn sftp_command(&self, user: &str, extra: &[&str]) -> Command {
        self.sftp_command_to(self.client_port(), user, extra)
    }

    /// `sftp` to a given node's port.
    pub fn sftp_command_to(&self, port: u16, user: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("sftp");
        c.args(self.ssh_options())
            .arg("-P")
            .arg(port.to_string())
            .arg("-i")
            .arg(self.key_path(user))
            .args(extra)
            .arg(format!("{user}@127.0.0.1"));
        c
    }

    /// Runs an `sftp -b` batch as `user`. A line starting with `-` may fail without ending it.
    pub fn sftp(&self, user: &str, batch: &str) -> Run {
        self.sftp_with(user, batch, &[])
    }

    pub fn sftp_with(&self, user: &str, batch: &str, extra: &[&str]) -> Run {
        self.sftp_to(self.client_port(), user, batch, extra)
    }

    /// An `sftp -b` batch through a given node's port.
    pub fn sftp_to(&self, port: u16, user: &str, batch: &str, extra: &[&str]) -> Run {
        let file = self.path(&format!("batch-{}", rand_suffix()));
        std::fs::write(&file, batch).expect("batch file");
        let file = file.display().to_string();
        let mut args = vec!["-b", file.as_str()];
        args.extend_from_slice(extra);
        let out = self
            .sftp_command_to(port, user, &args)
            .output()
            .expect("run sftp");
        Run::from(out)
    }

    /// Starts `sftp -b -` with `extra` options running `script` in the background (its stdin
    /// closed after the script, its output discarded), for tests that watch or stop it midway.
    pub fn spawn_script(&self, user: &str, extra: &[&str], script: &str) -> Child {
        use std::io::Write;
        let mut args = extra.to_vec();
        args.extend(["-b", "-"]);
        let mut child = self
            .sftp_command(user, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sftp");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .expect("write the sftp script");
        }
        child
    }

    /// Holds an sftp session open (it has run `pwd`); commands can be written to its stdin.
    pub fn open_session(&self, user: &str, extra: &[&str]) -> Child {
        use std::io::Write;
        let mut child = self
            .sftp_command(user, extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sftp");
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(b"pwd\n");
        }
        child
    }

    pub fn sftp_ok(&self, user: &str, batch: &str) -> String {
        let r = self.sftp(user, batch);
        assert!(r.ok, "sftp as {user} failed:\n{batch}\n---\n{}", r.all());
        r.stdout
    }

    pub fn scp(&self, user: &str, args: &[&str]) -> Run {
        let out = Command::new("scp")
            .args(self.ssh_options())
            .arg("-P")
            .arg(self.client_port().to_string())
            .arg("-i")
            .arg(self.key_path(user))
            .args(args)
            .output()
            .expect("run scp");
        Run::from(out)
    }

    /// A local file with the given content, for uploads.
    pub fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path("files").join(name);
        std::fs::create_dir_all(p.parent().unwrap_or(Path::new("."))).expect("files dir");
        std::fs::write(&p, content).expect("write file");
        p
    }

    /// Every stored blob.
    pub fn stored_blobs(&self) -> Vec<PathBuf> {
        walk(&self.path("data/store"))
    }

    /// Runs SQL on the gateway's database (`sqlite3` or `psql`); rows as `a|b`.
    /// The database's URL as the gateway's config names it.
    pub fn database_url(&self) -> String {
        match &self.postgres {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", self.path("data/apgate.db").display()),
        }
    }

    pub fn sql(&self, sql: &str) -> String {
        if let Some(pg) = &self.postgres {
            return psql(&pg.url, sql);
        }
        // The gateway may hold the write lock for a moment: wait for it as the gateway does.
        let out = Command::new("sqlite3")
            .args(["-cmd", ".timeout 30000"])
            .arg(self.path("data/apgate.db"))
            .arg(sql)
            .output()
            .expect("sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // The server first: the database is dropped after it (field order).
        self.stop_server();
    }
}

impl Gateway {
    /// Puts `upns` on `school`'s roll (a roster through `apgate ingest`), with the names
    /// `Surname<n>` and `Forename<n>`.
    pub fn enrol(&self, school: &str, upns: &[&str]) {
        let mut roster = String::from("upn,surname,forename,date_of_birth,gender,year_group\n");
        for (i, u) in upns.iter().enumerate() {
            roster.push_str(&format!("{u},Surname{i},Forename{i},2011-03-14,F,10\n"));
        }
        let f = self.file(&format!("roster-{}.csv", rand_suffix()), roster.as_bytes());
        let out = self.cli_ok(&[
            "ingest",
            f.to_str().unwrap(),
            "--org",
            school,
            "--kind",
            "roster",
        ]);
        assert!(out.contains(&format!("{} accepted", upns.len())), "{out}");
    }

    /// Places each of `upns` with `provider` on `course` from 2020-01-01, open (a placements
    /// file from the hub through `apgate ingest`).
    pub fn place(&self, provider: &str, course: &str, upns: &[&str]) {
        let mut text = String::from("upn,provider,course,start_date\n");
        for u in upns {
            text.push_str(&format!("{u},{provider},{course},2020-01-01\n"));
        }
        self.ingest_placements(&text, upns.len());
    }

    /// Ingests a placements CSV as the hub and checks that `accepted` rows were.
    pub fn ingest_placements(&self, text: &str, accepted: usize) -> String {
        let f = self.file(
            &format!("placements-{}.csv", rand_suffix()),
            text.as_bytes(),
        );
        let out = self.cli_ok(&[
            "ingest",
            f.to_str().unwrap(),
            "--org",
            "cap",
            "--kind",
            "placements",
        ]);
        assert!(out.contains(&format!("{accepted} accepted")), "{out}");
        out
    }
}

/// A valid UPN for a number: the check letter is found by trying each.
/// Runs a Python client of `tests/clients/` (paramiko) as `user` against `g` with `args` after
/// the port, user and key file; returns what it printed (it must succeed).
pub fn python_client(g: &Gateway, user: &str, script: &str, args: &[&str]) -> String {
    let key = g.key_path(user);
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/clients/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([&g.port.to_string(), user, key.to_str().expect("key path")])
        .args(args)
        .output()
        .expect("python3 with paramiko (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{script}: {text}");
    text
}

/// The standard EICAR anti-virus test file, put together here so that no file of the
/// repository is one.
pub fn eicar() -> Vec<u8> {
    let (a, b) = (
        r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR",
        "-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    );
    [a.as_bytes(), b.as_bytes()].concat()
}

/// A real clamd (Debian's clamav-daemon) of the test's own: its database is one body signature
/// for the EICAR file (clamd cannot download signatures here), its socket and its
/// `TemporaryDirectory` in a folder on a tmpfs (`/dev/shm`), as SPEC §7 asks of an operator.
pub struct Clamd {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Clamd {
    pub fn start() -> Clamd {
        Self::start_with("")
    }

    /// With more lines of clamd.conf (`StreamMaxLength 1M`, say).
    pub fn start_with(extra_conf: &str) -> Clamd {
        let dir = tempfile::Builder::new()
            .prefix("apgate-clamd-")
            .tempdir_in("/dev/shm")
            .expect("a temp folder on the /dev/shm tmpfs");
        let db = dir.path().join("db");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&db).expect("clamd db folder");
        std::fs::create_dir_all(&tmp).expect("clamd temp folder");
        std::fs::write(
            db.join("apgate-test.ndb"),
            format!("Eicar-Test-Signature:0:*:{}\n", hex(&eicar())),
        )
        .expect("test signature");
        let socket = dir.path().join("clamd.sock");
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nDatabaseDirectory {}\nTemporaryDirectory {}\nForeground yes\n\
                 LogFile {}\nBytecode no\n{}{extra_conf}\n",
                socket.display(),
                db.display(),
                tmp.display(),
                dir.path().join("clamd.log").display(),
                if extra_conf.contains("StreamMaxLength") {
                    ""
                } else {
                    "StreamMaxLength 64M\n"
                }
            ),
        )
        .expect("clamd.conf");
        let mut c = Clamd {
            dir,
            conf,
            socket,
            child: None,
        };
        c.up();
        c
    }

    /// Starts (again) with the same config and socket.
    pub fn up(&mut self) {
        let bin = ["/usr/sbin/clamd", "/usr/bin/clamd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("clamd (Debian's clamav-daemon; .ci/run installs it)");
        let child = Command::new(bin)
            .arg(format!("--config-file={}", self.conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd");
        self.child = Some(child);
        wait_until("clamd to answer PING", Duration::from_secs(60), || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
                return false;
            };
            let mut answer = [0u8; 5];
            s.write_all(b"zPING\0").is_ok()
                && s.read_exact(&mut answer).is_ok()
                && &answer == b"PONG\0"
        });
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `scan:` config section for a gateway using this clamd.
    pub fn config(&self, on_error: &str) -> String {
        format!(
            "scan: {{ clamd: \"unix:{}\", on_error: {on_error}, clamd_config: \"{}\", timeout_s: 20 }}\n",
            self.socket.display(),
            self.conf.display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.down();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn upn(n: u32) -> String {
    let body = format!("801200{n:06}");
    "ABCDEFGHJKLMNPQRTUVWXYZ"
        .chars()
        .map(|c| format!("{c}{body}"))
        .find(|u| apgate::domain::identifiers::check_upn(u).is_ok())
        .expect("one check letter fits")
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deterministic pseudo-random bytes (content that compresses badly and is easy to compare).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn askpass(g: &Gateway, password: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = g.path(&format!("askpass-{}", rand_suffix()));
    std::fs::write(&p, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    p
}

/// Logs in with a password through OpenSSH's askpass; returns (success, output, seconds).
pub fn password_login(g: &Gateway, user: &str, password: &str) -> (bool, String, f64) {
    password_login_with(g, user, password, &[])
}

/// As [`password_login`], with more `sftp` arguments (`-o BindAddress=127.0.0.2`, or
/// `-o NumberOfPasswordPrompts=6`: OpenSSH takes the first value of an option, and these come
/// before the defaults).
pub fn password_login_with(
    g: &Gateway,
    user: &str,
    password: &str,
    extra: &[&str],
) -> (bool, String, f64) {
    let batch = g.path("pw-batch");
    std::fs::write(&batch, "ls /\n").unwrap();
    let start = Instant::now();
    let out = Command::new("sftp")
        .args(extra)
        .args([
            "-o",
            "BatchMode=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            g.path("known_hosts").display()
        ))
        .arg("-P")
        .arg(g.client_port().to_string())
        .arg("-b")
        .arg(&batch)
        .arg(format!("{user}@127.0.0.1"))
        .env("SSH_ASKPASS", askpass(g, password))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, start.elapsed().as_secs_f64())
}

/// A real SMTP server on 127.0.0.1 (Python's aiosmtpd) that stores what it receives in a maildir.
/// `GET /metrics` over a real socket.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

/// The value of one series (`name{labels}`), or None when absent.
pub fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `mail:` config section for a gateway sending to a test SMTP server on `port`; `extra`
/// is more keys, each after a comma.
pub fn smtp_config(port: u16, extra: &str) -> String {
    format!(
        "mail: {{ transport: smtp, smtp: {{ host: 127.0.0.1, port: {port}, tls: none }}, \
         group_seconds: 2, retry_seconds: 1{extra} }}\n"
    )
}

pub struct SmtpServer {
    pub port: u16,
    maildir: tempfile::TempDir,
    child: Option<Child>,
    /// python3's arguments before the maildir, and after it.
    argv: Vec<String>,
    after: Vec<String>,
}

/// One received message, decoded by Python's `email` package.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub priority: String,
    pub body: String,
    /// The whole message as received (headers and encoded body).
    pub raw: String,
}

/// aiosmtpd with a login required (PLAIN or LOGIN) after STARTTLS: argv is port, maildir, user,
/// password, certificate, key.
const SMTP_WITH_LOGIN: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
port, box, user, password, cert, key = sys.argv[1:7]
def check(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
    return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
Controller(Mailbox(box), hostname="127.0.0.1", port=int(port), authenticator=check,
           auth_required=True, tls_context=tls, require_starttls=True).start()
while True:
    time.sleep(3600)
"#;

impl SmtpServer {
    pub fn start(port: u16) -> SmtpServer {
        Self::start_with(port, &[])
    }

    /// With more `aiosmtpd` options (`--tlscert`/`--tlskey` for STARTTLS, `--smtpscert`/
    /// `--smtpskey` for implicit TLS).
    pub fn start_with(port: u16, args: &[&str]) -> SmtpServer {
        let mut argv: Vec<String> = ["-m", "aiosmtpd", "-n", "-l"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        argv.push(format!("127.0.0.1:{port}"));
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.extend(["-c".to_string(), "aiosmtpd.handlers.Mailbox".to_string()]);
        Self::launch(port, argv, &[])
    }

    /// A server that takes mail only after STARTTLS and a login as `user` with `password`.
    pub fn start_with_login(
        port: u16,
        user: &str,
        password: &str,
        cert: &Path,
        key: &Path,
    ) -> SmtpServer {
        let argv = vec![
            "-c".to_string(),
            SMTP_WITH_LOGIN.to_string(),
            port.to_string(),
        ];
        let after = [
            user.to_string(),
            password.to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ];
        Self::launch(port, argv, &after)
    }

    /// `python3 ARGV… MAILDIR AFTER…`
    fn launch(port: u16, argv: Vec<String>, after: &[String]) -> SmtpServer {
        let maildir = tempfile::Builder::new()
            .prefix("apgate-smtp-")
            .tempdir()
            .expect("maildir");
        let mut s = SmtpServer {
            port,
            maildir,
            child: None,
            argv,
            after: after.to_vec(),
        };
        s.up();
        s
    }

    /// Starts (again) on the same port, keeping what was received.
    pub fn up(&mut self) {
        let child = Command::new("python3")
            .args(&self.argv)
            .arg(self.maildir.path().join("box"))
            .args(&self.after)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        self.child = Some(child);
        wait_until("the SMTP server", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn messages(&self) -> Vec<Mail> {
        const READ: &str = r#"
import json, mailbox, sys
out = []
for m in mailbox.Maildir(sys.argv[1], create=True):
    body = m.get_payload(decode=True).decode("utf-8")
    unfold = lambda h: " ".join(str(h or "").split())
    out.append({"to": unfold(m["To"]), "subject": unfold(m["Subject"]),
                "priority": m["X-Priority"] or "", "body": body, "raw": m.as_string()})
print(json.dumps(out))
"#;
        let out = Command::new("python3")
            .args(["-c", READ])
            .arg(self.maildir.path().join("box"))
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("maildir as JSON");
        let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        list.iter()
            .map(|v| Mail {
                to: field(v, "to"),
                subject: field(v, "subject"),
                priority: field(v, "priority"),
                body: field(v, "body"),
                raw: field(v, "raw"),
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// A TCP relay on 127.0.0.1 to another local port that can be cut and restored, to take a
/// server away from the gateway and give it back.
pub struct TcpRelay {
    pub port: u16,
    target: u16,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl TcpRelay {
    pub fn start(target: u16) -> TcpRelay {
        let mut r = TcpRelay {
            port: free_port(),
            target,
            running: Default::default(),
            streams: Default::default(),
        };
        r.up();
        r
    }

    pub fn up(&mut self) {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("relay port");
        self.running.store(true, Ordering::SeqCst);
        let (running, streams, target) = (self.running.clone(), self.streams.clone(), self.target);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let (Ok(c), Ok(mut list)) = (s.try_clone(), streams.lock()) {
                        list.push(c);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    /// Closes every relayed connection and refuses new ones until [`TcpRelay::up`].
    pub fn down(&mut self) {
        use std::sync::atomic::Ordering;
        self.running.store(false, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Ok(mut list) = self.streams.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        wait_until("the relay to close", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.down();
    }
}

/// A private CA and a server certificate it signed for 127.0.0.1, made with the `openssl` CLI:
/// (CA certificate, server certificate, server key).
pub fn private_ca_and_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=apgate test CA",
        "-days",
        "2",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
