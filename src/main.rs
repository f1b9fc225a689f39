//! The `apgate` command line: parse, load config, call into the library.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use apgate::admin::{self, UserSpec};
use apgate::config::{Config, LogFormat};
use apgate::db::{self, NewOrg};
use apgate::domain::org::Role;
use apgate::domain::tree::IngestKind;
use apgate::{demo, serve, vault};

#[derive(Parser)]
#[command(
    name = "apgate",
    version,
    about = "SFTP gateway of an Alternative Provision service"
)]
struct Cli {
    /// Config file (default config/apgate.yaml, or $APGATE_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a complete gateway in a temporary folder on 127.0.0.1 with demo organisations and users.
    Demo {
        /// Port to listen on (another free port is chosen when it is taken).
        #[arg(long, default_value_t = 2222)]
        port: u16,
        /// Folder to keep the demo in (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Writes keys/ (host key, age identity) and creates the database.
    Init,
    /// Runs the gateway.
    Serve,
    /// Organisations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Checks the config file: prints "config OK" or each problem with its key.
    CheckConfig,
    /// Retention of stored files.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Ingests a file as if ORG had uploaded it into its ingest folder; prints the receipt.
    Ingest {
        file: PathBuf,
        #[arg(long)]
        org: String,
        /// register, absences, referral, withdrawal, roster, placements, progress, assessments,
        /// targets or notes.
        #[arg(long)]
        kind: String,
    },
    /// Prints a report as CSV: training-records, unprocessed-absences, registers, transfers,
    /// referrals, withdrawals, activity.
    Report {
        name: String,
        /// Scope it to what this organisation sees (default: everything, as the hub sees it).
        #[arg(long)]
        org: Option<String>,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    Add {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        urn: Option<String>,
        #[arg(long)]
        ukprn: Option<String>,
        #[arg(long)]
        coordinator_email: Option<String>,
        #[arg(long)]
        dsl_email: Option<String>,
    },
    List,
    Disable {
        slug: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    Add {
        #[arg(long)]
        org: String,
        #[arg(long)]
        username: String,
        /// coordinator, dsl or admin (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// OpenSSH public key file (repeat for several).
        #[arg(long = "key-file")]
        key_files: Vec<PathBuf>,
        /// Read a password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The user's own address: messages for their roles also go there.
        #[arg(long)]
        email: Option<String>,
    },
    List,
    Disable {
        username: String,
    },
    KeyAdd {
        username: String,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks the hash chain: exit 0 and a count when whole, non-zero and the first broken entry otherwise.
    Verify,
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// One pass: deletes stored files older than retention_days (records stay, marked expired).
    Run {
        /// Act as if it were this time (RFC 3339), e.g. to check what a pass would do later.
        #[arg(long)]
        now: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Adds a new age identity for new files; old identities are kept for reading.
    Rotate,
    /// Re-encrypts stored files to the current identity and escrow recipients (resumable), so an
    /// old identity can be retired.
    Reencrypt,
}

fn init_logging(config: Option<&Config>) {
    use tracing_subscriber::EnvFilter;
    let level = config
        .map(|c| c.log.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},russh=warn,sqlx=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and the journal get plain lines (fail2ban reads them).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.is_some_and(|c| c.log.format == LogFormat::Json) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!pw.is_empty(), "no password on standard input");
    Ok(pw)
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let config_path = Config::resolve_path(cli.config.as_deref());
    if let Command::Demo { port, dir } = cli.command {
        init_logging(None);
        let dir = match dir {
            Some(d) => d,
            None => tempfile::Builder::new()
                .prefix("apgate-demo-")
                .tempdir()?
                .keep(),
        };
        let (config, users) = demo::prepare(&dir, port).await?;
        // A reader that goes away (a closed pipe) must not stop the gateway.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            demo::instructions(&dir, &config, &users)
        );
        let _ = std::io::stdout().flush();
        serve::serve(config, None).await?;
        return Ok(String::new());
    }
    if let Command::CheckConfig = cli.command {
        let config = Config::load(&config_path)?;
        let mut out = format!("config OK: {}", config_path.display());
        for w in apgate::scan::warnings(&config.scan) {
            out.push_str(&format!("\nwarning: {w}"));
        }
        return Ok(out);
    }
    let config = Config::load(&config_path)?;
    init_logging(Some(&config));
    match cli.command {
        Command::Demo { .. } | Command::CheckConfig => unreachable!("handled above"),
        Command::Serve => {
            serve::serve(config, Some(config_path.clone())).await?;
            Ok(String::new())
        }
        Command::Init => {
            vault::keys::init(&config.keys_dir)?;
            db::open(&config.database.url).await?;
            Ok(format!(
                "keys in {}; database {}",
                config.keys_dir.display(),
                db::redact_url(&config.database.url)
            ))
        }
        Command::Keys(KeysCommand::Rotate) => {
            let recipient = vault::keys::rotate(&config.keys_dir)?;
            let db = db::open(&config.database.url).await?;
            db.audit(&apgate::audit::AuditEntry::admin(
                "keys rotate",
                recipient.to_string(),
            ))
            .await?;
            Ok(format!(
                "new age identity {recipient} encrypts new files from the next start of serve; old identities stay for reading"
            ))
        }
        Command::Retention(RetentionCommand::Run { now }) => {
            let now = match now {
                Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| {
                        anyhow::anyhow!("--now `{t}`: {e} (write e.g. 2027-03-01T00:00:00Z)")
                    })?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let (gw, _keys) = serve::open_gateway(config).await?;
            let n = apgate::retention::run_once(&gw, now).await?;
            Ok(format!("{n} stored file(s) expired"))
        }
        Command::Ingest { file, org, kind } => {
            let kind = IngestKind::parse(&kind).ok_or_else(|| {
                let kinds: Vec<&str> = IngestKind::ALL.iter().map(|k| k.as_str()).collect();
                anyhow::anyhow!("--kind `{kind}` is not one of {}", kinds.join(", "))
            })?;
            let (gw, _keys) = serve::open_gateway(config).await?;
            let done = apgate::ingest::local::ingest_file(&gw, &org, kind, &file, "cli").await?;
            let receipt = done.receipt.unwrap_or_default();
            match done.unreadable {
                Some(reason) => {
                    anyhow::bail!("{receipt}\nthe file was stored but not applied: {reason}")
                }
                None => Ok(receipt),
            }
        }
        Command::Report { name, org } => {
            let db = db::open(&config.database.url).await?;
            let org = match org {
                Some(slug) => db
                    .org_by_slug(&slug)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no organisation with slug `{slug}`"))?,
                None => db
                    .hub()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("there is no hub organisation yet"))?,
            };
            let file = if name.ends_with(".csv") {
                name.clone()
            } else {
                format!("{name}.csv")
            };
            let viewer = apgate::domain::visibility::Viewer {
                org_id: org.id,
                kind: org.kind,
                roles: None,
            };
            apgate::reports::generate(db.as_ref(), &file, viewer, chrono::Utc::now().date_naive())
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no report `{name}` for a {}; reports: {}",
                        org.kind,
                        apgate::reports::names(org.kind).join(", ")
                    )
                })
        }
        Command::Keys(KeysCommand::Reencrypt) => {
            let (gw, _keys) = serve::open_gateway(config).await?;
            let n = apgate::vault::reencrypt_all(&gw).await?;
            Ok(format!(
                "{n} stored file(s) re-encrypted to the current identity and escrow recipients"
            ))
        }
        command => {
            let db = db::open(&config.database.url).await?;
            admin_command(&db, command).await
        }
    }
}

