//! Leaked keys (control plane): what happens when a secret scanner reports a token, whoever
//! delivers the report (GitHub's partner program, GitLab's token revocation API, `POST
//! /v1/leaks`, `keygate keys report-leak`, `keygate scan --report`). The formats of the first
//! two are in [`github`] and [`gitlab`], their endpoints on the proxy listener in [`endpoints`];
//! finding keys in files is [`scan`].
//!
//! A batch of reports is decided in this order:
//! 1. each token's format is checked, so a malformed one costs no lookup;
//! 2. the well-formed ones are hashed with the store's hasher and looked up one by one in the
//!    store's index of secrets ([`KeyStore::key_by_hash`]), as a key's current secret or as the
//!    one its regeneration replaced while the grace period runs;
//! 3. [`apply`] changes the key, a key reported twice in one batch once: under `leaks.action =
//!    "revoke"` (the default) a current secret revokes its key and a grace-period secret ends
//!    the grace (the owner replaced it already; the key's new secret is not known to be out);
//!    under `"quarantine"` the key keeps working, flagged until it is regenerated;
//! 4. every report of a key is audited as `leaked` by its source with the URL, a report of a
//!    key revoked already included; a change queues the webhook `key.leaked` in its own
//!    transaction; each report counts in `keygate_leak_reports_total{source,result}`;
//! 5. each report gets its [`Outcome`], which the delivery formats turn into their answers
//!    (GitHub's `true_positive` / `false_positive`).
//!
//! Revoking is idempotent: a report delivered again finds the key revoked and changes nothing
//! but its audit trail, so a scanner may retry a batch that failed halfway.

mod apply;
pub mod endpoints;
pub mod github;
pub mod gitlab;
pub mod scan;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::store::{Actor, KeyStore, Origin, Scanner, StoreError, StoredKey};
use crate::core::clock::{whole_second, Clock};
use crate::core::environment::Environment;
use crate::core::key::{KeyStatus, StoredStatus};
use crate::core::secret::{check_format, Format, Hasher, KeyHash};
use crate::telemetry::logs::millis;
use crate::telemetry::Metrics;

/// Who delivered a report: the audit record's actor, the metric's `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Github,
    Gitlab,
    /// `POST /v1/leaks`, and which admin token from where.
    Api(Option<Origin>),
    Cli,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::Gitlab => "gitlab",
            Source::Api(_) => "api",
            Source::Cli => "cli",
        }
    }

    /// Who the change is audited as.
    fn actor(self) -> Actor {
        match self {
            Source::Github => Actor::Scanner(Scanner::Github),
            Source::Gitlab => Actor::Scanner(Scanner::Gitlab),
            Source::Api(origin) => Actor::Scanner(Scanner::Api(origin)),
            Source::Cli => Actor::Cli,
        }
    }
}

/// `leaks.action`: what a report does to a live key.
pub use crate::config::LeakAction as Action;

/// One reported token and where it was found. `Debug` never prints the token.
pub struct Report {
    token: String,
    url: Option<String>,
}

impl Report {
    pub fn new(token: String, url: Option<String>) -> Report {
        Report { token, url }
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("token", &"<redacted>")
            .field("url", &self.url)
            .finish()
    }
}

/// Which of its key's secrets a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Current,
    /// The secret a regeneration replaced, while its grace period runs.
    Grace,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Which::Current => "current",
            Which::Grace => "grace",
        }
    }
}

/// The key a token is a secret of.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub key_id: String,
    pub status: KeyStatus,
    pub which: Which,
    stored: StoredStatus,
    name: String,
    environment: Environment,
}

impl Holder {
    fn of(key: &StoredKey, which: Which, now: jiff::Timestamp) -> Holder {
        Holder {
            key_id: key.id.clone(),
            status: key.status_at(now),
            which,
            stored: key.status,
            name: key.spec.name.clone(),
            environment: key.spec.environment,
        }
    }
}

