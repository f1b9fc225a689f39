//! The encrypted-at-rest store (SPEC §7). Every file is a standard age file, encrypted on a
//! small pool of threads while it streams in; plaintext never reaches the disk. An upload is written
//! to `spool/` and renamed into `store/` only when it is committed.

mod download;
pub mod keys;
pub(crate) mod stream;
mod upload;

pub use download::{READ_AHEAD_CHUNK, ReadAhead};
pub use upload::UploadWriter;

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::scan::clamd::InStream;

const IO_BUFFER: usize = 256 * 1024;

pub struct Vault {
    /// The threads that hash, scan and encrypt every upload.
    pool: Arc<crate::pool::Pool>,
    /// The threads that decrypt ahead of every download: a pool of their own, so that uploads
    /// waiting on a slow clamd never hold a download back.
    read_pool: Arc<crate::pool::Pool>,
    store: PathBuf,
    spool: PathBuf,
    recipients: Vec<age::x25519::Recipient>,
    identities: Vec<age::x25519::Identity>,
}

/// A finished upload in the spool, encrypted and synced, not yet in the store.
#[derive(Debug)]
pub struct SealedBlob {
    pub blob: String,
    pub size: u64,
    pub sha256: String,
    /// clamd's verdict, read once the last byte was encrypted (SPEC §7).
    pub scan: crate::scan::Verdict,
    spool_path: PathBuf,
}

fn random_id() -> io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(b))
}

impl Vault {
    pub fn open(data_dir: &Path, keys: &keys::Keys, escrow: &[String]) -> anyhow::Result<Vault> {
        let store = data_dir.join("store");
        let spool = data_dir.join("spool");
        for d in [&store, &spool] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let mut recipients: Vec<age::x25519::Recipient> =
            keys.current_recipient().into_iter().collect();
        for r in escrow {
            recipients.push(
                r.parse()
                    .map_err(|e| anyhow::anyhow!("escrow recipient `{r}`: {e}"))?,
            );
        }
        // Two workers per core each: the work is CPU (hashing, the ciphers) and the kernel's
        // copies into and out of the files.
        let workers = (2 * crate::pool::cores()).clamp(2, 32);
        Ok(Vault {
            pool: Arc::new(crate::pool::Pool::new(workers, "apgate-upload")?),
            read_pool: Arc::new(crate::pool::Pool::new(workers, "apgate-download")?),
            store,
            spool,
            recipients,
            identities: keys.age_identities.clone(),
        })
    }

    /// Deletes spool files left by a crash: they were never committed.
    pub fn clean_spool(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.spool)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn blob_path(&self, blob: &str) -> PathBuf {
        let shard = blob.get(..2).unwrap_or("xx");
        self.store.join(shard).join(format!("{blob}.age"))
    }

