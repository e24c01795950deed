//! What a key's audit record says of a change (control plane), the same in both stores: the
//! fields a creation sets, the fields a change touched with their new values, and whether a
//! change changed anything at all, and what a leak report said. Secrets and hashes never
//! appear; a new secret is `"secret": "replaced"`.

use jiff::Timestamp;

use super::model::{NewKey, Reported, StoredKey};
use crate::core::key::KeySpec;

/// The audit record's `changes`: field name to new value.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// What a creation's audit record shows of a new key (as [`changed_fields`] would).
pub fn new_key_fields(key: &NewKey) -> Fields {
    fields_of(&key.spec, "active", &key.prefix, None)
}

/// Whether a change leaves the key as it was but for its `updated_at` (revoking a revoked key):
/// then nothing is written, no revision spent, no audit record made.
pub fn is_no_change(before: &StoredKey, after: &StoredKey) -> bool {
    let mut same = after.clone();
    same.updated_at = before.updated_at;
    same == *before
}

/// The audited fields that differ between `before` and `after`, with their new values.
pub fn changed_fields(before: &StoredKey, after: &StoredKey) -> Fields {
    let old = audited_fields(before);
    let new = audited_fields(after);
    let mut changes: Fields = old
        .keys()
        .chain(new.keys())
        .filter(|field| old.get(*field) != new.get(*field))
        .map(|field| (field.clone(), new.get(field).cloned().unwrap_or_default()))
        .collect();
    if before.hash != after.hash {
        changes.insert("secret".into(), "replaced".into());
    }
    changes
}

/// The fields of a key an audit record shows: its settings, never its secret or hash.
fn audited_fields(key: &StoredKey) -> Fields {
    let mut fields = fields_of(&key.spec, key.status.as_str(), &key.prefix, key.grace_until);
    fields.insert("quarantined".into(), key.quarantined.into());
    fields
}

/// The spec as it serializes, with the status, the prefix and a grace period; no nulls.
fn fields_of(spec: &KeySpec, status: &str, prefix: &str, grace_until: Option<Timestamp>) -> Fields {
    let mut fields = match serde_json::to_value(spec) {
        Ok(serde_json::Value::Object(fields)) => fields,
        // A struct of plain fields serializes to an object; nothing else can come back.
        _ => serde_json::Map::new(),
    };
    fields.insert("status".into(), status.into());
    fields.insert("prefix".into(), prefix.into());
    if let Some(until) = grace_until {
        fields.insert("grace_until".into(), serde_json::json!(until));
    }
    fields.retain(|_, value| !value.is_null());
    fields
}

/// The record's `changes` with what a leak report said, when the change comes from one:
/// `leaked_secret` (`current` or `grace`) and `url` where the scanner gave one.
pub fn with_report(mut changes: Fields, report: Option<Reported<'_>>) -> Fields {
    if let Some(report) = report {
        changes.insert("leaked_secret".into(), report.secret.into());
        if let Some(url) = report.url {
            changes.insert("url".into(), url.into());
        }
    }
    changes
}