/// What a report came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a secret of any key here: a false positive, nothing changed.
    Unknown,
    /// The key was revoked by this report.
    Revoked { key_id: String },
    /// The key was quarantined by this report (or was already).
    Quarantined { key_id: String },
    /// The secret was the one a regeneration replaced: its grace period ended, the key's
    /// current secret works on.
    GraceEnded { key_id: String },
    /// The key was revoked already; only the report was recorded.
    AlreadyRevoked { key_id: String },
}

impl Outcome {
    /// Whether the token is a real secret of this store: GitHub's `true_positive`.
    pub fn is_ours(&self) -> bool {
        self.key_id().is_some()
    }

    pub fn key_id(&self) -> Option<&str> {
        match self {
            Outcome::Unknown => None,
            Outcome::Revoked { key_id }
            | Outcome::Quarantined { key_id }
            | Outcome::GraceEnded { key_id }
            | Outcome::AlreadyRevoked { key_id } => Some(key_id),
        }
    }

    /// The `result` label of `keygate_leak_reports_total`, and of the answers.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Unknown => "unknown",
            Outcome::Revoked { .. } => "revoked",
            Outcome::Quarantined { .. } => "quarantined",
            Outcome::GraceEnded { .. } => "grace_ended",
            Outcome::AlreadyRevoked { .. } => "already_revoked",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeakError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Decides reports against one store.
#[derive(Clone)]
pub struct Leaks {
    store: Arc<dyn KeyStore>,
    hasher: Hasher,
    clock: Clock,
    action: Action,
    /// Whether to queue `key.leaked` webhooks (`lifecycle.webhook` is set).
    webhooks: bool,
    metrics: Option<Metrics>,
}

impl Leaks {
    pub fn new(store: Arc<dyn KeyStore>, hasher: Hasher, clock: Clock, action: Action) -> Leaks {
        Leaks {
            store,
            hasher,
            clock,
            action,
            webhooks: false,
            metrics: None,
        }
    }

    /// These reports also queue the webhook `key.leaked` with each change.
    pub fn with_webhooks(self, webhooks: bool) -> Leaks {
        Leaks { webhooks, ..self }
    }

    /// These reports count in `keygate_leak_reports_total`.
    pub fn with_metrics(self, metrics: Metrics) -> Leaks {
        Leaks {
            metrics: Some(metrics),
            ..self
        }
    }

    pub fn action(&self) -> Action {
        self.action
    }

    fn now(&self) -> jiff::Timestamp {
        whole_second(self.clock.now())
    }

    /// The key each token is a current or grace-period secret of, in the tokens' order: the
    /// distinct well-formed ones looked up together in the store's index of secrets. Deleted
    /// keys hold none.
    pub fn holders(&self, tokens: &[&[u8]]) -> Result<Vec<Option<Holder>>, LeakError> {
        let now = self.now();
        let hashes: Vec<Option<KeyHash>> = tokens
            .iter()
            .map(|token| match check_format(token) {
                Format::Generated(_) | Format::Imported => Some(self.hasher.hash(token)),
                _ => None,
            })
            .collect();
        let mut distinct: Vec<KeyHash> = hashes.iter().flatten().copied().collect();
        distinct.sort_unstable_by_key(|hash| hash.0);
        distinct.dedup_by_key(|hash| hash.0);
        let keys = self.store.keys_by_hash(&distinct, now)?;
        let found: HashMap<[u8; 32], StoredKey> = distinct
            .iter()
            .zip(keys)
            .filter_map(|(hash, key)| Some((hash.0, key?)))
            .collect();
        let holder = |hash: &KeyHash| {
            let key = found.get(&hash.0)?;
            let which = match key.hash == *hash {
                true => Which::Current,
                false => Which::Grace,
            };
            Some(Holder::of(key, which, now))
        };
        Ok(hashes.iter().map(|hash| hash.as_ref().and_then(holder)).collect())
    }

