//! Leaked keys (control plane): what happens when a secret scanner reports a token, whoever
//! delivers the report (GitHub's partner program, GitLab's token revocation API, `POST
//! /v1/leaks`, `keygate scan --report`). The formats of the first two are in [`github`] and
//! [`gitlab`]; finding keys in files is [`scan`].
//!
//! A batch of reports is decided in this order:
//! 1. each token's format is checked, so a malformed one costs no lookup;
//! 2. the well-formed ones are hashed with the store's hasher and looked up together, as a
//!    key's current secret or as the one its regeneration replaced while the grace period runs;
//! 3. for a key that is not revoked yet, `leaks.action` applies: `revoke` (the default) or
//!    `quarantine`; a key reported twice in one batch is changed once;
//! 4. each report gets its [`Outcome`], which the delivery formats turn into their answers
//!    (GitHub's `true_positive` / `false_positive`).
//!
//! Revoking is idempotent: a report delivered again finds the key revoked and changes nothing,
//! so a scanner may retry a batch that failed halfway.
//!
//! What this first cut still needs from the store, left out while the store is reorganized
//! (each is one call at the place named):
//! - `KeyStore::key_by_hash(&KeyHash) -> Option<StoredKey>` over the `secret_hashes` index, for
//!   [`Leaks::holders`], which walks every key today (fine for thousands of keys, seconds for
//!   a million).
//! - An `Actor` for the scanners (`Actor::Scanner(Source)`, audited as `github`, `gitlab`,
//!   `api`): [`Source::actor`] has none for GitHub and GitLab yet, so their reports are
//!   refused rather than recorded as someone else's.
//! - The reported URL in the audit record (an `Audit` field written into `changes`); until then
//!   it is in the log line of each revocation.
//! - A key field `quarantined` (kept across changes, shown in `GET /v1/keys` and on the page)
//!   for [`Action::Quarantine`], and with it an audit record for a report of a key that was
//!   revoked already (today a change that changes nothing writes no record).
//! - The webhook event `key.leaked`, queued in the change's transaction as the lifecycle's are.

pub mod github;
pub mod gitlab;
pub mod scan;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::keys::{KeyError, KeyService};
use super::store::{Actor, KeyFilter, KeyStore, Origin, StoreError, StoredKey};
use crate::core::clock::Clock;
use crate::core::key::{KeyStatus, StoredStatus};
use crate::core::secret::{check_format, Format, Hasher, KeyHash};

/// Keys read per store call while looking secrets up (two in unit tests, so they cross pages).
const PAGE: usize = if cfg!(test) { 2 } else { 1000 };

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

    /// Who the change is audited as; `None` where the store has no actor for the source yet
    /// (see the module doc).
    fn actor(self) -> Option<Actor> {
        match self {
            Source::Api(origin) => Some(Actor::AdminApi(origin)),
            Source::Cli => Some(Actor::Cli),
            Source::Github | Source::Gitlab => None,
        }
    }
}

/// `leaks.action`: what a report does to a live key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The key stops working at once.
    #[default]
    Revoke,
    /// The key keeps working, flagged for its owner to regenerate.
    Quarantine,
}

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

/// The key a token is a secret of.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub key_id: String,
    pub status: KeyStatus,
    pub which: Which,
    stored: StoredStatus,
}

impl Holder {
    fn of(key: &StoredKey, which: Which, now: jiff::Timestamp) -> Holder {
        Holder {
            key_id: key.id.clone(),
            status: key.status_at(now),
            which,
            stored: key.status,
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
    /// The key was quarantined by this report.
    Quarantined { key_id: String },
    /// The key was revoked already; nothing changed.
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
            | Outcome::AlreadyRevoked { key_id } => Some(key_id),
        }
    }

    /// The `result` label of `keygate_leak_reports_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Unknown => "unknown",
            Outcome::Revoked { .. } => "revoked",
            Outcome::Quarantined { .. } => "quarantined",
            Outcome::AlreadyRevoked { .. } => "already_revoked",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeakError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A piece this first cut does not have yet (see the module doc).
    #[error("not supported yet: {0}")]
    NotYet(&'static str),
}

/// Decides reports against one store.
#[derive(Clone)]
pub struct Leaks {
    store: Arc<dyn KeyStore>,
    keys: KeyService,
    hasher: Hasher,
    action: Action,
}

impl Leaks {
    pub fn new(store: Arc<dyn KeyStore>, hasher: Hasher, clock: Clock, action: Action) -> Leaks {
        Leaks {
            keys: KeyService::new(store.clone(), hasher.clone(), clock, Actor::Cli),
            store,
            hasher,
            action,
        }
    }

