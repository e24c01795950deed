//! The key lifecycle (control plane): create, import, update, regenerate with grace, revoke,
//! activate, delete, usage. The one place these rules live; the CLI and the admin API both call
//! it, and neither talks to the store for key changes directly.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;

use super::store::{
    Actor, Audit, Fields, IdleKey, KeyEvent, KeyFilter, KeyStore, NewKey, StoreError, StoredKey, Usage,
    UsageOf, UsagePoint, UsageQuery,
};
use crate::core::clock::{whole_second, Clock};
use crate::core::environment::Environment;
pub use crate::core::key::KeySpec;
use crate::core::key::{new_key_id, KeyView, KeyWithSecret, RateLimitSpec, StoredStatus};
use crate::core::permission::Permission;
use crate::core::quota::{QuotaChange, QuotaRequest, QuotaSpec, MAX_QUOTA_LIMIT};
use crate::core::secret::{check_format, Format, Hasher, KeyHash, Secret};
use crate::core::units::parse_duration;
pub use import::BulkImport;

/// Longest grace period a regeneration may give the old secret.
const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);
const MAX_NAME_LEN: usize = 200;
const MAX_CUSTOMER_LEN: usize = 256;
/// Longest time a key's bucket may take to refill completely.
const MAX_BUCKET_REFILL: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("no key with id {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The secret is another key's already; which one is not said.
    #[error("{}", StoreError::SecretInUse)]
    SecretInUse,
    #[error(transparent)]
    Store(StoreError),
}

impl KeyError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        KeyError::Invalid {
            field,
            message: message.into(),
        }
    }

    fn from_store(error: StoreError, id: &str) -> Self {
        match error {
            StoreError::NotFound => KeyError::NotFound(id.to_owned()),
            StoreError::Conflict(why) => KeyError::Conflict(why),
            StoreError::SecretInUse => KeyError::SecretInUse,
            other => KeyError::Store(other),
        }
    }
}

/// A key as a client describes it: the admin API's `POST /v1/keys` body, a line of an import
/// file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub name: String,
    pub environment: Environment,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub allowed_ips: Vec<Cidr>,
    #[serde(default, deserialize_with = "crate::core::key::de_expiry")]
    pub expires_at: Option<Timestamp>,
    /// Alternative to `expires_at`: a duration from now, e.g. "30d".
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// An existing secret to import instead of generating one.
    #[serde(default)]
    pub key: Option<String>,
    /// Its anchor defaults to the key's creation.
    #[serde(default)]
    pub quota: Option<QuotaRequest>,
}

impl KeyRequest {
    /// The spec, `expires_in` counted from `now`, and the secret to import when one is given.
    pub fn into_spec(self, now: Timestamp) -> Result<(KeySpec, Option<String>), KeyError> {
        let expires_at = match (self.expires_at, self.expires_in) {
            (Some(_), Some(_)) => {
                return Err(KeyError::invalid(
                    "expires_in",
                    "give expires_at or expires_in, not both",
                ))
            }
            (at, None) => at,
            (None, Some(text)) => {
                let duration =
                    parse_duration(&text).map_err(|e| KeyError::invalid("expires_in", e.to_string()))?;
                let at = now.checked_add(duration).ok();
                Some(at.ok_or_else(|| KeyError::invalid("expires_in", "too far in the future"))?)
            }
        };
        let spec = KeySpec {
            name: self.name,
            environment: self.environment,
            permissions: self.permissions,
            rate_limit: self.rate_limit,
            customer_id: self.customer_id,
            allowed_ips: self.allowed_ips.into_iter().map(|cidr| cidr.0).collect(),
            expires_at,
            metadata: self.metadata,
            quota: self.quota.map(|quota| quota.anchored(whole_second(now))),
        };
        Ok((spec, self.key))
    }
}

/// A CIDR, or a bare IP address meaning just that address.
#[derive(Debug, Clone, Copy)]
pub struct Cidr(pub IpNet);

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(Cidr)
            .map_err(|_| {
                serde::de::Error::custom(format!("{text:?} is not a CIDR like 10.0.0.0/8 or an IP address"))
            })
    }
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears an optional one. Also
/// the admin API's `PATCH /v1/keys/{id}` body, where a field left out is `None` and `null`
/// clears (the lists and the metadata to empty).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub permissions: Option<Vec<Permission>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimitSpec>>,
    #[serde(default, deserialize_with = "present")]
    pub customer_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "cidrs_or_null")]
    pub allowed_ips: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "crate::core::key::de_expiry_change")]
    pub expires_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "present_or_empty")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Without an anchor, a quota keeps the key's current one, or else starts now.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<QuotaRequest>>,
}