    /// Applies `leaks.action` to the key of each reported token, audited as `leaked` by
    /// `source`; the outcomes in the reports' order.
    pub fn report(&self, reports: &[Report], source: Source) -> Result<Vec<Outcome>, LeakError> {
        let started = std::time::Instant::now();
        let tokens: Vec<&[u8]> = reports.iter().map(|report| report.token.as_bytes()).collect();
        let holders = self.holders(&tokens)?;
        let looked_up = started.elapsed();
        let mut decided: HashMap<String, Outcome> = HashMap::new();
        let mut outcomes = Vec::with_capacity(reports.len());
        for (report, holder) in reports.iter().zip(holders) {
            let outcome = match holder {
                None => Outcome::Unknown,
                Some(holder) => match decided.get(&holder.key_id) {
                    Some(outcome) => outcome.clone(),
                    None => {
                        let outcome = self.apply(&holder, source, report.url.as_deref())?;
                        decided.insert(holder.key_id, outcome.clone());
                        outcome
                    }
                },
            };
            self.count(source, outcome.as_str());
            outcomes.push(outcome);
        }
        // The steps' times, to tell a slow lookup from a slow change (issue 24).
        tracing::debug!(
            reports = reports.len(),
            lookup_ms = millis(looked_up),
            change_ms = millis(started.elapsed() - looked_up),
            "leak reports decided"
        );
        Ok(outcomes)
    }

