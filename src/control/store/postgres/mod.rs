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
//!
//! This file connects and runs each [`KeyStore`] operation on a pooled connection, in a
//! transaction where it writes, announcing what it changed; the sections do the work: `tls`
//! (verifying the server), `schema` (migrations under a lock), `listen` (the change feed),
//! `keys` (key rows and their audit trail), `import` (bulk import), `usage` (counters, idle keys), `analytics` (hourly rows), `jobs` (webhook
//! outbox, leases), `dump` (export and import).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use jiff::Timestamp;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;

use super::analytics::{HourRow, UsagePoint, UsageQuery};
use super::customers::{CustomerEvent, ModifiedCustomer, NewCustomer, StoredCustomer};
use super::dump::{Dump, Onto};
use super::model::{
    Audit, Changes, IdleKey, KeyBatches, KeyEvent, KeyFilter, Modified, NewKey, PendingWebhook, StoredKey,
    Usage, UsageDelta,
};
use super::replicas::FleetSignals;
use super::{Fields, FleetFeed, KeyStore, ReplicaRow, StoreError};
use crate::core::secret::KeyHash;

mod analytics;
mod customers;
mod dump;
mod import;
mod jobs;
mod keys;
mod listen;
mod quota;
mod replicas;
mod restore;
mod schema;
mod tls;
mod usage;

use listen::{announce, listen};