/// `Some(None)` for an explicit `null` (clear the field), `None` when the field is absent.
fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// A field that `null` empties: present, it is `Some`, the default for `null`.
fn present_or_empty<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(|value| Some(value.unwrap_or_default()))
}

/// `allowed_ips`: CIDRs or bare addresses; `null` empties the list.
fn cidrs_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    let list: Option<Vec<Cidr>> = present_or_empty(deserializer)?;
    Ok(list.map(|list| list.into_iter().map(|cidr| cidr.0).collect()))
}

impl KeyPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.permissions.is_none()
            && self.rate_limit.is_none()
            && self.customer_id.is_none()
            && self.allowed_ips.is_none()
            && self.expires_at.is_none()
            && self.metadata.is_none()
            && self.quota.is_none()
    }
}

/// One page of a key listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub keys: Vec<KeyView>,
    /// Pass as `after` to read the next page; `None` on the last one.
    pub next: Option<u64>,
}

/// Most keys or events one page holds.
pub const MAX_PAGE: usize = 1000;

#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    hasher: Hasher,
    clock: Clock,
    /// Who the changes made through this service are recorded as.
    actor: Actor,
}

impl KeyService {
    pub fn new(store: Arc<dyn KeyStore>, hasher: Hasher, clock: Clock, actor: Actor) -> Self {
        KeyService {
            store,
            hasher,
            clock,
            actor,
        }
    }

    /// The customer lifecycle on the same store and clock, recorded as made by the same actor.
    pub fn customers(&self) -> super::customers::CustomerService {
        super::customers::CustomerService::new(self.store.clone(), self.clock.clone(), self.actor)
    }

    /// This service, recording its changes as made by `actor`.
    pub fn acting_as(&self, actor: Actor) -> KeyService {
        KeyService {
            actor,
            ..self.clone()
        }
    }

