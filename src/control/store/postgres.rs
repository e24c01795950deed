//! The shared store: PostgreSQL, for replicas on several hosts (control plane).
//!
//! The same rows and the same revision scheme as the SQLite store ([`super::sqlite`]): every
//! change bumps the store-wide revision and stamps its row, deleted keys stay as tombstones,
//! and a gateway reads only the rows past the last revision it saw. Besides, each change sends
//! `NOTIFY` in the same transaction, so it is seen by every gateway's listening connection as
//! soon as it commits ([`PgStore::change_feed`]); polling stays as the fallback.
//!
//! The store is called from blocking threads (`spawn_blocking`, the CLI), as SQLite's is. It
//! drives tokio-postgres on a small runtime of its own and blocks the calling thread until the
//! answer is in, so both stores offer callers one synchronous interface.
//!
//! Writers serialize on the revision counter's row, so changes commit in revision order and a
//! reader never sees revision N+1 without N.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Row};

use super::model::{
    lease_until, Audit, Changes, DayUsage, IdleKey, KeyEvent, KeyFilter, Modified, NewKey, PendingWebhook,
    StoredKey, Usage, UsageDelta,
};
use super::sqlite::{changed_fields, instant, is_no_change, json, new_key_fields, to_json, RawRow, COLUMNS};
use super::StoreError;
use crate::config::urls::PostgresTls;

#[path = "postgres_dump.rs"]
mod dump;
use crate::core::key::{KeyStatus, StoredStatus};

/// Schema versions, applied in order under an advisory lock; `keygate_schema` records how many
/// ran.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (name, value) VALUES ('revision', 0);
    CREATE TABLE keys (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        environment TEXT NOT NULL,
        hash BYTEA NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        permissions TEXT NOT NULL,
        rate_limit TEXT,
        customer_id TEXT,
        allowed_ips TEXT NOT NULL,
        expires_at BIGINT,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        last_used_at BIGINT,
        previous_hash BYTEA,
        grace_until BIGINT,
        previous_last_used_at BIGINT,
        metadata TEXT NOT NULL,
        revision BIGINT NOT NULL,
        idle_from BIGINT
    );
    CREATE INDEX keys_revision ON keys (revision);
    CREATE INDEX keys_customer ON keys (customer_id);
    -- Every secret a key answers to, current or in its grace period, belongs to that key only:
    -- kept by a trigger, so rows written by any client are held to it too.
    CREATE TABLE key_secrets (
        hash BYTEA PRIMARY KEY,
        key_seq BIGINT NOT NULL REFERENCES keys (seq)
    );
    CREATE FUNCTION keygate_claim_secrets() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- A bulk import claims its secrets in one statement at its end, in its transaction.
        IF current_setting('keygate.bulk_import', true) = 'on' THEN
            RETURN NEW;
        END IF;
        DELETE FROM key_secrets WHERE key_seq = NEW.seq
            AND hash IS DISTINCT FROM NEW.hash AND hash IS DISTINCT FROM NEW.previous_hash;
        INSERT INTO key_secrets (hash, key_seq) VALUES (NEW.hash, NEW.seq) ON CONFLICT (hash) DO NOTHING;
        IF NEW.previous_hash IS NOT NULL THEN
            INSERT INTO key_secrets (hash, key_seq) VALUES (NEW.previous_hash, NEW.seq)
                ON CONFLICT (hash) DO NOTHING;
        END IF;
        IF EXISTS (SELECT 1 FROM key_secrets WHERE hash IN (NEW.hash, NEW.previous_hash)
                   AND key_seq <> NEW.seq) THEN
            RAISE EXCEPTION 'this secret is already in use' USING ERRCODE = 'unique_violation';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER keys_claim_secrets AFTER INSERT OR UPDATE OF hash, previous_hash ON keys
        FOR EACH ROW EXECUTE FUNCTION keygate_claim_secrets();
    CREATE TABLE key_usage (
        key_seq BIGINT NOT NULL REFERENCES keys (seq),
        day TEXT NOT NULL,
        requests BIGINT NOT NULL,
        PRIMARY KEY (key_seq, day)
    );
    CREATE TABLE key_events (
        id BIGSERIAL PRIMARY KEY,
        key_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        changes TEXT NOT NULL
    );
    CREATE INDEX key_events_key ON key_events (key_id, id);
    CREATE TABLE idle_warnings (
        key_seq BIGINT NOT NULL REFERENCES keys (seq),
        deadline BIGINT NOT NULL,
        threshold BIGINT NOT NULL,
        sent_at BIGINT NOT NULL,
        PRIMARY KEY (key_seq, deadline, threshold)
    );
    CREATE TABLE webhook_outbox (
        id BIGSERIAL PRIMARY KEY,
        payload TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL);
