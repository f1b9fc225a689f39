//! Email notifications (SPEC §5).
//!
//! Something that happened is a [`Notice`]; it is written as an event row and, in the same
//! transaction, turned by [`plan`] into message rows (the durable outbox). The sender task
//! ([`sender`]) claims due rows, renders them with [`render`] and hands them to a [`transport`].
//! A message says what happened, how many, from which organisation, for which role and where to
//! look: never a person's name, a file name or file content.

pub mod sender;
pub mod transport;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::domain::org::{OrgKind, Role};

/// Something that happened that people should hear about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A file was committed and delivered to `recipients` (several for a hub broadcast).
    TransferCommitted {
        sender_org_id: i64,
        role: Role,
        recipients: Vec<i64>,
        ingest_kind: Option<String>,
    },
    /// An ingest receipt lists rejected rows or a refused file.
    ReceiptWithRejections {
        org_id: i64,
        uploader_user_id: Option<i64>,
        rejected: usize,
        unreadable: bool,
        ingest_kind: String,
    },
    /// A register recorded unexplained absences of a school's learners.
    UnexplainedAbsences {
        school_org_id: i64,
        provider_org_id: i64,
        count: i64,
    },
    /// `count` referrals in one file (one message per file).
    ReferralReceived {
        school_org_id: i64,
        #[serde(default = "one")]
        count: i64,
    },
    /// `other_org_id`: the party that did not send the request (the provider of the course, or the
    /// learner's home school when a provider asks), when known.
    WithdrawalRequested {
        requester_org_id: i64,
        other_org_id: Option<i64>,
        #[serde(default = "one")]
        count: i64,
    },
    /// A `dsl` transfer has not been downloaded within `mail.dsl_escalate_minutes`.
    DslNotDownloaded {
        sender_org_id: i64,
        recipient_org_id: i64,
    },
    /// A file was refused by the malware scan (SPEC §7); nothing was delivered.
    MalwareRefused { sender_org_id: i64 },
}

/// Events written before notices carried a count were about one row.
fn one() -> i64 {
    1
}

impl Notice {
    /// The event kind stored beside the payload.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::TransferCommitted { .. } => "transfer_committed",
            Notice::ReceiptWithRejections { .. } => "receipt_with_rejections",
            Notice::UnexplainedAbsences { .. } => "unexplained_absences",
            Notice::ReferralReceived { .. } => "referral_received",
            Notice::WithdrawalRequested { .. } => "withdrawal_requested",
            Notice::DslNotDownloaded { .. } => "dsl_not_downloaded",
            Notice::MalwareRefused { .. } => "malware_refused",
        }
    }
}

/// The kinds of message; each has its own wording in [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    Transfer,
    DslTransfer,
    Rejections,
    UnexplainedAbsences,
    Referral,
    Withdrawal,
    /// A file for the hub's DSL from a school or provider is still not downloaded.
    DslOverdueAtHub,
    /// A file the hub sent to a school's or provider's DSL is still not downloaded.
    DslOverdueAtOrg,
    /// A file from `about` was refused as malware: to the hub's coordinator and DSL.
    MalwareAtHub,
    /// A file this organisation sent was refused as malware: to its coordinator.
    MalwareFromOrg,
}

impl MailKind {
    pub const ALL: [MailKind; 10] = [
        MailKind::Transfer,
        MailKind::DslTransfer,
        MailKind::Rejections,
        MailKind::UnexplainedAbsences,
        MailKind::Referral,
        MailKind::Withdrawal,
        MailKind::DslOverdueAtHub,
        MailKind::DslOverdueAtOrg,
        MailKind::MalwareAtHub,
        MailKind::MalwareFromOrg,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Transfer => "transfer",
            MailKind::DslTransfer => "dsl_transfer",
            MailKind::Rejections => "rejections",
            MailKind::UnexplainedAbsences => "unexplained_absences",
            MailKind::Referral => "referral",
            MailKind::Withdrawal => "withdrawal",
            MailKind::DslOverdueAtHub => "dsl_overdue_at_hub",
            MailKind::DslOverdueAtOrg => "dsl_overdue_at_org",
            MailKind::MalwareAtHub => "malware_at_hub",
            MailKind::MalwareFromOrg => "malware_from_org",
        }
    }

    pub fn parse(s: &str) -> Option<MailKind> {
        MailKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Safeguarding messages go at once and are marked high priority.
    pub fn high_priority(self) -> bool {
        matches!(
            self,
            MailKind::DslTransfer
                | MailKind::DslOverdueAtHub
                | MailKind::DslOverdueAtOrg
                | MailKind::MalwareAtHub
                | MailKind::MalwareFromOrg
        )
    }

    /// Messages of this kind to one recipient and role are gathered for `mail.group_seconds`.
    pub fn grouped(self) -> bool {
        matches!(self, MailKind::Transfer)
    }
}

