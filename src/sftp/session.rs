//! One SFTP session of one user: the operations of SFTP v3 applied to that user's virtual tree
//! (SPEC §3). Requests are handled one at a time in the order received, so pipelined requests take
//! effect in the order sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::error::{FsError, FsResult};
use super::guard::UploadSlot;
use super::protocol::{
    self as p, Attrs, FXF_APPEND, FXF_CREAT, FXF_EXCL, FXF_READ, FXF_TRUNC, FXF_WRITE, NameEntry,
    Request, StatusCode,
};
use crate::db::{ChangeOutcome, InboxFile, NewUpload, Recipient};
use crate::domain::names::is_temp_name;
use crate::domain::org::{OrgKind, Role};
use crate::domain::routing::{route, unknown_target};
use crate::domain::tree::{
    Node, Target, WriteFolder, classify, display_path, normalize, root_folders,
};
use crate::domain::visibility::holds_role;
use crate::gateway::{Gateway, Principal};
use crate::scan::Mark;
use crate::vault::{ReadAhead, SealedBlob, UploadWriter};

/// Bytes of out-of-order writes held back while waiting for the gap before them.
const REORDER_LIMIT: usize = 16 * 1024 * 1024;
/// What one out-of-order write costs besides its bytes: the map's node and the `Bytes` header.
const REORDER_ENTRY_COST: usize = 96;
/// Entries per READDIR reply.
const DIR_CHUNK: usize = 100;

const RESUME_REFUSED: &str = "resume is not supported; delete the partial file and send it again";

/// An upload being written.
struct Upload {
    folder: WriteFolder,
    name: String,
    writer: UploadWriter,
    next_offset: u64,
    reorder: BTreeMap<u64, Bytes>,
    reorder_bytes: usize,
    failed: Option<String>,
    quota_left: u64,
    /// Its place among the user's uploads, and the bytes it holds against the quota.
    slot: UploadSlot,
}

/// A closed upload with a temporary name, waiting to be renamed to its final name.
struct Staged {
    sealed: SealedBlob,
    /// The malware scan's mark, decided at its CLOSE.
    scan: Mark,
}

enum OpenHandle {
    Dir {
        entries: Vec<NameEntry>,
        pos: usize,
    },
    Read(Box<Download>),
    Write(Box<Upload>),
    /// A receipt or report, generated when opened.
    Generated(Bytes),
}

/// An inbox file being read; `covered` is how far it has been read without a gap.
struct Download {
    reader: ReadAhead,
    file: InboxFile,
    covered: u64,
    recorded: bool,
    /// When the transfer was last seen not recalled: a recall stops a download under way.
    checked_at: std::time::Instant,
}

/// How often a download under way looks whether its transfer was recalled.
const RECALL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

const RECALLED: &str = "the sender recalled this file; it is no longer in your inbox";

/// What a path in a write folder currently is.
enum WriteEntry {
    Staged(u64),
    Pending {
        upload_id: i64,
        size: u64,
        created_at: String,
    },
    Dir,
    Missing,
}

pub struct SftpSession {
    gw: Arc<Gateway>,
    who: Principal,
    handles: HashMap<u64, OpenHandle>,
    next_handle: u64,
    /// Closed temporary-name uploads, keyed by (folder path, name).
    staged: HashMap<(String, String), Staged>,
    /// Folders created in write folders during this session, keyed by (folder path, name).
    made_dirs: BTreeSet<(String, String)>,
}

fn now_secs() -> u32 {
    chrono::Utc::now().timestamp().clamp(0, i64::from(u32::MAX)) as u32
}

fn text_to_secs(t: &str) -> u32 {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp().clamp(0, i64::from(u32::MAX)) as u32)
        .unwrap_or_else(|_| now_secs())
}

fn dir_attrs() -> Attrs {
    Attrs {
        size: Some(0),
        uid_gid: Some((0, 0)),
        permissions: Some(0o040_750),
        times: Some((now_secs(), now_secs())),
    }
}

fn file_attrs(size: u64, mode: u32, mtime: u32) -> Attrs {
    Attrs {
        size: Some(size),
        uid_gid: Some((0, 0)),
        permissions: Some(0o100_000 | mode),
        times: Some((mtime, mtime)),
    }
}

/// An `ls -l` line, as FileZilla and others parse it.
fn longname(name: &str, a: &Attrs) -> String {
    let mode = a.permissions.unwrap_or(0);
    let kind = if mode & 0o040_000 != 0 { 'd' } else { '-' };
    let mut perms = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let mtime = a.times.map(|t| t.1).unwrap_or_else(now_secs);
    let date = chrono::DateTime::from_timestamp(i64::from(mtime), 0)
        .unwrap_or_default()
        .format("%b %e %H:%M");
    format!(
        "{kind}{perms}    1 apgate   apgate   {:>12} {date} {name}",
        a.size.unwrap_or(0)
    )
}

fn entry(name: &str, attrs: Attrs) -> NameEntry {
    NameEntry {
        longname: longname(name, &attrs),
        filename: name.to_string(),
        attrs,
    }
}

/// The immediate children of `prefix` (a `/`-joined relative path, empty for the top) among
/// `names`: files directly inside it, and the first component of anything deeper as a folder.
fn children<'a>(
    prefix: &str,
    names: impl Iterator<Item = &'a str>,
) -> (Vec<&'a str>, BTreeSet<&'a str>) {
    let mut files = Vec::new();
    let mut dirs = BTreeSet::new();
    for n in names {
        let rest = if prefix.is_empty() {
            Some(n)
        } else {
            n.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
        };
        if let Some(rest) = rest {
            match rest.split_once('/') {
                Some((dir, _)) => {
                    dirs.insert(dir);
                }
                None => files.push(rest),
            }
        }
    }
    (files, dirs)
}

fn is_under(name: &str, dir: &str) -> bool {
    name.len() > dir.len() && name.starts_with(dir) && name.as_bytes()[dir.len()] == b'/'
}

impl SftpSession {
    pub fn new(gw: Arc<Gateway>, who: Principal) -> Self {
        SftpSession {
            gw,
            who,
            handles: HashMap::new(),
            next_handle: 1,
            staged: HashMap::new(),
            made_dirs: BTreeSet::new(),
        }
    }

