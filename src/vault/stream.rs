//! age's payload, sealed and opened here. An age file is a header (one stanza per recipient
//! wrapping a random file key, then a MAC) followed by the payload: a 16-byte nonce, then the
//! plaintext in 64 KiB chunks, each sealed with ChaCha20-Poly1305 under a key derived from the
//! file key, with an 11-byte big-endian chunk counter and a last-chunk flag as nonce (the STREAM
//! construction of age's specification).
//!
//! The age crate still writes and checks every header; it hands us the file key through its own
//! `Recipient` and `Identity` traits. The chunks go through the system OpenSSL's
//! ChaCha20-Poly1305, which seals 4.8 GB/s on one core of our machines (AVX-512), against
//! 2.8 GB/s for aws-lc's and 1.3 GB/s for the one inside the age crate (docs/benchmarks.md).
//! What is written here is a standard age file: the tests read it with the age crate and with
//! the `age` CLI, and read the age crate's files here.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use age::secrecy::{ExposeSecret, SecretBox};
use age_core::format::{FileKey, Stanza};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use sha2::Sha256;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const SEALED_CHUNK: usize = CHUNK + TAG;
/// The payload nonce between the header and the first chunk.
const PAYLOAD_NONCE: usize = 16;
/// Chunks read and opened per file read.
const WINDOW_CHUNKS: usize = 4;
/// A header longer than this is not one of ours (each recipient takes about 100 bytes).
const MAX_HEADER: usize = 1 << 20;

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The file key age generated or unwrapped, caught on its way through a recipient or identity.
#[derive(Default)]
struct KeyTap(RefCell<Option<SecretBox<[u8; 16]>>>);

impl KeyTap {
    fn keep(&self, key: &FileKey) {
        *self.0.borrow_mut() = Some(SecretBox::init_with_mut(|k: &mut [u8; 16]| {
            k.copy_from_slice(key.expose_secret())
        }));
    }

    /// The payload cipher: its key is HKDF-SHA-256 of the file key, salted with the payload
    /// nonce.
    fn payload_cipher(&self, nonce: &[u8], seal: bool) -> io::Result<ChunkCipher> {
        let held = self.0.borrow();
        let file_key = held
            .as_ref()
            .ok_or_else(|| io::Error::other("age did not hand over the file key"))?;
        let key = SecretBox::init_with_mut(|key: &mut [u8; 32]| {
            // 32 bytes is far below HKDF-SHA-256's limit of 8,160: expand cannot fail.
            let _ = hkdf::Hkdf::<Sha256>::new(Some(nonce), file_key.expose_secret())
                .expand(b"payload", key);
        });
        ChunkCipher::new(key.expose_secret(), seal)
    }
}

/// ChaCha20-Poly1305 over one file's chunks, one OpenSSL context reused for all of them.
struct ChunkCipher {
    ctx: CipherCtx,
    seal: bool,
}

fn openssl_error(e: openssl::error::ErrorStack) -> io::Error {
    io::Error::other(format!("openssl: {e}"))
}

impl ChunkCipher {
    fn new(key: &[u8; 32], seal: bool) -> io::Result<ChunkCipher> {
        let mut ctx = CipherCtx::new().map_err(openssl_error)?;
        let cipher = Some(Cipher::chacha20_poly1305());
        if seal {
            ctx.encrypt_init(cipher, Some(key), None)
        } else {
            ctx.decrypt_init(cipher, Some(key), None)
        }
        .map_err(openssl_error)?;
        Ok(ChunkCipher { ctx, seal })
    }

    /// Encrypts `chunk` in place; returns its tag.
    fn seal(&mut self, counter: u64, last: bool, chunk: &mut [u8]) -> io::Result<[u8; TAG]> {
        debug_assert!(self.seal);
        let nonce = chunk_nonce(counter, last);
        self.ctx
            .encrypt_init(None, None, Some(&nonce))
            .map_err(openssl_error)?;
        let len = chunk.len();
        self.ctx
            .cipher_update_inplace(chunk, len)
            .map_err(openssl_error)?;
        self.ctx
            .cipher_final(&mut [0u8; TAG])
            .map_err(openssl_error)?;
        let mut tag = [0u8; TAG];
        self.ctx.tag(&mut tag).map_err(openssl_error)?;
        Ok(tag)
    }

