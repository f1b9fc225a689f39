//! `apgate demo`: a complete gateway in a temporary folder on 127.0.0.1, seeded with the hub
//! `cap`, the school `demo-school` and the provider `demo-provider`, a user and key pair each.

use std::fmt::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use russh::keys::{Algorithm, PrivateKey};

use crate::admin::{self, UserSpec};
use crate::config::Config;
use crate::db::{self, NewOrg};
use crate::domain::org::{OrgKind, Role};
use crate::domain::tree::IngestKind;

pub struct DemoUser {
    pub username: &'static str,
    pub org: &'static str,
    pub key_file: PathBuf,
}

const ORGS: [(&str, OrgKind, &str); 3] = [
    ("cap", OrgKind::Hub, "Coventry Alternative Provision"),
    ("demo-school", OrgKind::School, "Demo School"),
    ("demo-provider", OrgKind::Provider, "Demo Training Provider"),
];

const USERS: [(&str, &str, &[Role]); 3] = [
    (
        "cap-staff",
        "cap",
        &[Role::Coordinator, Role::Dsl, Role::Admin],
    ),
    (
        "school-user",
        "demo-school",
        &[Role::Coordinator, Role::Dsl],
    ),
    (
        "provider-user",
        "demo-provider",
        &[Role::Coordinator, Role::Dsl],
    ),
];

fn write_key_pair(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| anyhow::anyhow!("cannot generate key: {e}"))?;
    let private = dir.join(name);
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode key: {e}"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)?
        .write_all(pem.as_bytes())?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("cannot encode key: {e}"))?;
    std::fs::write(
        dir.join(format!("{name}.pub")),
        format!("{public} {name}\n"),
    )?;
    Ok(private)
}

fn free_port(preferred: u16) -> u16 {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return preferred;
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(preferred)
}

/// Creates the demo folder, config, database, organisations, users and keys.
pub async fn prepare(dir: &Path, port: u16) -> anyhow::Result<(Config, Vec<DemoUser>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = free_port(port);
    let config_path = dir.join("apgate.yaml");
    let yaml = format!(
        "# apgate demo configuration (see config/apgate.example.yaml for every key)\n\
         listen: 127.0.0.1:{port}\n\
         data_dir: ./data\n\
         keys_dir: ./keys\n\
         mail: {{ transport: file, dir: ./data/mail }}\n\
         banner: \"apgate demo. Authorised use only.\"\n"
    );
    std::fs::write(&config_path, yaml)?;
    let config = Config::load(&config_path)?;
    let database = db::open(&config.database.url).await?;
    for (slug, kind, name) in ORGS {
        admin::org_add(
            &database,
            NewOrg {
                slug: slug.into(),
                kind,
                name: name.into(),
                urn: None,
                ukprn: None,
                coordinator_email: Some(format!("coordinator@{slug}.example.org")),
                dsl_email: Some(format!("dsl@{slug}.example.org")),
            },
        )
        .await?;
    }
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    let mut users = Vec::new();
    for (username, org, roles) in USERS {
        let key_file = write_key_pair(&clients, username)?;
        let pub_file = clients.join(format!("{username}.pub"));
        admin::user_add(
            &database,
            UserSpec {
                org,
                username,
                roles: roles.to_vec(),
                key_files: vec![&pub_file],
                password: None,
                email: None,
            },
        )
        .await?;
        users.push(DemoUser {
            username,
            org,
            key_file,
        });
    }
    seed_training_record(&config, &clients).await?;
    Ok((config, users))
}

/// The demo learner: on demo-school's roll, placed with demo-provider (SPEC §4.0), so that a
/// register from the provider is accepted at once.
const DEMO_UPN: &str = "B801200005001";
const DEMO_COURSE: &str = "Motor Vehicle Level 1";

/// Ingests demo-school's roster and the hub's placements file through the same pipeline as an
/// upload, and leaves a register for the provider to send in `clients/`.
async fn seed_training_record(config: &Config, clients: &Path) -> anyhow::Result<()> {
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let year = if today.month() >= 9 {
        today.year()
    } else {
        today.year() - 1
    };
    let start = chrono::NaiveDate::from_ymd_opt(year, 9, 1).context("academic year")?;
    let roster = clients.join("demo-roster.csv");
    std::fs::write(
        &roster,
        format!(
            "upn,surname,forename,date_of_birth,gender,year_group,contact1_name,contact1_relationship,contact1_phone\n\
             {DEMO_UPN},Taylor,Sam,2011-03-14,F,10,Pat Taylor,Mother,07700 900123\n"
        ),
    )?;
    let placements = clients.join("demo-placements.csv");
    std::fs::write(
        &placements,
        format!("upn,provider,course,start_date\n{DEMO_UPN},demo-provider,{DEMO_COURSE},{start}\n"),
    )?;
    std::fs::write(
        clients.join("register.csv"),
        format!(
            "date,start,end,course,upn,surname,forename,status,contribution\n\
             {today},09:00,12:00,{DEMO_COURSE},{DEMO_UPN},Taylor,Sam,present,1\n"
        ),
    )?;
    let (gw, _keys) = crate::serve::open_gateway(config.clone()).await?;
    for (org, kind, file) in [
        ("demo-school", IngestKind::Roster, &roster),
        ("cap", IngestKind::Placements, &placements),
    ] {
        let done = crate::ingest::local::ingest_file(&gw, org, kind, file, "demo").await?;
        anyhow::ensure!(
            done.unreadable.is_none()
                && done
                    .receipt
                    .as_deref()
                    .is_some_and(|r| r.contains("1 accepted")),
            "the demo's {} did not apply: {}",
            kind.as_str(),
            done.receipt.unwrap_or_default()
        );
    }
    Ok(())
}

pub fn instructions(dir: &Path, config: &Config, users: &[DemoUser]) -> String {
    let port = config.listen.port();
    let known = dir.join("known_hosts");
    let mut out = format!(
        "apgate demo is running in {}\nlistening on 127.0.0.1:{port}; stop it with Ctrl-C.\n\n",
        dir.display()
    );
    for u in users {
        let _ = writeln!(
            out,
            "# {} ({})\nsftp -P {port} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new {}@127.0.0.1\n",
            u.username,
            u.org,
            u.key_file.display(),
            known.display(),
            u.username
        );
    }
    out.push_str(
        "Try: as school-user, `put somefile /outbox/coordinator/`; then as cap-staff, `ls /inbox/demo-school`.\n\
         A school sending to another school is refused: `put somefile /outbox/demo-provider/coordinator/`.\n",
    );
    let _ = writeln!(
        out,
        "The learner {DEMO_UPN} is on demo-school's roll and placed with demo-provider: as provider-user, \
         `put {} /registers/`, then `get /receipts/*` and `get /reports/training-records.csv`.",
        dir.join("clients").join("register.csv").display()
    );
    let _ = writeln!(
        out,
        "Email alerts are written as .eml files to {} (a DSL file at once, others after a minute).",
        config.mail.dir.display()
    );
    out
}
