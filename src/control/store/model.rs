//! What the store holds for a key, and the changes the key service asks of it.

use jiff::Timestamp;

use crate::core::environment::Environment;
use crate::core::key::{KeySpec, KeyStatus, KeyView, RateLimitSpec, StoredStatus};
use crate::core::secret::KeyHash;

/// What a store's `modify` left: the key, and whether the change changed anything. One that
/// changes nothing but `updated_at` (revoking a revoked key, a PATCH of the values the key has)
/// writes nothing: no revision spent, no audit record, the key as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Modified {
    pub key: StoredKey,
    pub changed: bool,
}

/// One key row: the key object plus what only the store and the key table see.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    /// Internal sequence number: the key table's and usage counters' handle on the key.
    pub seq: u64,
    pub id: String,
    pub spec: KeySpec,
    pub hash: KeyHash,
    pub prefix: String,
    pub status: StoredStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// The secret that a regeneration replaced, while its grace period runs.
    pub previous_hash: Option<KeyHash>,
    pub grace_until: Option<Timestamp>,
    pub previous_last_used_at: Option<Timestamp>,
    /// The store revision of this row's last change.
    pub revision: u64,
    /// Idle time counts from the later of this and `last_used_at`: set when the key is
    /// reactivated or regenerated (creation when unset).
    pub idle_from: Option<Timestamp>,
    /// A secret of the key was reported leaked with `leaks.action = "quarantine"`: the key
    /// works on, flagged until it is regenerated. Kept across every other change.
    pub quarantined: bool,
}

impl StoredKey {
    pub fn status_at(&self, now: Timestamp) -> KeyStatus {
        KeyStatus::of(self.status, self.spec.expires_at, now)
    }

    /// The grace period is shown only while it runs.
    fn grace_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.grace_until.filter(|until| *until > now)
    }

    pub fn view(&self, now: Timestamp) -> KeyView {
        let grace_until = self.grace_at(now);
        let mut spec = self.spec.clone();
        spec.rate_limit = spec.rate_limit.map(RateLimitSpec::normalized);
        KeyView {
            id: self.id.clone(),
            spec,
            status: self.status_at(now),
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_used_at: self.last_used_at,
            prefix: self.prefix.clone(),
            grace_until,
            previous_last_used_at: grace_until.and(self.previous_last_used_at),
            quarantined: self.quarantined,
        }
    }
}

/// A key to insert. The service has hashed the secret and chosen the id.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub spec: KeySpec,
    pub hash: KeyHash,
    pub prefix: String,
    pub now: Timestamp,
}

/// Where a bulk import's keys come from (see [`super::KeyStore::insert_batches`]): the next
/// batch, `None` at the end, or why the import is called off.
pub type KeyBatches<'a> = dyn FnMut() -> Result<Option<Vec<NewKey>>, super::StoreError> + Send + 'a;

/// Filters for listing keys; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub environment: Option<Environment>,
    pub status: Option<KeyStatus>,
    pub customer_id: Option<String>,
}

/// Requests counted for one key since the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    pub seq: u64,
    /// Counted against the secret a regeneration replaced (during its grace period).
    pub previous: bool,
    pub requests: u64,
    pub last_used_at: Timestamp,
}

/// A key's usage history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Usage {
    pub key_id: String,
    pub last_used_at: Option<Timestamp>,
    pub total_requests: u64,
    pub days: Vec<DayUsage>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub requests: u64,
}

/// The rows changed since a revision, and the revision they bring the reader to.
#[derive(Debug, Default)]
pub struct Changes {
    pub keys: Vec<StoredKey>,
    /// The customers changed in the same revisions, tombstones included.
    pub customers: Vec<super::customers::StoredCustomer>,
    /// Rows that could not be read back, with why; skipped, never fatal.
    pub bad_rows: Vec<String>,
    pub revision: u64,
    /// Whether more changed rows wait past this batch.
    pub more: bool,
}

/// Who changed a key, for its audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Cli,
    /// The admin API, and which token from where when the request is known.
    AdminApi(Option<Origin>),
    Lifecycle,
    /// A secret scanner reporting a leaked secret.
    Scanner(Scanner),
}

