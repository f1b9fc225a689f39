//! The SSH server on russh: hardened algorithms, the accept loop with per-address throttling,
//! authentication (every request decided on its own user, key or password), and the bridge from
//! an SSH channel to an [`SftpSession`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet, Preferred};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::cutoff::{CutStream, Cutoff};
use super::guard::{SessionTicket, Startup};
use super::protocol::{self as p, StatusCode};
use super::session::SftpSession;
use crate::audit::AuditEntry;
use crate::db::LoginUser;
use crate::gateway::{Gateway, Principal};
use crate::vault::keys::Keys;

/// What a queued request costs besides its bytes: its allocation's overhead, the `Bytes` header
/// and the queue's slot. The queue between the SSH channel and the SFTP session is bounded in
/// requests and in this cost (`limits.queued_requests_per_session`, `queued_bytes_per_session`);
/// the drain task never blocks on it (that is what prevents the russh channel-queue deadlock),
/// so a client that overruns it is disconnected.
const QUEUED_REQUEST_COST: usize = 128;
/// Bytes read from a client's socket at a time. Each connection holds this buffer: 64 KiB made
/// 1,000 sessions peak at 141 MiB against 103 MiB with 16 KiB, at the same upload speed
/// (docs/benchmarks.md).
const SOCKET_READ_BUFFER: usize = 16 * 1024;

/// A live session row that its process has not renewed for this long no longer counts against
/// the user's limit (the process stopped). Processes renew theirs three times as often.
pub const SESSION_STALE_AFTER: Duration = Duration::from_secs(60);

/// A valid argon2id hash of a random password: verified against when the user is unknown or has
/// no password, so that every password attempt costs the same.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0aG3Qb7BfEvvZ5CTP2zFi0PZx+nO/5W5m8Qq1Xk3Zl4";

pub fn russh_config(gw: &Gateway, keys: &Keys) -> russh::server::Config {
    let config = gw.config();
    let limits = &config.limits;
    let ssh = &config.ssh;
    let mut kex = vec![russh::kex::MLKEM768X25519_SHA256];
    if !ssh.pq_only {
        kex.extend([russh::kex::CURVE25519, russh::kex::CURVE25519_PRE_RFC_8731]);
    }
    kex.extend([
        russh::kex::EXTENSION_SUPPORT_AS_SERVER,
        russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
    ]);
    let mut mac = vec![russh::mac::HMAC_SHA512_ETM, russh::mac::HMAC_SHA256_ETM];
    if ssh.compat_macs {
        mac.extend([russh::mac::HMAC_SHA512, russh::mac::HMAC_SHA256]);
    }
    russh::server::Config {
        server_id: russh::SshId::Standard(Cow::Borrowed("SSH-2.0-apgate")),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_millis(400),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![keys.host_key.clone()],
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 65_535,
        // Our own count (`Connection::attempts_used`) ends the connection at exactly
        // `limits.auth_attempts` failures; russh's is only a backstop above it (it also counts
        // the `none` request and the accepted probe before each signed request).
        max_auth_attempts: 2 * limits.auth_attempts as usize + 4,
        inactivity_timeout: Some(Duration::from_secs(limits.idle_timeout_s)),
        keepalive_interval: Some(Duration::from_secs(limits.idle_timeout_s.clamp(5, 60))),
        keepalive_max: 3,
        nodelay: true,
        preferred: Preferred {
            kex: Cow::Owned(kex),
            key: Cow::Owned(vec![
                Algorithm::Ed25519,
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP256,
                },
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP384,
                },
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP521,
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ]),
            host_key_certificates: Cow::Borrowed(&[]),
            cipher: Cow::Owned(vec![
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            mac: Cow::Owned(mac),
            compression: Cow::Owned(vec![russh::compression::NONE]),
        },
        ..Default::default()
    }
}

