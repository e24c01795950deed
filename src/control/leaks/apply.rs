//! The change one leak report makes to its key (control plane): decided on the key as the
//! store's transaction reads it, written with its audit record `leaked` and the webhook
//! `key.leaked` in that transaction. The rules are in the module doc of [`super`].

use jiff::Timestamp;
use serde::Serialize;

use super::{Action, Holder, LeakError, Leaks, Outcome, Source, Which};
use crate::control::store::{Audit, Reported, StoreError, StoredKey};
use crate::core::key::StoredStatus;

/// What a report does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Revoke,
    /// The reported secret is the one a regeneration replaced: only its grace ends.
    EndGrace,
    Quarantine,
    /// The key is revoked (or deleted) already: the report is recorded, nothing else.
    Nothing,
}

impl Change {
    fn decide(status: StoredStatus, which: Which, action: Action) -> Change {
        match (status, action, which) {
            (StoredStatus::Revoked | StoredStatus::Deleted, _, _) => Change::Nothing,
            (StoredStatus::Active, Action::Quarantine, _) => Change::Quarantine,
            (StoredStatus::Active, Action::Revoke, Which::Grace) => Change::EndGrace,
            (StoredStatus::Active, Action::Revoke, Which::Current) => Change::Revoke,
        }
    }

    /// Makes the change on the key as the transaction read it.
    fn make(self, key: &mut StoredKey) {
        match self {
            Change::Revoke => {
                key.status = StoredStatus::Revoked;
                // A revoked key's old secret must not outlive it through a grace period.
                key.previous_hash = None;
                key.grace_until = None;
            }
            Change::EndGrace => {
                key.previous_hash = None;
                key.grace_until = None;
                key.previous_last_used_at = None;
            }
            Change::Quarantine => key.quarantined = true,
            Change::Nothing => {}
        }
    }

    fn outcome(self, key_id: String) -> Outcome {
        match self {
            Change::Revoke => Outcome::Revoked { key_id },
            Change::EndGrace => Outcome::GraceEnded { key_id },
            Change::Quarantine => Outcome::Quarantined { key_id },
            Change::Nothing => Outcome::AlreadyRevoked { key_id },
        }
    }
}

impl Leaks {
    /// The action on one reported key, audited and announced.
    pub(super) fn apply(
        &self,
        holder: &Holder,
        source: Source,
        url: Option<&str>,
    ) -> Result<Outcome, LeakError> {
        let now = self.now();
        let expected = Change::decide(holder.stored, holder.which, self.action);
        // Queued only with a change: a report of a revoked key is the audit record alone.
        let payload = (self.webhooks && expected != Change::Nothing)
            .then(|| payload(holder, source, url, expected.outcome(String::new()).as_str(), now));
        let audit = Audit {
            actor: source.actor(),
            event: "leaked",
            report: Some(Reported {
                url,
                secret: holder.which.as_str(),
            }),
        };
        let mut made = expected;
        let modified = self
            .store
            .modify(&holder.key_id, audit, payload.as_deref(), &mut |key| {
                made = Change::decide(key.status, holder.which, self.action);
                made.make(key);
                key.updated_at = now;
                Ok(())
            });
        match modified {
            Ok(_) => {}
            // Deleted since it was looked up: it holds no secret now.
            Err(StoreError::NotFound) => return Ok(Outcome::Unknown),
            Err(error) => return Err(error.into()),
        }
        let outcome = made.outcome(holder.key_id.clone());
        tracing::warn!(
            key_id = %holder.key_id,
            source = source.as_str(),
            url,
            secret = holder.which.as_str(),
            result = outcome.as_str(),
            "leaked key reported"
        );
        Ok(outcome)
    }
}

/// The webhook `key.leaked`, instants RFC 3339:
///
/// ```json
/// {"event_id":"key_….leaked.<time>","event":"key.leaked","key_id":"key_…","name":"…",
///  "environment":"production","source":"github","url":"https://github.com/…","secret":"current",
///  "result":"revoked","reported_at":"…","sent_at":"…"}
/// ```
#[derive(Serialize)]
struct Leaked<'a> {
    /// The same for every delivery attempt, so a receiver can drop a duplicate.
    event_id: String,
    event: &'static str,
    key_id: &'a str,
    name: &'a str,
    environment: &'static str,
    source: &'static str,
    url: Option<&'a str>,
    secret: &'static str,
    result: &'static str,
    reported_at: Timestamp,
    sent_at: Timestamp,
}

fn payload(
    holder: &Holder,
    source: Source,
    url: Option<&str>,
    result: &'static str,
    now: Timestamp,
) -> String {
    let leaked = Leaked {
        event_id: format!("{}.leaked.{}", holder.key_id, now.as_second()),
        event: "key.leaked",
        key_id: &holder.key_id,
        name: &holder.name,
        environment: holder.environment.as_str(),
        source: source.as_str(),
        url,
        secret: holder.which.as_str(),
        result,
        reported_at: now,
        sent_at: now,
    };
    serde_json::to_string(&leaked).expect("strings and instants always serialize")
}