    /// The key each token is a current or grace-period secret of, in the tokens' order. Deleted
    /// keys hold none.
    pub fn holders(&self, tokens: &[&[u8]]) -> Result<Vec<Option<Holder>>, LeakError> {
        let mut wanted: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        for (index, token) in tokens.iter().enumerate() {
            if let Format::Generated(_) | Format::Imported = check_format(token) {
                wanted.entry(self.hasher.hash(token).0).or_default().push(index);
            }
        }
        let mut holders = vec![None; tokens.len()];
        if wanted.is_empty() {
            return Ok(holders);
        }
        let now = self.keys.now();
        let mut place = |hash: &KeyHash, key: &StoredKey, which| {
            for &index in wanted.get(&hash.0).into_iter().flatten() {
                holders[index] = Some(Holder::of(key, which, now));
            }
        };
        // Every key, a page at a time: the store has no lookup by hash yet (module doc).
        let mut after = 0;
        loop {
            let page = self.store.list(&KeyFilter::default(), now, after, PAGE)?;
            for key in &page {
                place(&key.hash, key, Which::Current);
                if let Some(previous) = key.previous_hash.filter(|_| key.grace_until > Some(now)) {
                    place(&previous, key, Which::Grace);
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = last.seq,
                _ => return Ok(holders),
            }
        }
    }

    /// Applies `leaks.action` to the key of each reported token, audited as `leaked` by
    /// `source`; the outcomes in the reports' order.
    pub fn report(&self, reports: &[Report], source: Source) -> Result<Vec<Outcome>, LeakError> {
        let tokens: Vec<&[u8]> = reports.iter().map(|report| report.token.as_bytes()).collect();
        let holders = self.holders(&tokens)?;
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
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// The action on one reported key.
    fn apply(&self, holder: &Holder, source: Source, url: Option<&str>) -> Result<Outcome, LeakError> {
        let key_id = holder.key_id.clone();
        // An expired key is revoked too: a later expiry would bring its known secret back.
        if holder.stored == StoredStatus::Revoked {
            tracing::info!(%key_id, source = source.as_str(), url, "leaked key reported again; it is revoked already");
            return Ok(Outcome::AlreadyRevoked { key_id });
        }
        let actor = source.actor().ok_or(LeakError::NotYet(
            "the store has no audit actor for GitHub or GitLab reports",
        ))?;
        match self.action {
            Action::Revoke => {
                self.keys.acting_as(actor).revoke_leaked(&key_id)?;
                tracing::warn!(%key_id, source = source.as_str(), url, secret = ?holder.which, "leaked key revoked");
                Ok(Outcome::Revoked { key_id })
            }
            Action::Quarantine => Err(LeakError::NotYet(
                "leaks.action = \"quarantine\" needs the key field `quarantined` in the store",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn a_reported_secret_revokes_its_key_once_audited_as_leaked() {
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

        let again = f.leaks.report(&reports(&[&secret]), Source::Cli).unwrap();
        assert_eq!(again, [Outcome::AlreadyRevoked { key_id: id.clone() }]);
        assert_eq!(f.events(&id).len(), 2, "created, leaked: a repeat writes nothing");
    }

    #[test]
    fn the_grace_period_secret_of_a_key_revokes_the_key() {
        let f = fixture(Action::Revoke);
        let (id, old) = f.key();
        f.keys
            .regenerate(&id, Some(std::time::Duration::from_secs(600)))
            .unwrap();
        let outcomes = f.leaks.report(&reports(&[&old]), Source::Cli).unwrap();
        assert_eq!(outcomes, [Outcome::Revoked { key_id: id.clone() }]);
        assert_eq!(f.status(&id), KeyStatus::Revoked);
    }

    #[test]
    fn what_the_store_cannot_record_yet_is_refused_and_changes_nothing() {
        let f = fixture(Action::Revoke);
        let (id, secret) = f.key();
        for source in [Source::Github, Source::Gitlab] {
            let refused = f.leaks.report(&reports(&[&secret]), source);
            assert!(matches!(refused, Err(LeakError::NotYet(_))), "{source:?}");
        }
        let quarantine = fixture(Action::Quarantine);
        let (quarantined, secret) = quarantine.key();
        let refused = quarantine.leaks.report(&reports(&[&secret]), Source::Cli);
        assert!(matches!(refused, Err(LeakError::NotYet(_))));
        assert_eq!(f.status(&id), KeyStatus::Active);
        assert_eq!(quarantine.status(&quarantined), KeyStatus::Active);
    }

    #[test]
    fn unknown_tokens_cost_no_store_walk_and_come_back_unknown() {
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