/// Accepts connections until the listener fails; each connection runs in its own task.
pub async fn accept_loop(
    gw: Arc<Gateway>,
    config: Arc<std::sync::RwLock<Arc<russh::server::Config>>>,
    listener: TcpListener,
) -> anyhow::Result<()> {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let startup = match gw.guard.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                if gw.guard.may_log(peer.ip()) {
                    tracing::warn!(address = %peer.ip(), "connection closed at once: {why}");
                }
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let gw = gw.clone();
        // The configuration in force when the connection arrives (reloads apply to new ones).
        let config = match config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        tokio::spawn(async move {
            // A banned address (on any gateway process) is not even greeted.
            match gw.db.auth_banned(&peer.ip().to_string(), None).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::debug!(address = %peer.ip(), "connection refused: banned");
                    return;
                }
                Err(e) => {
                    tracing::warn!(address = %peer.ip(), "connection refused: cannot check bans: {e:#}");
                    return;
                }
            }
            let grace = Duration::from_secs(gw.config().limits.login_grace_s);
            let authenticated = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let handler = Connection::new(gw.clone(), peer, startup, authenticated.clone());
            // russh reads each packet with two exact reads; a buffer in front of the socket
            // turns the tens of thousands of small reads per uploaded GiB into a few thousand.
            let socket = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, socket);
            let cutoff = Arc::new(Cutoff::default());
            let socket = CutStream::new(socket, cutoff.clone());
            let connection = async move {
                match russh::server::run_stream(config, socket, handler).await {
                    Ok(session) => session.await,
                    Err(e) => Err(e),
                }
            };
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = &mut connection => ended,
                _ = tokio::time::sleep(grace) => {
                    if !authenticated.load(std::sync::atomic::Ordering::Acquire) {
                        // Wherever the peer stalled (its version line, the key exchange,
                        // authentication), the cut socket ends the connection's task.
                        cutoff.cut();
                        if gw.guard.may_log(peer.ip()) {
                            tracing::warn!(
                                address = %peer.ip(),
                                "connection closed: not authenticated within limits.login_grace_s ({}s)",
                                grace.as_secs()
                            );
                        }
                        metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
                        let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                        return;
                    }
                    connection.await
                }
            };
            if let Err(e) = ended {
                log_session_end(peer, &e);
            }
        });
    }
}

/// Logs how a connection ended; a failed negotiation names what the client offered and the
/// config switch that would admit it.
fn log_session_end(peer: SocketAddr, e: &anyhow::Error) {
    if matches!(
        e.downcast_ref::<russh::Error>(),
        Some(russh::Error::InactivityTimeout)
    ) {
        tracing::info!(address = %peer.ip(), "connection closed after the idle timeout");
        return;
    }
    let text = format!("{e:#}");
    let lower = text.to_ascii_lowercase();
    if lower.contains("no common") || lower.contains("negotiat") {
        let hint = if lower.contains("mac") {
            " (a client on libssh2 < 1.11 needs `ssh.compat_macs: true`)"
        } else if lower.contains("kex") {
            " (a client without mlkem768x25519-sha256 needs `ssh.pq_only: false`)"
        } else {
            ""
        };
        tracing::warn!(address = %peer.ip(), "client could not negotiate algorithms: {text}{hint}");
    } else {
        tracing::debug!(address = %peer.ip(), "connection ended: {text}");
    }
}

/// One SSH connection.
pub struct Connection {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    /// The place among the connections still authenticating, given up at authentication.
    startup: Option<Startup>,
    /// Set at authentication: the login grace timer then lets the connection be.
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    failures: u32,
    principal: Option<Principal>,
    ticket: Option<SessionTicket>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    sftp_started: bool,
}

enum Credential<'a> {
    Key(&'a PublicKey),
    /// A key signature with SHA-1 (`ssh-rsa`): refused like a wrong key.
    WeakSignature,
    Password(&'a str),
}

fn key_matches(user: &LoginUser, offered: &PublicKey) -> bool {
    user.keys
        .iter()
        .any(|line| PublicKey::from_openssh(line).is_ok_and(|k| k.key_data() == offered.key_data()))
}

thread_local! {
    /// argon2's working memory (19 MiB with the default parameters), kept by each password
    /// thread for the next check: a fresh allocation each time was never given back, and every
    /// check added 19 MiB to the peak RSS.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn password_matches(hash: Option<&str>, password: &str) -> bool {
    use argon2::password_hash::Output;
    use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
    let (hash, real) = match hash {
        Some(h) => (h, true),
        None => (DUMMY_HASH, false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.hash,
        parsed.salt,
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    let computed = ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        memory.resize(blocks, Block::default());
        Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            &mut memory[..blocks],
        )
    });
    // Output's comparison takes the same time wherever the bytes differ.
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected) && real
}

