//! The administration commands (`org`, `user`, `audit verify`, `keys rotate`): they work on the
//! database directly, so they take effect while `serve` runs, without a restart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use russh::keys::{Algorithm, HashAlg, PublicKey};

use crate::audit::{AuditEntry, verify_chain};
use crate::db::{Db, NewOrg, NewUser};
use crate::domain::org::{
    OrgKind, Role, format_roles, validate_roles, validate_slug, validate_username,
};

/// The same parser the mail sender uses, so an accepted address is one mail can go to.
fn check_email(key: &str, v: &Option<String>) -> anyhow::Result<()> {
    if let Some(e) = v
        && let Err(why) = e.parse::<lettre::Address>()
    {
        bail!("{key} `{e}` is not an email address ({why})");
    }
    Ok(())
}

pub async fn org_add(db: &Db, org: NewOrg) -> anyhow::Result<String> {
    validate_slug(&org.slug).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!org.name.trim().is_empty(), "--name must not be empty");
    check_email("--coordinator-email", &org.coordinator_email)?;
    check_email("--dsl-email", &org.dsl_email)?;
    let entry = AuditEntry::admin("org add", format!("{} ({})", org.slug, org.kind));
    let created = db.add_org(&org, &entry).await?;
    Ok(format!(
        "added {} {} ({})",
        created.kind, created.slug, created.name
    ))
}

pub async fn org_list(db: &Db) -> anyhow::Result<String> {
    let mut out =
        String::from("slug\tkind\tname\turn\tukprn\tcoordinator_email\tdsl_email\tstatus\n");
    for o in db.orgs().await? {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            o.slug,
            o.kind,
            o.name,
            o.urn.unwrap_or_default(),
            o.ukprn.unwrap_or_default(),
            o.coordinator_email.unwrap_or_default(),
            o.dsl_email.unwrap_or_default(),
            if o.disabled { "disabled" } else { "active" }
        );
    }
    Ok(out)
}

pub async fn org_disable(db: &Db, slug: &str) -> anyhow::Result<String> {
    let entry = AuditEntry::admin("org disable", slug);
    if db.disable_org(slug, &entry).await? {
        Ok(format!(
            "disabled {slug}; its live sessions end within seconds"
        ))
    } else {
        bail!("no organisation with slug `{slug}`")
    }
}

/// Reads an OpenSSH public key file and checks that its algorithm is one we accept.
pub fn read_public_key(path: &Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} holds no public key", path.display()))?;
    let key = PublicKey::from_openssh(line)
        .map_err(|e| anyhow::anyhow!("{}: not an OpenSSH public key: {e}", path.display()))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .map(|k| k.n().as_positive_bytes().map_or(0, |b| b.len() * 8));
            if bits.is_some_and(|b| b < 2048) {
                bail!("{}: RSA keys must have at least 2048 bits", path.display());
            }
        }
        other => bail!(
            "{}: {} keys are not accepted; use ed25519, ecdsa or rsa",
            path.display(),
            other.as_str()
        ),
    }
    let normalized = key
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("cannot encode key: {e}"))?;
    Ok((normalized, key.fingerprint(HashAlg::Sha256).to_string()))
}

/// An argon2id hash of `password` in PHC format.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    anyhow::ensure!(
        password.chars().count() >= 12,
        "a password must have at least 12 characters"
    );
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))?
        .to_string())
}

pub struct UserSpec<'a> {
    pub org: &'a str,
    pub username: &'a str,
    pub roles: Vec<Role>,
    pub key_files: Vec<&'a Path>,
    pub password: Option<String>,
    pub email: Option<String>,
}

pub async fn user_add(db: &Db, spec: UserSpec<'_>) -> anyhow::Result<String> {
    validate_username(spec.username).map_err(anyhow::Error::msg)?;
    let org = db
        .org_by_slug(spec.org)
        .await?
        .with_context(|| format!("no organisation with slug `{}`", spec.org))?;
    validate_roles(org.kind, &spec.roles).map_err(anyhow::Error::msg)?;
    check_email("--email", &spec.email)?;
    let keys = spec
        .key_files
        .iter()
        .map(|p| read_public_key(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let password_hash = spec.password.as_deref().map(hash_password).transpose()?;
    anyhow::ensure!(
        !keys.is_empty() || password_hash.is_some(),
        "give at least one --key-file or --password-stdin, or the user cannot log in"
    );
    let roles = format_roles(&spec.roles);
    let entry = AuditEntry::admin(
        "user add",
        format!("{} in {} as {roles}", spec.username, spec.org),
    );
    let new = NewUser {
        org_slug: spec.org.to_string(),
        username: spec.username.to_string(),
        roles: spec.roles,
        password_hash,
        keys,
        email: spec.email,
    };
    db.add_user(&new, &entry).await?;
    Ok(format!(
        "added user {} to {} ({roles})",
        spec.username, spec.org
    ))
}

pub async fn user_list(db: &Db) -> anyhow::Result<String> {
    let mut out = String::from("username\torg\troles\temail\tkeys\tpassword\tstatus\n");
    for u in db.users().await? {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            u.username,
            u.org_slug,
            format_roles(&u.roles),
            u.email.unwrap_or_default(),
            u.keys,
            if u.has_password { "yes" } else { "no" },
            if u.disabled { "disabled" } else { "active" }
        );
    }
    Ok(out)
}

pub async fn user_disable(db: &Db, username: &str) -> anyhow::Result<String> {
    let entry = AuditEntry::admin("user disable", username);
    if db.disable_user(username, &entry).await? {
        Ok(format!(
            "disabled {username}; live sessions end within seconds"
        ))
    } else {
        bail!("no user named `{username}`")
    }
}

pub async fn user_key_add(db: &Db, username: &str, file: &Path) -> anyhow::Result<String> {
    let (key, fp) = read_public_key(file)?;
    let entry = AuditEntry::admin("user key-add", format!("{username}: {fp}"));
    if db.add_user_key(username, &key, &fp, &entry).await? {
        Ok(format!("added key {fp} to {username}"))
    } else {
        bail!("no user named `{username}`")
    }
}

/// `Ok` with a count when the chain is whole; `Err` naming the first broken entry otherwise.
pub async fn audit_verify(db: &Db) -> anyhow::Result<String> {
    let (records, head) = db.audit_records().await?;
    match verify_chain(records, head) {
        Ok(n) => Ok(format!("audit log intact: {n} entries")),
        Err(b) => bail!("audit log broken at entry {}: {}", b.seq, b.reason),
    }
}

pub fn parse_kind(s: &str) -> anyhow::Result<OrgKind> {
    s.parse().map_err(anyhow::Error::msg)
}