"#,
    // Which admin token made a change through the admin API, and from which client address.
    r#"
    ALTER TABLE key_events ADD COLUMN token TEXT;
    ALTER TABLE key_events ADD COLUMN client TEXT;
"#,
];

/// Connections each gateway's pool holds at most (the listening connection is one more).
const POOL_SIZE: usize = 4;
/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one store operation may take, waiting for a connection included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the listening connection proves it is alive; a silent one is replaced.
const LISTEN_CHECK: Duration = Duration::from_secs(5);
/// How long the listener waits before it reconnects, at first and at most.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// Set once the schema is up to date and the listener started: the channel this store's
    /// changes are announced on (one per schema, so stores in different schemas of one
    /// database do not wake each other).
    ready: tokio::sync::OnceCell<String>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("channel", &self.ready.get())
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The store may be dropped on an async thread, where a blocking shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::Unavailable(postgres_error(&error))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
        }
    }
}

/// The server's message where there is one: tokio-postgres's `Display` says only "db error".
fn postgres_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("PostgreSQL: {}", db.message()),
        // tokio-postgres says what failed ("error performing TLS handshake") and keeps why
        // (the certificate's issuer is unknown) in the source: the operator needs both.
        None => {
            let mut message = format!("PostgreSQL: {error}");
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !message.ends_with(&cause_text) {
                    message.push_str(": ");
                    message.push_str(&cause_text);
                }
                source = cause.source();
            }
            message
        }
    }
}

/// A unique-constraint violation as a conflict: a clash of ids says `why`, a clash of secrets
/// (the keys' hash column, or the trigger that guards every secret) names no key. Other errors
/// as they are.
fn conflict(error: tokio_postgres::Error, why: &str) -> StoreError {
    if error.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return error.into();
    }
    match error.as_db_error().and_then(|db| db.constraint()) {
        Some("keys_id_key") => StoreError::Conflict(why.to_owned()),
        _ => StoreError::SecretInUse,
    }
}

