//! The API key object of SPEC section 2: what the CLI prints, the admin API returns and the store
//! keeps (less the hash). Shared by both planes.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::environment::Environment;
use super::permission::Permission;
use super::quota::QuotaSpec;
use super::units::{format_duration, parse_duration, parse_instant, Rate};

/// A key's public id: `key_` and 20 base62 characters.
pub fn new_key_id() -> String {
    format!("key_{}", Alphanumeric.sample_string(&mut rand::rng(), 20))
}

/// A key's own rate limit: `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests: NonZeroU32,
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub per: Duration,
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
}

impl RateLimitSpec {
    pub fn from_rate(rate: Rate, burst: Option<NonZeroU32>) -> Self {
        RateLimitSpec {
            requests: rate.requests,
            per: rate.per,
            burst,
        }
    }

    /// The burst, defaulting to one period's worth of requests.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst.unwrap_or(self.requests)
    }

    pub fn rate(&self) -> Rate {
        Rate {
            requests: self.requests,
            per: self.per,
        }
    }

    /// The normal form, with the burst spelled out, as returned to clients.
    pub fn normalized(self) -> Self {
        RateLimitSpec {
            burst: Some(self.burst()),
            ..self
        }
    }
}

fn ser_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    let duration = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("the period must be longer than zero"));
    }
    Ok(duration)
}

/// `expires_at` as a client writes it: an instant, a date (its midnight UTC) or null. See
/// [`parse_instant`] for what is refused, and why.
pub fn de_expiry<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|text| parse_instant(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// [`de_expiry`] for a change: present (`null` clears), so `Some`.
pub fn de_expiry_change<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<Timestamp>>, D::Error> {
    de_expiry(deserializer).map(Some)
}

/// What a field of a key, as a client writes it, looks like: for messages, in place of the
/// Rust types serde would name (`expected struct RateLimitSpec`). `permissions[2]` takes the
/// shape of an element of `permissions`.
pub fn field_shape(field: &str) -> Option<&'static str> {
    let element = field.split_once('[').map(|(array, _)| array);
    Some(match element.unwrap_or(field) {
        "permissions" if element.is_some() => r#"a permission like "customer:read""#,
        "allowed_ips" if element.is_some() => r#"a CIDR or an IP address like "10.0.0.0/8""#,
        "name" => "a string",
        "environment" => "production, staging or development (or prod, stg, dev)",
        "permissions" => r#"an array of permissions like ["customer:read", "license:*"]"#,
        "rate_limit" => r#"{"requests":N,"per":"1s","burst":N} or null"#,
        "rate_limit.requests" | "rate_limit.burst" => "a whole number from 1",
        "rate_limit.per" => r#"a duration like "1s" or "1m""#,
        "customer_id" => "a string or null",
        "allowed_ips" => r#"an array of CIDRs or IP addresses like ["10.0.0.0/8"]"#,
        "expires_at" => {
            r#"an RFC 3339 instant like "2027-01-31T00:00:00Z", a date like "2027-01-31", or null"#
        }
        "expires_in" | "grace" => r#"a duration like "30d" or null"#,
        "metadata" => "a JSON object",
        "quota" => r#"{"limit":N,"period":"month","anchor":"2026-01-15T00:00:00Z"} or null"#,
        "quota.limit" => "a whole number from 1",
        "quota.period" => "hour, day, week, month or none",
        "quota.anchor" => r#"an RFC 3339 instant like "2026-01-15T00:00:00Z""#,
        "key" => "the secret to import, a string",
        _ => return None,
    })
}

/// serde's message about `field` with its type names replaced by the shape the field takes:
/// `invalid type: string "5/s", expected struct RateLimitSpec` becomes `got string "5/s",
/// expected {"requests":N,"per":"1s","burst":N} or null`. Other messages are kept.
pub fn reword(field: &str, message: &str) -> String {
    let got = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split(", expected").next());
    match (got, field_shape(field)) {
        (Some(got), Some(shape)) => format!("got {got}, expected {shape}"),
        _ => message.to_owned(),
    }
}

/// The status a key is stored with. `expired` is not stored: it follows from `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredStatus {
    Active,
    Revoked,
    Deleted,
}

impl StoredStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredStatus::Active => "active",
            StoredStatus::Revoked => "revoked",
            StoredStatus::Deleted => "deleted",
        }
    }
}

impl FromStr for StoredStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active" => Ok(StoredStatus::Active),
            "revoked" => Ok(StoredStatus::Revoked),
            "deleted" => Ok(StoredStatus::Deleted),
            other => Err(format!("unknown stored key status {other:?}")),
        }
    }
}

/// The status a key shows at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
    Deleted,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 4] = [
        KeyStatus::Active,
        KeyStatus::Revoked,
        KeyStatus::Expired,
        KeyStatus::Deleted,
    ];

    pub fn of(stored: StoredStatus, expires_at: Option<Timestamp>, now: Timestamp) -> KeyStatus {
        match stored {
            StoredStatus::Deleted => KeyStatus::Deleted,
            StoredStatus::Revoked => KeyStatus::Revoked,
            StoredStatus::Active if expires_at.is_some_and(|at| at <= now) => KeyStatus::Expired,
            StoredStatus::Active => KeyStatus::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
            KeyStatus::Deleted => "deleted",
        }
    }
}

impl FromStr for KeyStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("unknown status {text:?} (expected active, revoked, expired or deleted)"))
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator chooses about a key: everything but its identity, secret, status and
/// history. The one list of these fields: the key service takes it, the store keeps it, the
/// key object shows it, and the audit trail records its changes through its serialization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    pub name: String,
    pub environment: Environment,
    pub permissions: Vec<Permission>,
    pub rate_limit: Option<RateLimitSpec>,
    pub customer_id: Option<String>,
    pub allowed_ips: Vec<IpNet>,
    pub expires_at: Option<Timestamp>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The key's quota (SPEC 11); absent in what keygate wrote before quotas.
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
}

impl KeySpec {
    /// A key named `name` for `environment` with nothing else set: no permissions, the
    /// default limit, no customer, any address, no expiry, no metadata.
    pub fn new(name: impl Into<String>, environment: Environment) -> Self {
        KeySpec {
            name: name.into(),
            environment,
            permissions: Vec::new(),
            rate_limit: None,
            customer_id: None,
            allowed_ips: Vec::new(),
            expires_at: None,
            metadata: serde_json::Map::new(),
            quota: None,
        }
    }
}

/// The key object of SPEC section 2, as shown to operators. Never holds the secret; `key` is
/// added beside it only in the answers to create and regenerate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    #[serde(flatten)]
    pub spec: KeySpec,
    pub status: KeyStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub prefix: String,
    pub grace_until: Option<Timestamp>,
    pub previous_last_used_at: Option<Timestamp>,
    /// A secret of the key was reported leaked under `leaks.action = "quarantine"`: it works
    /// on until it is regenerated.
    #[serde(default)]
    pub quarantined: bool,
}

/// A key view with its secret, for the one answer that shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyWithSecret {
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret, shown this once.
    pub key: String,
}
