//! Typed configuration (SPEC §9): every key declared once with its default; `APGATE_<KEY>`
//! environment overrides (`__` between levels) are derived from the same tree; validation runs at
//! start and names the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use crate::domain::org::validate_slug;
use crate::domain::tree::IngestKind;

pub const DEFAULT_PATH: &str = "config/apgate.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub database: DatabaseConfig,
    pub mail: MailConfig,
    pub retention_days: u32,
    pub escrow_recipients: Vec<String>,
    pub drop_dirs: Vec<DropDir>,
    pub limits: Limits,
    pub banner: String,
    pub ssh: SshConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub bank_holidays: BankHolidays,
    pub scan: crate::scan::ScanConfig,
}

/// One-off changes to the England and Wales bank holidays the rules compute (SPEC §4.4), as
/// `YYYY-MM-DD` dates.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BankHolidays {
    /// Extra days off (a coronation, a state funeral, the day a May holiday moved to).
    pub extra: Vec<String>,
    /// Standing holidays that do not happen this time (the day a May holiday moved from).
    pub cancelled: Vec<String>,
}

impl BankHolidays {
    /// The working-day calendar; dates that do not parse are left out (validation names them).
    pub fn calendar(&self) -> crate::domain::dates::Calendar {
        let dates = |v: &[String]| {
            v.iter()
                .filter_map(|d| crate::domain::dates::parse_date(d).ok())
                .collect()
        };
        crate::domain::dates::Calendar {
            extra: dates(&self.extra),
            cancelled: dates(&self.cancelled),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`GET /metrics`); off when not set. A bare port
    /// means 127.0.0.1.
    #[serde(deserialize_with = "address_or_port")]
    pub listen: Option<SocketAddr>,
}

fn address_or_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Listen {
        Port(u16),
        Address(String),
    }
    match Option::<Listen>::deserialize(d)? {
        None => Ok(None),
        Some(Listen::Port(p)) => Ok(Some(SocketAddr::from(([127, 0, 0, 1], p)))),
        Some(Listen::Address(a)) => a
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{a}` is not HOST:PORT or a port"))),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://FILE` or `postgres://…`; empty means `sqlite://<data_dir>/apgate.db`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    pub transport: MailTransport,
    pub dir: PathBuf,
    pub smtp: SmtpConfig,
    pub from: String,
    /// Minutes (fractions allowed) after which an undownloaded `dsl` transfer is escalated.
    pub dsl_escalate_minutes: f64,
    pub max_attempts: u32,
    /// Seconds during which transfer messages to one recipient and role are gathered into one.
    pub group_seconds: u64,
    /// Seconds before the first retry of a failed message; doubles with each attempt.
    pub retry_seconds: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    File,
    Smtp,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: String,
    pub password: String,
    /// A PEM certificate to trust besides the system's (a relay with a private CA).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &"***")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DropDir {
    pub path: PathBuf,
    pub org: String,
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(deserialize_with = "byte_size")]
    pub max_file_size: u64,
    #[serde(deserialize_with = "byte_size")]
    pub quota_per_org: u64,
    pub sessions_per_user: u32,
    pub idle_timeout_s: u64,
    pub auth_attempts: u32,
    pub ban_after_failures: u32,
    pub ban_seconds: u64,
    /// New connections accepted per second from one address, in a burst too.
    pub connections_per_second: u32,
    /// Open file and folder handles per SFTP session.
    pub handles_per_session: u32,
    /// Connections not yet authenticated, in all; beyond it a new one is closed at once.
    pub max_startups: u32,
    /// Connections not yet authenticated from one address.
    pub max_startups_per_address: u32,
    /// Seconds a connection has to authenticate before it is closed.
    pub login_grace_s: u64,
    /// Empty folders an SFTP session may make in its outboxes (each is held until files go in).
    pub folders_per_session: u32,
    /// Files one user may be uploading at once (over all its sessions in this process).
    pub uploads_per_user: u32,
    /// Requests a session may have sent and not yet had answered; beyond it the session ends.
    pub queued_requests_per_session: u32,
    /// What those requests may hold in memory (their bytes and their bookkeeping).
    #[serde(deserialize_with = "byte_size")]
    pub queued_bytes_per_session: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    pub pq_only: bool,
    pub compat_macs: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            data_dir: PathBuf::from("./data"),
            keys_dir: PathBuf::from("./keys"),
            database: DatabaseConfig::default(),
            mail: MailConfig::default(),
            retention_days: 90,
            escrow_recipients: Vec::new(),
            drop_dirs: Vec::new(),
            limits: Limits::default(),
            banner: "Authorised use only. Terms and conditions apply.".into(),
            ssh: SshConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            bank_holidays: BankHolidays::default(),
            scan: crate::scan::ScanConfig::default(),
        }
    }
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            transport: MailTransport::File,
            dir: PathBuf::from("./data/mail"),
            smtp: SmtpConfig::default(),
            from: "AP Gateway <gateway@example.org>".into(),
            dsl_escalate_minutes: 60.0,
            max_attempts: 8,
            group_seconds: 60,
            retry_seconds: 30,
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: 25,
            tls: SmtpTls::None,
            username: String::new(),
            password: String::new(),
            ca_file: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 2 << 30,
            quota_per_org: 50 << 30,
            sessions_per_user: 8,
            idle_timeout_s: 900,
            auth_attempts: 3,
            ban_after_failures: 10,
            ban_seconds: 900,
            connections_per_second: 10,
            handles_per_session: 64,
            max_startups: 100,
            max_startups_per_address: 20,
            login_grace_s: 60,
            folders_per_session: 1000,
            uploads_per_user: 16,
            queued_requests_per_session: 10_000,
            queued_bytes_per_session: 64 << 20,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Accepts `1048576`, `"512KiB"`, `"2GiB"`, `"10 MB"`.
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_byte_size(&s).map_err(serde::de::Error::custom),
    }
}

pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 2GiB or 500MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

impl Config {
    /// Where the config comes from: `--config`, else `$APGATE_CONFIG`, else the default path.
    pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
        cli.map(Path::to_path_buf)
            .or_else(|| std::env::var_os("APGATE_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads, overrides from the environment, resolves relative paths and validates.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {} (start from config/apgate.example.yaml, or try `apgate demo`)",
                path.display()
            )
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_yaml(&text, &base, std::env::vars())
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn from_yaml(
        text: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut tree: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("YAML: {e}"))?
        };
        if tree.is_null() {
            tree = serde_json::Value::Object(Default::default());
        }
        apply_env_overrides(&mut tree, env)?;
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            anyhow::anyhow!("key `{key}`: {}", e.inner())
        })?;
        config.resolve_relative_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data_dir);
        abs(&mut self.keys_dir);
        abs(&mut self.mail.dir);
        abs(&mut self.scan.clamd_config);
        if let Some(ca) = &mut self.mail.smtp.ca_file {
            abs(ca);
        }
        for d in &mut self.drop_dirs {
            abs(&mut d.path);
        }
        if self.database.url.is_empty() {
            self.database.url = format!("sqlite://{}", self.data_dir.join("apgate.db").display());
        } else if let Some(rest) = self.database.url.strip_prefix("sqlite://") {
            let p = Path::new(rest.split('?').next().unwrap_or(rest));
            if p.is_relative() {
                self.database.url = format!("sqlite://{}", base.join(rest).display());
            }
        }
    }

    /// Every problem, one line each, naming its key.
    fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut problem = |key: &str, why: String| out.push(format!("key `{key}`: {why}"));
        let url = &self.database.url;
        if !(url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            problem(
                "database.url",
                format!("`{url}` must start with sqlite:// or postgres://"),
            );
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_file_size", l.max_file_size),
            ("limits.quota_per_org", l.quota_per_org),
            ("limits.sessions_per_user", u64::from(l.sessions_per_user)),
            ("limits.idle_timeout_s", l.idle_timeout_s),
            ("limits.auth_attempts", u64::from(l.auth_attempts)),
            ("limits.ban_after_failures", u64::from(l.ban_after_failures)),
            (
                "limits.connections_per_second",
                u64::from(l.connections_per_second),
            ),
            (
                "limits.handles_per_session",
                u64::from(l.handles_per_session),
            ),
            ("limits.max_startups", u64::from(l.max_startups)),
            (
                "limits.max_startups_per_address",
                u64::from(l.max_startups_per_address),
            ),
            ("limits.login_grace_s", l.login_grace_s),
            (
                "limits.folders_per_session",
                u64::from(l.folders_per_session),
            ),
            ("limits.uploads_per_user", u64::from(l.uploads_per_user)),
            (
                "limits.queued_requests_per_session",
                u64::from(l.queued_requests_per_session),
            ),
            (
                "limits.queued_bytes_per_session",
                l.queued_bytes_per_session,
            ),
        ] {
            if v == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if l.max_file_size > l.quota_per_org {
            problem(
                "limits.max_file_size",
                "larger than `limits.quota_per_org`".into(),
            );
        }
        if self.retention_days == 0 {
            problem("retention_days", "must be at least 1".into());
        }
        for (i, r) in self.escrow_recipients.iter().enumerate() {
            if let Err(e) = r.parse::<age::x25519::Recipient>() {
                problem(
                    &format!("escrow_recipients[{i}]"),
                    format!("not an age X25519 recipient: {e}"),
                );
            }
        }
        for (key, days) in [
            ("bank_holidays.extra", &self.bank_holidays.extra),
            ("bank_holidays.cancelled", &self.bank_holidays.cancelled),
        ] {
            for (i, day) in days.iter().enumerate() {
                if let Err(e) = crate::domain::dates::parse_date(day) {
                    problem(&format!("{key}[{i}]"), e);
                }
            }
        }
        for (i, d) in self.drop_dirs.iter().enumerate() {
            if let Err(e) = validate_slug(&d.org) {
                problem(&format!("drop_dirs[{i}].org"), e.to_string());
            }
            if IngestKind::parse(&d.kind).is_none() {
                problem(
                    &format!("drop_dirs[{i}].kind"),
                    format!(
                        "`{}` is not one of {}",
                        d.kind,
                        IngestKind::ALL.map(IngestKind::as_str).join(", ")
                    ),
                );
            }
        }
        if let (false, Err(e)) = (
            self.scan.clamd.is_empty(),
            self.scan.clamd.parse::<crate::scan::clamd::Address>(),
        ) {
            problem("scan.clamd", e);
        }
        if self.scan.timeout_s == 0 {
            problem("scan.timeout_s", "must be greater than 0".into());
        }
        if self.banner.len() > 2000 {
            problem("banner", "at most 2000 characters".into());
        }
        if let Err(e) = self.mail.from.parse::<lettre::message::Mailbox>() {
            problem(
                "mail.from",
                format!("`{}` is not an email address ({e})", self.mail.from),
            );
        }
        if !(self.mail.dsl_escalate_minutes.is_finite() && self.mail.dsl_escalate_minutes > 0.0) {
            problem(
                "mail.dsl_escalate_minutes",
                "must be a number of minutes above 0".into(),
            );
        }
        if self.mail.max_attempts == 0 {
            problem("mail.max_attempts", "must be at least 1".into());
        }
        if let Some(ca) = &self.mail.smtp.ca_file
            && !ca.is_file()
        {
            problem(
                "mail.smtp.ca_file",
                format!("{} is not a readable file", ca.display()),
            );
        }
        if self.mail.transport == MailTransport::Smtp && self.mail.smtp.host.is_empty() {
            problem(
                "mail.smtp.host",
                "required when `mail.transport` is smtp".into(),
            );
        }
        out
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }
}