impl PgStore {
    /// Connects to the database at `url` (libpq's URL form; `sslmode` and `sslrootcert` as
    /// [`crate::config::urls::postgres_url`] reads them: TLS always verifies the server),
    /// brings its schema up to date under an advisory lock, and starts listening for changes.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::open_later(url)?;
        store.run(async { Ok(()) })?;
        Ok(store)
    }

    /// The store at `url`, connected by its first operation, which also brings the schema up
    /// to date and starts the listener: a gateway starts while its database is unreachable and
    /// answers "not ready" until then. Fails only on a URL it cannot use.
    pub fn open_later(url: &str) -> Result<Self, StoreError> {
        let (mut config, tls) = crate::config::urls::postgres_url(url).map_err(StoreError::Unavailable)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keygate-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let tls = tls_connector(&tls)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        Ok(PgStore {
            pool,
            config,
            tls,
            runtime: Some(runtime),
            handle,
            ready: tokio::sync::OnceCell::new(),
            changes: watch::channel(0).0,
        })
    }

    /// Brings the schema up to date and starts the listener, once.
    async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                let mut client = self.pool.get().await?;
                migrate(&mut client).await?;
                let schema: String = client.query_one("SELECT current_schema()", &[]).await?.get(0);
                let channel = format!("keygate_changes_{}", schema.replace('"', ""));
                self.handle.spawn(listen(
                    self.config.clone(),
                    self.tls.clone(),
                    channel.clone(),
                    self.changes.clone(),
                ));
                Ok::<_, StoreError>(channel)
            })
            .await?;
        Ok(())
    }

    /// The channel changes are announced on; set by [`Self::ready`], which every operation
    /// runs first.
    fn channel(&self) -> &str {
        self.ready.get().map_or("", String::as_str)
    }

    /// Wakes on each change announced by `NOTIFY`, as it commits anywhere. Only a wake-up: the
    /// reader still reads the changes since the last revision it saw.
    pub fn change_feed(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs `work` on the store's runtime, giving up after [`OPERATION_TIMEOUT`]: a database
    /// that stops answering (a network that drops packets) must not hold a sync or an admin
    /// call forever.
    fn run<T: Send>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        self.run_within(OPERATION_TIMEOUT, work)
    }

    fn run_within<T: Send>(
        &self,
        allowed: Duration,
        work: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let work = async {
            self.ready().await?;
            work.await
        };
        block_on(&self.handle, async {
            match tokio::time::timeout(allowed, work).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {allowed:?}"
                ))),
            }
        })
    }

    pub fn insert(&self, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let revision = next_revision(&tx).await?;
            insert_row(
                &tx,
                key,
                revision,
                audit,
                "a key with this secret or id exists already",
            )
            .await?;
            announce(&tx, self.channel(), revision).await?;
            let stored = select_one(&tx, &key.id).await?.ok_or(StoreError::NotFound)?;
            tx.commit().await?;
            Ok(stored)
        })
    }

    /// The key with this id, deleted or not.
    pub fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            select_one(&client, id).await
        })
    }

    /// Reads the key (locking its row), lets `change` edit it, and writes it back with a new
    /// revision, in one transaction. Deleted keys are not found.
    pub fn modify(
        &self,
        id: &str,
        audit: Audit,
        webhook: Option<&str>,
        change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
    ) -> Result<Modified, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM keys WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )
                .await?;
            let mut key = match row.map(|row| read_row(&row)) {
                Some(Ok(key)) if key.status != StoredStatus::Deleted => key,
                Some(Err(why)) => return Err(StoreError::Corrupt(why)),
                _ => return Err(StoreError::NotFound),
            };
            let before = key.clone();
            change(&mut key)?;
            if is_no_change(&before, &key) {
                return Ok(Modified {
                    key: before,
                    changed: false,
                });
            }
            key.revision = next_revision(&tx).await?;
            write_back(&tx, &key).await?;
            record_event(&tx, &key.id, audit, key.updated_at, changed_fields(&before, &key)).await?;
            if let Some(payload) = webhook {
                enqueue(&tx, payload, key.updated_at).await?;
            }
            announce(&tx, self.channel(), key.revision).await?;
            tx.commit().await?;
            Ok(Modified { key, changed: true })
        })
    }

    /// A key's audit trail, oldest first, from after event `after` on. Kept for deleted keys.
    pub fn events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<KeyEvent>, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let exists: bool = client
                .query_one("SELECT EXISTS (SELECT 1 FROM keys WHERE id = $1)", &[&id])
                .await?
                .get(0);
            if !exists {
                return Err(StoreError::NotFound);
            }
            let rows = client
                .query(
                    "SELECT id, at, actor, event, changes, token, client FROM key_events \
                     WHERE key_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    &[&id, &signed(after), &signed_len(limit)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let event_id: i64 = row.get(0);
                    Ok(KeyEvent {
                        id: event_id as u64,
                        key_id: id.to_owned(),
                        at: instant(Some(row.get(1)))
                            .map_err(StoreError::Corrupt)?
                            .ok_or_else(|| StoreError::Corrupt(format!("event {event_id} has no time")))?,
                        actor: row.get(2),
                        event: row.get(3),
                        token: row.get(5),
                        client: row.get(6),
                        changes: json("changes", row.get(4)).map_err(StoreError::Corrupt)?,
                    })
                })
                .collect()
        })
    }

    /// Keys matching `filter`, in creation order, after sequence number `after`, at most
    /// `limit`.
    pub fn list(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        let status = match filter.status {
            None => "status <> 'deleted'",
            Some(KeyStatus::Active) => "status = 'active' AND (expires_at IS NULL OR expires_at > $4)",
            Some(KeyStatus::Expired) => "status = 'active' AND expires_at <= $4",
            Some(KeyStatus::Revoked) => "status = 'revoked'",
            Some(KeyStatus::Deleted) => "status = 'deleted'",
        };
        let query = format!(
            "SELECT {COLUMNS} FROM keys WHERE {status} AND seq > $3 \
             AND ($1::TEXT IS NULL OR environment = $1) AND ($2::TEXT IS NULL OR customer_id = $2) \
             AND $4::BIGINT IS NOT NULL ORDER BY seq LIMIT $5"
        );
        let environment = filter.environment.map(|env| env.as_str());
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    &query,
                    &[
                        &environment,
                        &filter.customer_id,
                        &signed(after),
                        &now.as_second(),
                        &signed_len(limit),
                    ],
                )
                .await?;
            rows.iter()
                .map(|row| read_row(row).map_err(StoreError::Corrupt))
                .collect()
        })
    }

    /// Up to `limit` rows changed after `revision`, tombstones included, oldest change first;
    /// read in one snapshot with the store's revision (see the SQLite store).
    pub fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let current: i64 = tx
                .query_one("SELECT value FROM meta WHERE name = 'revision'", &[])
                .await?
                .get(0);
            let rows = tx
                .query(
                    &format!("SELECT {COLUMNS} FROM keys WHERE revision > $1 ORDER BY revision LIMIT $2"),
                    &[&signed(revision), &signed_len(limit)],
                )
                .await?;
            tx.commit().await?;
            let mut changes = Changes::default();
            let mut last = revision;
            for row in &rows {
                last = row.get::<_, i64>(19) as u64;
                match read_row(row) {
                    Ok(key) => changes.keys.push(key),
                    Err(why) => changes.bad_rows.push(why),
                }
            }
            changes.more = rows.len() == limit;
            changes.revision = if changes.more {
                last
            } else {
                (current as u64).max(last)
            };
            Ok(changes)
        })
    }

    /// Adds counted requests to the daily totals and moves `last_used_at` forward: one
    /// statement per kind for the whole batch, never one per key.
    pub fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = deltas.iter().map(|d| signed(d.seq)).collect();
        let previous: Vec<bool> = deltas.iter().map(|d| d.previous).collect();
        let at: Vec<i64> = deltas.iter().map(|d| d.last_used_at.as_second()).collect();
        let days: Vec<String> = deltas
            .iter()
            .map(|d| {
                d.last_used_at
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .date()
                    .to_string()
            })
            .collect();
        let requests: Vec<i64> = deltas.iter().map(|d| signed(d.requests)).collect();
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                // GREATEST passes over NULLs: a kind of use the batch has none of stays as it is.
                "UPDATE keys SET \
                   last_used_at = GREATEST(keys.last_used_at, d.current_at), \
                   previous_last_used_at = GREATEST(keys.previous_last_used_at, d.previous_at) \
                 FROM (SELECT seq, max(at) FILTER (WHERE NOT previous) AS current_at, \
                         max(at) FILTER (WHERE previous) AS previous_at \
                       FROM unnest($1::BIGINT[], $2::BOOL[], $3::BIGINT[]) AS u(seq, previous, at) \
                       GROUP BY seq) AS d WHERE keys.seq = d.seq",
                &[&seqs, &previous, &at],
            )
            .await?;
            tx.execute(
                "INSERT INTO key_usage (key_seq, day, requests) \
                 SELECT u.seq, u.day, sum(u.requests) FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[]) \
                   AS u(seq, day, requests) WHERE EXISTS (SELECT 1 FROM keys WHERE keys.seq = u.seq) \
                 GROUP BY u.seq, u.day \
                 ON CONFLICT (key_seq, day) DO UPDATE SET requests = key_usage.requests + excluded.requests",
                &[&seqs, &days, &requests],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Usage history of a key, deleted or not.
    pub fn usage(&self, id: &str) -> Result<Usage, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt("SELECT seq, last_used_at FROM keys WHERE id = $1", &[&id])
                .await?
                .ok_or(StoreError::NotFound)?;
            let (seq, last_used_at): (i64, Option<i64>) = (row.get(0), row.get(1));
            let days: Vec<DayUsage> = client
                .query(
                    "SELECT day, requests FROM key_usage WHERE key_seq = $1 ORDER BY day",
                    &[&seq],
                )
                .await?
                .iter()
                .map(|r| DayUsage {
                    date: r.get(0),
                    requests: r.get::<_, i64>(1) as u64,
                })
                .collect();
            Ok(Usage {
                key_id: id.to_owned(),
                last_used_at: last_used_at.and_then(|s| Timestamp::from_second(s).ok()),
                total_requests: days.iter().map(|d| d.requests).sum(),
                days,
            })
        })
    }

    /// The current store revision.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let value: i64 = client
                .query_one("SELECT value FROM meta WHERE name = 'revision'", &[])
                .await?
                .get(0);
            Ok(value as u64)
        })
    }

    /// Up to `limit` active, unexpired keys idle since `cutoff` or longer (see the SQLite
    /// store).
    pub fn idle_keys(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<IdleKey>, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT seq, id, name, environment, last_used_at, since FROM ( \
                       SELECT seq, id, name, environment, last_used_at, status, expires_at, \
                         GREATEST(COALESCE(idle_from, created_at), COALESCE(last_used_at, 0), \
                                  COALESCE(previous_last_used_at, 0)) AS since FROM keys) AS k \
                     WHERE status = 'active' AND (expires_at IS NULL OR expires_at > $2) AND since <= $1 \
                     AND seq > $3 ORDER BY seq LIMIT $4",
                    &[
                        &cutoff.as_second(),
                        &now.as_second(),
                        &signed(after),
                        &signed_len(limit),
                    ],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let id: String = row.get(1);
                    let environment: String = row.get(3);
                    let decoded = (|| {
                        Ok::<_, String>(IdleKey {
                            seq: row.get::<_, i64>(0) as u64,
                            name: row.get(2),
                            environment: environment.parse()?,
                            last_used_at: instant(row.get(4))?,
                            idle_since: instant(Some(row.get(5)))?.ok_or("no idle time")?,
                            id: id.clone(),
                        })
                    })();
                    decoded.map_err(|why| StoreError::Corrupt(format!("key {id}: {why}")))
                })
                .collect()
        })
    }

    /// Records that an idle warning went out and queues its webhook, once per key, deadline
    /// and threshold. False when it was recorded before.
    pub fn record_warning(
        &self,
        seq: u64,
        deadline: Timestamp,
        threshold: u64,
        now: Timestamp,
        webhook: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                    &[&signed(seq), &deadline.as_second(), &signed(threshold), &now.as_second()],
                )
                .await?;
            if inserted == 1 {
                if let Some(payload) = webhook {
                    enqueue(&tx, payload, now).await?;
                }
            }
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// When the first idle warning for this deadline went out, if one did.
    pub fn first_warning_at(&self, seq: u64, deadline: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let seconds: Option<i64> = client
                .query_one(
                    "SELECT MIN(sent_at) FROM idle_warnings WHERE key_seq = $1 AND deadline = $2",
                    &[&signed(seq), &deadline.as_second()],
                )
                .await?
                .get(0);
            instant(seconds).map_err(StoreError::Corrupt)
        })
    }

    /// Queues a webhook payload for delivery.
    pub fn enqueue_webhook(&self, payload: &str, now: Timestamp) -> Result<(), StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            enqueue(&client, payload, now).await
        })
    }

    /// Webhook deliveries due at `now`, oldest first.
    pub fn due_webhooks(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingWebhook>, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, payload, attempts FROM webhook_outbox WHERE next_attempt_at <= $1 \
                     ORDER BY id LIMIT $2",
                    &[&now.as_millisecond(), &signed_len(limit)],
                )
                .await?;
            Ok(rows.iter().map(pending_webhook).collect())
        })
    }

    /// Takes the oldest payload due at `now` for one attempt, not due again before `until`.
    /// `SKIP LOCKED`: two replicas claiming at once take two different payloads.
    pub fn claim_webhook(
        &self,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<PendingWebhook>, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id = \
                     (SELECT id FROM webhook_outbox WHERE next_attempt_at <= $1 ORDER BY id LIMIT 1 \
                      FOR UPDATE SKIP LOCKED) \
                     RETURNING id, payload, attempts",
                    &[&now.as_millisecond(), &until.as_millisecond()],
                )
                .await?;
            Ok(row.as_ref().map(pending_webhook))
        })
    }

    /// Removes a delivered (or abandoned) webhook from the outbox.
    pub fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute("DELETE FROM webhook_outbox WHERE id = $1", &[&signed(id)])
                .await?;
            Ok(())
        })
    }

    /// Counts a failed attempt and sets when to try again.
    pub fn webhook_retry_at(&self, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "UPDATE webhook_outbox SET attempts = $2, next_attempt_at = $3 WHERE id = $1",
                    &[&signed(id), &i64::from(attempts), &at.as_millisecond()],
                )
                .await?;
            Ok(())
        })
    }

    /// Takes or renews the lease `name` for `holder` until `now + ttl` (see the SQLite store).
    pub fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let until = lease_until(now, ttl);
        self.run(async {
            let client = self.pool.get().await?;
            let changed = client
                .execute(
                    "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
                     WHERE leases.holder = excluded.holder OR leases.until_ms < $4",
                    &[&name, &holder, &until, &now.as_millisecond()],
                )
                .await?;
            Ok(changed == 1)
        })
    }

    /// Inserts many keys in one transaction, all or none, each with its own revision and audit
    /// record.
    /// The rows and their audit records go in with `COPY` (binary), a million keys in seconds
    /// rather than a million round trips; the time allowed grows with the batch.
    pub fn insert_many(&self, keys: &[NewKey], audit: Audit) -> Result<(), StoreError> {
        let allowed = OPERATION_TIMEOUT + Duration::from_millis(keys.len() as u64 / 10);
        self.run_within(allowed, async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let start: i64 = tx
                .query_one("SELECT value FROM meta WHERE name = 'revision' FOR UPDATE", &[])
                .await?
                .get(0);
            let why = "a key in the batch has the id of a stored key";
            // Row by row the secrets' trigger would make a million keys take minutes: the
            // batch claims its secrets in one statement instead, before it commits.
            tx.batch_execute("SET LOCAL keygate.bulk_import = 'on'").await?;
            copy_keys(&tx, keys, start).await.map_err(|e| conflict(e, why))?;
            tx.execute(
                "INSERT INTO key_secrets (hash, key_seq) SELECT hash, seq FROM keys WHERE revision > $1",
                &[&start],
            )
            .await
            .map_err(|e| conflict(e, why))?;
            tx.batch_execute("SET LOCAL keygate.bulk_import = 'off'").await?;
            copy_events(&tx, keys, audit).await?;
            let last = start + keys.len() as i64;
            tx.execute("UPDATE meta SET value = $1 WHERE name = 'revision'", &[&last])
                .await?;
            announce(&tx, self.channel(), last as u64).await?;
            tx.commit().await?;
            Ok(())
        })
    }
}

