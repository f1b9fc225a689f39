//! The routing rule the whole product exists to enforce (SPEC §2): schools and providers exchange
//! files with the hub only, never with each other.

use super::org::{OrgKind, Role};

/// Why a transfer is refused, in a sentence the sender can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub String);

/// Decides whether an organisation of kind `from` may send a file to an organisation of kind `to`,
/// addressed to `role`. This is the only place the rule is written.
pub fn route(from: OrgKind, to: OrgKind, role: Role) -> Result<(), Denial> {
    if !role.is_recipient_role() {
        return Err(Denial(format!(
            "transfer denied: `{role}` is not a recipient role; send to coordinator or dsl"
        )));
    }
    match (from, to) {
        (OrgKind::Hub, OrgKind::School | OrgKind::Provider) => Ok(()),
        (OrgKind::School | OrgKind::Provider, OrgKind::Hub) => Ok(()),
        (OrgKind::Hub, OrgKind::Hub) => Err(Denial(
            "transfer denied: the hub cannot send files to itself".into(),
        )),
        (OrgKind::School | OrgKind::Provider, OrgKind::School | OrgKind::Provider) => {
            Err(Denial(format!(
                "transfer denied: {} may exchange files only with the hub, never with {} \
                 (send to /outbox/coordinator or /outbox/dsl)",
                from.with_article(),
                to.with_article()
            )))
        }
    }
}

/// The refusal for an outbox folder that names no active organisation. Schools and providers get
/// the routing rule (never whether the name exists); the hub is told the name is unknown.
pub fn unknown_target(from: OrgKind, slug: &str) -> Denial {
    match from {
        OrgKind::Hub => Denial(format!(
            "transfer denied: there is no active organisation `{slug}`"
        )),
        _ => Denial(format!(
            "transfer denied: {} may exchange files only with the hub \
             (send to /outbox/coordinator or /outbox/dsl)",
            from.with_article()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrgKind::*;
    use Role::*;

    #[test]
    fn every_pair_of_kinds_and_roles() {
        // (from, to, role, allowed)
        let table = [
            (Hub, Hub, Coordinator, false),
            (Hub, Hub, Dsl, false),
            (Hub, School, Coordinator, true),
            (Hub, School, Dsl, true),
            (Hub, Provider, Coordinator, true),
            (Hub, Provider, Dsl, true),
            (School, Hub, Coordinator, true),
            (School, Hub, Dsl, true),
            (School, School, Coordinator, false),
            (School, School, Dsl, false),
            (School, Provider, Coordinator, false),
            (School, Provider, Dsl, false),
            (Provider, Hub, Coordinator, true),
            (Provider, Hub, Dsl, true),
            (Provider, School, Coordinator, false),
            (Provider, School, Dsl, false),
            (Provider, Provider, Coordinator, false),
            (Provider, Provider, Dsl, false),
        ];
        assert_eq!(table.len(), OrgKind::ALL.len() * OrgKind::ALL.len() * 2);
        for (from, to, role, allowed) in table {
            let got = route(from, to, role);
            assert_eq!(got.is_ok(), allowed, "{from} -> {to} ({role}): {got:?}");
            if let Err(Denial(msg)) = got {
                assert!(msg.starts_with("transfer denied:"), "{msg}");
            }
        }
        for from in OrgKind::ALL {
            for to in OrgKind::ALL {
                assert!(
                    route(from, to, Admin).is_err(),
                    "admin is never a recipient"
                );
            }
        }
    }

    #[test]
    fn unknown_targets_do_not_reveal_names_to_schools() {
        let Denial(school) = unknown_target(School, "no-such-school");
        assert!(!school.contains("no-such-school") && school.contains("only with the hub"));
        let Denial(hub) = unknown_target(Hub, "no-such-school");
        assert!(hub.contains("no-such-school"));
    }

    #[test]
    fn denial_names_the_rule() {
        let Err(Denial(msg)) = route(School, Provider, Coordinator) else {
            panic!("school to provider must be denied");
        };
        assert!(msg.contains("only with the hub"), "{msg}");
        assert!(
            msg.contains("a school") && msg.contains("a provider"),
            "{msg}"
        );
    }
}
