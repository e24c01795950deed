//! `GET /v1/idle-keys`: what idle expiry (`lifecycle.idle_expiry`) is about to do, read-only,
//! so the page can warn beside a key that the sweep will revoke it within the largest
//! `warn_before`. The settings come from the config snapshot, the keys from the store's own
//! idle query (the one the sweep pages through), so a million keys are never loaded for it.

use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use jiff::Timestamp;
use serde::Serialize;

use super::{blocking, ok, query, Admin, Answer};
use crate::control::keys::MAX_PAGE;
use crate::control::store::IdleKey;
use crate::core::environment::Environment;
use crate::core::units::format_duration;

#[derive(Serialize)]
struct IdleReport {
    /// `lifecycle.idle_expiry`, e.g. `"90d"`; null when idle keys are never revoked.
    idle_expiry: Option<String>,
    /// `lifecycle.warn_before`, longest first.
    warn_before: Vec<String>,
    keys: Vec<IdleEntry>,
    /// More keys are concerned than the `MAX_PAGE` listed.
    truncated: bool,
}

#[derive(Serialize)]
struct IdleEntry {
    id: String,
    name: String,
    environment: Environment,
    last_used_at: Option<Timestamp>,
    idle_since: Timestamp,
    /// `idle_since + idle_expiry`: the sweep revokes the key at its first run from then on
    /// (later when its first warning went out late, so that it gets the shortest notice).
    revokes_at: Timestamp,
}

/// The keys the idle sweep will revoke within the largest `warn_before` (or at once when no
/// warning is configured), with the settings that decide it.
pub(super) async fn idle_keys(admin: &Admin, request: &Request<Incoming>) -> Answer {
    query(request, &[])?;
    let lifecycle = admin.shared.snapshot.load().config.lifecycle.clone();
    let warn_before: Vec<String> = lifecycle
        .warn_before
        .iter()
        .copied()
        .map(format_duration)
        .collect();
    let Some(idle_expiry) = lifecycle.idle_expiry else {
        return Ok(ok(&IdleReport {
            idle_expiry: None,
            warn_before,
            keys: Vec::new(),
            truncated: false,
        }));
    };
    let largest = lifecycle.warn_before.iter().copied().max().unwrap_or_default();
    let cutoff = concern_cutoff(admin.keys.now(), idle_expiry, largest);
    let mut idle = blocking(admin, move |keys| keys.idle_since(cutoff, MAX_PAGE + 1)).await?;
    let truncated = idle.len() > MAX_PAGE;
    idle.truncate(MAX_PAGE);
    let keys = idle
        .into_iter()
        .filter_map(|key| entry(key, idle_expiry))
        .collect();
    Ok(ok(&IdleReport {
        idle_expiry: Some(format_duration(idle_expiry)),
        warn_before,
        keys,
        truncated,
    }))
}

/// Keys idle since this instant or earlier reach their deadline within `warn` of `now`.
fn concern_cutoff(now: Timestamp, idle_expiry: Duration, warn: Duration) -> Timestamp {
    now.checked_sub(idle_expiry.saturating_sub(warn))
        .unwrap_or(Timestamp::MIN)
}

fn entry(key: IdleKey, idle_expiry: Duration) -> Option<IdleEntry> {
    let revokes_at = key.idle_since.checked_add(idle_expiry).ok()?;
    Some(IdleEntry {
        id: key.id,
        name: key.name,
        environment: key.environment,
        last_used_at: key.last_used_at,
        idle_since: key.idle_since,
        revokes_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn keys_concern_the_page_from_the_largest_warning_before_their_deadline() {
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let cutoff = concern_cutoff(now, 90 * DAY, 15 * DAY);
        assert_eq!(cutoff, "2026-09-17T00:00:00Z".parse().unwrap());
        // No warning: only keys already past their deadline.
        assert_eq!(
            concern_cutoff(now, 90 * DAY, Duration::ZERO),
            now.checked_sub(90 * DAY).unwrap()
        );
    }

    #[test]
    fn a_deadline_out_of_range_is_left_out_rather_than_panicking() {
        let key = IdleKey {
            seq: 1,
            id: "key_a".into(),
            name: "a".into(),
            environment: Environment::Production,
            last_used_at: None,
            idle_since: Timestamp::MAX,
        };
        assert!(entry(key, DAY).is_none());
    }
}