    /// Decrypts a sealed chunk (ciphertext and tag) in place, leaving the plaintext at its
    /// start; false when the chunk does not authenticate, and then nothing in it may be used.
    fn open(&mut self, counter: u64, last: bool, sealed: &mut [u8]) -> io::Result<bool> {
        debug_assert!(!self.seal);
        let Some(len) = sealed.len().checked_sub(TAG) else {
            return Ok(false);
        };
        let nonce = chunk_nonce(counter, last);
        self.ctx
            .decrypt_init(None, None, Some(&nonce))
            .map_err(openssl_error)?;
        self.ctx.set_tag(&sealed[len..]).map_err(openssl_error)?;
        self.ctx
            .cipher_update_inplace(&mut sealed[..len], len)
            .map_err(openssl_error)?;
        Ok(self.ctx.cipher_final(&mut [0u8; TAG]).is_ok())
    }
}

/// A recipient or identity of the gateway's, with the file key caught on its way through.
struct Tapped<'a, T> {
    inner: &'a T,
    tap: &'a KeyTap,
}

impl KeyTap {
    fn wrap<'a, T>(&'a self, items: &'a [T]) -> Vec<Tapped<'a, T>> {
        items
            .iter()
            .map(|inner| Tapped { inner, tap: self })
            .collect()
    }
}

impl<T: age::Recipient> age::Recipient for Tapped<'_, T> {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        self.tap.keep(file_key);
        self.inner.wrap_file_key(file_key)
    }
}

impl<T: age::Identity> age::Identity for Tapped<'_, T> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        self.unwrap_stanzas(std::slice::from_ref(stanza))
    }

    fn unwrap_stanzas(&self, stanzas: &[Stanza]) -> Option<Result<FileKey, age::DecryptError>> {
        let found = self.inner.unwrap_stanzas(stanzas);
        if let Some(Ok(key)) = &found {
            self.tap.keep(key);
        }
        found
    }
}

/// The nonce of chunk `counter`: 11 bytes of big-endian counter, then the last-chunk flag.
fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Writes an age file: [`seal`] writes the header, [`Write`] takes the plaintext, and
/// [`SealWriter::finish`] seals the last chunk. Without `finish` the file is truncated, which
/// every reader rejects.
pub struct SealWriter<W: Write> {
    cipher: ChunkCipher,
    counter: u64,
    /// Plaintext of the chunk being filled; a full chunk waits for the next byte or for
    /// `finish`, which decide whether it is the last.
    chunk: Vec<u8>,
    out: W,
}