/// One message to send: to an organisation's contact for a role (and, for a receipt, to the
/// user who uploaded the file), about `count` things from `about_org_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub kind: MailKind,
    pub to_org_id: i64,
    pub to_role: Role,
    pub to_user_id: Option<i64>,
    pub about_org_id: i64,
    pub count: i64,
}

impl Outgoing {
    /// Rows with the same key that are still waiting are merged into one message.
    pub fn group_key(&self) -> Option<String> {
        self.kind.grouped().then(|| {
            format!(
                "{}:{}:{}",
                self.kind.as_str(),
                self.to_org_id,
                self.to_role.as_str()
            )
        })
    }
}

/// Who hears about a notice. `hub_org_id` is the AP hub.
pub fn plan(notice: &Notice, hub_org_id: i64) -> Vec<Outgoing> {
    let to = |kind, to_org_id, to_role, about_org_id, count| Outgoing {
        kind,
        to_org_id,
        to_role,
        to_user_id: None,
        about_org_id,
        count,
    };
    match notice {
        // Ingest files tell their sender through the receipt and their own notices.
        Notice::TransferCommitted {
            ingest_kind: Some(_),
            ..
        } => Vec::new(),
        Notice::TransferCommitted {
            sender_org_id,
            role,
            recipients,
            ingest_kind: None,
        } => {
            let kind = match role {
                Role::Dsl => MailKind::DslTransfer,
                _ => MailKind::Transfer,
            };
            recipients
                .iter()
                .map(|&r| to(kind, r, *role, *sender_org_id, 1))
                .collect()
        }
        Notice::ReceiptWithRejections {
            org_id,
            uploader_user_id,
            rejected,
            unreadable,
            ..
        } => {
            let count = if *unreadable { 1 } else { *rejected as i64 };
            vec![Outgoing {
                to_user_id: *uploader_user_id,
                ..to(
                    MailKind::Rejections,
                    *org_id,
                    Role::Coordinator,
                    *org_id,
                    count,
                )
            }]
        }
        Notice::UnexplainedAbsences {
            school_org_id,
            provider_org_id,
            count,
        } => vec![to(
            MailKind::UnexplainedAbsences,
            *school_org_id,
            Role::Coordinator,
            *provider_org_id,
            *count,
        )],
        Notice::ReferralReceived {
            school_org_id,
            count,
        } => vec![to(
            MailKind::Referral,
            hub_org_id,
            Role::Coordinator,
            *school_org_id,
            *count,
        )],
        Notice::WithdrawalRequested {
            requester_org_id,
            other_org_id,
            count,
        } => {
            let mut out = vec![to(
                MailKind::Withdrawal,
                hub_org_id,
                Role::Coordinator,
                *requester_org_id,
                *count,
            )];
            if let Some(other) = other_org_id.filter(|o| *o != *requester_org_id) {
                out.push(to(
                    MailKind::Withdrawal,
                    other,
                    Role::Coordinator,
                    *requester_org_id,
                    *count,
                ));
            }
            out
        }
        Notice::DslNotDownloaded {
            sender_org_id,
            recipient_org_id,
        } => {
            let (kind, about) = if *recipient_org_id == hub_org_id {
                (MailKind::DslOverdueAtHub, *sender_org_id)
            } else {
                (MailKind::DslOverdueAtOrg, *recipient_org_id)
            };
            vec![to(kind, hub_org_id, Role::Coordinator, about, 1)]
        }
        Notice::MalwareRefused { sender_org_id } => {
            let mut out = vec![
                to(
                    MailKind::MalwareAtHub,
                    hub_org_id,
                    Role::Coordinator,
                    *sender_org_id,
                    1,
                ),
                to(
                    MailKind::MalwareAtHub,
                    hub_org_id,
                    Role::Dsl,
                    *sender_org_id,
                    1,
                ),
            ];
            if *sender_org_id != hub_org_id {
                out.push(to(
                    MailKind::MalwareFromOrg,
                    *sender_org_id,
                    Role::Coordinator,
                    *sender_org_id,
                    1,
                ));
            }
            out
        }
    }
}

