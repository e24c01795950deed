//! Permissions as `resource:action` strings, with `resource:*` and `*` wildcards.
//!
//! A key holds a [`PermissionSet`]; a route requires one [`Permission`] per method. The check is
//! on the hot path, so a set answers without allocating.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One permission: `customer:read`, `customer:*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(Arc<str>);

impl Permission {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `required`. Wildcards only count on the held side: a route
    /// that requires `customer:*` is satisfied by `customer:*` or `*`, not by `customer:read`.
    pub fn grants(&self, required: &Permission) -> bool {
        let held = self.as_str();
        if held == "*" || held == required.as_str() {
            return true;
        }
        match held.strip_suffix(":*") {
            Some(resource) => required
                .as_str()
                .strip_prefix(resource)
                .is_some_and(|rest| rest.starts_with(':')),
            None => false,
        }
    }
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = text == "*"
            || text.split_once(':').is_some_and(|(resource, action)| {
                valid_part(resource) && (action == "*" || valid_part(action))
            });
        if valid {
            Ok(Permission(Arc::from(text)))
        } else {
            Err(format!(
                "permission {text:?} must be \"resource:action\", \"resource:*\" or \"*\" (letters, digits, _ - .)"
            ))
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The permissions a key holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(Box<[Permission]>);

impl PermissionSet {
    pub fn new(mut permissions: Vec<Permission>) -> Self {
        permissions.sort();
        permissions.dedup();
        PermissionSet(permissions.into_boxed_slice())
    }

    pub fn grants(&self, required: &Permission) -> bool {
        self.0.iter().any(|held| held.grants(required))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.0.iter()
    }

    pub fn to_vec(&self) -> Vec<Permission> {
        self.0.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(text: &str) -> Permission {
        text.parse().unwrap()
    }

    #[test]
    fn held_permissions_grant_by_exact_match_and_wildcards() {
        for (held, required, granted) in [
            ("customer:read", "customer:read", true),
            ("customer:read", "customer:write", false),
            ("customer:*", "customer:write", true),
            ("customer:*", "customers:write", false),
            ("customer:*", "customer:*", true),
            ("customer:read", "customer:*", false),
            ("*", "license:delete", true),
            ("license:*", "customer:read", false),
        ] {
            assert_eq!(
                perm(held).grants(&perm(required)),
                granted,
                "{held} grants {required}"
            );
        }
    }

    #[test]
    fn malformed_permissions_are_refused() {
        for text in [
            "",
            "customer",
            ":read",
            "customer:",
            "customer:read:x",
            "*:read",
            "cust omer:read",
            "a:b*",
        ] {
            assert!(text.parse::<Permission>().is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn a_set_grants_when_any_member_does() {
        let set = PermissionSet::new(vec![perm("customer:read"), perm("license:*")]);
        assert!(set.grants(&perm("license:write")));
        assert!(set.grants(&perm("customer:read")));
        assert!(!set.grants(&perm("customer:write")));
        assert!(!PermissionSet::default().grants(&perm("customer:read")));
    }
}