/// Starts an age file to `recipients` on `out`.
pub fn seal<W: Write>(
    recipients: &[age::x25519::Recipient],
    mut out: W,
) -> io::Result<SealWriter<W>> {
    let tap = KeyTap::default();
    let tapped = tap.wrap(recipients);
    let encryptor =
        age::Encryptor::with_recipients(tapped.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
    // age writes the header and the payload nonce; its own payload writer is left unused.
    let mut head = Vec::with_capacity(256 * recipients.len() + 64);
    drop(encryptor.wrap_output(&mut head)?);
    let nonce = head
        .len()
        .checked_sub(PAYLOAD_NONCE)
        .map(|at| &head[at..])
        .ok_or_else(|| io::Error::other("age wrote no header"))?;
    let cipher = tap.payload_cipher(nonce, true)?;
    out.write_all(&head)?;
    Ok(SealWriter {
        cipher,
        counter: 0,
        chunk: Vec::with_capacity(SEALED_CHUNK),
        out,
    })
}

impl<W: Write> SealWriter<W> {
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let tag = self.cipher.seal(self.counter, last, &mut self.chunk)?;
        self.chunk.extend_from_slice(&tag);
        self.out.write_all(&self.chunk)?;
        self.chunk.clear();
        self.counter += 1;
        Ok(())
    }

    /// Seals the last chunk (empty only when the whole file is) and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.chunk.len() == CHUNK {
            self.seal_chunk(false)?;
        }
        let n = (CHUNK - self.chunk.len()).min(data.len());
        self.chunk.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Where the header ends: after its MAC line, the first line that starts with `---` (stanza
/// lines start with `->` or are base64, which has no `-`). Called after age has parsed the
/// header and checked its MAC, so the bytes it ends on are the ones age read.
fn header_len(file: &File) -> io::Result<u64> {
    let mut head = Vec::new();
    let mut block = vec![0u8; 4096];
    loop {
        let n = file.read_at(&mut block, head.len() as u64)?;
        if n == 0 || head.len() > MAX_HEADER {
            return Err(corrupt("the age header has no end".into()));
        }
        head.extend_from_slice(&block[..n]);
        if let Some(mac) = head.windows(4).position(|w| w == b"\n---")
            && let Some(eol) = head[mac + 1..].iter().position(|&b| b == b'\n')
        {
            return Ok((mac + 1 + eol + 1) as u64);
        }
    }
}

/// A stored age file, readable at any plaintext offset. Every chunk is authenticated before a
/// byte of it is returned; a missing, cut, reordered or altered chunk is an error.
pub struct OpenReader {
    file: File,
    cipher: ChunkCipher,
    /// File offset of the first chunk.
    payload_at: u64,
    chunks: u64,
    size: u64,
    pos: u64,
    /// Chunks `window_first..window_first + window_count`, opened in place (each at a multiple
    /// of the sealed chunk size, its tag left behind it).
    window: Vec<u8>,
    window_first: u64,
    window_count: u64,
}

/// Opens an age file with the first of `identities` that can unwrap its file key.
pub fn open(file: File, identities: &[age::x25519::Identity]) -> io::Result<OpenReader> {
    let tap = KeyTap::default();
    let tapped = tap.wrap(identities);
    // age parses the header, unwraps the file key and checks the header's MAC.
    let decryptor = age::Decryptor::new(BufReader::with_capacity(4096, &file))
        .map_err(|e| io::Error::other(format!("age: {e}")))?;
    drop(
        decryptor
            .decrypt(tapped.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| io::Error::other(format!("age: {e}")))?,
    );
    let header = header_len(&file)?;
    let mut nonce = [0u8; PAYLOAD_NONCE];
    file.read_exact_at(&mut nonce, header)?;
    let cipher = tap.payload_cipher(&nonce, false)?;
    let payload_at = header + PAYLOAD_NONCE as u64;
    let sealed = file
        .metadata()?
        .len()
        .checked_sub(payload_at)
        .filter(|&len| len >= TAG as u64)
        .ok_or_else(|| corrupt("the age file is truncated: it has no payload".into()))?;
    let chunks = sealed.div_ceil(SEALED_CHUNK as u64);
    let last = sealed - (chunks - 1) * SEALED_CHUNK as u64;
    if last < TAG as u64 || (last == TAG as u64 && chunks > 1) {
        return Err(corrupt(
            "the age file is truncated: its last chunk is cut".into(),
        ));
    }
    Ok(OpenReader {
        file,
        cipher,
        payload_at,
        chunks,
        size: (chunks - 1) * CHUNK as u64 + (last - TAG as u64),
        pos: 0,
        window: Vec::new(),
        window_first: 0,
        window_count: 0,
    })
}

impl OpenReader {
    /// The plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    fn plain_len(&self, chunk: u64) -> usize {
        if chunk + 1 == self.chunks {
            (self.size - chunk * CHUNK as u64) as usize
        } else {
            CHUNK
        }
    }

    /// Reads and opens the chunks from `first` on into the window.
    fn load(&mut self, first: u64) -> io::Result<()> {
        self.window_count = 0;
        let count = (WINDOW_CHUNKS as u64).min(self.chunks - first);
        let last = first + count - 1;
        let len = (count - 1) as usize * SEALED_CHUNK + self.plain_len(last) + TAG;
        self.window.resize(len, 0);
        self.file.read_exact_at(
            &mut self.window,
            self.payload_at + first * SEALED_CHUNK as u64,
        )?;
        for (i, sealed) in self.window.chunks_mut(SEALED_CHUNK).enumerate() {
            let chunk = first + i as u64;
            if !self.cipher.open(chunk, chunk + 1 == self.chunks, sealed)? {
                return Err(corrupt(format!(
                    "the age file fails authentication at chunk {chunk}: it was altered or cut"
                )));
            }
        }
        self.window_first = first;
        self.window_count = count;
        Ok(())
    }
}

impl Read for OpenReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() && self.pos < self.size {
            let chunk = self.pos / CHUNK as u64;
            if !(self.window_first..self.window_first + self.window_count).contains(&chunk) {
                if filled > 0 {
                    break;
                }
                self.load(chunk)?;
            }
            let within = (self.pos % CHUNK as u64) as usize;
            let at = (chunk - self.window_first) as usize * SEALED_CHUNK;
            let plain = &self.window[at + within..at + self.plain_len(chunk)];
            let n = plain.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&plain[..n]);
            filled += n;
            self.pos += n as u64;
        }
        Ok(filled)
    }
}