impl Connection {
    fn new(
        gw: Arc<Gateway>,
        peer: SocketAddr,
        startup: Startup,
        authenticated: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Connection {
            gw,
            peer,
            startup: Some(startup),
            authenticated,
            failures: 0,
            principal: None,
            ticket: None,
            channels: HashMap::new(),
            sftp_started: false,
        }
    }

    fn methods_left(&self) -> Option<MethodSet> {
        (!self.attempts_used())
            .then(|| MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]))
    }

    /// Whether `limits.auth_attempts` requests have failed on this connection: any further one
    /// ends it (russh itself keeps taking methods that left the advertised list).
    fn attempts_used(&self) -> bool {
        self.failures >= self.gw.config().limits.auth_attempts
    }

    fn refuse_more(&self) -> anyhow::Error {
        if self.gw.guard.may_log(self.peer.ip()) {
            tracing::warn!(
                address = %self.peer.ip(),
                "connection closed: limits.auth_attempts failed authentication requests"
            );
        }
        anyhow::anyhow!("too many failed authentication requests")
    }

    fn reject(&self) -> Auth {
        Auth::Reject {
            proceed_with_methods: self.methods_left(),
            partial_success: false,
        }
    }

    /// The single authentication decision: every method ends here, with the same checks.
    async fn decide(&mut self, username: &str, cred: Credential<'_>) -> anyhow::Result<Auth> {
        if self.attempts_used() {
            return Err(self.refuse_more());
        }
        let ip = self.peer.ip();
        let method = match cred {
            Credential::Key(_) | Credential::WeakSignature => "publickey",
            Credential::Password(_) => "password",
        };
        let user = self.gw.db.login_user(username).await?;
        let verified = match cred {
            Credential::Key(k) => user.as_ref().is_some_and(|u| key_matches(u, k)),
            Credential::WeakSignature => false,
            Credential::Password(pw) => {
                let hash = user.as_ref().and_then(|u| u.password_hash.clone());
                let pw = pw.to_string();
                let _permit = self.gw.guard.password_checks.acquire().await?;
                self.gw
                    .guard
                    .password_pool
                    .run(move || password_matches(hash.as_deref(), &pw))
                    .await
                    .unwrap_or(false)
            }
        };
        let limits = self.gw.config().limits.clone();
        // An address ban stops every method; a user ban only passwords, so that nobody can
        // lock a user's key out by failing on purpose (SPEC §8).
        let user_ban = matches!(cred, Credential::Password(_)).then(|| sanitize(username));
        let banned = self
            .gw
            .db
            .auth_banned(&ip.to_string(), user_ban.as_deref())
            .await?;
        let outcome = match &user {
            _ if banned => Err("temporarily banned after repeated failures"),
            None => Err("unknown user"),
            Some(_) if !verified => Err("wrong credentials"),
            Some(u) if !u.active() => Err("account or organisation disabled"),
            Some(u) => match self
                .gw
                .db
                .open_session(
                    &self.gw.node,
                    u.user_id,
                    limits.sessions_per_user,
                    SESSION_STALE_AFTER,
                )
                .await?
            {
                Some(id) => Ok((
                    u.clone(),
                    self.gw
                        .guard
                        .register_session(u.user_id, self.gw.db.clone(), id),
                )),
                None => Err("too many sessions for this user"),
            },
        };
        match outcome {
            Ok((u, ticket)) => {
                self.gw.db.clear_auth_failures(&sanitize(username)).await?;
                let principal = Principal {
                    user_id: u.user_id,
                    username: u.username.clone(),
                    org: u.org.clone(),
                    roles: u.roles.clone(),
                    address: ip.to_string(),
                };
                self.gw
                    .db
                    .audit(&principal.audit("login", "ok").detail(method))
                    .await?;
                tracing::info!(user = %u.username, org = %u.org.slug, address = %ip, method, "login");
                self.principal = Some(principal);
                self.ticket = Some(ticket);
                self.authenticated
                    .store(true, std::sync::atomic::Ordering::Release);
                self.startup = None;
                Ok(Auth::Accept)
            }
            Err(reason) => {
                self.failures += 1;
                let newly_banned = self
                    .gw
                    .db
                    .record_auth_failure(
                        &ip.to_string(),
                        &sanitize(username),
                        limits.ban_after_failures,
                        Duration::from_secs(limits.ban_seconds),
                    )
                    .await?;
                metrics::counter!(crate::metrics::LOGIN_FAILURES).increment(1);
                // One line per failure, with the address: what fail2ban reads.
                tracing::warn!(
                    "authentication failure for {} from {ip} ({method}): {reason}",
                    sanitize(username)
                );
                if newly_banned {
                    tracing::warn!(
                        "banned {ip} or user {} for repeated failures",
                        sanitize(username)
                    );
                }
                let entry = AuditEntry::new("login", "failed")
                    .by(&sanitize(username), "", &ip.to_string())
                    .detail(format!("{method}: {reason}"));
                self.gw.db.audit(&entry).await?;
                Ok(self.reject())
            }
        }
    }

    async fn start_sftp(&mut self, channel_id: ChannelId) -> bool {
        let (Some(principal), Some(channel)) =
            (self.principal.clone(), self.channels.remove(&channel_id))
        else {
            return false;
        };
        if self.sftp_started {
            return false;
        }
        self.sftp_started = true;
        let session = SftpSession::new(self.gw.clone(), principal);
        tokio::spawn(run_sftp(channel, session, self.gw.config().limits.clone()));
        true
    }
}