/// A transaction on a pooled connection.
type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Connections each gateway's pool holds at most (the listening connection is one more).
const POOL_SIZE: usize = 4;
/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one store operation may take, waiting for a connection included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The receipts' wake-ups, which the listener passes on beside the changes.
    fleet: FleetSignals,
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
        let tls = tls::tls_connector(&tls)?;
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
            fleet: FleetSignals::default(),
        })
    }

    /// Brings the schema up to date and starts the listener, once.
    async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                let mut client = self.pool.get().await?;
                schema::migrate(&mut client).await?;
                let schema: String = client.query_one("SELECT current_schema()", &[]).await?.get(0);
                let channel = format!("keygate_changes_{}", schema.replace('"', ""));
                self.handle.spawn(listen(
                    self.config.clone(),
                    self.tls.clone(),
                    channel.clone(),
                    self.changes.clone(),
                    self.fleet.clone(),
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
}

impl KeyStore for PgStore {
    fn insert(&self, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let stored = keys::insert(&tx, key, audit).await?;
            announce(&tx, self.channel(), stored.revision).await?;
            tx.commit().await?;
            Ok(stored)
        })
    }

    fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        self.run(async { keys::select_one(&self.pool.get().await?, id).await })
    }

    fn key_by_hash(&self, hash: &KeyHash, now: Timestamp) -> Result<Option<StoredKey>, StoreError> {
        self.run(async { keys::by_hash(&self.pool.get().await?, hash, now).await })
    }

    fn keys_by_hash(&self, hashes: &[KeyHash], now: Timestamp) -> Result<Vec<Option<StoredKey>>, StoreError> {
        self.run(async { keys::by_hashes(&self.pool.get().await?, hashes, now).await })
    }

    fn modify(
        &self,
        id: &str,
        audit: Audit,
        webhook: Option<&str>,
        change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
    ) -> Result<Modified, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let modified = keys::modify(&tx, id, audit, webhook, change).await?;
            if modified.changed {
                announce(&tx, self.channel(), modified.key.revision).await?;
            }
            // Unchanged, it may still hold the audit record of a leak report.
            tx.commit().await?;
            Ok(modified)
        })
    }

    fn events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<KeyEvent>, StoreError> {
        self.run(async { keys::events(&self.pool.get().await?, id, after, limit).await })
    }

    fn list(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        self.run(async { keys::list(&self.pool.get().await?, filter, now, after, limit).await })
    }

    fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes, StoreError> {
        self.run(async { keys::changes_since(&mut self.pool.get().await?, revision, limit).await })
    }

    /// One cursor in one snapshot; each fetch within [`OPERATION_TIMEOUT`], the whole read
    /// unbounded (ten million keys take longer than one operation is allowed).
    fn stream_changes(
        &self,
        revision: u64,
        batch: usize,
        apply: &mut (dyn FnMut(Changes) + Send),
    ) -> Result<(), StoreError> {
        self.run_within(Duration::MAX, async {
            let mut client = tokio::time::timeout(OPERATION_TIMEOUT, self.pool.get())
                .await
                .map_err(|_| StoreError::Unavailable("no PostgreSQL connection within 10 s".into()))??;
            keys::stream_changes(&mut client, revision, batch, OPERATION_TIMEOUT, apply).await
        })
    }

    fn record_event(
        &self,
        key_id: &str,
        audit: Audit,
        at: Timestamp,
        changes: &Fields,
    ) -> Result<(), StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            keys::record_event(&tx, key_id, audit, at, changes.clone()).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            usage::record(&tx, deltas).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn usage(&self, id: &str) -> Result<Usage, StoreError> {
        self.run(async { usage::of_key(&self.pool.get().await?, id).await })
    }

    /// The time allowed grows with the batch: 210,000 rows (100,000 busy keys) took 6 s on a
    /// loaded 2-core machine, and a flush that times out would be tried again whole.
    fn record_usage_rows(&self, deltas: &[UsageDelta], rows: &[HourRow]) -> Result<(), StoreError> {
        if deltas.is_empty() && rows.is_empty() {
            return Ok(());
        }
        let allowed = OPERATION_TIMEOUT + Duration::from_millis((deltas.len() + rows.len()) as u64 / 5);
        self.run_within(allowed, async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            if !deltas.is_empty() {
                usage::record(&tx, deltas).await?;
            }
            analytics::record(&tx, rows).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn usage_series(&self, query: &UsageQuery) -> Result<Vec<UsagePoint>, StoreError> {
        self.run(async { analytics::series(&self.pool.get().await?, query).await })
    }

    fn prune_usage_rows(&self, before: i64) -> Result<u64, StoreError> {
        self.run(async { analytics::prune(&self.pool.get().await?, before).await })
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let value: i64 = client
                .query_one("SELECT value FROM meta WHERE name = 'revision'", &[])
                .await?
                .get(0);
            Ok(value as u64)
        })
    }

    fn live_keys(&self) -> Result<u64, StoreError> {
        self.run(async {
            let client = self.pool.get().await?;
            let count: i64 = client
                .query_one("SELECT count(*) FROM keys WHERE status <> 'deleted'", &[])
                .await?
                .get(0);
            Ok(count as u64)
        })
    }

    fn idle_keys(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<IdleKey>, StoreError> {
        self.run(async { usage::idle_keys(&self.pool.get().await?, cutoff, now, after, limit).await })
    }

    fn record_warning(
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
            let recorded = usage::record_warning(&tx, seq, deadline, threshold, now, webhook).await?;
            tx.commit().await?;
            Ok(recorded)
        })
    }

    fn first_warning_at(&self, seq: u64, deadline: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        self.run(async { usage::first_warning_at(&self.pool.get().await?, seq, deadline).await })
    }

    fn enqueue_webhook(&self, payload: &str, now: Timestamp) -> Result<(), StoreError> {
        self.run(async { jobs::enqueue(&self.pool.get().await?, payload, now).await })
    }

    fn due_webhooks(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingWebhook>, StoreError> {
        self.run(async { jobs::due(&self.pool.get().await?, now, limit).await })
    }

    fn claim_webhook(&self, now: Timestamp, until: Timestamp) -> Result<Option<PendingWebhook>, StoreError> {
        self.run(async { jobs::claim(&self.pool.get().await?, now, until).await })
    }

    fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.run(async { jobs::done(&self.pool.get().await?, id).await })
    }

    fn webhook_retry_at(&self, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError> {
        self.run(async { jobs::retry_at(&self.pool.get().await?, id, attempts, at).await })
    }

    fn try_lease(&self, name: &str, holder: &str, now: Timestamp, ttl: Duration) -> Result<bool, StoreError> {
        self.run(async { jobs::try_lease(&self.pool.get().await?, name, holder, now, ttl).await })
    }

    /// Each batch has its own time, which grows with the batch; the import as a whole has as
    /// long as its source takes to read.
    fn insert_batches(&self, next: &mut KeyBatches<'_>, audit: Audit) -> Result<u64, StoreError> {
        self.run_within(Duration::MAX, async {
            let mut client = within(OPERATION_TIMEOUT, self.pool.get()).await??;
            let tx = client.transaction().await?;
            let backend = import::backend(&tx).await?;
            let start: i64 = tx
                .query_one("SELECT value FROM meta WHERE name = 'revision' FOR UPDATE", &[])
                .await?
                .get(0);
            let mut import = import::Import::start(&tx, start as u64).await?;
            while let Some(batch) = next()? {
                import::patiently(&self.pool, backend, import.write(&batch, audit)).await?;
            }
            let count = import.count();
            let last = import::patiently(&self.pool, backend, import.finish()).await? as i64;
            tx.execute("UPDATE meta SET value = $1 WHERE name = 'revision'", &[&last])
                .await?;
            announce(&tx, self.channel(), last as u64).await?;
            import::patiently(&self.pool, backend, async { Ok(tx.commit().await?) }).await?;
            Ok(count)
        })
    }

    fn insert_customer(&self, customer: &NewCustomer, audit: Audit) -> Result<StoredCustomer, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let stored = customers::insert(&tx, customer, audit).await?;
            announce(&tx, self.channel(), stored.revision).await?;
            tx.commit().await?;
            Ok(stored)
        })
    }

    fn customer(&self, id: &str) -> Result<Option<StoredCustomer>, StoreError> {
        self.run(async { customers::select_one(&self.pool.get().await?, id).await })
    }

    fn customers(&self, after: u64, limit: usize) -> Result<Vec<StoredCustomer>, StoreError> {
        self.run(async { customers::list(&self.pool.get().await?, after, limit).await })
    }

    fn customer_key_counts(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        self.run(async { customers::key_counts(&self.pool.get().await?, ids).await })
    }

    fn modify_customer(
        &self,
        id: &str,
        audit: Audit,
        change: &mut (dyn FnMut(&mut StoredCustomer) -> Result<(), StoreError> + Send),
    ) -> Result<ModifiedCustomer, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let modified = customers::modify(&tx, id, audit, change).await?;
            if modified.changed {
                announce(&tx, self.channel(), modified.customer.revision).await?;
                tx.commit().await?;
            }
            Ok(modified)
        })
    }

    fn delete_customer(&self, id: &str, audit: Audit, now: Timestamp) -> Result<(), StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let revision = customers::delete(&tx, id, audit, now).await?;
            announce(&tx, self.channel(), revision).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn record_customer_event(
        &self,
        id: &str,
        audit: Audit,
        at: Timestamp,
        changes: &Fields,
    ) -> Result<(), StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            customers::record_event(&tx, id, audit, at, changes.clone()).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn customer_events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<CustomerEvent>, StoreError> {
        self.run(async { customers::events(&self.pool.get().await?, id, after, limit).await })
    }

    fn lease_quota(&self, ask: &super::quota::LeaseAsk<'_>) -> Result<super::quota::LeaseGrant, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let grant = quota::lease(&tx, ask).await?;
            tx.commit().await?;
            Ok(grant)
        })
    }

    fn prune_quota_counters(&self, before: i64) -> Result<u64, StoreError> {
        self.run(async { quota::prune(&self.pool.get().await?, before).await })
    }

    fn change_quota(
        &self,
        counter: &super::quota::CounterId<'_>,
        change: crate::core::quota::QuotaChange,
    ) -> Result<super::quota::CounterRow, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let row = quota::change(&tx, counter, change).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn export_dump(&self) -> Result<Dump, StoreError> {
        self.run_within(OPERATION_TIMEOUT * 30, async {
            dump::export(&mut self.pool.get().await?).await
        })
    }

    /// The time allowed grows with the dump; announced to running gateways as one change.
    fn import_dump(&self, dump: &Dump, onto: Onto) -> Result<(), StoreError> {
        let rows = dump.keys.len() + dump.usage.len() + dump.events.len() + dump.customers.len();
        let allowed = OPERATION_TIMEOUT + Duration::from_millis(rows as u64);
        self.run_within(allowed, async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let revision = dump::import(&tx, dump, onto).await?;
            announce(&tx, self.channel(), revision).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn change_feed(&self) -> Option<watch::Receiver<u64>> {
        Some(PgStore::change_feed(self))
    }

    fn heartbeat(
        &self,
        row: &ReplicaRow,
        stale_before: Timestamp,
        announce: bool,
    ) -> Result<Vec<ReplicaRow>, StoreError> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let live = replicas::heartbeat(&tx, self.channel(), row, stale_before, announce).await?;
            tx.commit().await?;
            Ok(live)
        })
    }

    fn replicas(&self, live_since: Timestamp) -> Result<Vec<ReplicaRow>, StoreError> {
        self.run(async { replicas::live(&self.pool.get().await?, live_since).await })
    }

    fn remove_replica(&self, id: &str) -> Result<(), StoreError> {
        self.run(async { replicas::remove(&self.pool.get().await?, id).await })
    }

    fn want_receipt(&self, revision: u64) -> Result<(), StoreError> {
        self.run(async { replicas::want_receipt(&self.pool.get().await?, self.channel(), revision).await })
    }

    fn fleet_feed(&self) -> Option<FleetFeed> {
        Some(self.fleet.feed())
    }
}

/// Runs `work` to completion on the store's runtime, blocking the calling thread. A caller
/// inside another runtime (a blocking-pool thread, or async code such as a test) cannot block
/// on a runtime from there, so the work then waits on a thread of its own.
/// `work`'s answer, or unavailable when it takes longer than `allowed`.
async fn within<T>(allowed: Duration, work: impl Future<Output = T>) -> Result<T, StoreError> {
    tokio::time::timeout(allowed, work)
        .await
        .map_err(|_| StoreError::Unavailable(format!("PostgreSQL did not answer within {allowed:?}")))
}

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

/// A read-only transaction that sees one snapshot of the whole store (repeatable read), and the
/// store revision in it.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Result<(Tx<'_>, u64), StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let revision: i64 = tx
        .query_one("SELECT value FROM meta WHERE name = 'revision'", &[])
        .await?
        .get(0);
    Ok((tx, revision as u64))
}

/// A length or a limit as PostgreSQL's BIGINT (saturating).
fn signed_len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
