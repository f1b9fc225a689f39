//! The encrypted-at-rest store (SPEC §7). Every file is a standard age file, encrypted on a
//! thread of its own while it streams in; plaintext never reaches the disk. An upload is written
//! to `spool/` and renamed into `store/` only when it is committed.

pub mod keys;

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Chunks queued towards the encryption thread before the uploader waits.
const WRITE_QUEUE: usize = 16;
const IO_BUFFER: usize = 256 * 1024;

pub struct Vault {
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
    spool_path: PathBuf,
}

enum Chunk {
    Data(Bytes),
    Finish,
}

/// The writing end of an upload. Dropping it without [`UploadWriter::finish`] discards the file.
pub struct UploadWriter {
    tx: mpsc::Sender<Chunk>,
    done: oneshot::Receiver<io::Result<SealedBlob>>,
}

impl UploadWriter {
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.tx.send(Chunk::Data(data)).await.is_err() {
            // The thread stopped: its error is waiting in `done`.
            return Err(match (&mut self.done).await {
                Ok(Err(e)) => e,
                _ => io::Error::other("the encryption thread stopped"),
            });
        }
        Ok(())
    }

    pub async fn finish(self) -> io::Result<SealedBlob> {
        let _ = self.tx.send(Chunk::Finish).await;
        self.done
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the encryption thread stopped")))
    }
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
        Ok(Vault {
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

    /// Starts an upload: a thread encrypts what [`UploadWriter::write`] sends.
    pub fn begin_upload(&self) -> io::Result<UploadWriter> {
        let blob = random_id()?;
        let spool_path = self.spool.join(format!("{blob}.age.tmp"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spool_path)?;
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| io::Error::other(format!("age: {e}")))?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("apgate-encrypt".into())
            .spawn(move || {
                let result = encrypt_stream(encryptor, file, rx, blob, spool_path.clone());
                if result.is_err() {
                    let _ = fs::remove_file(&spool_path);
                }
                let _ = done_tx.send(result);
            })?;
        Ok(UploadWriter { tx, done })
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

    /// Opens a stored file for reading at any offset.
    pub fn open_blob(&self, blob: &str) -> io::Result<BlobReader> {
        let file = fs::File::open(self.blob_path(blob))?;
        let decryptor = age::Decryptor::new(BufReader::with_capacity(IO_BUFFER, file))
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        let reader = decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        Ok(BlobReader { reader, pos: 0 })
    }
}

fn encrypt_stream(
    encryptor: age::Encryptor,
    file: fs::File,
    mut rx: mpsc::Receiver<Chunk>,
    blob: String,
    spool_path: PathBuf,
) -> io::Result<SealedBlob> {
    let mut out = encryptor.wrap_output(BufWriter::with_capacity(IO_BUFFER, file))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match rx.blocking_recv() {
            Some(Chunk::Data(data)) => {
                hasher.update(&data);
                out.write_all(&data)?;
                size += data.len() as u64;
            }
            Some(Chunk::Finish) => break,
            None => return Err(io::Error::other("upload abandoned")),
        }
    }
    let file = out.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(SealedBlob {
        blob,
        size,
        sha256: hex::encode(hasher.finalize()),
        spool_path,
    })
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A decrypting reader over one stored file.
pub struct BlobReader {
    reader: age::stream::StreamReader<BufReader<fs::File>>,
    pos: u64,
}

impl BlobReader {
    /// Fills `buf` from `offset` as far as the file goes; returns the bytes read (0 at the end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset != self.pos {
            self.reader.seek(SeekFrom::Start(offset))?;
            self.pos = offset;
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += filled as u64;
        Ok(filled)
    }
}