/// An organisation as a message names it.
#[derive(Debug, Clone)]
pub struct OrgLabel {
    pub slug: String,
    pub name: String,
    pub kind: OrgKind,
}

/// Everything [`render`] needs about one message row.
#[derive(Debug, Clone)]
pub struct MailView<'a> {
    pub kind: MailKind,
    pub to: &'a OrgLabel,
    pub role: Role,
    /// Count per organisation the message is about (several for a grouped transfer message).
    pub about: Vec<(&'a OrgLabel, i64)>,
    pub escalate_minutes: f64,
}

/// Subject and plain-text body. Only organisation names, counts, roles and paths appear.
pub fn render(v: &MailView) -> (String, String) {
    let total: i64 = v.about.iter().map(|(_, n)| n).sum();
    let from_names = v
        .about
        .iter()
        .map(|(o, _)| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let role = role_phrase(v.role);
    let inbox_paths = |orgs: &[(&OrgLabel, i64)]| -> String {
        if v.to.kind == OrgKind::Hub {
            orgs.iter()
                .map(|(o, _)| format!("/inbox/{}/", o.slug))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "/inbox/".to_string()
        }
    };
    let mut body = String::new();
    let subject;
    match v.kind {
        MailKind::Transfer => {
            subject = format!(
                "{} new {} for the {role} from {from_names}",
                total,
                plural(total, "file", "files")
            );
            let _ = writeln!(
                body,
                "{total} new {} arrived at the AP gateway for the {role} of {}:",
                plural(total, "file", "files"),
                v.to.name
            );
            for (o, n) in &v.about {
                let _ = writeln!(body, "  - {n} from {}", o.name);
            }
            let _ = writeln!(body, "\nWhere to look: {}", inbox_paths(&v.about));
        }
        MailKind::DslTransfer => {
            subject = format!("URGENT: safeguarding file from {from_names} for the DSL");
            let _ = writeln!(
                body,
                "{total} safeguarding {} arrived at the AP gateway for the designated \
                 safeguarding lead of {} from {from_names}.\nPlease download {} today.",
                plural(total, "file", "files"),
                v.to.name,
                plural(total, "it", "them"),
            );
            let _ = writeln!(body, "\nWhere to look: {}", inbox_paths(&v.about));
        }
        MailKind::Rejections => {
            subject = "Some rows of a file you sent were not accepted".to_string();
            let _ = writeln!(
                body,
                "A file {} sent to the AP gateway was processed and {} {} could not be \
                 accepted. The receipt says which rows and why; correct them and send the \
                 file again.",
                v.to.name,
                total,
                plural(total, "row or problem", "rows or problems"),
            );
            let _ = writeln!(body, "\nWhere to look: /receipts/");
        }
        MailKind::UnexplainedAbsences => {
            subject = format!("Unexplained absences to process from {from_names}");
            let _ = writeln!(
                body,
                "A register from {from_names} recorded {total} unexplained {} of learners \
                 of {}. Please record a decision for each.",
                plural(total, "absence", "absences"),
                v.to.name
            );
            let _ = writeln!(
                body,
                "\nWhere to look: /reports/unprocessed-absences.csv (send decisions to /absences/)"
            );
        }
        MailKind::Referral => {
            subject = format!("New referral from {from_names}");
            let _ = writeln!(
                body,
                "{from_names} sent {total} new {} to the AP hub.",
                plural(total, "referral", "referrals")
            );
            let _ = writeln!(body, "\nWhere to look: /reports/referrals.csv");
        }
        MailKind::Withdrawal => {
            subject = format!("Withdrawal requested by {from_names}");
            let _ = writeln!(
                body,
                "{from_names} asked for {total} {} from a placement. The hub answers \
                 within five working days.",
                plural(total, "withdrawal", "withdrawals")
            );
            let _ = writeln!(body, "\nWhere to look: /reports/withdrawals.csv");
        }
        MailKind::DslOverdueAtHub => {
            subject = format!(
                "ESCALATION: a safeguarding file from {from_names} is not yet downloaded by the hub DSL"
            );
            let _ = writeln!(
                body,
                "A safeguarding file sent to the hub's designated safeguarding lead by \
                 {from_names} has not been downloaded after {} minutes. Please make sure the \
                 DSL has seen it.",
                v.escalate_minutes
            );
            let _ = writeln!(body, "\nWhere to look (DSL): {}", inbox_paths(&v.about));
        }
        MailKind::DslOverdueAtOrg => {
            subject =
                format!("ESCALATION: a safeguarding file for {from_names} is not yet downloaded");
            let _ = writeln!(
                body,
                "A safeguarding file the hub sent to the designated safeguarding lead of \
                 {from_names} has not been downloaded after {} minutes. Please contact them.",
                v.escalate_minutes
            );
            let _ = writeln!(body, "\nWhere to look: /reports/transfers.csv");
        }
        MailKind::MalwareAtHub => {
            subject = format!("ALERT: a file from {from_names} was refused as malware");
            let _ = writeln!(
                body,
                "The AP gateway's malware scan found a virus in a file that {from_names} \
                 sent. The file was refused and delivered to nobody; the sender was told. \
                 The signature and the file's SHA-256 are in the audit log."
            );
            let _ = writeln!(
                body,
                "\nWhere to look: /reports/transfers.csv (scan: refused)"
            );
        }
        MailKind::MalwareFromOrg => {
            subject = "ALERT: a file you sent was refused as malware".to_string();
            let _ = writeln!(
                body,
                "The AP gateway's malware scan found a virus in a file that {} sent. The \
                 file was refused and delivered to nobody, and the AP hub has been told. \
                 Please have the computer it came from checked before sending it again.",
                v.to.name
            );
            let _ = writeln!(
                body,
                "\nWhere to look: the refusal your SFTP program showed (for a drop folder, the \
                 receipt in the quarantine/ folder beside it) names the signature"
            );
        }
    }
    let _ = writeln!(
        body,
        "\nThis message holds no personal data and no file names. Sign in to the AP gateway \
         with your SFTP client to see the details."
    );
    (subject, wrap(&body, 72))
}

/// Breaks lines longer than `width` at spaces, so the body travels as plain 7-bit text.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let mut len = 0;
        for (i, word) in line.split(' ').enumerate() {
            if i > 0 {
                if len + 1 + word.len() > width {
                    out.push('\n');
                    len = 0;
                } else {
                    out.push(' ');
                    len += 1;
                }
            }
            out.push_str(word);
            len += word.len();
        }
        out.push('\n');
    }
    out
}