/// Runs `work` to completion on the store's runtime, blocking the calling thread. A caller
/// inside another runtime (a blocking-pool thread, or async code such as a test) cannot block
/// on a runtime from there, so the work then waits on a thread of its own.
fn block_on<T: Send>(handle: &tokio::runtime::Handle, work: impl Future<Output = T> + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return handle.block_on(work);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| handle.block_on(work))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// rustls for TLS to the database, used when the URL's `sslmode` asks for it: the roots of
/// `sslrootcert`, else the system's and Mozilla's; the server's name checked unless the mode is
/// `verify-ca`.
fn tls_connector(tls: &PostgresTls) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("TLS for PostgreSQL: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match &tls.root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| unavailable(&format!("sslrootcert {}: {e}", path.display())))?;
            roots.add_parsable_certificates(certs);
        }
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(&e))?;
    let config = if tls.verify_name {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| unavailable(&e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=verify-ca`: the server's chain must lead to a trusted root, whatever name the
/// certificate is for (libpq's meaning). Everything else is WebPKI's own verification.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Applies the migrations this store has not run, once, even when several gateways start
/// together: they queue on an advisory lock (one per schema). A schema newer than this build
/// is refused.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    const LOCK: &str = "SELECT pg_advisory_lock(hashtext('keygate_migrations:' || current_schema()))";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('keygate_migrations:' || current_schema()))";
    client.execute(LOCK, &[]).await?;
    let result = async {
        // Looked for (in the schema a CREATE TABLE would make it in) rather than `CREATE TABLE
        // IF NOT EXISTS`, whose NOTICE ("relation ... already exists, skipping") tokio-postgres
        // logs at INFO on every start. The lock makes the look and the create one step.
        const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_tables \
             WHERE schemaname = current_schema() AND tablename = 'keygate_schema')";
        let exists: bool = client.query_one(EXISTS, &[]).await?.get(0);
        if !exists {
            client
                .batch_execute("CREATE TABLE keygate_schema (version INTEGER NOT NULL)")
                .await?;
        }
        let applied: i32 = client
            .query_opt("SELECT version FROM keygate_schema", &[])
            .await?
            .map_or(0, |row| row.get(0));
        if applied as usize > MIGRATIONS.len() {
            return Err(StoreError::Unavailable(format!(
                "the store's schema version {applied} is newer than this keygate knows ({}); upgrade keygate",
                MIGRATIONS.len()
            )));
        }
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let version = version as i32 + 1;
            let failed = |e: tokio_postgres::Error| {
                StoreError::Unavailable(format!("migration {version}: {}", postgres_error(&e)))
            };
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await.map_err(failed)?;
            tx.execute("DELETE FROM keygate_schema", &[]).await?;
            tx.execute("INSERT INTO keygate_schema (version) VALUES ($1)", &[&version])
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
    .await;
    client.execute(UNLOCK, &[]).await?;
    result
}

