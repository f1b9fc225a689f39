//! `keys/`: the SSH host key and the age identities, created on first start with mode 0600.
//! The newest age identity encrypts new files; older ones stay for reading.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use russh::keys::{Algorithm, PrivateKey};

pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
pub const AGE_IDENTITIES_FILE: &str = "age-identities.txt";

pub struct Keys {
    pub host_key: PrivateKey,
    /// Oldest first; the last one is current.
    pub age_identities: Vec<age::x25519::Identity>,
}

impl Keys {
    pub fn current_recipient(&self) -> Option<age::x25519::Recipient> {
        self.age_identities.last().map(|i| i.to_public())
    }
}

/// Writes a new secret file that only the owner can read; fails if it exists.
fn write_secret(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(())
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    Ok(())
}

fn age_identity_block(id: &age::x25519::Identity) -> String {
    use age::secrecy::ExposeSecret;
    format!(
        "# created: {}\n# public key: {}\n{}\n",
        chrono::Utc::now().to_rfc3339(),
        id.to_public(),
        id.to_string().expose_secret()
    )
}

/// Creates whatever is missing in `dir` and loads everything.
pub fn init(dir: &Path) -> anyhow::Result<Keys> {
    ensure_dir(dir)?;
    let host = dir.join(HOST_KEY_FILE);
    if !host.exists() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .map_err(|e| anyhow::anyhow!("cannot generate host key: {e}"))?;
        let pem = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode host key: {e}"))?;
        write_secret(&host, pem.as_bytes())?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("cannot encode host key: {e}"))?;
        fs::write(
            dir.join(format!("{HOST_KEY_FILE}.pub")),
            format!("{public}\n"),
        )?;
    }
    let ids = dir.join(AGE_IDENTITIES_FILE);
    if !ids.exists() {
        write_secret(
            &ids,
            age_identity_block(&age::x25519::Identity::generate()).as_bytes(),
        )?;
    }
    load(dir)
}

pub fn load(dir: &Path) -> anyhow::Result<Keys> {
    let host_path = dir.join(HOST_KEY_FILE);
    let host_key = russh::keys::load_secret_key(&host_path, None).with_context(|| {
        format!(
            "cannot load host key {} (run `apgate init`)",
            host_path.display()
        )
    })?;
    Ok(Keys {
        host_key,
        age_identities: load_age_identities(&dir.join(AGE_IDENTITIES_FILE))?,
    })
}

fn load_age_identities(path: &Path) -> anyhow::Result<Vec<age::x25519::Identity>> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read age identities {} (run `apgate init`)",
            path.display()
        )
    })?;
    let ids = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .map(|l| {
            l.parse::<age::x25519::Identity>()
                .map_err(|e| anyhow::anyhow!("{}: bad age identity: {e}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!ids.is_empty(), "{} holds no age identity", path.display());
    Ok(ids)
}

/// Adds a new current age identity; the old ones stay in the file for reading.
pub fn rotate(dir: &Path) -> anyhow::Result<age::x25519::Recipient> {
    let path: PathBuf = dir.join(AGE_IDENTITIES_FILE);
    load_age_identities(&path)?;
    let id = age::x25519::Identity::generate();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(age_identity_block(&id).as_bytes())?;
    f.sync_all()?;
    Ok(id.to_public())
}