    fn audit(&self, event: &'static str) -> Audit<'static> {
        Audit {
            actor: self.actor,
            event,
            report: None,
        }
    }

    /// The time of a change, in whole seconds as the store keeps it, so an answer shows the
    /// same instant as a later read.
    pub fn now(&self) -> Timestamp {
        whole_second(self.clock.now())
    }

    /// Creates a key with a new random secret, returned this once.
    pub fn create(&self, spec: KeySpec) -> Result<KeyWithSecret, KeyError> {
        let secret = Secret::generate(spec.environment);
        let view = self.insert(spec, &secret, "created")?;
        Ok(KeyWithSecret {
            view,
            key: secret.expose().to_owned(),
        })
    }

    /// Imports an existing secret as it is, so the clients that hold it keep working.
    pub fn import(&self, spec: KeySpec, secret: Secret) -> Result<KeyView, KeyError> {
        check_import(&spec, &secret)?;
        self.insert(spec, &secret, "imported")
    }

    fn insert(&self, spec: KeySpec, secret: &Secret, event: &'static str) -> Result<KeyView, KeyError> {
        let now = self.now();
        validate_spec(&spec, now)?;
        let key = new_key(spec, secret, self.hasher.hash(secret.expose().as_bytes()), now);
        let stored = self
            .store
            .insert(&key, self.audit(event))
            .map_err(|e| KeyError::from_store(e, &key.id))?;
        tracing::info!(key_id = %stored.id, environment = %stored.spec.environment, actor = self.actor.as_str(), "key {event}");
        Ok(stored.view(now))
    }

    pub fn get(&self, id: &str) -> Result<KeyView, KeyError> {
        let key = self.store.get(id).map_err(|e| KeyError::from_store(e, id))?;
        match key {
            Some(key) if key.status != StoredStatus::Deleted => Ok(key.view(self.now())),
            _ => Err(KeyError::NotFound(id.to_owned())),
        }
    }

    /// A key that is not deleted, as the store holds it: what the admin API needs to find its
    /// quota's counters (its sequence number, its customer).
    pub fn stored(&self, id: &str) -> Result<StoredKey, KeyError> {
        let key = self.store.get(id).map_err(|e| KeyError::from_store(e, id))?;
        key.filter(|key| key.status != StoredStatus::Deleted)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))
    }

    /// Records an operator's top-up or reset of a key's quota in its audit trail (the change
    /// itself is the limiter's: the store keeps no counters).
    pub fn record_quota_change(&self, id: &str, change: QuotaChange) -> Result<(), KeyError> {
        let (event, field, value) = match change {
            QuotaChange::Read => return Ok(()),
            QuotaChange::Add(more) => ("quota_topped_up", "add", more.into()),
            QuotaChange::Reset => ("quota_reset", "reset", true.into()),
        };
        let changes = Fields::from_iter([(field.to_owned(), value)]);
        self.store
            .record_event(id, self.audit(event), self.now(), &changes)
            .map_err(|e| KeyError::from_store(e, id))?;
        tracing::info!(key_id = %id, actor = self.actor.as_str(), "key {event}");
        Ok(())
    }

    /// A key whatever its status: a deleted one shows as `deleted`, as listings of deleted
    /// keys and its audit trail show it.
    pub fn get_any(&self, id: &str) -> Result<KeyView, KeyError> {
        match self.store.get(id).map_err(|e| KeyError::from_store(e, id))? {
            Some(key) => Ok(key.view(self.now())),
            None => Err(KeyError::NotFound(id.to_owned())),
        }
    }

    /// Every key matching `filter`.
    pub fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyView>, KeyError> {
        let now = self.now();
        let keys = self
            .store
            .list(filter, now, 0, usize::MAX)
            .map_err(KeyError::Store)?;
        Ok(keys.iter().map(|key| key.view(now)).collect())
    }

    /// Up to `limit` keys matching `filter` after the cursor `after` (0 for the first page).
    pub fn page(&self, filter: &KeyFilter, after: u64, limit: usize) -> Result<Page, KeyError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let now = self.now();
        let mut keys = self
            .store
            .list(filter, now, after, limit + 1)
            .map_err(KeyError::Store)?;
        let next = (keys.len() > limit).then(|| {
            keys.truncate(limit);
            keys.last().map_or(after, |key| key.seq)
        });
        Ok(Page {
            keys: keys.iter().map(|key| key.view(now)).collect(),
            next,
        })
    }

    /// A key's audit trail, deleted or not: up to `limit` events after event `after`, and the
    /// cursor of the next page when there is one.
    pub fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<KeyEvent>, Option<u64>), KeyError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut events = self
            .store
            .events(id, after, limit + 1)
            .map_err(|e| KeyError::from_store(e, id))?;
        let next = (events.len() > limit).then(|| {
            events.truncate(limit);
            events.last().map_or(after, |event| event.id)
        });
        Ok((events, next))
    }

    pub fn update(&self, id: &str, patch: KeyPatch) -> Result<KeyView, KeyError> {
        if patch.is_empty() {
            return Err(KeyError::invalid("body", "nothing to change"));
        }
        let now = self.now();
        self.modify(id, "updated", |key| {
            apply_patch(key, patch.clone(), now)?;
            // An expiry already past is the key's state, not this change's fault: a change to
            // it was checked by `apply_patch`.
            let kept = KeySpec {
                expires_at: None,
                ..key.spec.clone()
            };
            validate_spec(&kept, now)
        })
    }

    /// A new secret for the same key. The old one stops at once, or after `grace`.
    pub fn regenerate(&self, id: &str, grace: Option<Duration>) -> Result<KeyWithSecret, KeyError> {
        if grace.is_some_and(|grace| grace > MAX_GRACE) {
            return Err(KeyError::invalid("grace", "the grace period may be at most 30d"));
        }
        let now = self.now();
        let mut secret = None;
        let view = self.modify(id, "regenerated", |key| {
            if key.status != StoredStatus::Active && grace.is_some_and(|grace| !grace.is_zero()) {
                // A revoked key's old secret must not come back when it is activated again.
                return Err(KeyError::invalid(
                    "grace",
                    "the key is not active: regenerate it without a grace period",
                ));
            }
            let new = Secret::generate(key.spec.environment);
            // The new secret has not had a chance to be used: idle time starts over.
            key.idle_from = Some(now);
            // A quarantined key is flagged until this: the reported secret is replaced.
            key.quarantined = false;
            let old_hash = std::mem::replace(&mut key.hash, self.hasher.hash(new.expose().as_bytes()));
            key.prefix = new.display_prefix();
            match grace.filter(|grace| !grace.is_zero()) {
                Some(grace) => {
                    key.previous_hash = Some(old_hash);
                    key.grace_until = Some(whole_second(now + grace));
                    key.previous_last_used_at = key.last_used_at;
                }
                None => {
                    key.previous_hash = None;
                    key.grace_until = None;
                    key.previous_last_used_at = None;
                }
            }
            secret = Some(new);
            Ok(())
        })?;
        let secret = secret.expect("modify ran the change");
        Ok(KeyWithSecret {
            view,
            key: secret.expose().to_owned(),
        })
    }

    pub fn revoke(&self, id: &str) -> Result<KeyView, KeyError> {
        self.set_status(id, StoredStatus::Revoked, "revoked")
    }

    /// Revokes a key whose secret was reported leaked (see `control::leaks`): audited as
    /// `leaked` rather than `revoked`, so its trail says why.
    pub fn revoke_leaked(&self, id: &str) -> Result<KeyView, KeyError> {
        self.set_status(id, StoredStatus::Revoked, "leaked")
    }

    pub fn activate(&self, id: &str) -> Result<KeyView, KeyError> {
        self.set_status(id, StoredStatus::Active, "activated")
    }

    /// The key stops working for good; its row stays as a tombstone and its usage is kept.
    pub fn delete(&self, id: &str) -> Result<(), KeyError> {
        self.set_status(id, StoredStatus::Deleted, "deleted").map(drop)
    }

    /// Up to `limit` active keys idle since `cutoff` or longer, the oldest seq first.
    pub fn idle_since(&self, cutoff: Timestamp, limit: usize) -> Result<Vec<IdleKey>, KeyError> {
        self.store
            .idle_keys(cutoff, self.now(), 0, limit)
            .map_err(KeyError::Store)
    }

    pub fn usage(&self, id: &str) -> Result<Usage, KeyError> {
        self.store.usage(id).map_err(|e| KeyError::from_store(e, id))
    }

    /// The usage analytics a query asks for (`GET /v1/usage`).
    pub fn usage_series(&self, query: &UsageQuery) -> Result<Vec<UsagePoint>, KeyError> {
        let id = match &query.of {
            UsageOf::Key(id) => id.as_str(),
            UsageOf::Customer(_) => "",
        };
        self.store
            .usage_series(query)
            .map_err(|e| KeyError::from_store(e, id))
    }

    /// Revokes a key for idleness, unless it was used (or reactivated, or regenerated) since
    /// the sweep saw it: then `None`. `webhook` is queued with the revocation, or not at all.
    pub fn revoke_idle(
        &self,
        id: &str,
        idle_expiry: Duration,
        webhook: Option<&str>,
    ) -> Result<Option<KeyView>, KeyError> {
        let now = self.now();
        let mut still_idle = true;
        let result = self.modify_with_webhook(id, "idle_revoked", webhook, |key| {
            // Use of the pre-regeneration secret during its grace counts as use too.
            let since = [key.last_used_at, key.previous_last_used_at]
                .into_iter()
                .flatten()
                .fold(key.idle_from.unwrap_or(key.created_at), Timestamp::max);
            still_idle = key.status == StoredStatus::Active
                && since
                    .checked_add(idle_expiry)
                    .is_ok_and(|deadline| deadline <= now);
            if !still_idle {
                return Err(KeyError::Conflict("no longer idle".into()));
            }
            key.status = StoredStatus::Revoked;
            key.previous_hash = None;
            key.grace_until = None;
            Ok(())
        });
        match result {
            Err(KeyError::Conflict(_)) if !still_idle => Ok(None),
            other => other.map(Some),
        }
    }

    fn set_status(&self, id: &str, status: StoredStatus, event: &'static str) -> Result<KeyView, KeyError> {
        let now = self.now();
        self.modify(id, event, |key| {
            if status == StoredStatus::Active && key.status != StoredStatus::Active {
                // Reactivated: idle time starts over, or the next sweep would revoke it again.
                key.idle_from = Some(now);
            }
            key.status = status;
            if status != StoredStatus::Active {
                // A disabled key's old secret must not outlive it through a grace period.
                key.previous_hash = None;
                key.grace_until = None;
            }
            Ok(())
        })
    }

    fn modify(
        &self,
        id: &str,
        event: &'static str,
        change: impl FnMut(&mut StoredKey) -> Result<(), KeyError> + Send,
    ) -> Result<KeyView, KeyError> {
        self.modify_with_webhook(id, event, None, change)
    }

    /// Like `modify`, queuing `webhook` in the change's own transaction.
    fn modify_with_webhook(
        &self,
        id: &str,
        event: &'static str,
        webhook: Option<&str>,
        mut change: impl FnMut(&mut StoredKey) -> Result<(), KeyError> + Send,
    ) -> Result<KeyView, KeyError> {
        let now = self.now();
        let mut failure = None;
        let result = self.store.modify(id, self.audit(event), webhook, &mut |key| {
            change(key).map_err(|e| {
                failure = Some(e);
                StoreError::Conflict(String::new())
            })?;
            key.updated_at = now;
            Ok(())
        });
        if let Some(failure) = failure {
            return Err(failure);
        }
        let modified = result.map_err(|e| KeyError::from_store(e, id))?;
        let key = modified.key;
        match modified.changed {
            true => {
                tracing::info!(key_id = %key.id, revision = key.revision, actor = self.actor.as_str(), "key {event}")
            }
            // Nothing written: no revision, no audit record, so no "key updated" either.
            false => {
                tracing::debug!(key_id = %key.id, actor = self.actor.as_str(), asked = event, "no change to the key")
            }
        }
        Ok(key.view(now))
    }
}