/// Holds one connection that `LISTEN`s on the store's channel and passes each notification on,
/// reconnecting with backoff when it drops. After a reconnect it wakes the reader once, since
/// notifications sent meanwhile were lost.
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: String,
    changes: watch::Sender<u64>,
) {
    let mut backoff = LISTEN_BACKOFF.0;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The LISTEN is answered through the connection, so both are polled together.
                let mut listening = std::pin::pin!(listening);
                let ready = loop {
                    tokio::select! {
                        result = &mut listening => break result.is_ok(),
                        message = messages.next() => if message.is_none() { break false },
                    }
                };
                if ready {
                    backoff = LISTEN_BACKOFF.0;
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                    relay_notifications(&client, &mut messages, &changes).await;
                }
            }
            Err(error) => {
                tracing::warn!(error = %postgres_error(&error), retry_in_s = backoff.as_secs_f64(), "PostgreSQL change listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF.1);
    }
}

/// Passes each notification on until the connection fails or stops answering the periodic
/// check (a connection through a network that silently drops packets never fails by itself).
async fn relay_notifications(
    client: &tokio_postgres::Client,
    messages: &mut (impl futures_util::Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin),
    changes: &watch::Sender<u64>,
) {
    let mut check = tokio::time::interval(LISTEN_CHECK);
    check.tick().await;
    loop {
        let alive = async {
            matches!(
                tokio::time::timeout(LISTEN_CHECK, client.simple_query("SELECT 1")).await,
                Ok(Ok(_))
            )
        };
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    tracing::trace!(revision = note.payload(), "store change announced");
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(error = %postgres_error(&error), "PostgreSQL change listener lost its connection");
                    return;
                }
                None => return,
            },
            _ = check.tick() => {
                // The check's answer arrives through `messages`, so both are polled together.
                let mut alive = std::pin::pin!(alive);
                let answered = loop {
                    tokio::select! {
                        answered = &mut alive => break answered,
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(_))) => {
                                changes.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break false,
                        },
                    }
                };
                if !answered {
                    tracing::warn!("PostgreSQL change listener's connection stopped answering; reconnecting");
                    return;
                }
            }
        }
    }
}