impl Seek for OpenReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Writes `data` through a SealWriter in pieces of `piece` bytes.
    fn seal_bytes(r: &age::x25519::Recipient, data: &[u8], piece: usize) -> Vec<u8> {
        let mut w = seal(std::slice::from_ref(r), Vec::new()).unwrap();
        for part in data.chunks(piece.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn age_crate_seal(r: &age::x25519::Recipient, data: &[u8]) -> Vec<u8> {
        let e = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    fn age_crate_open(id: &age::x25519::Identity, file: &[u8]) -> io::Result<Vec<u8>> {
        let d = age::Decryptor::new(file).map_err(io::Error::other)?;
        let mut r = d
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn on_disk(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.age");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file)
    }

    fn open_all(id: &age::x25519::Identity, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let (_dir, file) = on_disk(bytes);
        let mut r = open(file, std::slice::from_ref(id))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        assert_eq!(out.len() as u64, r.size());
        Ok(out)
    }

    const SIZES: [usize; 9] = [
        0,
        1,
        100,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK,
        5 * CHUNK + 3,
        9 * CHUNK,
    ];

    #[test]
    fn the_age_crate_reads_what_is_sealed_here() {
        let (id, r) = keys();
        for size in SIZES {
            let data = plaintext(size);
            for piece in [1000, CHUNK, 261_120] {
                let sealed = seal_bytes(&r, &data, piece);
                assert_eq!(
                    age_crate_open(&id, &sealed).unwrap(),
                    data,
                    "size {size}, piece {piece}"
                );
            }
        }
    }

    #[test]
    fn files_of_the_age_crate_open_here() {
        let (id, r) = keys();
        for size in SIZES {
            let data = plaintext(size);
            assert_eq!(
                open_all(&id, &age_crate_seal(&r, &data)).unwrap(),
                data,
                "size {size}"
            );
        }
    }

    #[test]
    fn reads_at_any_offset() {
        let (id, r) = keys();
        let data = plaintext(9 * CHUNK + 1234);
        let (_dir, file) = on_disk(&seal_bytes(&r, &data, 5000));
        let mut reader = open(file, std::slice::from_ref(&id)).unwrap();
        for (at, len) in [
            (0, 10),
            (CHUNK * 7 - 3, 10),
            (5, CHUNK * 6),
            (CHUNK * 9, 2000),
            (100, 1),
        ] {
            reader.seek(SeekFrom::Start(at as u64)).unwrap();
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = reader.read(&mut buf[got..]).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let want = &data[at.min(data.len())..(at + len).min(data.len())];
            assert_eq!(&buf[..got], want, "at {at}, len {len}");
        }
        reader
            .seek(SeekFrom::Start(data.len() as u64 + 10))
            .unwrap();
        assert_eq!(reader.read(&mut [0u8; 10]).unwrap(), 0);
    }

    #[test]
    fn a_file_cut_at_a_chunk_boundary_is_refused() {
        let (id, r) = keys();
        let data = plaintext(3 * CHUNK + 10);
        let sealed = seal_bytes(&r, &data, CHUNK);
        // Without its last chunk the file ends on a chunk that is not flagged as the last.
        let cut = &sealed[..sealed.len() - (10 + TAG)];
        let e = open_all(&id, cut).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(age_crate_open(&id, cut).is_err());
        // Cut inside a chunk, or down to less than a tag.
        for keep in [sealed.len() - 5, sealed.len() - (10 + TAG) - 100] {
            assert!(open_all(&id, &sealed[..keep]).is_err(), "cut to {keep}");
        }
        let header = sealed.len() - (3 * SEALED_CHUNK + 10 + TAG);
        assert!(open_all(&id, &sealed[..header + 5]).is_err());
    }

    #[test]
    fn an_altered_or_extended_file_is_refused() {
        let (id, r) = keys();
        let data = plaintext(2 * CHUNK + 10);
        let sealed = seal_bytes(&r, &data, CHUNK);
        for at in [
            sealed.len() - 1,
            sealed.len() - 20,
            sealed.len() - 2 * SEALED_CHUNK,
        ] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open_all(&id, &bad).is_err(), "flipped byte {at}");
        }
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert!(open_all(&id, &longer).is_err());
        // Two chunks swapped.
        let start = sealed.len() - (2 * SEALED_CHUNK + 10 + TAG);
        let mut swapped = sealed.clone();
        let (a, b) = swapped[start..start + 2 * SEALED_CHUNK].split_at_mut(SEALED_CHUNK);
        a.swap_with_slice(b);
        assert!(open_all(&id, &swapped).is_err());
    }

    #[test]
    fn an_empty_last_chunk_after_data_is_refused() {
        let (id, r) = keys();
        // Seal one full chunk as not-last, then an empty last chunk: age forbids this shape.
        let mut w = seal(std::slice::from_ref(&r), Vec::new()).unwrap();
        w.write_all(&plaintext(CHUNK)).unwrap();
        w.seal_chunk(false).unwrap();
        let odd = w.finish().unwrap();
        assert!(open_all(&id, &odd).is_err());
        assert!(age_crate_open(&id, &odd).is_err());
    }

    #[test]
    fn a_stranger_key_cannot_open() {
        let (_, r) = keys();
        let (other, _) = keys();
        assert!(open_all(&other, &seal_bytes(&r, b"secret", 10)).is_err());
    }
}