/// `APGATE_LIMITS__MAX_FILE_SIZE=1MiB` sets `limits.max_file_size`. Values are read as YAML
/// scalars, so numbers and booleans keep their type.
fn apply_env_overrides(
    tree: &mut serde_json::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, value) in env {
        let Some(key) = name.strip_prefix("APGATE_") else {
            continue;
        };
        if key == "CONFIG" || key.is_empty() {
            continue;
        }
        let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let parsed: serde_json::Value = serde_saphyr::from_str(&value)
            .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
        let mut node = &mut *tree;
        for (i, part) in path.iter().enumerate() {
            let serde_json::Value::Object(map) = node else {
                bail!(
                    "environment variable {name}: `{}` is not a section",
                    path[..i].join(".")
                );
            };
            if i + 1 == path.len() {
                map.insert(part.clone(), parsed.clone());
                break;
            }
            node = map
                .entry(part.clone())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::from_yaml(
            yaml,
            Path::new("/etc/apgate"),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        )
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen.port(), 2222);
        assert_eq!(c.data_dir, Path::new("/etc/apgate/./data"));
        assert_eq!(c.database.url, "sqlite:///etc/apgate/./data/apgate.db");
        assert_eq!(c.limits.max_file_size, 2 << 30);
    }

    #[test]
    fn env_overrides_keep_types() {
        let c = load(
            "limits: { sessions_per_user: 2 }\n",
            &[
                ("APGATE_DATABASE__URL", "postgres://u@127.0.0.1/db"),
                ("APGATE_LIMITS__MAX_FILE_SIZE", "1MiB"),
                ("APGATE_SSH__PQ_ONLY", "true"),
                ("APGATE_CONFIG", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://u@127.0.0.1/db");
        assert_eq!(c.limits.max_file_size, 1 << 20);
        assert_eq!(c.limits.sessions_per_user, 2);
        assert!(c.ssh.pq_only);
    }

    #[test]
    fn errors_name_the_key() {
        let e = format!(
            "{:#}",
            load("limits: { sessions_per_user: many }\n", &[]).unwrap_err()
        );
        assert!(e.contains("limits.sessions_per_user"), "{e}");
        let e = format!("{:#}", load("limitz: {}\n", &[]).unwrap_err());
        assert!(e.contains("limitz"), "{e}");
        let e = format!(
            "{:#}",
            load("limits: { max_file_size: 2 parsecs }\n", &[]).unwrap_err()
        );
        assert!(e.contains("limits.max_file_size"), "{e}");
        let e = format!(
            "{:#}",
            load("escrow_recipients: [nope]\n", &[]).unwrap_err()
        );
        assert!(e.contains("escrow_recipients[0]"), "{e}");
        let e = format!(
            "{:#}",
            load("database: { url: mysql://x }\n", &[]).unwrap_err()
        );
        assert!(e.contains("database.url"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("10 MB").unwrap(), 10_000_000);
        assert_eq!(parse_byte_size("7").unwrap(), 7);
        assert!(parse_byte_size("GiB").is_err());
        assert!(parse_byte_size("3 furlongs").is_err());
    }
}