async fn next_revision(tx: &deadpool_postgres::Transaction<'_>) -> Result<u64, StoreError> {
    let value: i64 = tx
        .query_one(
            "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
            &[],
        )
        .await?
        .get(0);
    Ok(value as u64)
}

/// Tells every listening gateway that `revision` is in, when the transaction commits.
async fn announce(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
    revision: u64,
) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &revision.to_string()])
        .await?;
    Ok(())
}

/// The columns a new key's row fills, in the order of [`NewRow::values`] and [`NEW_ROW_TYPES`].
const NEW_ROW_COLUMNS: &str = "id, name, environment, hash, prefix, permissions, rate_limit, customer_id, \
     allowed_ips, expires_at, status, created_at, updated_at, metadata, revision";

/// The column types of [`NEW_ROW_COLUMNS`], for `COPY ... BINARY`.
const NEW_ROW_TYPES: [tokio_postgres::types::Type; 15] = {
    use tokio_postgres::types::Type;
    [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BYTEA,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
    ]
};

/// A new key's row as PostgreSQL takes it: the one place its values are laid out, for both
/// `INSERT` and `COPY`.
struct NewRow<'a> {
    key: &'a NewKey,
    environment: &'static str,
    hash: &'a [u8],
    permissions: String,
    rate_limit: Option<String>,
    allowed_ips: String,
    metadata: String,
    expires_at: Option<i64>,
    now: i64,
    revision: i64,
}

