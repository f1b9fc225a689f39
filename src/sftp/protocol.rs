//! SFTP version 3 wire format (draft-ietf-secsh-filexfer-02): request parsing and reply encoding.
//! Paths stay raw bytes here; the virtual tree decides what they mean.

use bytes::{BufMut, Bytes, BytesMut};

pub const VERSION: u32 = 3;

pub const FXP_INIT: u8 = 1;
pub const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_READLINK: u8 = 19;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;
const FXP_EXTENDED: u8 = 200;
const FXP_EXTENDED_REPLY: u8 = 201;

pub const FXF_READ: u32 = 0x01;
pub const FXF_WRITE: u32 = 0x02;
pub const FXF_APPEND: u32 = 0x04;
pub const FXF_CREAT: u32 = 0x08;
pub const FXF_TRUNC: u32 = 0x10;
pub const FXF_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Status codes of SFTP v3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Ok = 0,
    Eof = 1,
    NoSuchFile = 2,
    PermissionDenied = 3,
    Failure = 4,
    BadMessage = 5,
    OpUnsupported = 8,
}

/// The extension announced in VERSION (and implemented): OpenSSH's transfer limits.
pub const LIMITS_EXTENSION: &str = "limits@openssh.com";

/// The largest request accepted from a client, header included.
pub const MAX_PACKET: u32 = 262_144 + 1024;
/// Largest read reply payload (OpenSSH's client rejects larger) and largest write we invite.
pub const MAX_READ: u32 = 261_120;
pub const MAX_WRITE: u32 = 261_120;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    pub permissions: Option<u32>,
    pub times: Option<(u32, u32)>,
}

#[derive(Debug)]
pub enum Request {
    Open {
        id: u32,
        path: Bytes,
        pflags: u32,
    },
    Close {
        id: u32,
        handle: Bytes,
    },
    Read {
        id: u32,
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        handle: Bytes,
        offset: u64,
        data: Bytes,
    },
    Lstat {
        id: u32,
        path: Bytes,
    },
    Fstat {
        id: u32,
        handle: Bytes,
    },
    Setstat {
        id: u32,
        path: Bytes,
    },
    Fsetstat {
        id: u32,
        handle: Bytes,
    },
    Opendir {
        id: u32,
        path: Bytes,
    },
    Readdir {
        id: u32,
        handle: Bytes,
    },
    Remove {
        id: u32,
        path: Bytes,
    },
    Mkdir {
        id: u32,
        path: Bytes,
    },
    Rmdir {
        id: u32,
        path: Bytes,
    },
    Realpath {
        id: u32,
        path: Bytes,
    },
    Stat {
        id: u32,
        path: Bytes,
    },
    Rename {
        id: u32,
        from: Bytes,
        to: Bytes,
    },
    Readlink {
        id: u32,
        path: Bytes,
    },
    Symlink {
        id: u32,
    },
    Extended {
        id: u32,
        name: Bytes,
    },
    Unknown {
        id: u32,
        kind: u8,
    },
}

