//! The virtual tree a user sees (SPEC §3). A client path is parsed into a [`Node`]; nothing here
//! ever names a host path, so no client path can reach the host filesystem.

use super::names::{MAX_DEPTH, MAX_PATH_BYTES, validate_component};
use super::org::{OrgKind, Role};

/// Kinds of file the batch processor ingests, each with its drop folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestKind {
    Register,
    Absences,
    Referral,
    Withdrawal,
    Roster,
    Placements,
    Progress,
    Assessments,
    Targets,
    Notes,
}

impl IngestKind {
    pub const ALL: [IngestKind; 10] = [
        IngestKind::Register,
        IngestKind::Absences,
        IngestKind::Referral,
        IngestKind::Withdrawal,
        IngestKind::Roster,
        IngestKind::Placements,
        IngestKind::Progress,
        IngestKind::Assessments,
        IngestKind::Targets,
        IngestKind::Notes,
    ];

    /// The folder at the root of the tree where this kind is dropped.
    pub fn folder(self) -> &'static str {
        match self {
            IngestKind::Register => "registers",
            IngestKind::Absences => "absences",
            IngestKind::Referral => "referrals",
            IngestKind::Withdrawal => "withdrawals",
            IngestKind::Roster => "roster",
            IngestKind::Placements => "placements",
            IngestKind::Progress => "progress",
            IngestKind::Assessments => "assessments",
            IngestKind::Targets => "targets",
            IngestKind::Notes => "notes",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IngestKind::Register => "register",
            IngestKind::Absences => "absences",
            IngestKind::Referral => "referral",
            IngestKind::Withdrawal => "withdrawal",
            IngestKind::Roster => "roster",
            IngestKind::Placements => "placements",
            IngestKind::Progress => "progress",
            IngestKind::Assessments => "assessments",
            IngestKind::Targets => "targets",
            IngestKind::Notes => "notes",
        }
    }

    pub fn parse(s: &str) -> Option<IngestKind> {
        IngestKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Which organisations send this kind (SPEC §3).
    pub fn sent_by(self, kind: OrgKind) -> bool {
        match self {
            IngestKind::Register => kind == OrgKind::Provider,
            IngestKind::Absences | IngestKind::Referral | IngestKind::Roster => {
                kind == OrgKind::School
            }
            IngestKind::Withdrawal => matches!(kind, OrgKind::School | OrgKind::Provider),
            IngestKind::Placements => kind == OrgKind::Hub,
            IngestKind::Progress | IngestKind::Assessments | IngestKind::Targets => {
                kind == OrgKind::Provider
            }
            IngestKind::Notes => true,
        }
    }
}

/// Whom an upload into a write folder is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The hub (every upload of a school or provider).
    Hub,
    /// One organisation by slug (hub outboxes; for others only to be refused by routing).
    Org(String),
    /// Every active organisation of a kind (hub only).
    AllOf(OrgKind),
}

/// A folder whose uploads become transfers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteFolder {
    /// Canonical path of the folder without the leading `/`, e.g. `outbox/dsl` or `registers`.
    pub path: String,
    pub target: Target,
    pub role: Role,
    pub ingest: Option<IngestKind>,
}

/// A place in a user's virtual tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    /// Hub only: `/inbox`, one folder per sending organisation.
    InboxRoot,
    /// A path inside an inbox: `sender` is the sending organisation's slug for the hub.
    Inbox {
        sender: Option<String>,
        rel: Vec<String>,
    },
    /// `/outbox`: roles (school, provider) or organisations and broadcast folders (hub).
    OutboxRoot,
    /// Hub: `/outbox/<slug>` listing the roles. For others, a folder that routing refuses.
    OutboxTarget(Target),
    /// A write folder itself (`rel` empty) or a path inside it.
    Write {
        folder: WriteFolder,
        rel: Vec<String>,
    },
    Receipts {
        rel: Vec<String>,
    },
    Reports {
        rel: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotFound(String),
    Invalid(String),
}