async fn admin_command(db: &db::Db, command: Command) -> anyhow::Result<String> {
    match command {
        Command::Org(OrgCommand::Add {
            kind,
            slug,
            name,
            urn,
            ukprn,
            coordinator_email,
            dsl_email,
        }) => {
            let org = NewOrg {
                slug,
                kind: admin::parse_kind(&kind)?,
                name,
                urn,
                ukprn,
                coordinator_email,
                dsl_email,
            };
            admin::org_add(db, org).await
        }
        Command::Org(OrgCommand::List) => admin::org_list(db).await,
        Command::Org(OrgCommand::Disable { slug }) => admin::org_disable(db, &slug).await,
        Command::User(UserCommand::Add {
            org,
            username,
            roles,
            key_files,
            password_stdin,
            email,
        }) => {
            let roles = roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let password = password_stdin.then(read_password).transpose()?;
            let spec = UserSpec {
                org: &org,
                username: &username,
                roles,
                key_files: key_files
                    .iter()
                    .map(PathBuf::as_path)
                    .collect::<Vec<&Path>>(),
                password,
                email,
            };
            admin::user_add(db, spec).await
        }
        Command::User(UserCommand::List) => admin::user_list(db).await,
        Command::User(UserCommand::Disable { username }) => {
            admin::user_disable(db, &username).await
        }
        Command::User(UserCommand::KeyAdd { username, file }) => {
            admin::user_key_add(db, &username, &file).await
        }
        Command::Audit(AuditCommand::Verify) => admin::audit_verify(db).await,
        _ => anyhow::bail!("unexpected command"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(out) => {
            if !out.is_empty() {
                let _ = writeln!(std::io::stdout(), "{}", out.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("apgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
