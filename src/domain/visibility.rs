//! Who may see what (SPEC §1): a learner's data is visible to the hub, to the learner's home
//! school and to each provider the learner is placed with, and to nobody else; a transfer is
//! visible only to users holding its role. Every report, receipt, listing and ingest check asks
//! these functions; nothing else decides it.

use super::org::{OrgKind, Role};

/// The organisation (and the user's roles) asking.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub org_id: i64,
    pub kind: OrgKind,
    /// The roles of the user; `None` for a whole organisation (the CLI's `report --org`).
    pub roles: Option<&'a [Role]>,
}

/// One placement of a learner, as far as visibility needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementLink {
    pub provider_org_id: i64,
    /// Open: no end date, or one not yet passed.
    pub open: bool,
}

/// What is known of a learner's relations: the home school and the placements.
#[derive(Debug, Clone, Copy)]
pub struct LearnerLinks<'a> {
    pub home_school: Option<i64>,
    pub placements: &'a [PlacementLink],
}

/// May `v` see the learner itself: names, date of birth, details, emergency contacts, notes?
/// A provider only while it has an open placement for the learner.
pub fn may_see_learner(v: Viewer<'_>, l: LearnerLinks<'_>) -> bool {
    match v.kind {
        OrgKind::Hub => true,
        OrgKind::School => l.home_school == Some(v.org_id),
        OrgKind::Provider => l
            .placements
            .iter()
            .any(|p| p.open && p.provider_org_id == v.org_id),
    }
}

/// May `v` see a record of one placement (the placement, its marks, progress, appraisals,
/// assessments, targets)? A provider sees its own placements' records, open or ended, and no
/// other provider's; the home school sees all of its learners'.
pub fn may_see_placement_record(
    v: Viewer<'_>,
    home_school: Option<i64>,
    provider_org_id: i64,
) -> bool {
    match v.kind {
        OrgKind::Hub => true,
        OrgKind::School => home_school == Some(v.org_id),
        OrgKind::Provider => provider_org_id == v.org_id,
    }
}

/// May `v` see a transfer sent between `sender` and `recipient` organisations for `role`?
/// Only the two organisations see it, and of them only users holding the role (an admin of
/// the hub holds both); a DSL transfer is invisible to a coordinator-only user.
pub fn may_see_transfer(v: Viewer<'_>, sender: i64, recipient: i64, role: Role) -> bool {
    (v.org_id == sender || v.org_id == recipient) && holds_role(v, role)
}

/// Whether the viewer holds `role` for the purpose of seeing transfers.
pub fn holds_role(v: Viewer<'_>, role: Role) -> bool {
    match v.roles {
        None => true,
        Some(roles) => {
            roles.contains(&role) || (v.kind == OrgKind::Hub && roles.contains(&Role::Admin))
        }
    }
}

/// The words for a provider's row about a learner without a placement on `course` (any course
/// when `None`) on `date`: the same whether the UPN exists or not.
pub fn not_placed(provider_slug: &str, course: Option<&str>, date: &str) -> String {
    match course {
        Some(course) => format!(
            "no placement of this learner with {provider_slug} on this course ({course}) on {date}"
        ),
        None => format!("no placement of this learner with {provider_slug} on {date}"),
    }
}

/// The words for a school's or provider's row about a learner it may not see: the same whether
/// the UPN exists or not.
pub const NOT_YOURS: &str = "this UPN is not a learner of your school or one placed with you";

#[cfg(test)]
mod tests {
    use super::*;
    use OrgKind::*;

    const HUB: i64 = 1;
    const SCHOOL: i64 = 2;
    const OTHER_SCHOOL: i64 = 3;
    const PROVIDER: i64 = 4;
    const OTHER_PROVIDER: i64 = 5;

    fn viewer(org_id: i64) -> Viewer<'static> {
        let kind = match org_id {
            HUB => Hub,
            SCHOOL | OTHER_SCHOOL => School,
            _ => Provider,
        };
        Viewer {
            org_id,
            kind,
            roles: None,
        }
    }

    /// Every kind of organisation against every relation it can have to a learner.
    #[test]
    fn every_organisation_against_every_relation() {
        let open = [PlacementLink {
            provider_org_id: PROVIDER,
            open: true,
        }];
        let ended = [PlacementLink {
            provider_org_id: PROVIDER,
            open: false,
        }];
        // (viewer, home school, placements, sees learner, sees PROVIDER's placement record)
        type Case<'a> = (i64, Option<i64>, &'a [PlacementLink], bool, bool);
        let table: &[Case<'_>] = &[
            (HUB, Some(SCHOOL), &open, true, true),
            (HUB, None, &[], true, true),
            (SCHOOL, Some(SCHOOL), &open, true, true),
            (SCHOOL, Some(SCHOOL), &[], true, true),
            (SCHOOL, Some(OTHER_SCHOOL), &open, false, false),
            // A learner without a home school is no school's.
            (SCHOOL, None, &open, false, false),
            (PROVIDER, Some(SCHOOL), &open, true, true),
            // After the placement ends: its records, not the learner.
            (PROVIDER, Some(SCHOOL), &ended, false, true),
            (PROVIDER, Some(SCHOOL), &[], false, true),
            (OTHER_PROVIDER, Some(SCHOOL), &open, false, false),
            (OTHER_PROVIDER, None, &[], false, false),
        ];
        for &(v, home, placements, learner, record) in table {
            let links = LearnerLinks {
                home_school: home,
                placements,
            };
            assert_eq!(
                may_see_learner(viewer(v), links),
                learner,
                "learner: viewer {v}, home {home:?}, {placements:?}"
            );
            assert_eq!(
                may_see_placement_record(viewer(v), home, PROVIDER),
                record,
                "record: viewer {v}, home {home:?}"
            );
        }
    }

    #[test]
    fn transfers_by_organisation_and_role() {
        use Role::*;
        const COORDINATOR: &[Role] = &[Coordinator];
        const DSL: &[Role] = &[Dsl];
        const BOTH: &[Role] = &[Coordinator, Dsl];
        const ADMIN: &[Role] = &[Admin];
        let with = |org_id: i64, roles: &'static [Role]| Viewer {
            roles: Some(roles),
            ..viewer(org_id)
        };
        // (viewer, its roles, transfer role, sees a transfer SCHOOL → HUB)
        let table: &[(i64, &'static [Role], Role, bool)] = &[
            (SCHOOL, COORDINATOR, Coordinator, true),
            (SCHOOL, COORDINATOR, Dsl, false),
            (SCHOOL, DSL, Dsl, true),
            (SCHOOL, DSL, Coordinator, false),
            (SCHOOL, BOTH, Dsl, true),
            (HUB, COORDINATOR, Dsl, false),
            (HUB, DSL, Dsl, true),
            (HUB, ADMIN, Dsl, true),
            (HUB, ADMIN, Coordinator, true),
            // An admin role means nothing outside the hub.
            (SCHOOL, ADMIN, Dsl, false),
            (OTHER_SCHOOL, BOTH, Coordinator, false),
            (PROVIDER, BOTH, Dsl, false),
        ];
        for &(v, roles, role, sees) in table {
            assert_eq!(
                may_see_transfer(with(v, roles), SCHOOL, HUB, role),
                sees,
                "viewer {v} {roles:?}, transfer for {role}"
            );
        }
        // A whole organisation (the CLI) sees every role of its own transfers.
        assert!(may_see_transfer(viewer(SCHOOL), SCHOOL, HUB, Dsl));
        assert!(!may_see_transfer(viewer(OTHER_SCHOOL), SCHOOL, HUB, Dsl));
    }
}