/// The row to insert for a new key with a fresh id.
fn new_key(spec: KeySpec, secret: &Secret, hash: KeyHash, now: Timestamp) -> NewKey {
    NewKey {
        id: new_key_id(),
        spec: KeySpec {
            expires_at: spec.expires_at.map(whole_second),
            ..spec
        },
        hash,
        prefix: secret.display_prefix(),
        now,
    }
}

/// A generated `kg_` key goes only into the environment it names.
fn check_import(spec: &KeySpec, secret: &Secret) -> Result<(), KeyError> {
    match check_format(secret.expose().as_bytes()) {
        Format::Generated(env) if env != spec.environment => Err(KeyError::invalid(
            "key",
            format!("this kg_ key is for {env}; import it into that environment"),
        )),
        _ => Ok(()),
    }
}

fn apply_patch(key: &mut StoredKey, patch: KeyPatch, now: Timestamp) -> Result<(), KeyError> {
    if let Some(name) = patch.name {
        key.spec.name = name;
    }
    if let Some(permissions) = patch.permissions {
        key.spec.permissions = permissions;
    }
    if let Some(rate_limit) = patch.rate_limit {
        key.spec.rate_limit = rate_limit;
    }
    if let Some(customer_id) = patch.customer_id {
        key.spec.customer_id = customer_id;
    }
    if let Some(allowed_ips) = patch.allowed_ips {
        key.spec.allowed_ips = allowed_ips;
    }
    if let Some(expires_at) = patch.expires_at {
        if expires_at.is_some_and(|at| whole_second(at) <= now) {
            return Err(KeyError::invalid("expires_at", "must be in the future"));
        }
        key.spec.expires_at = expires_at.map(whole_second);
    }
    if let Some(metadata) = patch.metadata {
        key.spec.metadata = metadata;
    }
    if let Some(quota) = patch.quota {
        let anchor = key.spec.quota.map_or(whole_second(now), |kept| kept.anchor);
        key.spec.quota = quota.map(|quota| quota.anchored(anchor));
    }
    Ok(())
}