/// Turns a client's path into normalised components. `..` at the root stays at the root, as in a
/// chroot; the result never contains `.`, `..` or an empty component.
pub fn normalize(raw: &[u8]) -> Result<Vec<String>, PathError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::Invalid(format!(
            "path longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if raw.contains(&0) {
        return Err(PathError::Invalid("path contains a NUL byte".into()));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| PathError::Invalid("path is not valid UTF-8".into()))?;
    let mut segs: Vec<String> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            name => {
                validate_component(name).map_err(PathError::Invalid)?;
                segs.push(name.to_string());
            }
        }
    }
    if segs.len() > MAX_DEPTH + 3 {
        return Err(PathError::Invalid("path is nested too deeply".into()));
    }
    Ok(segs)
}

/// Joins normalised components back into an absolute path for display.
pub fn display_path(segs: &[String]) -> String {
    format!("/{}", segs.join("/"))
}

fn role_folder(s: &str) -> Option<Role> {
    match s {
        "coordinator" => Some(Role::Coordinator),
        "dsl" => Some(Role::Dsl),
        _ => None,
    }
}

fn not_found(segs: &[String]) -> PathError {
    PathError::NotFound(format!("{} does not exist", display_path(segs)))
}

/// Places `segs` in the tree of an organisation of `kind`.
pub fn classify(kind: OrgKind, segs: &[String]) -> Result<Node, PathError> {
    let Some(top) = segs.first() else {
        return Ok(Node::Root);
    };
    let rest = &segs[1..];
    match top.as_str() {
        "inbox" => Ok(match (kind, rest.split_first()) {
            (OrgKind::Hub, None) => Node::InboxRoot,
            (OrgKind::Hub, Some((slug, rel))) => Node::Inbox {
                sender: Some(slug.clone()),
                rel: rel.to_vec(),
            },
            (_, _) => Node::Inbox {
                sender: None,
                rel: rest.to_vec(),
            },
        }),
        "outbox" => classify_outbox(kind, segs),
        "receipts" => Ok(Node::Receipts { rel: rest.to_vec() }),
        "reports" => Ok(Node::Reports { rel: rest.to_vec() }),
        folder => {
            let ingest = IngestKind::ALL
                .into_iter()
                .find(|k| k.folder() == folder && k.sent_by(kind))
                .ok_or_else(|| not_found(segs))?;
            Ok(Node::Write {
                folder: WriteFolder {
                    path: folder.to_string(),
                    target: Target::Hub,
                    role: Role::Coordinator,
                    ingest: Some(ingest),
                },
                rel: rest.to_vec(),
            })
        }
    }
}

fn classify_outbox(kind: OrgKind, segs: &[String]) -> Result<Node, PathError> {
    let rest = &segs[1..];
    let Some((first, after_first)) = rest.split_first() else {
        return Ok(Node::OutboxRoot);
    };
    // School and provider: /outbox/<role>/… goes to the hub.
    if kind != OrgKind::Hub
        && let Some(role) = role_folder(first)
    {
        return Ok(Node::Write {
            folder: WriteFolder {
                path: format!("outbox/{first}"),
                target: Target::Hub,
                role,
                ingest: None,
            },
            rel: after_first.to_vec(),
        });
    }
    let target = match (kind, first.as_str()) {
        (OrgKind::Hub, "all-schools") => Target::AllOf(OrgKind::School),
        (OrgKind::Hub, "all-providers") => Target::AllOf(OrgKind::Provider),
        _ => Target::Org(first.clone()),
    };
    let Some((role_name, rel)) = after_first.split_first() else {
        return Ok(Node::OutboxTarget(target));
    };
    let role = role_folder(role_name).ok_or_else(|| not_found(segs))?;
    Ok(Node::Write {
        folder: WriteFolder {
            path: format!("outbox/{first}/{role_name}"),
            target,
            role,
            ingest: None,
        },
        rel: rel.to_vec(),
    })
}