    /// Handles one request and returns the reply packet.
    pub async fn handle(&mut self, req: Request) -> Bytes {
        let id = req.id();
        match self.dispatch(req).await {
            Ok(reply) => reply,
            Err(e) => {
                if let FsError::Internal(err) = &e {
                    tracing::error!(user = %self.who.username, "sftp request failed: {err:#}");
                }
                let (code, msg) = e.status();
                p::status(id, code, &msg)
            }
        }
    }

    async fn dispatch(&mut self, req: Request) -> FsResult<Bytes> {
        match req {
            Request::Realpath { id, path } => {
                let segs = normalize(&path)?;
                let shown = display_path(&segs);
                Ok(p::name(id, &[entry(&shown, dir_attrs())]))
            }
            Request::Stat { id, path } | Request::Lstat { id, path } => {
                let attrs = self.stat(&path).await?;
                Ok(p::attrs(id, &attrs))
            }
            Request::Fstat { id, handle } => {
                let attrs = match self.handle_mut(&handle)? {
                    OpenHandle::Dir { .. } => dir_attrs(),
                    OpenHandle::Read(d) => {
                        file_attrs(d.file.size, 0o640, text_to_secs(&d.file.created_at))
                    }
                    OpenHandle::Write(u) => file_attrs(u.next_offset, 0o600, now_secs()),
                    OpenHandle::Generated(b) => file_attrs(b.len() as u64, 0o440, now_secs()),
                };
                Ok(p::attrs(id, &attrs))
            }
            Request::Setstat { id, path } => {
                // Clients set times and modes after an upload; accepted and ignored.
                self.stat(&path).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Fsetstat { id, handle } => {
                self.handle_mut(&handle)?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Opendir { id, path } => {
                let entries = self.list(&path).await?;
                let h = self.add_handle(OpenHandle::Dir { entries, pos: 0 })?;
                Ok(p::handle(id, h.as_bytes()))
            }
            Request::Readdir { id, handle } => {
                let OpenHandle::Dir { entries, pos } = self.handle_mut(&handle)? else {
                    return Err(FsError::Failure("not a folder handle".into()));
                };
                if *pos >= entries.len() {
                    return Err(FsError::Eof);
                }
                let end = (*pos + DIR_CHUNK).min(entries.len());
                let reply = p::name(id, &entries[*pos..end]);
                *pos = end;
                Ok(reply)
            }
            Request::Open { id, path, pflags } => {
                let h = self.open(&path, pflags).await?;
                Ok(p::handle(id, h.as_bytes()))
            }
            Request::Read {
                id,
                handle,
                offset,
                len,
            } => self.read(id, &handle, offset, len).await,
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => {
                metrics::counter!(crate::metrics::BYTES_RECEIVED).increment(data.len() as u64);
                self.write(&handle, offset, data).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Close { id, handle } => {
                self.close(&handle).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Remove { id, path } => {
                self.remove(&path).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Rename { id, from, to } => {
                self.rename(&from, &to).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Mkdir { id, path } => {
                self.mkdir(&path).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Rmdir { id, path } => {
                self.rmdir(&path).await?;
                Ok(p::status(id, StatusCode::Ok, "ok"))
            }
            Request::Readlink { .. } | Request::Symlink { .. } => Err(FsError::Unsupported(
                "links are not supported on this gateway".into(),
            )),
            Request::Extended { id, name } if &name[..] == p::LIMITS_EXTENSION.as_bytes() => Ok(
                p::limits_reply(id, u64::from(self.gw.config().limits.handles_per_session)),
            ),
            Request::Extended { name, .. } => Err(FsError::Unsupported(format!(
                "extension {} is not supported",
                String::from_utf8_lossy(&name)
            ))),
            Request::Unknown { kind, .. } => Err(FsError::Unsupported(format!(
                "request type {kind} is not supported"
            ))),
        }
    }

    fn resolve(&self, raw: &[u8]) -> FsResult<(Vec<String>, Node)> {
        let segs = normalize(raw)?;
        let node = classify(self.who.org.kind, &segs)?;
        Ok((segs, node))
    }

    fn add_handle(&mut self, h: OpenHandle) -> FsResult<String> {
        if self.handles.len() >= self.gw.config().limits.handles_per_session as usize {
            return Err(FsError::Failure(
                "too many open files in this session; close some first".into(),
            ));
        }
        let n = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(n, h);
        Ok(n.to_string())
    }

    fn handle_key(raw: &[u8]) -> FsResult<u64> {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| FsError::Failure("invalid handle".into()))
    }

    fn handle_mut(&mut self, raw: &[u8]) -> FsResult<&mut OpenHandle> {
        let key = Self::handle_key(raw)?;
        self.handles
            .get_mut(&key)
            .ok_or_else(|| FsError::Failure("invalid handle".into()))
    }

    // ----- inbox -----

    /// The visible inbox files of one inbox folder addressed to this user's roles.
    async fn inbox_files(&self, sender: Option<&str>) -> FsResult<Vec<InboxFile>> {
        let folder = sender.unwrap_or("");
        Ok(self
            .gw
            .db
            .inbox(self.who.org.id, &self.recipient_roles(), Some(folder))
            .await?)
    }

    /// Roles whose files this user sees: an admin of the hub sees both.
    fn recipient_roles(&self) -> Vec<Role> {
        if self.who.roles.contains(&Role::Admin) {
            Role::RECIPIENT_ROLES.to_vec()
        } else {
            self.who.roles.clone()
        }
    }

    async fn inbox_file(&self, sender: Option<&str>, rel: &[String]) -> FsResult<InboxFile> {
        let name = rel.join("/");
        self.inbox_files(sender)
            .await?
            .into_iter()
            .find(|f| f.inbox_name == name)
            .ok_or_else(|| FsError::NotFound(format!("no file {name} in your inbox")))
    }

    /// The hub's inbox has a folder per school or provider, and one of its own for the files
    /// it ingested itself (placements).
    async fn hub_inbox_senders(&self) -> FsResult<Vec<String>> {
        Ok(self
            .gw
            .db
            .orgs()
            .await?
            .into_iter()
            .map(|o| o.slug)
            .collect())
    }

    // ----- receipts and reports -----

    /// Whose receipts `folder` holds: this organisation's own, or for the hub those of the
    /// organisation named by `folder` (with what only the hub may read). `None`: no such folder.
    async fn receipt_owner(&self, folder: Option<&str>) -> FsResult<Option<(i64, bool)>> {
        Ok(match (self.who.org.kind, folder) {
            (OrgKind::Hub, Some(slug)) => self.gw.db.org_by_slug(slug).await?.map(|o| (o.id, true)),
            (OrgKind::Hub, None) => None,
            (_, _) => Some((self.who.org.id, false)),
        })
    }

    /// The receipts listed in `/receipts` (or the hub's `/receipts/<slug>`), without their bodies.
    async fn receipt_list(&self, folder: Option<&str>) -> FsResult<Vec<crate::db::ReceiptEntry>> {
        Ok(match self.receipt_owner(folder).await? {
            Some((org, hub_view)) => self.gw.db.receipt_list(org, hub_view).await?,
            None => Vec::new(),
        })
    }

    /// One receipt by its path under /receipts.
    async fn receipt(&self, rel: &[String]) -> FsResult<Option<(Bytes, u32)>> {
        let (folder, name) = match (self.who.org.kind, rel) {
            (OrgKind::Hub, [slug, name]) => (Some(slug.as_str()), name),
            (OrgKind::School | OrgKind::Provider, [name]) => (None, name),
            _ => return Ok(None),
        };
        let Some((org, hub_view)) = self.receipt_owner(folder).await? else {
            return Ok(None);
        };
        Ok(self
            .gw
            .db
            .receipt(org, name, hub_view)
            .await?
            .map(|r| (Bytes::from(r.body), text_to_secs(&r.created_at))))
    }

    /// A report generated now, scoped to what this organisation may see.
    async fn report(&self, rel: &[String]) -> FsResult<Option<Bytes>> {
        let [name] = rel else {
            return Ok(None);
        };
        Ok(crate::reports::generate(
            self.gw.db.as_ref(),
            name,
            self.who.viewer(),
            chrono::Utc::now().date_naive(),
        )
        .await?
        .map(Bytes::from))
    }

    // ----- write folders -----

    /// Checks that `folder` is a real destination for this user and returns its recipients.
    /// Every upload, rename-commit and folder creation passes here: routing is decided by
    /// [`route`] for each recipient organisation.
    async fn recipients(&self, folder: &WriteFolder) -> FsResult<Vec<Recipient>> {
        let me = &self.who.org;
        let db = &self.gw.db;
        let orgs = match &folder.target {
            // The hub's own ingest folders (/placements/): the file is kept in its own inbox and
            // goes to nobody else, so there is no transfer for routing to decide.
            Target::Hub if me.kind == OrgKind::Hub && folder.ingest.is_some() => {
                return Ok(vec![Recipient {
                    org_id: me.id,
                    inbox_folder: me.slug.clone(),
                }]);
            }
            Target::Hub => db.hub().await?.into_iter().collect::<Vec<_>>(),
            // A school or provider names no organisation in its tree: it is refused in the
            // same words whatever the name, so that a refusal never tells whether one exists.
            Target::Org(slug) if me.kind != OrgKind::Hub => {
                return Err(self.deny(folder, unknown_target(me.kind, slug).0).await);
            }
            Target::Org(slug) => match db.org_by_slug(slug).await? {
                Some(o) if !o.disabled => vec![o],
                _ => return Err(self.deny(folder, unknown_target(me.kind, slug).0).await),
            },
            Target::AllOf(kind) => db
                .orgs()
                .await?
                .into_iter()
                .filter(|o| o.kind == *kind && !o.disabled)
                .collect(),
        };
        for o in &orgs {
            if let Err(d) = route(me.kind, o.kind, folder.role) {
                return Err(self.deny(folder, d.0).await);
            }
        }
        if orgs.is_empty() {
            return Err(FsError::Failure(format!(
                "/{} has no active recipient organisation",
                folder.path
            )));
        }
        Ok(orgs
            .iter()
            .map(|o| Recipient {
                org_id: o.id,
                inbox_folder: if o.kind == OrgKind::Hub {
                    me.slug.clone()
                } else {
                    String::new()
                },
            })
            .collect())
    }

    async fn deny(&self, folder: &WriteFolder, message: String) -> FsError {
        let entry = self
            .who
            .audit("transfer denied", "denied")
            .detail(format!("/{}: {message}", folder.path));
        if let Err(e) = self.gw.db.audit(&entry).await {
            tracing::error!("cannot write audit entry: {e:#}");
        }
        tracing::warn!(user = %self.who.username, folder = %folder.path, "{message}");
        metrics::counter!(crate::metrics::TRANSFERS_DENIED).increment(1);
        FsError::Denied(message)
    }

    /// What this user may see of its organisation's sent files in `folder`: nothing in a
    /// folder of a role it does not hold (a coordinator-only user never sees, recalls or
    /// renames a DSL transfer, SPEC §1).
    async fn outbox_files(&self, folder: &WriteFolder) -> FsResult<Vec<crate::db::OutboxFile>> {
        if !holds_role(self.who.viewer(), folder.role) {
            return Ok(Vec::new());
        }
        Ok(self.gw.db.outbox(self.who.org.id, &folder.path).await?)
    }

    async fn write_entry(&self, folder: &WriteFolder, name: &str) -> FsResult<WriteEntry> {
        if name.is_empty() {
            return Ok(WriteEntry::Dir);
        }
        if let Some(s) = self.staged.get(&(folder.path.clone(), name.to_string())) {
            return Ok(WriteEntry::Staged(s.sealed.size));
        }
        let pending = self.outbox_files(folder).await?;
        if let Some(f) = pending.iter().find(|f| f.name == name) {
            return Ok(WriteEntry::Pending {
                upload_id: f.upload_id,
                size: f.size,
                created_at: f.created_at.clone(),
            });
        }
        let is_dir = pending.iter().any(|f| is_under(&f.name, name))
            || self
                .staged
                .keys()
                .any(|(p, n)| *p == folder.path && is_under(n, name))
            || self
                .made_dirs
                .iter()
                .any(|(p, d)| *p == folder.path && (d == name || is_under(d, name)));
        Ok(if is_dir {
            WriteEntry::Dir
        } else {
            WriteEntry::Missing
        })
    }

    /// Whether a write folder is shown to this user (the hub's per-organisation folders exist
    /// only for existing organisations; routing refuses the rest).
    async fn write_folder_exists(&self, folder: &WriteFolder) -> FsResult<bool> {
        Ok(match &folder.target {
            Target::Hub | Target::AllOf(_) => true,
            Target::Org(slug) => {
                self.who.org.kind == OrgKind::Hub
                    && self
                        .gw
                        .db
                        .org_by_slug(slug)
                        .await?
                        .is_some_and(|o| o.kind != OrgKind::Hub)
            }
        })
    }

    // ----- operations -----

    async fn stat(&self, raw: &[u8]) -> FsResult<Attrs> {
        let (segs, node) = self.resolve(raw)?;
        let missing = || FsError::NotFound(format!("{} does not exist", display_path(&segs)));
        match node {
            Node::Root | Node::InboxRoot | Node::OutboxRoot => Ok(dir_attrs()),
            Node::Receipts { rel } | Node::Reports { rel } if rel.is_empty() => Ok(dir_attrs()),
            Node::Receipts { rel } => {
                if self.who.org.kind == OrgKind::Hub && rel.len() == 1 {
                    return if self.hub_inbox_senders().await?.contains(&rel[0]) {
                        Ok(dir_attrs())
                    } else {
                        Err(missing())
                    };
                }
                let (body, mtime) = self.receipt(&rel).await?.ok_or_else(missing)?;
                Ok(file_attrs(body.len() as u64, 0o440, mtime))
            }
            Node::Reports { rel } => {
                let body = self.report(&rel).await?.ok_or_else(missing)?;
                Ok(file_attrs(body.len() as u64, 0o440, now_secs()))
            }
            Node::OutboxTarget(target) => {
                let folder = WriteFolder {
                    path: String::new(),
                    target,
                    role: Role::Coordinator,
                    ingest: None,
                };
                if self.write_folder_exists(&folder).await? {
                    Ok(dir_attrs())
                } else {
                    Err(missing())
                }
            }
            Node::Inbox { sender, rel } => {
                if let Some(s) = &sender
                    && !self.hub_inbox_senders().await?.contains(s)
                {
                    return Err(missing());
                }
                if rel.is_empty() {
                    return Ok(dir_attrs());
                }
                let name = rel.join("/");
                let files = self.inbox_files(sender.as_deref()).await?;
                if let Some(f) = files.iter().find(|f| f.inbox_name == name) {
                    Ok(file_attrs(f.size, 0o640, text_to_secs(&f.created_at)))
                } else if files.iter().any(|f| is_under(&f.inbox_name, &name)) {
                    Ok(dir_attrs())
                } else {
                    Err(missing())
                }
            }
            Node::Write { folder, rel } => {
                if !self.write_folder_exists(&folder).await? {
                    return Err(missing());
                }
                match self.write_entry(&folder, &rel.join("/")).await? {
                    WriteEntry::Dir => Ok(dir_attrs()),
                    WriteEntry::Staged(size) => Ok(file_attrs(size, 0o600, now_secs())),
                    WriteEntry::Pending {
                        size, created_at, ..
                    } => Ok(file_attrs(size, 0o200, text_to_secs(&created_at))),
                    WriteEntry::Missing => Err(missing()),
                }
            }
        }
    }

    async fn list(&self, raw: &[u8]) -> FsResult<Vec<NameEntry>> {
        let attrs = self.stat(raw).await?;
        if attrs.permissions.unwrap_or(0) & 0o040_000 == 0 {
            return Err(FsError::Failure("not a folder".into()));
        }
        let (_, node) = self.resolve(raw)?;
        let dirs = |names: &mut dyn Iterator<Item = String>| -> Vec<NameEntry> {
            names.map(|n| entry(&n, dir_attrs())).collect()
        };
        Ok(match node {
            Node::Root => dirs(
                &mut root_folders(self.who.org.kind)
                    .into_iter()
                    .map(String::from),
            ),
            Node::InboxRoot => dirs(&mut self.hub_inbox_senders().await?.into_iter()),
            Node::OutboxRoot if self.who.org.kind == OrgKind::Hub => {
                // Every organisation but the hub itself (its own folder is only in /inbox).
                let mut names = self.hub_inbox_senders().await?;
                names.retain(|slug| *slug != self.who.org.slug);
                names.extend(["all-schools".to_string(), "all-providers".to_string()]);
                dirs(&mut names.into_iter())
            }
            Node::OutboxRoot | Node::OutboxTarget(_) => {
                dirs(&mut ["coordinator", "dsl"].into_iter().map(String::from))
            }
            Node::Receipts { rel } => {
                if self.who.org.kind == OrgKind::Hub && rel.is_empty() {
                    dirs(&mut self.hub_inbox_senders().await?.into_iter())
                } else {
                    let folder = rel.first().map(String::as_str);
                    self.receipt_list(folder)
                        .await?
                        .into_iter()
                        .map(|r| {
                            entry(
                                &r.name,
                                file_attrs(r.size, 0o440, text_to_secs(&r.created_at)),
                            )
                        })
                        .collect()
                }
            }
            Node::Reports { .. } => crate::reports::names(self.who.org.kind)
                .iter()
                .map(|n| entry(n, file_attrs(0, 0o440, now_secs())))
                .collect(),
            Node::Inbox { sender, rel } => {
                let files = self.inbox_files(sender.as_deref()).await?;
                let prefix = rel.join("/");
                let (names, subdirs) =
                    children(&prefix, files.iter().map(|f| f.inbox_name.as_str()));
                let mut out = dirs(&mut subdirs.into_iter().map(String::from));
                for n in names {
                    let full = if prefix.is_empty() {
                        n.to_string()
                    } else {
                        format!("{prefix}/{n}")
                    };
                    if let Some(f) = files.iter().find(|f| f.inbox_name == full) {
                        out.push(entry(
                            n,
                            file_attrs(f.size, 0o640, text_to_secs(&f.created_at)),
                        ));
                    }
                }
                out
            }
            Node::Write { folder, rel } => {
                let prefix = rel.join("/");
                let pending = self.outbox_files(&folder).await?;
                let staged: Vec<(&String, u64)> = self
                    .staged
                    .iter()
                    .filter(|((p, _), _)| *p == folder.path)
                    .map(|((_, n), s)| (n, s.sealed.size))
                    .collect();
                let made: Vec<&str> = self
                    .made_dirs
                    .iter()
                    .filter(|(p, _)| *p == folder.path)
                    .map(|(_, d)| d.as_str())
                    .collect();
                let all_names = pending
                    .iter()
                    .map(|f| f.name.as_str())
                    .chain(staged.iter().map(|(n, _)| n.as_str()));
                let (names, mut subdirs) = children(&prefix, all_names);
                let (made_files, made_dirs) = children(&prefix, made.into_iter());
                subdirs.extend(made_files);
                subdirs.extend(made_dirs);
                let mut out = dirs(&mut subdirs.into_iter().map(String::from));
                for n in names {
                    let full = if prefix.is_empty() {
                        n.to_string()
                    } else {
                        format!("{prefix}/{n}")
                    };
                    if let Some(f) = pending.iter().find(|f| f.name == full) {
                        out.push(entry(
                            n,
                            file_attrs(f.size, 0o200, text_to_secs(&f.created_at)),
                        ));
                    } else if let Some((_, size)) = staged.iter().find(|(s, _)| **s == full) {
                        out.push(entry(n, file_attrs(*size, 0o600, now_secs())));
                    }
                }
                out
            }
        })
    }

    async fn open(&mut self, raw: &[u8], pflags: u32) -> FsResult<String> {
        let (segs, node) = self.resolve(raw)?;
        match node {
            Node::Inbox { sender, rel } if !rel.is_empty() => {
                if pflags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0 {
                    return Err(FsError::Denied(
                        "the inbox is read-only: send files from /outbox".into(),
                    ));
                }
                let file = self.inbox_file(sender.as_deref(), &rel).await?;
                let vault_blob = file.blob.clone();
                let gw = self.gw.clone();
                let size = file.size;
                let reader = tokio::task::spawn_blocking(move || {
                    let blob = gw.vault.open_blob(&vault_blob)?;
                    if blob.size() != size {
                        return Err(std::io::Error::other(format!(
                            "stored file {vault_blob} holds {} bytes, its record says {size}",
                            blob.size()
                        )));
                    }
                    Ok(gw.vault.read_ahead(blob))
                })
                .await
                .map_err(|e| FsError::Internal(e.into()))??;
                self.add_handle(OpenHandle::Read(Box::new(Download {
                    reader,
                    file,
                    covered: 0,
                    recorded: false,
                    checked_at: std::time::Instant::now(),
                })))
            }
            Node::Write { folder, rel } if !rel.is_empty() => {
                if pflags & FXF_READ != 0 {
                    return Err(FsError::Denied(
                        "files you send cannot be read back from the outbox".into(),
                    ));
                }
                self.recipients(&folder).await?;
                let name = rel.join("/");
                let key = (folder.path.clone(), name.clone());
                match self.write_entry(&folder, &name).await? {
                    WriteEntry::Dir => {
                        return Err(FsError::Failure(format!(
                            "{} is a folder",
                            display_path(&segs)
                        )));
                    }
                    WriteEntry::Staged(_) | WriteEntry::Pending { .. }
                        if pflags & FXF_EXCL != 0 =>
                    {
                        return Err(FsError::Failure(format!(
                            "{} already exists",
                            display_path(&segs)
                        )));
                    }
                    WriteEntry::Staged(_) | WriteEntry::Pending { .. }
                        if pflags & FXF_TRUNC == 0 || pflags & FXF_APPEND != 0 =>
                    {
                        return Err(FsError::Failure(RESUME_REFUSED.into()));
                    }
                    WriteEntry::Staged(_) => {
                        // Sent again from the start: the old partial file is replaced.
                        if let Some(old) = self.staged.remove(&key) {
                            self.gw.vault.discard(&old.sealed);
                        }
                    }
                    WriteEntry::Pending { .. } | WriteEntry::Missing => {}
                }
                let quota_left = self.quota_left().await?;
                if quota_left == 0 {
                    return Err(FsError::Failure(
                        "your organisation's storage quota is used up; nothing was stored".into(),
                    ));
                }
                let slot = self
                    .gw
                    .guard
                    .begin_upload(self.who.user_id, self.who.org.id)
                    .ok_or_else(|| {
                        FsError::Failure(format!(
                            "you are uploading {} files at once (limits.uploads_per_user); close some first",
                            self.gw.config().limits.uploads_per_user
                        ))
                    })?;
                let writer = self.gw.vault.begin_upload(self.gw.config().scan.stream())?;
                self.add_handle(OpenHandle::Write(Box::new(Upload {
                    folder,
                    name,
                    writer,
                    next_offset: 0,
                    reorder: BTreeMap::new(),
                    reorder_bytes: 0,
                    failed: None,
                    quota_left,
                    slot,
                })))
            }
            Node::Receipts { rel } | Node::Reports { rel } if !rel.is_empty() => {
                if pflags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0 {
                    return Err(FsError::Denied(format!(
                        "{} is read-only",
                        display_path(&segs)
                    )));
                }
                let body = if segs[0] == "receipts" {
                    self.receipt(&rel).await?.map(|(b, _)| b)
                } else {
                    self.report(&rel).await?
                };
                let body = body.ok_or_else(|| {
                    FsError::NotFound(format!("{} does not exist", display_path(&segs)))
                })?;
                self.add_handle(OpenHandle::Generated(body))
            }
            Node::Write { folder, .. } => {
                // A write folder opened as a file (`put f /outbox/other/coordinator/`): the
                // routing refusal comes first.
                self.recipients(&folder).await?;
                Err(FsError::Failure(format!(
                    "{} is a folder",
                    display_path(&segs)
                )))
            }
            _ => Err(FsError::Failure(format!(
                "{} is a folder",
                display_path(&segs)
            ))),
        }
    }

    async fn quota_left(&self) -> FsResult<u64> {
        let used = self.gw.db.org_usage(self.who.org.id).await?;
        let staged: u64 = self.staged.values().map(|s| s.sealed.size).sum();
        Ok(self
            .gw
            .config()
            .limits
            .quota_per_org
            .saturating_sub(used + staged))
    }

    /// Reads straight into the DATA reply; records the download once the whole file was read.
    async fn read(&mut self, id: u32, handle: &[u8], offset: u64, len: u32) -> FsResult<Bytes> {
        let key = Self::handle_key(handle)?;
        if let Some(OpenHandle::Generated(body)) = self.handles.get(&key) {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(body.len());
            let end = start
                .saturating_add(len.min(p::MAX_READ) as usize)
                .min(body.len());
            return if start == end {
                Err(FsError::Eof)
            } else {
                Ok(p::data(id, &body[start..end]))
            };
        }
        let Some(OpenHandle::Read(d)) = self.handles.get_mut(&key) else {
            return Err(FsError::Failure("not a handle open for reading".into()));
        };
        let Download {
            reader,
            file,
            covered,
            recorded,
            checked_at,
        } = d.as_mut();
        if checked_at.elapsed() >= RECALL_CHECK_EVERY {
            if self.gw.db.delivery_recalled(file.delivery_id).await? {
                return Err(FsError::NotFound(RECALLED.into()));
            }
            *checked_at = std::time::Instant::now();
        }
        let len = u64::from(len.min(p::MAX_READ)).min(file.size.saturating_sub(offset)) as usize;
        let reply = match len {
            0 => None,
            _ => {
                reader
                    .read_with(offset, len, |data| (p::data(id, data), data.len()))
                    .await?
            }
        };
        let got = reply.as_ref().map_or(0, |(_, n)| *n) as u64;
        metrics::counter!(crate::metrics::BYTES_SENT).increment(got);
        if offset <= *covered {
            *covered = (*covered).max(offset + got);
        }
        if !*recorded && *covered >= file.size {
            *recorded = true;
            let entry = self.who.audit("download", "ok").detail(format!(
                "delivery {}: {}",
                file.delivery_id, file.inbox_name
            ));
            if !self
                .gw
                .db
                .mark_downloaded(file.delivery_id, &self.who.username, &entry)
                .await?
            {
                return Err(FsError::NotFound(RECALLED.into()));
            }
        }
        reply.map(|(packet, _)| packet).ok_or(FsError::Eof)
    }

    async fn write(&mut self, handle: &[u8], offset: u64, data: Bytes) -> FsResult<()> {
        let max = self.gw.config().limits.max_file_size;
        let OpenHandle::Write(up) = self.handle_mut(handle)? else {
            return Err(FsError::Failure("not a handle open for writing".into()));
        };
        if let Some(msg) = &up.failed {
            return Err(FsError::Failure(msg.clone()));
        }
        let end = offset.saturating_add(data.len() as u64);
        let problem = if end > max {
            Some(format!(
                "the file is larger than the limit of {max} bytes; nothing was stored"
            ))
        } else if end > up.quota_left || !up.slot.reserve_to(end, up.quota_left) {
            Some("your organisation's storage quota is used up; nothing was stored".to_string())
        } else if offset < up.next_offset {
            Some("overlapping writes are not supported; send the file again from the start".into())
        } else {
            None
        };
        if let Some(msg) = problem {
            up.failed = Some(msg.clone());
            return Err(FsError::Failure(msg));
        }
        if data.is_empty() {
            // Nothing to write, wherever it points: no entry, no cost.
            return Ok(());
        }
        if offset > up.next_offset {
            // Held out of order: counted as the memory it takes (its own copy, so that the
            // packet it came in is freed, and the map's entry), and never twice at one offset.
            up.reorder_bytes += data.len() + REORDER_ENTRY_COST;
            if up.reorder_bytes > REORDER_LIMIT || up.reorder.contains_key(&offset) {
                let msg = "writes arrived too far out of order; send the file again".to_string();
                up.failed = Some(msg.clone());
                return Err(FsError::Failure(msg));
            }
            up.reorder.insert(offset, Bytes::copy_from_slice(&data));
            return Ok(());
        }
        up.next_offset = end;
        let mut written = up.writer.write(data).await;
        while written.is_ok()
            && let Some(entry) = up.reorder.first_entry()
            && *entry.key() == up.next_offset
        {
            let chunk = entry.remove();
            up.reorder_bytes -= chunk.len() + REORDER_ENTRY_COST;
            up.next_offset += chunk.len() as u64;
            written = up.writer.write(chunk).await;
        }
        // A failed store (a full disk, say) fails the upload for good; close discards it.
        written.map_err(|e| {
            let e = FsError::from(e);
            up.failed = Some(e.status().1);
            e
        })
    }

    async fn close(&mut self, handle: &[u8]) -> FsResult<()> {
        let key = Self::handle_key(handle)?;
        let h = self
            .handles
            .remove(&key)
            .ok_or_else(|| FsError::Failure("invalid handle".into()))?;
        let OpenHandle::Write(up) = h else {
            return Ok(());
        };
        let Upload {
            folder,
            name,
            writer,
            reorder,
            failed,
            ..
        } = *up;
        let failed = failed.or_else(|| {
            (!reorder.is_empty()).then(|| "the file has a gap; send it again".to_string())
        });
        if let Some(msg) = failed {
            writer.abort().await;
            self.audit_aborted(&folder, &name, &msg).await;
            return Err(FsError::Failure(msg));
        }
        let sealed = match writer.finish().await {
            Ok(sealed) => sealed,
            Err(e) => {
                let e = FsError::from(e);
                self.audit_aborted(&folder, &name, &e.status().1).await;
                return Err(e);
            }
        };
        // The verdict is known now, before anything is committed; a staged upload too is refused
        // at its CLOSE, so nothing waits for a RENAME that would fail.
        let scan = self.screen(&folder, &name, &sealed).await?;
        if is_temp_name(&name) {
            self.staged
                .insert((folder.path.clone(), name), Staged { sealed, scan });
            return Ok(());
        }
        self.commit(&folder, &name, sealed, scan).await
    }

    /// The malware scan's decision on a finished upload (SPEC §7).
    async fn screen(
        &self,
        folder: &WriteFolder,
        name: &str,
        sealed: &SealedBlob,
    ) -> FsResult<Mark> {
        let attempt = crate::scan::Attempt {
            sender_org_id: self.who.org.id,
            sender_user_id: Some(self.who.user_id),
            folder: folder.path.clone(),
            name: name.to_string(),
            recipient_role: folder.role,
        };
        let audit = self.who.audit("upload refused", "");
        crate::scan::screen(&self.gw, sealed, attempt, audit)
            .await
            .map_err(|r| FsError::Failure(r.to_string()))
    }

    async fn audit_aborted(&self, folder: &WriteFolder, name: &str, why: &str) {
        let entry = self
            .who
            .audit("upload aborted", "aborted")
            .detail(format!("/{}/{name}: {why}", folder.path));
        if let Err(e) = self.gw.db.audit(&entry).await {
            tracing::error!("cannot write audit entry: {e:#}");
        }
    }

    /// Makes a sealed upload a transfer: routing checked again, store, then one transaction.
    async fn commit(
        &self,
        folder: &WriteFolder,
        name: &str,
        sealed: SealedBlob,
        scan: Mark,
    ) -> FsResult<()> {
        let recipients = match self.recipients(folder).await {
            Ok(r) => r,
            Err(e) => {
                self.gw.vault.discard(&sealed);
                return Err(e);
            }
        };
        let over_quota = match self.quota_left().await {
            Ok(left) => sealed.size > left,
            Err(e) => {
                self.gw.vault.discard(&sealed);
                return Err(e);
            }
        };
        if over_quota {
            self.gw.vault.discard(&sealed);
            let msg = "your organisation's storage quota is used up; nothing was stored";
            self.audit_aborted(folder, name, msg).await;
            return Err(FsError::Failure(msg.into()));
        }
        if let Err(e) = self.gw.vault.store(&sealed) {
            self.gw.vault.discard(&sealed);
            return Err(e.into());
        }
        let upload = NewUpload {
            sender_org_id: self.who.org.id,
            sender_user_id: Some(self.who.user_id),
            folder: folder.path.clone(),
            name: name.to_string(),
            recipient_role: folder.role,
            ingest_kind: folder.ingest.map(|k| k.as_str().to_string()),
            blob: sealed.blob.clone(),
            size: sealed.size,
            sha256: sealed.sha256.clone(),
            recipients,
            scan,
        };
        let entry = self.who.audit("upload", "ok").detail(format!(
            "/{}/{name}: {} bytes, sha256 {}, {}",
            folder.path,
            sealed.size,
            sealed.sha256,
            scan.as_str()
        ));
        match self.gw.db.commit_upload(&upload, &entry).await {
            Ok(c) => {
                tracing::info!(
                    user = %self.who.username, org = %self.who.org.slug, folder = %folder.path,
                    upload = c.upload_id, size = sealed.size, "transfer committed"
                );
                metrics::counter!(crate::metrics::TRANSFERS_COMMITTED, "source" => "sftp")
                    .increment(1);
                let Some(job) = c.job_id else {
                    return Ok(());
                };
                // Ingest at once, so an unattended script sees an unreadable file refused at
                // close. A fault here leaves the job pending for the background run.
                match crate::ingest::process(&self.gw, job).await {
                    Ok(Some(report)) => match report.unreadable {
                        Some(reason) => Err(FsError::Failure(format!(
                            "{name} was stored but NOT applied: {reason} (see /receipts/)"
                        ))),
                        None => Ok(()),
                    },
                    Ok(None) => Ok(()),
                    Err(e) => {
                        tracing::error!(job, "ingest failed, will retry: {e:#}");
                        Ok(())
                    }
                }
            }
            Err(e) => {
                if let Err(rm) = self.gw.vault.remove(&sealed.blob) {
                    tracing::error!("cannot remove uncommitted blob {}: {rm}", sealed.blob);
                }
                Err(FsError::Internal(e))
            }
        }
    }

    async fn remove(&mut self, raw: &[u8]) -> FsResult<()> {
        let (segs, node) = self.resolve(raw)?;
        match node {
            Node::Inbox { sender, rel } if !rel.is_empty() => {
                let file = self.inbox_file(sender.as_deref(), &rel).await?;
                let entry = self.who.audit("inbox delete", "ok").detail(format!(
                    "delivery {}: {}",
                    file.delivery_id, file.inbox_name
                ));
                self.gw.db.delete_delivery(file.delivery_id, &entry).await?;
                Ok(())
            }
            Node::Write { folder, rel } if !rel.is_empty() => {
                let name = rel.join("/");
                match self.write_entry(&folder, &name).await? {
                    WriteEntry::Staged(_) => {
                        if let Some(s) = self.staged.remove(&(folder.path.clone(), name.clone())) {
                            self.gw.vault.discard(&s.sealed);
                        }
                        self.audit_aborted(&folder, &name, "partial file deleted by the sender")
                            .await;
                        Ok(())
                    }
                    WriteEntry::Pending { upload_id, .. } => {
                        let entry = self
                            .who
                            .audit("recall", "ok")
                            .detail(format!("upload {upload_id}: /{}/{name}", folder.path));
                        match self.gw.db.recall_upload(upload_id, &entry).await? {
                            ChangeOutcome::Done => Ok(()),
                            ChangeOutcome::AlreadyDownloaded => Err(FsError::Denied(
                                "the recipient has already downloaded this file; it can no longer be recalled".into(),
                            )),
                            _ => Err(FsError::NotFound(format!("{} does not exist", display_path(&segs)))),
                        }
                    }
                    WriteEntry::Dir => Err(FsError::Failure(format!(
                        "{} is a folder",
                        display_path(&segs)
                    ))),
                    WriteEntry::Missing => Err(FsError::NotFound(format!(
                        "{} does not exist",
                        display_path(&segs)
                    ))),
                }
            }
            _ => Err(FsError::Denied(format!(
                "{} cannot be deleted",
                display_path(&segs)
            ))),
        }
    }

    async fn rename(&mut self, from: &[u8], to: &[u8]) -> FsResult<()> {
        let (from_segs, from_node) = self.resolve(from)?;
        let (to_segs, to_node) = self.resolve(to)?;
        let (
            Node::Write { folder, rel },
            Node::Write {
                folder: to_folder,
                rel: to_rel,
            },
        ) = (from_node, to_node)
        else {
            return Err(FsError::Denied(
                "only files you are sending can be renamed, within their outbox folder".into(),
            ));
        };
        if folder.path != to_folder.path || rel.is_empty() || to_rel.is_empty() {
            return Err(FsError::Denied(format!(
                "{} can be renamed only within /{}",
                display_path(&from_segs),
                folder.path
            )));
        }
        let (name, new_name) = (rel.join("/"), to_rel.join("/"));
        if !matches!(
            self.write_entry(&folder, &new_name).await?,
            WriteEntry::Missing
        ) {
            return Err(FsError::Failure(format!(
                "{} already exists",
                display_path(&to_segs)
            )));
        }
        match self.write_entry(&folder, &name).await? {
            WriteEntry::Staged(_) => {
                let Some(staged) = self.staged.remove(&(folder.path.clone(), name)) else {
                    return Err(FsError::NotFound(format!(
                        "{} does not exist",
                        display_path(&from_segs)
                    )));
                };
                if is_temp_name(&new_name) {
                    self.staged.insert((folder.path.clone(), new_name), staged);
                    Ok(())
                } else {
                    self.commit(&folder, &new_name, staged.sealed, staged.scan)
                        .await
                }
            }
            WriteEntry::Pending { upload_id, .. } => {
                let entry = self.who.audit("rename", "ok").detail(format!(
                    "upload {upload_id}: /{}/{name} -> {new_name}",
                    folder.path
                ));
                match self.gw.db.rename_upload(upload_id, &new_name, &entry).await? {
                    ChangeOutcome::Done => Ok(()),
                    ChangeOutcome::AlreadyDownloaded => Err(FsError::Denied(
                        "the recipient has already downloaded this file; it can no longer be renamed".into(),
                    )),
                    ChangeOutcome::NameTaken => Err(FsError::Failure(format!(
                        "{} already exists",
                        display_path(&to_segs)
                    ))),
                    ChangeOutcome::NotFound => {
                        Err(FsError::NotFound(format!("{} does not exist", display_path(&from_segs))))
                    }
                }
            }
            WriteEntry::Dir => Err(FsError::Failure(
                "folders cannot be renamed; rename the files inside".into(),
            )),
            WriteEntry::Missing => Err(FsError::NotFound(format!(
                "{} does not exist",
                display_path(&from_segs)
            ))),
        }
    }

    async fn mkdir(&mut self, raw: &[u8]) -> FsResult<()> {
        let (segs, node) = self.resolve(raw)?;
        let Node::Write { folder, rel } = node else {
            return Err(FsError::Denied(
                "folders can be created only inside an outbox folder".into(),
            ));
        };
        self.recipients(&folder).await?;
        let name = rel.join("/");
        match self.write_entry(&folder, &name).await? {
            WriteEntry::Missing => {
                let limit = self.gw.config().limits.folders_per_session as usize;
                if self.made_dirs.len() >= limit {
                    return Err(FsError::Failure(format!(
                        "this session has made {limit} folders (limits.folders_per_session); upload into them first"
                    )));
                }
                self.made_dirs.insert((folder.path.clone(), name));
                Ok(())
            }
            _ => Err(FsError::Failure(format!(
                "{} already exists",
                display_path(&segs)
            ))),
        }
    }

    async fn rmdir(&mut self, raw: &[u8]) -> FsResult<()> {
        let (segs, node) = self.resolve(raw)?;
        if let Node::Write { folder, rel } = node
            && self.made_dirs.remove(&(folder.path.clone(), rel.join("/")))
        {
            return Ok(());
        }
        Err(FsError::Denied(format!(
            "{} cannot be removed",
            display_path(&segs)
        )))
    }

    /// Ends the session: open uploads and partial files are discarded, and audited as such.
    pub async fn end(mut self) {
        for (_, h) in std::mem::take(&mut self.handles) {
            if let OpenHandle::Write(up) = h {
                let Upload {
                    folder,
                    name,
                    writer,
                    ..
                } = *up;
                writer.abort().await;
                self.audit_aborted(
                    &folder,
                    &name,
                    "connection closed before the file was complete",
                )
                .await;
            }
        }
        for ((folder_path, name), s) in std::mem::take(&mut self.staged) {
            self.gw.vault.discard(&s.sealed);
            let entry = self.who.audit("upload aborted", "aborted").detail(format!(
                "/{folder_path}/{name}: partial file never renamed; discarded"
            ));
            if let Err(e) = self.gw.db.audit(&entry).await {
                tracing::error!("cannot write audit entry: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_a_prefix() {
        let names = ["a.pdf", "f/b.pdf", "f/g/c.pdf", "fx/d.pdf"];
        let (files, dirs) = children("", names.iter().copied());
        assert_eq!(files, vec!["a.pdf"]);
        assert_eq!(dirs.into_iter().collect::<Vec<_>>(), vec!["f", "fx"]);
        let (files, dirs) = children("f", names.iter().copied());
        assert_eq!(files, vec!["b.pdf"]);
        assert_eq!(dirs.into_iter().collect::<Vec<_>>(), vec!["g"]);
        assert!(is_under("f/b", "f") && !is_under("fx/b", "f") && !is_under("f", "f"));
    }

    #[test]
    fn longnames_look_like_ls() {
        let l = longname("a.pdf", &file_attrs(1234, 0o640, 1_764_000_000));
        assert!(l.starts_with("-rw-r-----"), "{l}");
        assert!(l.ends_with(" a.pdf"), "{l}");
        assert!(l.contains(" 1234 "), "{l}");
        assert!(longname("inbox", &dir_attrs()).starts_with("drwxr-x---"));
    }
}