/// Which secret scanner reported a leak (`control::leaks`); `keygate scan --report` and
/// `keygate keys report-leak` are [`Actor::Cli`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanner {
    /// GitHub's secret scanning partner program.
    Github,
    /// GitLab's token revocation API.
    Gitlab,
    /// `POST /v1/leaks`, and which admin token from where.
    Api(Option<Origin>),
}

/// Where an admin API change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub token: TokenKind,
    /// The client's address, as the proxy would see it (`server.trusted_proxies` applies).
    pub client: std::net::IpAddr,
}

/// The kind of admin token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `admin.token_env`: may do everything.
    Write,
    /// `admin.read_token_env`: every `GET` and `verify`, nothing else.
    Read,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Write => "write",
            TokenKind::Read => "read",
        }
    }
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::AdminApi(_) => "admin_api",
            Actor::Lifecycle => "lifecycle",
            Actor::Scanner(Scanner::Github) => "github",
            Actor::Scanner(Scanner::Gitlab) => "gitlab",
            Actor::Scanner(Scanner::Api(_)) => "api",
        }
    }

    /// The audit row's `token` and `client` columns.
    pub fn origin(self) -> (Option<&'static str>, Option<String>) {
        match self {
            Actor::AdminApi(Some(origin)) | Actor::Scanner(Scanner::Api(Some(origin))) => {
                (Some(origin.token.as_str()), Some(origin.client.to_string()))
            }
            Actor::Cli
            | Actor::AdminApi(None)
            | Actor::Lifecycle
            | Actor::Scanner(Scanner::Github | Scanner::Gitlab | Scanner::Api(None)) => (None, None),
        }
    }
}

/// The audit record a change writes in the same transaction as the change.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    pub actor: Actor,
    /// `created`, `imported`, `updated`, `regenerated`, `revoked`, `activated`, `deleted`,
    /// `idle_revoked`, `leaked`, `quota_topped_up`, `quota_reset`.
    pub event: &'static str,
    /// A leak report's details, written into the record's `changes`. A change that carries
    /// one is recorded even when it changes nothing (a report of a revoked key): the trail
    /// keeps every report.
    pub report: Option<Reported<'a>>,
}

impl Audit<'static> {
    /// The record of `event` by `actor`, no leak report.
    pub const fn of(actor: Actor, event: &'static str) -> Audit<'static> {
        Audit {
            actor,
            event,
            report: None,
        }
    }
}

/// What an audit record says of a leak report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported<'a> {
    /// Where the secret was found, as the scanner said.
    pub url: Option<&'a str>,
    /// Which of the key's secrets was reported: `current`, or `grace` (the one a regeneration
    /// replaced, while its grace period runs).
    pub secret: &'static str,
}

/// One entry of a key's audit trail. `changes` holds the new value of every field the change
/// touched (all of them for creation); a new secret appears as `"secret": "replaced"`, never
/// as a value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyEvent {
    pub id: u64,
    pub key_id: String,
    pub event: String,
    pub actor: String,
    /// Which kind of admin token made the change (`write`), for changes through the admin API.
    pub token: Option<String>,
    /// The admin API client's address.
    pub client: Option<String>,
    pub at: Timestamp,
    pub changes: serde_json::Map<String, serde_json::Value>,
}

/// An active key that has been idle long enough to be warned about or revoked.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleKey {
    pub seq: u64,
    pub id: String,
    pub name: String,
    pub environment: Environment,
    pub last_used_at: Option<Timestamp>,
    /// The later of its last use and its creation, reactivation or regeneration.
    pub idle_since: Timestamp,
}

/// A webhook delivery waiting in the store's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingWebhook {
    pub id: u64,
    pub payload: String,
    pub attempts: u32,
}

/// When a lease taken at `now` for `ttl` runs out, in Unix milliseconds (saturating).
pub fn lease_until(now: jiff::Timestamp, ttl: std::time::Duration) -> i64 {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    now.as_millisecond().saturating_add(ttl_ms)
}