    /// Starts an upload: the pool encrypts what [`UploadWriter::write`] sends into a spool file
    /// and, with `scan`, streams the same bytes to clamd.
    pub fn begin_upload(&self, scan: Option<InStream>) -> io::Result<UploadWriter> {
        let blob = random_id()?;
        let spool_path = self.spool.join(format!("{blob}.age.tmp"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spool_path)?;
        UploadWriter::start(
            self.pool.clone(),
            &self.recipients,
            file,
            scan,
            blob,
            spool_path,
        )
    }

    /// Moves a sealed upload into the store. After this the database may refer to it.
    pub fn store(&self, sealed: &SealedBlob) -> io::Result<()> {
        let dest = self.blob_path(&sealed.blob);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::rename(&sealed.spool_path, &dest)?;
        if let Some(dir) = dest.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Throws away a sealed upload that will not be committed.
    pub fn discard(&self, sealed: &SealedBlob) {
        let _ = fs::remove_file(&sealed.spool_path);
    }

    /// Removes a stored blob (after a failed commit, or at expiry).
    pub fn remove(&self, blob: &str) -> io::Result<()> {
        match fs::remove_file(self.blob_path(blob)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Names the current recipient set (gateway identity and escrow) for re-encryption progress.
    pub fn recipients_id(&self) -> String {
        let mut names: Vec<String> = self.recipients.iter().map(|r| r.to_string()).collect();
        names.sort();
        hex::encode(&Sha256::digest(names.join("\n").as_bytes())[..12])
    }

    /// Re-encrypts a stored file to the current recipients, streaming, and replaces it atomically
    /// (a reader that has the old file open keeps reading it). Blocking: run it off the runtime.
    pub fn reencrypt(&self, blob: &str) -> io::Result<()> {
        let mut reader = self.open_blob(blob)?;
        let tmp = self.spool.join(format!("{blob}.reencrypt.tmp"));
        let result = (|| -> io::Result<()> {
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut out = stream::seal(
                &self.recipients,
                io::BufWriter::with_capacity(IO_BUFFER, file),
            )?;
            io::copy(&mut reader, &mut out)?;
            let file = out.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let dest = self.blob_path(blob);
            fs::rename(&tmp, &dest)?;
            if let Some(dir) = dest.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Decrypts `reader` ahead of a download's reads, on the download pool.
    pub fn read_ahead(&self, reader: BlobReader) -> ReadAhead {
        ReadAhead::new(self.read_pool.clone(), reader)
    }

    /// Opens a stored file for reading at any offset.
    pub fn open_blob(&self, blob: &str) -> io::Result<BlobReader> {
        let file = fs::File::open(self.blob_path(blob))?;
        stream::open(file, &self.identities)
    }
}

/// A decrypting reader over one stored file, at any offset.
pub type BlobReader = stream::OpenReader;

/// `apgate keys reencrypt`: every stored file not yet re-encrypted to the current recipient set,
/// one at a time; each one is recorded (and audited) as soon as it is done, so a stopped run
/// continues where it was.
pub async fn reencrypt_all(gw: &std::sync::Arc<crate::gateway::Gateway>) -> anyhow::Result<usize> {
    let set = gw.vault.recipients_id();
    let blobs = gw.db.blobs_to_reencrypt(&set).await?;
    let mut done = 0;
    for blob in blobs {
        let worker = gw.clone();
        let name = blob.clone();
        match tokio::task::spawn_blocking(move || worker.vault.reencrypt(&name)).await? {
            Ok(()) => {
                let audit = crate::audit::AuditEntry::admin(
                    "keys reencrypt",
                    format!("blob {blob} to recipient set {set}"),
                );
                gw.db.mark_reencrypted(&blob, &set, &audit).await?;
                done += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(blob, "stored file missing; skipped");
            }
            Err(e) => return Err(anyhow::anyhow!("cannot re-encrypt {blob}: {e}")),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    async fn stored(vault: &Vault, content: &[u8]) -> SealedBlob {
        let mut w = vault.begin_upload(None).unwrap();
        for chunk in content.chunks(100_000) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let sealed = w.finish().await.unwrap();
        vault.store(&sealed).unwrap();
        sealed
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn read(ra: &mut ReadAhead, offset: u64, len: usize) -> Vec<u8> {
        let got = ra.read_with(offset, len, <[u8]>::to_vec).await.unwrap();
        let got = got.unwrap_or_default();
        // Short only at the end of the file.
        assert!(
            got.len() == len || offset + got.len() as u64 >= ra.size,
            "short read at {offset}"
        );
        got
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn round_trip_with_sha256_and_read_ahead_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::init(&dir.path().join("keys")).unwrap();
        let vault = Vault::open(dir.path(), &keys, &[]).unwrap();
        for len in [
            0,
            1,
            READ_AHEAD_CHUNK,
            2 * READ_AHEAD_CHUNK,
            2 * READ_AHEAD_CHUNK + 7,
        ] {
            let data = content(len);
            let sealed = stored(&vault, &data).await;
            assert_eq!(sealed.size, len as u64);
            assert_eq!(sealed.sha256, hex::encode(Sha256::digest(&data)));
            let stored = std::fs::read(vault.blob_path(&sealed.blob)).unwrap();
            assert!(stored.starts_with(b"age-encryption.org/v1\n"));

            // Sequential, as OpenSSH reads.
            let mut ra = vault.read_ahead(vault.open_blob(&sealed.blob).unwrap());
            let mut got = Vec::new();
            loop {
                let chunk = read(&mut ra, got.len() as u64, READ_AHEAD_CHUNK).await;
                if chunk.is_empty() {
                    break;
                }
                got.extend(chunk);
            }
            assert_eq!(got, data, "sequential read of {len} bytes");
            assert!(read(&mut ra, len as u64 + 5, 10).await.is_empty());

            // Small reads, a jump back and a jump forward.
            let mut ra = vault.read_ahead(vault.open_blob(&sealed.blob).unwrap());
            for (offset, n) in [
                (0usize, 10usize),
                (10, 4096),
                (len / 2, 1000),
                (3, 7),
                (len.saturating_sub(3), 100),
                // Across the boundary of two read-ahead chunks.
                (READ_AHEAD_CHUNK.saturating_sub(10), 30_000),
            ] {
                let want = &data[offset.min(len)..(offset + n).min(len)];
                assert_eq!(
                    read(&mut ra, offset as u64, n).await,
                    want,
                    "{len} bytes at {offset}"
                );
            }
        }
    }
}