fn role_phrase(role: Role) -> &'static str {
    match role {
        Role::Dsl => "designated safeguarding lead",
        Role::Coordinator => "coordinator",
        Role::Admin => "administrator",
    }
}

fn plural<'a>(n: i64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// Adds the counts of `extra` to a grouped message's `about` map.
pub fn merge_about(about: &mut BTreeMap<i64, i64>, org_id: i64, count: i64) {
    *about.entry(org_id).or_insert(0) += count;
}

/// Seconds to wait before attempt `attempts + 1`: `base`, doubling, at most an hour.
pub fn backoff_seconds(base: u64, attempts: u32) -> u64 {
    let doubled = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
    doubled.clamp(1, 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_go_to_each_recipient_and_ingest_files_are_silent() {
        let n = Notice::TransferCommitted {
            sender_org_id: 1,
            role: Role::Coordinator,
            recipients: vec![2, 3],
            ingest_kind: None,
        };
        let out = plan(&n, 1);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|o| o.kind == MailKind::Transfer && o.count == 1)
        );
        assert_eq!(
            out[0].group_key().as_deref(),
            Some("transfer:2:coordinator")
        );
        let dsl = Notice::TransferCommitted {
            sender_org_id: 2,
            role: Role::Dsl,
            recipients: vec![1],
            ingest_kind: None,
        };
        let out = plan(&dsl, 1);
        assert_eq!(out[0].kind, MailKind::DslTransfer);
        assert!(out[0].kind.high_priority());
        assert_eq!(out[0].group_key(), None, "dsl mail is never held back");
        let ingest = Notice::TransferCommitted {
            sender_org_id: 2,
            role: Role::Coordinator,
            recipients: vec![1],
            ingest_kind: Some("register".into()),
        };
        assert!(plan(&ingest, 1).is_empty());
    }

    #[test]
    fn each_notice_reaches_the_parties_the_spec_names() {
        let hub = 1;
        let r = plan(
            &Notice::ReceiptWithRejections {
                org_id: 5,
                uploader_user_id: Some(9),
                rejected: 3,
                unreadable: false,
                ingest_kind: "register".into(),
            },
            hub,
        );
        assert_eq!(
            (r[0].to_org_id, r[0].to_user_id, r[0].count),
            (5, Some(9), 3)
        );
        let a = plan(
            &Notice::UnexplainedAbsences {
                school_org_id: 4,
                provider_org_id: 6,
                count: 2,
            },
            hub,
        );
        assert_eq!((a[0].to_org_id, a[0].about_org_id), (4, 6));
        let f = plan(
            &Notice::ReferralReceived {
                school_org_id: 4,
                count: 3,
            },
            hub,
        );
        assert_eq!(
            (f.len(), f[0].to_org_id, f[0].to_role, f[0].count),
            (1, hub, Role::Coordinator, 3)
        );
        let w = plan(
            &Notice::WithdrawalRequested {
                requester_org_id: 4,
                other_org_id: Some(6),
                count: 1,
            },
            hub,
        );
        assert_eq!(
            w.iter().map(|o| o.to_org_id).collect::<Vec<_>>(),
            vec![hub, 6]
        );
        let e = plan(
            &Notice::DslNotDownloaded {
                sender_org_id: hub,
                recipient_org_id: 4,
            },
            hub,
        );
        assert_eq!(
            (e[0].to_org_id, e[0].kind, e[0].about_org_id),
            (hub, MailKind::DslOverdueAtOrg, 4)
        );
        let e = plan(
            &Notice::DslNotDownloaded {
                sender_org_id: 4,
                recipient_org_id: hub,
            },
            hub,
        );
        assert_eq!(
            (e[0].to_org_id, e[0].kind, e[0].about_org_id),
            (hub, MailKind::DslOverdueAtHub, 4)
        );
    }

    #[test]
    fn notices_survive_the_event_payload() {
        let n = Notice::WithdrawalRequested {
            requester_org_id: 4,
            other_org_id: None,
            count: 1,
        };
        let text = serde_json::to_string(&n).unwrap();
        assert!(text.contains("\"kind\":\"withdrawal_requested\""));
        assert_eq!(serde_json::from_str::<Notice>(&text).unwrap(), n);
        // An event written before notices carried a count is about one row.
        let old = r#"{"kind":"referral_received","school_org_id":4}"#;
        assert_eq!(
            serde_json::from_str::<Notice>(old).unwrap(),
            Notice::ReferralReceived {
                school_org_id: 4,
                count: 1
            }
        );
    }

    #[test]
    fn grouped_transfer_lists_each_sender_and_its_inbox() {
        let hub = OrgLabel {
            slug: "cap".into(),
            name: "CAP Hub".into(),
            kind: OrgKind::Hub,
        };
        let a = OrgLabel {
            slug: "oak".into(),
            name: "Oak School".into(),
            kind: OrgKind::School,
        };
        let b = OrgLabel {
            slug: "elm".into(),
            name: "Elm School".into(),
            kind: OrgKind::School,
        };
        let (subject, body) = render(&MailView {
            kind: MailKind::Transfer,
            to: &hub,
            role: Role::Coordinator,
            about: vec![(&a, 2), (&b, 1)],
            escalate_minutes: 60.0,
        });
        assert_eq!(
            subject,
            "3 new files for the coordinator from Oak School, Elm School"
        );
        assert!(body.contains("  - 2 from Oak School\n  - 1 from Elm School"));
        assert!(body.contains("/inbox/oak/, /inbox/elm/"));
    }

    #[test]
    fn every_kind_renders_with_a_path_to_look_in() {
        let school = OrgLabel {
            slug: "oak".into(),
            name: "Oak School".into(),
            kind: OrgKind::School,
        };
        for kind in MailKind::ALL {
            let (subject, body) = render(&MailView {
                kind,
                to: &school,
                role: Role::Coordinator,
                about: vec![(&school, 1)],
                escalate_minutes: 60.0,
            });
            assert!(!subject.is_empty());
            assert!(body.contains("Where to look"), "{kind:?}: {body}");
            assert_eq!(MailKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn long_lines_are_wrapped_at_spaces() {
        let text = format!("{}\n  - 2 from Oak\n", "word ".repeat(30).trim_end());
        let wrapped = wrap(&text, 72);
        assert!(wrapped.lines().all(|l| l.len() <= 72), "{wrapped}");
        assert_eq!(wrapped.replace('\n', " "), text.replace('\n', " "));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_seconds(30, 1), 30);
        assert_eq!(backoff_seconds(30, 2), 60);
        assert_eq!(backoff_seconds(30, 3), 120);
        assert_eq!(backoff_seconds(30, 40), 3600);
        assert_eq!(backoff_seconds(0, 1), 1);
    }
}