impl<'a> NewRow<'a> {
    fn new(key: &'a NewKey, revision: i64) -> Self {
        NewRow {
            key,
            environment: key.spec.environment.as_str(),
            hash: &key.hash.0,
            permissions: to_json(&key.spec.permissions),
            rate_limit: key.spec.rate_limit.as_ref().map(to_json),
            allowed_ips: to_json(&key.spec.allowed_ips),
            metadata: to_json(&key.spec.metadata),
            expires_at: key.spec.expires_at.map(|at| at.as_second()),
            now: key.now.as_second(),
            revision,
        }
    }

    fn values(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 15] {
        let key = self.key;
        [
            &key.id,
            &key.spec.name,
            &self.environment,
            &self.hash,
            &key.prefix,
            &self.permissions,
            &self.rate_limit,
            &key.spec.customer_id,
            &self.allowed_ips,
            &self.expires_at,
            &"active",
            &self.now,
            &self.now,
            &self.metadata,
            &self.revision,
        ]
    }
}

async fn insert_row(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &NewKey,
    revision: u64,
    audit: Audit,
    clash: &str,
) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO keys ({NEW_ROW_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .await?;
    let row = NewRow::new(key, signed(revision));
    tx.execute(&statement, &row.values())
        .await
        .map_err(|e| conflict(e, clash))?;
    record_event(tx, &key.id, audit, key.now, new_key_fields(key)).await
}

/// `COPY`s new key rows in, at revisions `start + 1` onwards. The secrets' trigger runs for
/// each row as it would for an `INSERT`.
async fn copy_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: &[NewKey],
    start: i64,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!("COPY keys ({NEW_ROW_COLUMNS}) FROM STDIN BINARY"))
        .await?;
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &NEW_ROW_TYPES);
    let mut writer = std::pin::pin!(writer);
    for (i, key) in keys.iter().enumerate() {
        let row = NewRow::new(key, start + 1 + i as i64);
        writer.as_mut().write(&row.values()).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// `COPY`s the creation audit records of `keys` in.
async fn copy_events(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: &[NewKey],
    audit: Audit,
) -> Result<(), StoreError> {
    use tokio_postgres::types::{ToSql, Type};
    let sink = tx
        .copy_in("COPY key_events (key_id, at, actor, event, changes, token, client) FROM STDIN BINARY")
        .await?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ];
    let (token, client) = audit.actor.origin();
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for key in keys {
        let row: [&(dyn ToSql + Sync); 7] = [
            &key.id,
            &key.now.as_second(),
            &audit.actor.as_str(),
            &audit.event,
            &to_json(&new_key_fields(key)),
            &token,
            &client,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn write_back(tx: &deadpool_postgres::Transaction<'_>, key: &StoredKey) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached(
            "UPDATE keys SET name = $2, hash = $3, prefix = $4, permissions = $5, rate_limit = $6, \
             customer_id = $7, allowed_ips = $8, expires_at = $9, status = $10, updated_at = $11, \
             previous_hash = $12, grace_until = $13, previous_last_used_at = $14, metadata = $15, \
             revision = $16, idle_from = $17 WHERE seq = $1",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &signed(key.seq),
            &key.spec.name,
            &&key.hash.0[..],
            &key.prefix,
            &to_json(&key.spec.permissions),
            &key.spec.rate_limit.as_ref().map(to_json),
            &key.spec.customer_id,
            &to_json(&key.spec.allowed_ips),
            &key.spec.expires_at.map(|at| at.as_second()),
            &key.status.as_str(),
            &key.updated_at.as_second(),
            &key.previous_hash.as_ref().map(|h| h.0.to_vec()),
            &key.grace_until.map(|at| at.as_second()),
            &key.previous_last_used_at.map(|at| at.as_second()),
            &to_json(&key.spec.metadata),
            &signed(key.revision),
            &key.idle_from.map(|at| at.as_second()),
        ],
    )
    .await
    .map_err(|e| conflict(e, "a key with this secret exists already"))?;
    Ok(())
}

async fn enqueue(
    client: &impl deadpool_postgres::GenericClient,
    payload: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO webhook_outbox (payload, next_attempt_at, created_at) VALUES ($1, $2, $2)",
            &[&payload, &now.as_millisecond()],
        )
        .await?;
    Ok(())
}