    /// Counts a report (or a delivery refused whole) in `keygate_leak_reports_total`.
    pub fn count(&self, source: Source, result: &str) {
        if let Some(metrics) = &self.metrics {
            metrics
                .leak_reports
                .with_label_values(&[source.as_str(), result])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::keys::KeyService;
    use crate::control::store::SqliteStore;
    use crate::core::clock::system_clock;
    use crate::core::environment::Environment;
    use crate::core::key::KeySpec;

    struct Fixture {
        leaks: Leaks,
        keys: KeyService,
        store: Arc<dyn KeyStore>,
    }

    fn fixture(action: Action) -> Fixture {
        let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::open(std::path::Path::new(":memory:")).unwrap());
        let hasher = Hasher::with_pepper(b"pepper");
        Fixture {
            leaks: Leaks::new(store.clone(), hasher.clone(), system_clock(), action),
            keys: KeyService::new(store.clone(), hasher, system_clock(), Actor::Cli),
            store,
        }
    }

    impl Fixture {
        /// A new key: its id and secret.
        fn key(&self) -> (String, String) {
            let created = self
                .keys
                .create(KeySpec::new("billing", Environment::Production))
                .unwrap();
            (created.view.id, created.key)
        }

        fn status(&self, id: &str) -> KeyStatus {
            self.keys.get(id).unwrap().status
        }

        fn events(&self, id: &str) -> Vec<(String, String)> {
            let events = self.store.events(id, 0, 100).unwrap();
            events.into_iter().map(|e| (e.event, e.actor)).collect()
        }
    }

    fn reports(tokens: &[&str]) -> Vec<Report> {
        tokens
            .iter()
            .map(|token| Report::new((*token).to_owned(), Some("https://example.com/leak".into())))
            .collect()
    }

    #[test]
    fn tokens_are_found_as_current_or_grace_period_secrets_and_nothing_else() {
        let f = fixture(Action::Revoke);
        let (id, old) = f.key();
        let new = f
            .keys
            .regenerate(&id, Some(std::time::Duration::from_secs(600)))
            .unwrap()
            .key;
        let (other, other_secret) = f.key();
        f.keys.delete(&other).unwrap();
        let stranger = crate::core::secret::Secret::generate(Environment::Production);
        let tokens: [&[u8]; 5] = [
            new.as_bytes(),
            old.as_bytes(),
            other_secret.as_bytes(),
            stranger.expose().as_bytes(),
            b"not a key",
        ];
        let holders = f.leaks.holders(&tokens).unwrap();
        let which: Vec<Option<(&str, Which)>> = holders
            .iter()
            .map(|h| h.as_ref().map(|h| (h.key_id.as_str(), h.which)))
            .collect();
        assert_eq!(
            which,
            [
                Some((id.as_str(), Which::Current)),
                Some((id.as_str(), Which::Grace)),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn a_reported_secret_revokes_its_key_once_and_every_report_is_audited() {
        let f = fixture(Action::Revoke);
        let (id, secret) = f.key();
        let (quiet, _) = f.key();
        let outcomes = f
            .leaks
            .report(&reports(&[&secret, "kg_prod_nothing", &secret]), Source::Cli)
            .unwrap();
        let revoked = Outcome::Revoked { key_id: id.clone() };
        assert_eq!(outcomes, [revoked.clone(), Outcome::Unknown, revoked]);
        assert_eq!(f.status(&id), KeyStatus::Revoked);
        assert_eq!(f.status(&quiet), KeyStatus::Active);
        assert_eq!(
            f.events(&id).last().unwrap(),
            &("leaked".to_owned(), "cli".to_owned())
        );

        let again = f.leaks.report(&reports(&[&secret]), Source::Github).unwrap();
        assert_eq!(again, [Outcome::AlreadyRevoked { key_id: id.clone() }]);
        let events = f.store.events(&id, 0, 100).unwrap();
        assert_eq!(events.len(), 3, "created, leaked, leaked again: {events:?}");
        assert_eq!(events[2].actor, "github");
        assert_eq!(events[2].changes["url"], "https://example.com/leak");
        assert_eq!(events[2].changes.get("status"), None, "nothing changed");
    }

    #[test]
    fn the_grace_period_secret_of_a_key_ends_the_grace_and_the_key_works_on() {
        let f = fixture(Action::Revoke);
        let (id, old) = f.key();
        let new = f
            .keys
            .regenerate(&id, Some(std::time::Duration::from_secs(600)))
            .unwrap()
            .key;
        let outcomes = f.leaks.report(&reports(&[&old]), Source::Gitlab).unwrap();
        assert_eq!(outcomes, [Outcome::GraceEnded { key_id: id.clone() }]);
        assert_eq!(f.status(&id), KeyStatus::Active);
        let holders = f.leaks.holders(&[old.as_bytes(), new.as_bytes()]).unwrap();
        assert_eq!(holders[0], None, "the old secret holds nothing now");
        assert_eq!(holders[1].as_ref().unwrap().which, Which::Current);
        let events = f.store.events(&id, 0, 100).unwrap();
        let last = events.last().unwrap();
        assert_eq!((last.event.as_str(), last.actor.as_str()), ("leaked", "gitlab"));
        assert_eq!(last.changes["leaked_secret"], "grace");
    }

    #[test]
    fn quarantine_flags_the_key_which_works_on_until_it_is_regenerated() {
        let f = fixture(Action::Quarantine);
        let (id, secret) = f.key();
        let outcomes = f.leaks.report(&reports(&[&secret]), Source::Github).unwrap();
        assert_eq!(outcomes, [Outcome::Quarantined { key_id: id.clone() }]);
        let view = f.keys.get(&id).unwrap();
        assert_eq!((view.status, view.quarantined), (KeyStatus::Active, true));
        f.keys.regenerate(&id, None).unwrap();
        assert!(!f.keys.get(&id).unwrap().quarantined);
    }

    #[test]
    fn malformed_tokens_cost_no_lookup_and_come_back_unknown() {
        let f = fixture(Action::Revoke);
        let outcomes = f
            .leaks
            .report(&reports(&["", "x", "kg_prod_short"]), Source::Github);
        assert_eq!(
            outcomes.unwrap(),
            [Outcome::Unknown, Outcome::Unknown, Outcome::Unknown]
        );
    }

    #[test]
    fn a_report_never_prints_its_token() {
        let report = Report::new("kg_prod_secret".into(), None);
        assert!(!format!("{report:?}").contains("kg_prod_secret"));
    }
}