/// Usernames come from the network: keep log lines one line and short.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                '?'
            } else {
                c
            }
        })
        .collect()
}

impl russh::server::Handler for Connection {
    type Error = anyhow::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        let banner = self.gw.config().banner.clone();
        Ok((!banner.is_empty()).then(|| format!("{banner}\r\n")))
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        // Clients ask once to learn the methods; it is not an attempt, but it is no way past
        // the limit either.
        if self.attempts_used() {
            return Err(self.refuse_more());
        }
        Ok(self.reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only a probe: nothing is decided here; the signed request is checked again in full
        // by `decide`. A refused probe counts against `limits.auth_attempts` (not towards a
        // ban: a user whose agent holds several keys offers them all).
        if self.attempts_used() {
            return Err(self.refuse_more());
        }
        let known = self
            .gw
            .db
            .login_user(user)
            .await?
            .is_some_and(|u| key_matches(&u, offer.public_key));
        if known {
            return Ok(Auth::Accept);
        }
        self.failures += 1;
        tracing::info!(
            "refused key probe for {} from {} ({} of limits.auth_attempts)",
            sanitize(user),
            self.peer.ip(),
            self.failures
        );
        Ok(self.reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if matches!(key.algorithm, Algorithm::Rsa { hash: None }) {
            // ssh-rsa signs with SHA-1: refused like any wrong key.
            return self.decide(user, Credential::WeakSignature).await;
        }
        self.decide(user, Credential::Key(key.public_key)).await
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.decide(user, Credential::Password(password)).await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(t) = &self.ticket {
            t.attach(session.handle());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.principal.is_none() || self.channels.len() >= 4 {
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" && self.start_sftp(channel).await {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.extended_data(
            channel,
            1,
            Bytes::from_static(
                b"apgate: only the sftp subsystem is available (scp uses it by default)\r\n",
            ),
        )?;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.extended_data(
            channel,
            1,
            Bytes::from_static(b"apgate: no shell; connect with sftp\r\n"),
        )?;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.remove(&channel).is_some() {
            session.close(channel)?;
        }
        Ok(())
    }
}

/// Runs the SFTP protocol on a channel. A separate task drains the channel into a bounded
/// buffer at all times, so russh's session loop is never blocked delivering data to us while
/// we wait for window space to reply (the deadlock described in ARCHITECTURE.md).
async fn run_sftp(channel: Channel<Msg>, mut session: SftpSession, limits: crate::config::Limits) {
    let (mut read_half, write_half) = channel.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    // What the queue holds: the cost of its requests, and how many there are.
    let queued = Arc::new(AtomicUsize::new(0));
    let queued_in = queued.clone();
    let waiting = Arc::new(AtomicUsize::new(0));
    let waiting_in = waiting.clone();
    let (max_bytes, max_requests) = (
        limits.queued_bytes_per_session as usize,
        limits.queued_requests_per_session as usize,
    );
    let drain = tokio::spawn(async move {
        // Frames packets here, so each byte is copied once on its way to the session.
        let mut framer = p::Framer::default();
        while let Some(msg) = read_half.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let mut overrun = false;
                    let framed = framer.push(&data, |packet| {
                        let cost = packet.len() + QUEUED_REQUEST_COST;
                        let held = queued_in.fetch_add(cost, Ordering::AcqRel) + cost;
                        let waiting = waiting_in.fetch_add(1, Ordering::AcqRel) + 1;
                        if held > max_bytes || waiting > max_requests {
                            overrun = true;
                            return false;
                        }
                        tx.send(packet).is_ok()
                    });
                    if framed.is_err() {
                        tracing::warn!("malformed or oversized SFTP packet; disconnecting");
                        return;
                    }
                    if overrun {
                        tracing::warn!("client sent requests faster than allowed; disconnecting");
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => return,
                _ => {}
            }
        }
    });

    let result = serve_requests(&mut session, &mut rx, (&queued, &waiting), &write_half).await;
    if let Err(e) = &result {
        tracing::debug!("sftp session ended: {e:#}");
    }
    session.end().await;
    drain.abort();
    // scp waits for an exit status before it reports success.
    let _ = write_half.exit_status(0).await;
    let _ = write_half.eof().await;
    let _ = write_half.close().await;
}

async fn serve_requests<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    session: &mut SftpSession,
    rx: &mut mpsc::UnboundedReceiver<Bytes>,
    (queued, waiting): (&AtomicUsize, &AtomicUsize),
    out: &russh::ChannelWriteHalf<S>,
) -> anyhow::Result<()> {
    let mut initialised = false;
    while let Some(packet) = rx.recv().await {
        queued.fetch_sub(packet.len() + QUEUED_REQUEST_COST, Ordering::AcqRel);
        waiting.fetch_sub(1, Ordering::AcqRel);
        let reply = if !initialised {
            let version =
                p::parse_init(&packet).map_err(|_| anyhow::anyhow!("expected SFTP INIT"))?;
            tracing::debug!(client_version = version, "sftp init");
            initialised = true;
            p::version_reply()
        } else {
            match p::parse_request(packet.clone()) {
                Ok(req) => session.handle(req).await,
                Err(_) => {
                    let id = if packet.len() >= 5 {
                        u32::from_be_bytes([packet[1], packet[2], packet[3], packet[4]])
                    } else {
                        0
                    };
                    p::status(id, StatusCode::BadMessage, "malformed request")
                }
            }
        };
        out.data_bytes(reply)
            .await
            .context("cannot send reply to the client")?;
    }
    Ok(())
}
#[cfg(test)]
mod password_tests {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    #[test]
    fn a_check_with_reused_memory_decides_as_argon2_does() {
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        for _ in 0..3 {
            assert!(super::password_matches(Some(&hash), "correct horse"));
            assert!(!super::password_matches(Some(&hash), "correct horsf"));
            assert!(!super::password_matches(Some(&hash), ""));
        }
        assert!(
            !super::password_matches(None, "anything"),
            "an unknown user"
        );
        assert!(!super::password_matches(
            Some("not a hash"),
            "correct horse"
        ));
    }
}
