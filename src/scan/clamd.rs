//! The client side of clamd's `INSTREAM` command, blocking, for the upload pool: the
//! command `zINSTREAM\0`, then chunks each led by its length as 4 big-endian bytes, then a
//! zero length; clamd answers one NUL-terminated line. A unix socket or a TCP address.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::Verdict;

/// Where clamd listens: `unix:/run/clamav/clamd.ctl` (or a bare absolute path) or
/// `tcp:127.0.0.1:3310`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Address, String> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            let addr: SocketAddr = rest
                .parse()
                .map_err(|_| format!("`{rest}` is not HOST:PORT (an IP address and a port)"))?;
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "`{rest}` is not a loopback address: clamd must run on this host, since \
                     the files reach it unencrypted"
                ));
            }
            return Ok(Address::Tcp(addr));
        }
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.is_empty() {
            return Err("no socket path after `unix:`".into());
        }
        Ok(Address::Unix(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// The longest answer read from clamd; a real one is a short line.
const MAX_REPLY: usize = 4096;
/// The longest signature name passed on (clamd's are well under 100 characters).
const MAX_NAME: usize = 200;

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn open(address: &Address, timeout: Duration) -> io::Result<Conn> {
        let conn = match address {
            Address::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Unix(s)
            }
            Address::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
        };
        Ok(conn)
    }

    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    /// Nothing sent yet: the connection is made with the first bytes (an upload opened and left
    /// idle holds no clamd thread).
    Idle,
    Open(Conn),
    /// The zero chunk went out; the answer is still to be read.
    Ended(Conn),
    Failed(String),
}

/// One file streaming to clamd. A failure never stops the upload: it is kept, and the verdict
/// reports it.
pub struct InStream {
    address: Address,
    timeout: Duration,
    state: State,
}

impl InStream {
    pub fn new(address: Address, timeout: Duration) -> InStream {
        InStream {
            address,
            timeout,
            state: State::Idle,
        }
    }

    fn connect(&mut self) {
        if let State::Idle = self.state {
            self.state = match Conn::open(&self.address, self.timeout).and_then(|mut c| {
                c.write_all(b"zINSTREAM\0")?;
                Ok(c)
            }) {
                Ok(c) => State::Open(c),
                Err(e) => {
                    State::Failed(format!("clamd at {} cannot be reached: {e}", self.address))
                }
            };
        }
    }

    /// Sends the next bytes of the file. A write that blocks holds the caller back: clamd's
    /// pace is the upload's.
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.connect();
        let State::Open(conn) = &mut self.state else {
            return;
        };
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let sent = conn
            .write_all(&len.to_be_bytes())
            .and_then(|()| conn.write_all(&data[..len as usize]));
        if let Err(e) = sent
            && let State::Open(conn) = std::mem::replace(&mut self.state, State::Idle)
        {
            self.state = State::Failed(why_closed(conn, e));
        }
    }

    /// Sends the end of the file; clamd starts scanning while the caller finishes its own work.
    pub fn end(&mut self) {
        self.connect();
        self.state = match std::mem::replace(&mut self.state, State::Idle) {
            State::Open(mut conn) => match conn.write_all(&[0, 0, 0, 0]) {
                Ok(()) => State::Ended(conn),
                Err(e) => State::Failed(why_closed(conn, e)),
            },
            other => other,
        };
    }

    /// clamd's answer for the whole file.
    pub fn verdict(mut self) -> Verdict {
        self.end();
        match self.state {
            State::Ended(mut conn) => match read_reply(&mut conn) {
                Ok(reply) => parse_reply(&reply),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Verdict::Failed(format!(
                        "clamd gave no answer within {} s",
                        self.timeout.as_secs()
                    ))
                }
                Err(e) => Verdict::Failed(format!("reading clamd's answer failed: {e}")),
            },
            State::Failed(why) => Verdict::Failed(why),
            State::Idle | State::Open(_) => Verdict::Failed("the scan was not finished".into()),
        }
    }
}

/// Why a write to clamd failed. clamd closes a stream it will not take (its `StreamMaxLength`)
/// after saying why; the reason is read when it is there.
fn why_closed(mut conn: Conn, e: io::Error) -> String {
    let _ = conn.set_read_timeout(Duration::from_millis(500));
    match read_reply(&mut conn).map(|r| parse_reply(&r)) {
        Ok(Verdict::Failed(why)) => why,
        _ => format!("the connection to clamd failed while sending: {e}"),
    }
}

/// Reads up to the NUL that ends clamd's answer (or the end of the connection).
fn read_reply(conn: &mut Conn) -> io::Result<Vec<u8>> {
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.contains(&0) || reply.len() >= MAX_REPLY {
            break;
        }
    }
    Ok(reply)
}

