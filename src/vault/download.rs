//! Downloads: a stored file is decrypted ahead of sequential reads by the download pool, a few
//! chunks per job, so a download's next reply is ready when it is asked for and threads do
//! not grow with open read handles. A read elsewhere in the file moves the reader there.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::BlobReader;
use crate::pool::Pool;

/// Plaintext bytes decrypted ahead of the reader per chunk (one OpenSSH read request).
pub const READ_AHEAD_CHUNK: usize = 261_120;
/// Chunks one job decrypts; a new job starts when fewer than this are left ahead.
const CHUNKS_PER_JOB: usize = 4;

/// What a job hands back: the reader, and the chunks it decrypted from where it was sent
/// (`start`, plaintext; a short or empty one is the end of the file, an error ends the job).
type Done = (BlobReader, Vec<(u64, io::Result<Vec<u8>>)>);

/// Decrypts a stored file ahead of sequential reads. The runtime never waits on a thread:
/// a job's chunks arrive through a oneshot channel.
pub struct ReadAhead {
    pool: Arc<Pool>,
    /// The reader, when no job of this download is in the pool.
    reader: Option<BlobReader>,
    job: Option<oneshot::Receiver<Done>>,
    /// Where the next job starts: after the last chunk asked for; `None` past the end.
    next_at: Option<u64>,
    /// Decrypted chunks after `current`, in order.
    ahead: VecDeque<(u64, io::Result<Vec<u8>>)>,
    current: Option<(u64, Vec<u8>)>,
    /// Buffers of used chunks, for the next job.
    spare: Vec<Vec<u8>>,
    pub size: u64,
}

impl ReadAhead {
    pub fn new(pool: Arc<Pool>, reader: BlobReader) -> ReadAhead {
        let size = reader.size();
        let mut ra = ReadAhead {
            pool,
            reader: Some(reader),
            job: None,
            next_at: Some(0),
            ahead: VecDeque::new(),
            current: None,
            spare: Vec::new(),
            size,
        };
        ra.refill();
        ra
    }

    /// Starts a job at `next_at` when nothing of this download is in the pool and few chunks
    /// are ahead.
    fn refill(&mut self) {
        if self.job.is_some() || self.ahead.len() >= CHUNKS_PER_JOB {
            return;
        }
        let Some(from) = self.next_at else {
            return;
        };
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        let mut buffers: Vec<Vec<u8>> = self.spare.drain(..).collect();
        self.next_at = Some(from + (CHUNKS_PER_JOB * READ_AHEAD_CHUNK) as u64);
        self.job = Some(self.pool.run(move || {
            let mut chunks = Vec::with_capacity(CHUNKS_PER_JOB);
            if reader.position() != from
                && let Err(e) = reader.seek(SeekFrom::Start(from))
            {
                chunks.push((from, Err(e)));
                return (reader, chunks);
            }
            for i in 0..CHUNKS_PER_JOB {
                let start = from + (i * READ_AHEAD_CHUNK) as u64;
                let mut buf = buffers.pop().unwrap_or_default();
                buf.resize(READ_AHEAD_CHUNK, 0);
                let result = read_full(&mut reader, &mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let last = result.as_ref().map_or(true, |b| b.len() < READ_AHEAD_CHUNK);
                chunks.push((start, result));
                if last {
                    break;
                }
            }
            (reader, chunks)
        }));
    }

    /// Waits for the job in the pool and puts its chunks behind those ahead.
    async fn settle(&mut self) -> io::Result<()> {
        if let Some(job) = self.job.take() {
            let (reader, chunks) = job
                .await
                .map_err(|_| io::Error::other("a decryption worker stopped"))?;
            self.reader = Some(reader);
            let ended = chunks
                .last()
                .is_some_and(|(_, r)| r.as_ref().map_or(true, |b| b.len() < READ_AHEAD_CHUNK));
            if ended {
                self.next_at = None;
            }
            self.ahead.extend(chunks);
        }
        Ok(())
    }

    /// Hands `reply` the `len` bytes from `offset`, fewer only where the file ends; `None` at
    /// or past the end. Some clients (libssh2, so curl) treat a short read in the middle of a
    /// file as an error, so a read across two chunks is joined (the one case that copies twice).
    pub async fn read_with<T>(
        &mut self,
        offset: u64,
        len: usize,
        reply: impl FnOnce(&[u8]) -> T,
    ) -> io::Result<Option<T>> {
        let mut joined = match self.ready(offset).await? {
            None => return Ok(None),
            Some(data) if data.len() >= len => return Ok(Some(reply(&data[..len]))),
            Some(data) => {
                let mut joined = Vec::with_capacity(len);
                joined.extend_from_slice(data);
                joined
            }
        };
        while joined.len() < len {
            match self.ready(offset + joined.len() as u64).await? {
                None => break,
                Some(data) => {
                    let n = data.len().min(len - joined.len());
                    joined.extend_from_slice(&data[..n]);
                }
            }
        }
        Ok(Some(reply(&joined)))
    }

    /// The plaintext from `offset` to the end of the chunk that holds it; `None` at or past the
    /// end of the file.
    async fn ready(&mut self, offset: u64) -> io::Result<Option<&[u8]>> {
        if offset >= self.size {
            return Ok(None);
        }
        let holds = |start: u64, len: usize| (start..start + len as u64).contains(&offset);
        if !self
            .current
            .as_ref()
            .is_some_and(|(start, data)| holds(*start, data.len()))
        {
            if let Some((_, used)) = self.current.take() {
                self.spare.push(used);
            }
            loop {
                // Chunks before `offset` are not wanted any more.
                while let Some((start, Ok(data))) = self.ahead.front() {
                    if holds(*start, data.len()) || *start > offset {
                        break;
                    }
                    if let Some((_, Ok(used))) = self.ahead.pop_front() {
                        self.spare.push(used);
                    }
                }
                match self.ahead.front() {
                    Some((start, _)) if *start == offset - offset % READ_AHEAD_CHUNK as u64 => {
                        if let Some((start, result)) = self.ahead.pop_front() {
                            let data = result?;
                            if !holds(start, data.len()) {
                                return Ok(None);
                            }
                            self.current = Some((start, data));
                        }
                        break;
                    }
                    Some((_, Err(_))) => {
                        if let Some((_, Err(e))) = self.ahead.pop_front() {
                            return Err(e);
                        }
                    }
                    Some(_) => {
                        // A read elsewhere: start again from its chunk.
                        self.restart(offset).await?;
                    }
                    None if self.job.is_some() => self.settle().await?,
                    None => self.restart(offset).await?,
                }
            }
        }
        self.refill();
        Ok(self
            .current
            .as_ref()
            .map(|(start, data)| &data[(offset - start) as usize..]))
    }

    /// Drops what is ahead and sends the next job to the chunk that holds `offset`.
    async fn restart(&mut self, offset: u64) -> io::Result<()> {
        self.settle().await?;
        for (_, chunk) in self.ahead.drain(..) {
            if let Ok(used) = chunk {
                self.spare.push(used);
            }
        }
        self.next_at = Some(offset - offset % READ_AHEAD_CHUNK as u64);
        self.refill();
        if self.job.is_none() {
            return Err(io::Error::other("the download's reader is gone"));
        }
        self.settle().await
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(reader: &mut BlobReader, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
