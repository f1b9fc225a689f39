//! Organisations, roles and the identifiers that name them.

use std::fmt;
use std::str::FromStr;

/// What an organisation is; decides its SFTP tree and whom it may send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrgKind {
    Hub,
    School,
    Provider,
}

impl OrgKind {
    pub const ALL: [OrgKind; 3] = [OrgKind::Hub, OrgKind::School, OrgKind::Provider];

    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Hub => "hub",
            OrgKind::School => "school",
            OrgKind::Provider => "provider",
        }
    }

    /// "a school", "a provider", "the hub": for messages a user reads.
    pub fn with_article(self) -> &'static str {
        match self {
            OrgKind::Hub => "the hub",
            OrgKind::School => "a school",
            OrgKind::Provider => "a provider",
        }
    }
}

impl fmt::Display for OrgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrgKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hub" => Ok(OrgKind::Hub),
            "school" => Ok(OrgKind::School),
            "provider" => Ok(OrgKind::Provider),
            other => Err(format!(
                "unknown organisation kind `{other}`: use hub, school or provider"
            )),
        }
    }
}

/// A user's role. `Coordinator` and `Dsl` are also the two recipient roles of a transfer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Dsl,
    Admin,
}

impl Role {
    pub const RECIPIENT_ROLES: [Role; 2] = [Role::Coordinator, Role::Dsl];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Dsl => "dsl",
            Role::Admin => "admin",
        }
    }

    pub fn is_recipient_role(self) -> bool {
        matches!(self, Role::Coordinator | Role::Dsl)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coordinator" => Ok(Role::Coordinator),
            "dsl" => Ok(Role::Dsl),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: use coordinator, dsl or admin"
            )),
        }
    }
}

/// Parses a comma-separated role list as stored in the database.
pub fn parse_roles(s: &str) -> Result<Vec<Role>, String> {
    let mut roles: Vec<Role> = s
        .split(',')
        .filter(|p| !p.is_empty())
        .map(Role::from_str)
        .collect::<Result<_, _>>()?;
    roles.sort();
    roles.dedup();
    Ok(roles)
}

pub fn format_roles(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks the roles a user of an organisation of `kind` may hold.
pub fn validate_roles(kind: OrgKind, roles: &[Role]) -> Result<(), String> {
    if roles.is_empty() {
        return Err("a user needs at least one role".into());
    }
    if kind != OrgKind::Hub && roles.contains(&Role::Admin) {
        return Err("only hub users may be admin".into());
    }
    Ok(())
}

/// Slugs name organisations in paths: lowercase a-z, 0-9 and `-`, not at either end.
pub fn validate_slug(slug: &str) -> Result<(), String> {
    let ok_chars = slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if slug.is_empty() || slug.len() > 63 || !ok_chars {
        return Err(format!(
            "slug `{slug}` must be 1-63 characters of lowercase a-z, 0-9 and `-`"
        ));
    }
    if slug.starts_with('-') || slug.ends_with('-') {
        return Err(format!("slug `{slug}` must not start or end with `-`"));
    }
    if ["all-schools", "all-providers"].contains(&slug) {
        return Err(format!(
            "slug `{slug}` is reserved for broadcast folders of the hub"
        ));
    }
    Ok(())
}

/// Usernames are what clients type after `sftp`: keep them shell- and path-safe.
pub fn validate_username(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "username `{name}` must be 1-64 characters of a-z, A-Z, 0-9, `-`, `_` and `.`, not starting with `-` or `.`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(validate_slug("demo-school").is_ok());
        assert!(validate_slug("s1").is_ok());
        for bad in [
            "",
            "Demo",
            "a_b",
            "-a",
            "a-",
            "a/b",
            "..",
            "all-schools",
            "a b",
        ] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_round_trip_and_rules() {
        let roles = parse_roles("dsl,coordinator,dsl").unwrap();
        assert_eq!(roles, vec![Role::Coordinator, Role::Dsl]);
        assert_eq!(format_roles(&roles), "coordinator,dsl");
        assert!(parse_roles("boss").is_err());
        assert!(validate_roles(OrgKind::School, &[Role::Admin]).is_err());
        assert!(validate_roles(OrgKind::Hub, &[Role::Admin]).is_ok());
        assert!(validate_roles(OrgKind::Provider, &[]).is_err());
    }

    #[test]
    fn usernames() {
        assert!(validate_username("alice.b-1").is_ok());
        for bad in ["", "-x", ".x", "a b", "a/b", "a@b"] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }
}
