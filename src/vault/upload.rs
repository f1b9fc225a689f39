//! The upload pipeline: each upload's bytes are hashed, streamed to clamd when scanning is on,
//! encrypted and written to its spool file by a small pool of threads shared by every upload
//! ([`Pool`]), so threads do not grow with open handles. An upload has at most one batch in
//! the pool at a time (its bytes stay in order) and at most [`MAX_PENDING`] bytes waiting
//! behind it (back-pressure to the client beyond that).

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::SealedBlob;
use super::stream::{self, SealWriter};
use crate::pool::Pool;
use crate::scan::Verdict;
use crate::scan::clamd::InStream;

/// Bytes an upload may have waiting while its previous batch is in the pool.
pub const MAX_PENDING: usize = 1 << 20;

/// What an upload carries from one batch to the next.
struct Sealing {
    out: SealWriter<fs::File>,
    hasher: Sha256,
    size: u64,
    scan: Option<InStream>,
}

impl Sealing {
    fn take(&mut self, batch: &[Bytes]) -> io::Result<()> {
        for data in batch {
            let mut rest = &data[..];
            while !rest.is_empty() {
                // Pieces end where age's chunks end, so each is hashed, scanned and sealed
                // while it is in the cache.
                let room = stream::CHUNK - (self.size % stream::CHUNK as u64) as usize;
                let (piece, after) = rest.split_at(room.min(rest.len()));
                self.hasher.update(piece);
                if let Some(scan) = &mut self.scan {
                    scan.feed(piece);
                }
                self.out.write_all(piece)?;
                self.size += piece.len() as u64;
                rest = after;
            }
        }
        Ok(())
    }
}

type Batch = oneshot::Receiver<(Sealing, io::Result<()>)>;

/// The writing end of an upload. Dropping it without [`UploadWriter::finish`] discards the file.
/// After a failed write, only [`UploadWriter::abort`] is of use.
pub struct UploadWriter {
    pool: Arc<Pool>,
    blob: String,
    spool_path: PathBuf,
    /// The state, when no batch of this upload is in the pool.
    idle: Option<Sealing>,
    in_pool: Option<Batch>,
    pending: Vec<Bytes>,
    pending_bytes: usize,
    /// Why the upload failed: every later call says so again.
    failed: Option<(io::ErrorKind, String)>,
}

impl UploadWriter {
    pub(super) fn start(
        pool: Arc<Pool>,
        recipients: &[age::x25519::Recipient],
        file: fs::File,
        scan: Option<InStream>,
        blob: String,
        spool_path: PathBuf,
    ) -> io::Result<UploadWriter> {
        let out = match stream::seal(recipients, file) {
            Ok(out) => out,
            Err(e) => {
                let _ = fs::remove_file(&spool_path);
                return Err(e);
            }
        };
        Ok(UploadWriter {
            pool,
            blob,
            spool_path,
            idle: Some(Sealing {
                out,
                hasher: Sha256::new(),
                size: 0,
                scan,
            }),
            in_pool: None,
            pending: Vec::new(),
            pending_bytes: 0,
            failed: None,
        })
    }

    /// Takes back the state a batch returned; its error, if any, fails the upload for good.
    fn absorb(
        &mut self,
        done: Result<(Sealing, io::Result<()>), oneshot::error::RecvError>,
    ) -> io::Result<()> {
        let result = match done {
            Ok((state, result)) => {
                self.idle = Some(state);
                result
            }
            Err(_) => Err(io::Error::other("an upload worker stopped")),
        };
        if let Err(e) = &result {
            self.failed = Some((e.kind(), e.to_string()));
        }
        result
    }

    /// Waits for the batch in the pool, if any; its state is idle again afterwards.
    async fn settle(&mut self) -> io::Result<()> {
        match self.in_pool.take() {
            Some(batch) => {
                let done = batch.await;
                self.absorb(done)
            }
            None => Ok(()),
        }
    }

    /// Hands what is waiting to the pool, when nothing of this upload is there.
    fn dispatch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(mut state) = self.idle.take() else {
            return;
        };
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.in_pool = Some(self.pool.run(move || {
            let result = state.take(&batch);
            (state, result)
        }));
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, why)) => Err(io::Error::new(*kind, why.clone())),
            None => Ok(()),
        }
    }

    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.check_failed()?;
        if data.is_empty() {
            return Ok(());
        }
        self.pending_bytes += data.len();
        self.pending.push(data);
        // The batch in the pool may be done already: then this one goes at once.
        if let Some(done) = self.in_pool.as_mut().and_then(|b| b.try_recv().ok()) {
            self.in_pool = None;
            self.absorb(Ok(done))?;
        }
        if self.in_pool.is_some() && self.pending_bytes >= MAX_PENDING {
            self.settle().await?;
        }
        self.dispatch();
        Ok(())
    }

    /// Discards the upload and returns once its spool file is gone.
    pub async fn abort(mut self) {
        let _ = self.settle().await;
        self.idle = None;
        let _ = fs::remove_file(&self.spool_path);
    }

    /// Seals the last chunk, syncs the file and reads clamd's verdict.
    pub async fn finish(mut self) -> io::Result<SealedBlob> {
        let outcome = async {
            self.check_failed()?;
            self.settle().await?;
            self.dispatch();
            self.settle().await?;
            let state = self
                .idle
                .take()
                .ok_or_else(|| io::Error::other("the upload has already failed"))?;
            let done = self
                .pool
                .run(move || -> io::Result<(u64, String, Verdict)> {
                    let Sealing {
                        out,
                        hasher,
                        size,
                        mut scan,
                    } = state;
                    // clamd scans while the file is synced.
                    if let Some(scan) = &mut scan {
                        scan.end();
                    }
                    out.finish()?.sync_all()?;
                    let verdict = scan.map_or(Verdict::NotScanned, InStream::verdict);
                    Ok((size, hex::encode(hasher.finalize()), verdict))
                });
            done.await
                .map_err(|_| io::Error::other("an upload worker stopped"))?
        }
        .await;
        match outcome {
            Ok((size, sha256, scan)) => Ok(SealedBlob {
                blob: std::mem::take(&mut self.blob),
                size,
                sha256,
                scan,
                spool_path: std::mem::take(&mut self.spool_path),
            }),
            Err(e) => {
                let _ = fs::remove_file(&self.spool_path);
                Err(e)
            }
        }
    }
}

impl Drop for UploadWriter {
    fn drop(&mut self) {
        // Not finished (a session that ended mid-upload): the spool file goes. A batch still in
        // the pool finishes writing into the unlinked file and is dropped there.
        if !self.spool_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.spool_path);
        }
    }
}