impl Request {
    pub fn id(&self) -> u32 {
        use Request::*;
        match self {
            Open { id, .. }
            | Close { id, .. }
            | Read { id, .. }
            | Write { id, .. }
            | Lstat { id, .. }
            | Fstat { id, .. }
            | Setstat { id, .. }
            | Fsetstat { id, .. }
            | Opendir { id, .. }
            | Readdir { id, .. }
            | Remove { id, .. }
            | Mkdir { id, .. }
            | Rmdir { id, .. }
            | Realpath { id, .. }
            | Stat { id, .. }
            | Rename { id, .. }
            | Readlink { id, .. }
            | Symlink { id }
            | Extended { id, .. }
            | Unknown { id, .. } => *id,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Reads fields from one packet body without copying.
struct Fields {
    buf: Bytes,
}

impl Fields {
    fn u8(&mut self) -> Result<u8, Malformed> {
        if self.buf.is_empty() {
            return Err(Malformed);
        }
        let b = self.buf[0];
        self.buf = self.buf.slice(1..);
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    fn take(&mut self, n: usize) -> Result<Bytes, Malformed> {
        if self.buf.len() < n {
            return Err(Malformed);
        }
        Ok(self.buf.split_to(n))
    }

    fn string(&mut self) -> Result<Bytes, Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn attrs(&mut self) -> Result<Attrs, Malformed> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = self.u32()?;
            for _ in 0..n {
                self.string()?;
                self.string()?;
            }
        }
        Ok(a)
    }
}

/// Parses one packet body (type byte onwards, without the length prefix).
pub fn parse_request(body: Bytes) -> Result<Request, Malformed> {
    let mut f = Fields { buf: body };
    let kind = f.u8()?;
    let id = f.u32()?;
    let request = match kind {
        FXP_OPEN => {
            let path = f.string()?;
            let pflags = f.u32()?;
            f.attrs()?;
            Request::Open { id, path, pflags }
        }
        FXP_CLOSE => Request::Close {
            id,
            handle: f.string()?,
        },
        FXP_READ => Request::Read {
            id,
            handle: f.string()?,
            offset: f.u64()?,
            len: f.u32()?,
        },
        FXP_WRITE => Request::Write {
            id,
            handle: f.string()?,
            offset: f.u64()?,
            data: f.string()?,
        },
        FXP_LSTAT => Request::Lstat {
            id,
            path: f.string()?,
        },
        FXP_FSTAT => Request::Fstat {
            id,
            handle: f.string()?,
        },
        FXP_SETSTAT => {
            let path = f.string()?;
            f.attrs()?;
            Request::Setstat { id, path }
        }
        FXP_FSETSTAT => {
            let handle = f.string()?;
            f.attrs()?;
            Request::Fsetstat { id, handle }
        }
        FXP_OPENDIR => Request::Opendir {
            id,
            path: f.string()?,
        },
        FXP_READDIR => Request::Readdir {
            id,
            handle: f.string()?,
        },
        FXP_REMOVE => Request::Remove {
            id,
            path: f.string()?,
        },
        FXP_MKDIR => {
            let path = f.string()?;
            f.attrs()?;
            Request::Mkdir { id, path }
        }
        FXP_RMDIR => Request::Rmdir {
            id,
            path: f.string()?,
        },
        FXP_REALPATH => Request::Realpath {
            id,
            path: f.string()?,
        },
        FXP_STAT => Request::Stat {
            id,
            path: f.string()?,
        },
        FXP_RENAME => Request::Rename {
            id,
            from: f.string()?,
            to: f.string()?,
        },
        FXP_READLINK => Request::Readlink {
            id,
            path: f.string()?,
        },
        FXP_SYMLINK => Request::Symlink { id },
        FXP_EXTENDED => Request::Extended {
            id,
            name: f.string()?,
        },
        other => Request::Unknown { id, kind: other },
    };
    // Bytes after the last field are refused: a packet that carries more than it says (a
    // one-byte WRITE padded to 256 KiB) would otherwise keep its whole buffer alive. An
    // extended request's own fields follow its name.
    if !f.buf.is_empty() && !matches!(request, Request::Extended { .. } | Request::Unknown { .. }) {
        return Err(Malformed);
    }
    Ok(request)
}

/// Parses the client's INIT: its version (extensions are ignored).
pub fn parse_init(body: &[u8]) -> Result<u32, Malformed> {
    if body.len() < 5 || body[0] != FXP_INIT {
        return Err(Malformed);
    }
    Ok(u32::from_be_bytes([body[1], body[2], body[3], body[4]]))
}

/// Builds one reply packet with its length prefix.
struct Packet(BytesMut);

impl Packet {
    fn new(kind: u8, id: Option<u32>, capacity: usize) -> Self {
        let mut b = BytesMut::with_capacity(capacity + 9);
        b.put_u32(0);
        b.put_u8(kind);
        if let Some(id) = id {
            b.put_u32(id);
        }
        Packet(b)
    }

    fn string(&mut self, s: &[u8]) -> &mut Self {
        self.0.put_u32(s.len() as u32);
        self.0.put_slice(s);
        self
    }

    fn attrs(&mut self, a: &Attrs) -> &mut Self {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if a.uid_gid.is_some() {
            flags |= ATTR_UIDGID;
        }
        if a.permissions.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if a.times.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        self.0.put_u32(flags);
        if let Some(s) = a.size {
            self.0.put_u64(s);
        }
        if let Some((u, g)) = a.uid_gid {
            self.0.put_u32(u);
            self.0.put_u32(g);
        }
        if let Some(p) = a.permissions {
            self.0.put_u32(p);
        }
        if let Some((at, mt)) = a.times {
            self.0.put_u32(at);
            self.0.put_u32(mt);
        }
        self
    }

    fn finish(mut self) -> Bytes {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0.freeze()
    }
}

pub fn version_reply() -> Bytes {
    let mut p = Packet::new(FXP_VERSION, None, 64);
    p.0.put_u32(VERSION);
    p.string(LIMITS_EXTENSION.as_bytes()).string(b"1");
    p.finish()
}

pub fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let mut p = Packet::new(FXP_STATUS, Some(id), 16 + message.len());
    p.0.put_u32(code as u32);
    p.string(message.as_bytes()).string(b"en");
    p.finish()
}

pub fn handle(id: u32, handle: &[u8]) -> Bytes {
    let mut p = Packet::new(FXP_HANDLE, Some(id), 8 + handle.len());
    p.string(handle);
    p.finish()
}

pub fn data(id: u32, data: &[u8]) -> Bytes {
    let mut p = Packet::new(FXP_DATA, Some(id), 4 + data.len());
    p.string(data);
    p.finish()
}

pub fn attrs(id: u32, a: &Attrs) -> Bytes {
    let mut p = Packet::new(FXP_ATTRS, Some(id), 40);
    p.attrs(a);
    p.finish()
}

/// One entry of a NAME reply.
#[derive(Debug, Clone)]
pub struct NameEntry {
    pub filename: String,
    pub longname: String,
    pub attrs: Attrs,
}

pub fn name(id: u32, entries: &[NameEntry]) -> Bytes {
    let mut p = Packet::new(FXP_NAME, Some(id), 128 * entries.len());
    p.0.put_u32(entries.len() as u32);
    for e in entries {
        p.string(e.filename.as_bytes())
            .string(e.longname.as_bytes())
            .attrs(&e.attrs);
    }
    p.finish()
}

/// The reply to `limits@openssh.com`.
pub fn limits_reply(id: u32, max_open_handles: u64) -> Bytes {
    let mut p = Packet::new(FXP_EXTENDED_REPLY, Some(id), 32);
    p.0.put_u64(u64::from(MAX_PACKET - 1024));
    p.0.put_u64(u64::from(MAX_READ));
    p.0.put_u64(u64::from(MAX_WRITE));
    p.0.put_u64(max_open_handles);
    p.finish()
}

/// Cuts the byte stream of a channel into packets. Each packet is copied once, into a buffer of
/// exactly its size (so buffers are recycled by the allocator instead of growing and moving).
#[derive(Default)]
pub struct Framer {
    len: [u8; 4],
    len_have: usize,
    packet: Option<BytesMut>,
    need: usize,
}

impl Framer {
    /// Feeds bytes; calls `emit` with each complete packet body (without the length prefix).
    /// `emit` returning false stops early.
    pub fn push(
        &mut self,
        mut data: &[u8],
        mut emit: impl FnMut(Bytes) -> bool,
    ) -> Result<(), Malformed> {
        while !data.is_empty() {
            let Some(packet) = self.packet.as_mut() else {
                let take = (4 - self.len_have).min(data.len());
                self.len[self.len_have..self.len_have + take].copy_from_slice(&data[..take]);
                self.len_have += take;
                data = &data[take..];
                if self.len_have == 4 {
                    let len = u32::from_be_bytes(self.len);
                    if len == 0 || len > MAX_PACKET {
                        return Err(Malformed);
                    }
                    self.len_have = 0;
                    self.need = len as usize;
                    self.packet = Some(BytesMut::with_capacity(self.need));
                }
                continue;
            };
            let take = (self.need - packet.len()).min(data.len());
            packet.extend_from_slice(&data[..take]);
            data = &data[take..];
            if packet.len() == self.need
                && let Some(done) = self.packet.take()
                && !emit(done.freeze())
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u8, id: u32, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_u32(id);
        b.put_slice(rest);
        b.freeze()
    }

    fn s(x: &[u8]) -> Vec<u8> {
        let mut v = (x.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(x);
        v
    }

    #[test]
    fn parses_open_and_write() {
        let mut rest = s(b"/outbox/dsl/a.pdf");
        rest.extend_from_slice(&(FXF_WRITE | FXF_CREAT | FXF_TRUNC).to_be_bytes());
        rest.extend_from_slice(&(ATTR_PERMISSIONS).to_be_bytes());
        rest.extend_from_slice(&0o644u32.to_be_bytes());
        let Request::Open { id, path, pflags } =
            parse_request(request(FXP_OPEN, 7, &rest)).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id, &path[..], pflags),
            (7, &b"/outbox/dsl/a.pdf"[..], 0x1a)
        );

        let mut rest = s(b"h1");
        rest.extend_from_slice(&5u64.to_be_bytes());
        rest.extend_from_slice(&s(b"hello"));
        let Request::Write { offset, data, .. } =
            parse_request(request(FXP_WRITE, 8, &rest)).unwrap()
        else {
            panic!()
        };
        assert_eq!((offset, &data[..]), (5, &b"hello"[..]));

        // The same WRITE padded after its data is refused, as is any request with bytes after
        // its last field; an extended request carries its own fields after its name.
        let mut padded = rest.clone();
        padded.extend_from_slice(&[0u8; 1000]);
        assert_eq!(
            parse_request(request(FXP_WRITE, 8, &padded)).unwrap_err(),
            Malformed
        );
        let mut close = s(b"h1");
        close.push(0);
        assert_eq!(
            parse_request(request(FXP_CLOSE, 9, &close)).unwrap_err(),
            Malformed
        );
        let mut ext = s(b"limits@openssh.com");
        ext.extend_from_slice(&s(b"more"));
        assert!(parse_request(request(FXP_EXTENDED, 10, &ext)).is_ok());
    }