fn validate_spec(spec: &KeySpec, now: Timestamp) -> Result<(), KeyError> {
    check_name(&spec.name)?;
    if let Some(customer) = &spec.customer_id {
        check_customer_id(customer)?;
    }
    if spec.expires_at.is_some_and(|at| whole_second(at) <= now) {
        return Err(KeyError::invalid("expires_at", "must be in the future"));
    }
    check_limits(spec.rate_limit.as_ref(), spec.quota.as_ref())
}

/// The rules a rate limit and a quota follow, a key's or a customer's.
pub(crate) fn check_limits(
    rate_limit: Option<&RateLimitSpec>,
    quota: Option<&QuotaSpec>,
) -> Result<(), KeyError> {
    if let Some(limit) = rate_limit {
        // The bucket refills one request every per/requests; a full one must stay within a year.
        let refill = limit.per / limit.requests.get();
        if refill.saturating_mul(limit.burst().get()) > MAX_BUCKET_REFILL {
            return Err(KeyError::invalid(
                "rate_limit",
                "refilling the whole burst may take at most 366d (per / requests x burst)",
            ));
        }
    }
    if quota.is_some_and(|quota| !(1..=MAX_QUOTA_LIMIT).contains(&quota.limit)) {
        return Err(KeyError::invalid(
            "quota",
            format!("limit must be a whole number from 1 to {MAX_QUOTA_LIMIT}"),
        ));
    }
    Ok(())
}

/// Whether `id` may name a customer: 1 to 256 characters, without '/' or control characters.
pub(crate) fn check_customer_id(id: &str) -> Result<(), KeyError> {
    let printable = id.chars().all(|c| !c.is_control() && c != '/');
    if id.is_empty() || id.len() > MAX_CUSTOMER_LEN || !printable {
        return Err(KeyError::invalid(
            "customer_id",
            format!("must be 1 to {MAX_CUSTOMER_LEN} characters, without '/' or control characters"),
        ));
    }
    Ok(())
}

/// Whether `name` may name a key or a customer.
pub(crate) fn check_name(name: &str) -> Result<(), KeyError> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(KeyError::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters without control characters"),
        ));
    }
    Ok(())
}

mod import;
#[cfg(test)]
mod tests;