async fn record_event(
    tx: &deadpool_postgres::Transaction<'_>,
    key_id: &str,
    audit: Audit,
    at: Timestamp,
    changes: serde_json::Map<String, serde_json::Value>,
) -> Result<(), StoreError> {
    let (token, client) = audit.actor.origin();
    tx.execute(
        "INSERT INTO key_events (key_id, at, actor, event, changes, token, client) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &key_id,
            &at.as_second(),
            &audit.actor.as_str(),
            &audit.event,
            &to_json(&changes),
            &token,
            &client,
        ],
    )
    .await?;
    Ok(())
}

async fn select_one(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Option<StoredKey>, StoreError> {
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM keys WHERE id = $1"), &[&id])
        .await?;
    match row.map(|row| read_row(&row)) {
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(why)) => Err(StoreError::Corrupt(why)),
        None => Ok(None),
    }
}

fn pending_webhook(row: &Row) -> PendingWebhook {
    PendingWebhook {
        id: row.get::<_, i64>(0) as u64,
        payload: row.get(1),
        attempts: row.get::<_, i64>(2).clamp(0, i64::from(u32::MAX)) as u32,
    }
}

/// Reads a row in [`COLUMNS`] order; a row whose contents do not parse is `Err(why)`.
fn read_row(row: &Row) -> Result<StoredKey, String> {
    let id: String = row.try_get(1).map_err(|e| e.to_string())?;
    let raw = (|| {
        Ok::<_, tokio_postgres::Error>(RawRow {
            seq: row.try_get(0)?,
            name: row.try_get(2)?,
            environment: row.try_get(3)?,
            hash: row.try_get(4)?,
            prefix: row.try_get(5)?,
            permissions: row.try_get(6)?,
            rate_limit: row.try_get(7)?,
            customer_id: row.try_get(8)?,
            allowed_ips: row.try_get(9)?,
            expires_at: row.try_get(10)?,
            status: row.try_get(11)?,
            created_at: row.try_get(12)?,
            updated_at: row.try_get(13)?,
            last_used_at: row.try_get(14)?,
            previous_hash: row.try_get(15)?,
            grace_until: row.try_get(16)?,
            previous_last_used_at: row.try_get(17)?,
            metadata: row.try_get(18)?,
            revision: row.try_get(19)?,
            idle_from: row.try_get(20)?,
        })
    })()
    .map_err(|e| format!("key {id}: {e}"))?;
    raw.decode(id.clone()).map_err(|why| format!("key {id}: {why}"))
}

/// Counts and ids as PostgreSQL's BIGINT; past `i64::MAX` they saturate (they never get there).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn signed_len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