    #[test]
    fn truncated_packets_are_malformed() {
        assert_eq!(
            parse_request(request(FXP_READ, 1, &s(b"h"))).unwrap_err(),
            Malformed
        );
        assert_eq!(
            parse_request(Bytes::from_static(&[FXP_OPEN, 0, 0])).unwrap_err(),
            Malformed
        );
        let mut huge = s(b"h");
        huge[0] = 0xff;
        assert!(parse_request(request(FXP_CLOSE, 1, &huge)).is_err());
    }

    #[test]
    fn framing_across_and_within_chunks() {
        let mut f = Framer::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        f.push(&[0, 0], |p| {
            got.push(p.to_vec());
            true
        })
        .unwrap();
        f.push(&[0, 3, 1, 2], |p| {
            got.push(p.to_vec());
            true
        })
        .unwrap();
        assert!(got.is_empty());
        f.push(&[3, 0, 0, 0, 1, 9, 0], |p| {
            got.push(p.to_vec());
            true
        })
        .unwrap();
        assert_eq!(got, vec![vec![1, 2, 3], vec![9]]);
        let mut f = Framer::default();
        assert!(f.push(&(MAX_PACKET + 1).to_be_bytes(), |_| true).is_err());
        assert!(Framer::default().push(&[0, 0, 0, 0], |_| true).is_err());
    }

    #[test]
    fn replies_have_correct_lengths() {
        let r = status(3, StatusCode::PermissionDenied, "no");
        assert_eq!(
            u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize,
            r.len() - 4
        );
        assert_eq!(r[4], FXP_STATUS);
        let v = version_reply();
        assert_eq!(&v[5..9], &3u32.to_be_bytes());
        let d = data(4, b"abc");
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
        assert_eq!(
            (d[4], &d[9..13], &d[13..]),
            (FXP_DATA, &3u32.to_be_bytes()[..], &b"abc"[..])
        );
        let l = limits_reply(9, 64);
        assert_eq!(l.len(), 4 + 1 + 4 + 32);
    }
}