/// Printable ASCII only, cut to `max` characters: what clamd says is shown to users and logged.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// clamd's answer, exactly: `stream: OK`, `stream: NAME FOUND`, or `… ERROR`; anything else
/// (nothing at all, a truncated line) is a failure, never a clean file.
pub fn parse_reply(reply: &[u8]) -> Verdict {
    let line = reply.split(|b| *b == 0).next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Verdict::Failed("clamd's answer is not text".into());
    };
    let line = line.trim_end_matches(['\n', '\r']);
    if line.is_empty() {
        return Verdict::Failed("clamd closed the connection without an answer".into());
    }
    if let Some(rest) = line.strip_prefix("stream: ") {
        if rest == "OK" {
            return Verdict::Clean;
        }
        if let Some(name) = rest.strip_suffix(" FOUND") {
            let name = printable(name.trim(), MAX_NAME);
            if !name.is_empty() {
                return Verdict::Infected(name);
            }
        }
    }
    if let Some(why) = line.strip_suffix(" ERROR") {
        return Verdict::Failed(format!("clamd: {}", printable(why.trim(), MAX_NAME)));
    }
    Verdict::Failed(format!(
        "unexpected answer from clamd: {}",
        printable(line, MAX_NAME)
    ))
}

/// Asks clamd whether it is there (`zPING`, answer `PONG`), for `check-config`.
pub fn ping(address: &Address, timeout: Duration) -> io::Result<()> {
    let mut conn = Conn::open(address, timeout)?;
    conn.write_all(b"zPING\0")?;
    let reply = read_reply(&mut conn)?;
    match reply.split(|b| *b == 0).next() {
        Some(b"PONG") => Ok(()),
        _ => Err(io::Error::other(format!(
            "answered `{}` instead of PONG",
            printable(&String::from_utf8_lossy(&reply), MAX_NAME)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_exactly() {
        assert_eq!(parse_reply(b"stream: OK\0"), Verdict::Clean);
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            Verdict::Infected("Eicar-Test-Signature".into())
        );
        assert_eq!(
            parse_reply(b"stream: Win.Test.EICAR_HDB-1.UNOFFICIAL FOUND\n"),
            Verdict::Infected("Win.Test.EICAR_HDB-1.UNOFFICIAL".into())
        );
        for failed in [
            &b"INSTREAM size limit exceeded. ERROR\0"[..],
            b"",
            b"\0",
            b"stream: OK but not really\0",
            b"stream:  FOUND\0",
            b"stream: O",
            b"OK\0",
            b"\xff\xfe\0",
            b"UNKNOWN COMMAND\0",
        ] {
            assert!(
                matches!(parse_reply(failed), Verdict::Failed(_)),
                "{failed:?} is not a clean or infected answer"
            );
        }
        assert_eq!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Verdict::Failed("clamd: INSTREAM size limit exceeded.".into())
        );
    }

    #[test]
    fn a_signature_name_is_printable_and_short() {
        let mut reply = b"stream: Bad\x1b[31mName".to_vec();
        reply.extend(std::iter::repeat_n(b'x', 1000));
        reply.extend_from_slice(b" FOUND\0");
        let Verdict::Infected(name) = parse_reply(&reply) else {
            panic!("still infected");
        };
        assert!(name.starts_with("Bad[31mName"));
        assert_eq!(name.len(), MAX_NAME);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            "unix:/run/clamav/clamd.ctl".parse(),
            Ok(Address::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            "/run/clamav/clamd.ctl".parse(),
            Ok(Address::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            "tcp:127.0.0.1:3310".parse(),
            Ok(Address::Tcp("127.0.0.1:3310".parse().unwrap()))
        );
        assert!("tcp:[::1]:3310".parse::<Address>().is_ok());
        assert!("tcp:10.0.0.5:3310".parse::<Address>().is_err());
        assert!("tcp:localhost".parse::<Address>().is_err());
        assert!("unix:".parse::<Address>().is_err());
    }

    #[test]
    fn an_unreachable_clamd_is_a_failure_not_a_clean_file() {
        let dir = std::env::temp_dir().join(format!("apgate-noclamd-{}", std::process::id()));
        let mut s = InStream::new(Address::Unix(dir.join("none.sock")), Duration::from_secs(1));
        s.feed(b"some bytes");
        assert!(matches!(s.verdict(), Verdict::Failed(why) if why.contains("cannot be reached")));
        let s = InStream::new(Address::Unix(dir.join("none.sock")), Duration::from_secs(1));
        assert!(
            matches!(s.verdict(), Verdict::Failed(_)),
            "an empty file too"
        );
    }
}