/// The folders at the root of an organisation's tree, in listing order.
pub fn root_folders(kind: OrgKind) -> Vec<&'static str> {
    let mut v = vec!["inbox", "outbox"];
    v.extend(
        IngestKind::ALL
            .into_iter()
            .filter(|k| k.sent_by(kind))
            .map(|k| k.folder()),
    );
    v.extend(["receipts", "reports"]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Vec<String> {
        normalize(p.as_bytes()).unwrap()
    }

    #[test]
    fn normalisation_never_escapes_the_root() {
        assert_eq!(n("/"), Vec::<String>::new());
        assert_eq!(n("."), Vec::<String>::new());
        assert_eq!(n("../../.."), Vec::<String>::new());
        assert_eq!(n("/inbox/../../etc/passwd"), vec!["etc", "passwd"]);
        assert_eq!(n("//inbox///./a"), vec!["inbox", "a"]);
        assert_eq!(n("inbox/a/.."), vec!["inbox"]);
        assert!(matches!(
            normalize(b"/inbox/a\0b"),
            Err(PathError::Invalid(_))
        ));
        assert!(matches!(
            normalize(b"/inbox/\xff"),
            Err(PathError::Invalid(_))
        ));
        assert!(matches!(
            normalize(&[b'a'; 2000]),
            Err(PathError::Invalid(_))
        ));
        assert!(matches!(
            normalize(b"/inbox/a\\..\\b"),
            Err(PathError::Invalid(_))
        ));
        let deep = "/a".repeat(40);
        assert!(matches!(
            normalize(deep.as_bytes()),
            Err(PathError::Invalid(_))
        ));
    }

    #[test]
    fn school_tree() {
        let k = OrgKind::School;
        assert_eq!(classify(k, &n("/")).unwrap(), Node::Root);
        assert_eq!(
            classify(k, &n("/inbox/a.pdf")).unwrap(),
            Node::Inbox {
                sender: None,
                rel: vec!["a.pdf".into()]
            }
        );
        let Node::Write { folder, rel } = classify(k, &n("/outbox/dsl/x/y.pdf")).unwrap() else {
            panic!()
        };
        assert_eq!(folder.target, Target::Hub);
        assert_eq!(folder.role, Role::Dsl);
        assert_eq!(folder.path, "outbox/dsl");
        assert_eq!(rel, vec!["x", "y.pdf"]);
        // Another organisation's outbox is parsed so that routing can refuse it with a reason.
        let Node::Write { folder, .. } =
            classify(k, &n("/outbox/other-school/coordinator/f")).unwrap()
        else {
            panic!()
        };
        assert_eq!(folder.target, Target::Org("other-school".into()));
        assert!(
            classify(k, &n("/registers/r.csv")).is_err(),
            "registers are for providers"
        );
        assert!(classify(k, &n("/roster/r.csv")).is_ok());
        assert!(classify(k, &n("/etc/passwd")).is_err());
        assert!(classify(k, &n("/outbox/x/boss/f")).is_err());
    }

    #[test]
    fn provider_and_hub_trees() {
        assert!(classify(OrgKind::Provider, &n("/registers/r.csv")).is_ok());
        assert!(classify(OrgKind::Provider, &n("/roster/r.csv")).is_err());
        assert_eq!(
            classify(OrgKind::Hub, &n("/inbox")).unwrap(),
            Node::InboxRoot
        );
        assert_eq!(
            classify(OrgKind::Hub, &n("/inbox/demo-school/a")).unwrap(),
            Node::Inbox {
                sender: Some("demo-school".into()),
                rel: vec!["a".into()]
            }
        );
        let Node::Write { folder, .. } =
            classify(OrgKind::Hub, &n("/outbox/all-schools/dsl/f")).unwrap()
        else {
            panic!()
        };
        assert_eq!(folder.target, Target::AllOf(OrgKind::School));
        assert_eq!(
            classify(OrgKind::Hub, &n("/outbox/demo-school")).unwrap(),
            Node::OutboxTarget(Target::Org("demo-school".into()))
        );
        assert!(classify(OrgKind::Hub, &n("/registers/x")).is_err());
        let Node::Write { folder, .. } = classify(OrgKind::Hub, &n("/placements/p.csv")).unwrap()
        else {
            panic!()
        };
        assert_eq!(folder.ingest, Some(IngestKind::Placements));
        assert!(classify(OrgKind::School, &n("/placements/p.csv")).is_err());
        assert!(classify(OrgKind::Provider, &n("/placements/p.csv")).is_err());
        assert_eq!(
            root_folders(OrgKind::Hub),
            vec![
                "inbox",
                "outbox",
                "placements",
                "notes",
                "receipts",
                "reports"
            ]
        );
    }
}
