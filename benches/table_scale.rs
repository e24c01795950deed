//! The key table at scale: time to load N keys from the store at start, the memory they take,
//! and the cost of syncing one changed key into the loaded table.
//!
//! `cargo bench --bench table_scale` (1,000,000 keys), or with `KEYGATE_SCALE_KEYS=N`; from
//! PostgreSQL with `KEYGATE_SCALE_POSTGRES=URL` (an empty database or schema of yours: the
//! bench writes its keys there and leaves them). `KEYGATE_SCALE_SQLITE=PATH` writes the SQLite
//! store there and keeps it (to start a gateway on it), instead of in a temporary folder.
//! `KEYGATE_SCALE_LOAD=URL-or-PATH` with `KEYGATE_SCALE_KEYS=N` measures an existing store of N
//! keys (ten million filled by `benches/memory/run --fill-sql --keep-database`) without writing
//! any. Then `KEYGATE_SCALE_CHANGES` changes (2,000) are applied to the loaded table one at a
//! time, and 50 syncs of one revoked key run: p50, p99 and the worst of each.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;

use keygate::control::store::{KeyStore, NewKey, PgStore, SqliteStore};
use keygate::control::sync::KeySync;
use keygate::core::clock::system_clock;
use keygate::core::environment::Environment;
use keygate::core::key::{new_key_id, KeySpec};
use keygate::core::secret::{Hasher, Secret};
use keygate::proxy::state::SyncStatus;
use keygate::proxy::table::KeyTable;
use keygate::telemetry::Metrics;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn keys_wanted() -> usize {
    std::env::var("KEYGATE_SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn main() {
    // The load is measured in a fresh process, so the RSS is that of a gateway that starts on
    // this store, not of the one that just wrote a million rows.
    if let Ok(path) = std::env::var("KEYGATE_SCALE_LOAD") {
        return load(&path);
    }
    let n = keys_wanted();
    let dir = tempfile::tempdir().unwrap();
    let path =
        std::env::var_os("KEYGATE_SCALE_SQLITE").map_or_else(|| dir.path().join("scale.db"), Into::into);
    let hasher = Hasher::unkeyed();
    let (store, location): (Arc<dyn KeyStore>, String) = match std::env::var("KEYGATE_SCALE_POSTGRES") {
        Ok(url) => (Arc::new(PgStore::open(&url).unwrap()), url),
        Err(_) => (
            Arc::new(SqliteStore::create(&path).unwrap()),
            path.to_str().unwrap().to_owned(),
        ),
    };

    let started = Instant::now();
    let now = Timestamp::now();
    let permission_sets: [Vec<keygate::core::permission::Permission>; 3] = [
        vec!["customer:read".parse().unwrap()],
        vec!["customer:*".parse().unwrap(), "license:read".parse().unwrap()],
        vec!["*".parse().unwrap()],
    ];
    for chunk in 0..n.div_ceil(100_000) {
        let keys: Vec<NewKey> = (chunk * 100_000..((chunk + 1) * 100_000).min(n))
            .map(|i| {
                let secret = Secret::generate(Environment::Production);
                NewKey {
                    spec: KeySpec {
                        name: format!("customer integration {i}"),
                        environment: Environment::Production,
                        permissions: permission_sets[i % 3].clone(),
                        rate_limit: None,
                        customer_id: (i % 2 == 0).then(|| format!("cust_{i:08}")),
                        allowed_ips: Vec::new(),
                        expires_at: None,
                        metadata: serde_json::Map::new(),
                        quota: None,
                    },
                    id: new_key_id(),
                    hash: hasher.hash(secret.expose().as_bytes()),
                    prefix: secret.display_prefix(),
                    now,
                }
            })
            .collect();
        store
            .insert_many(
                &keys,
                keygate::control::store::Audit {
                    actor: keygate::control::store::Actor::Cli,
                    event: "imported",
                    report: None,
                },
            )
            .unwrap();
    }
    println!(
        "store: wrote {n} keys in {:.1?} (setup, not a target)",
        started.elapsed()
    );
    drop(store);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env("KEYGATE_SCALE_LOAD", &location)
        .status()
        .unwrap();
    assert!(status.success());
}

fn load(location: &str) {
    let hasher = Hasher::unkeyed();
    let now = Timestamp::now();
    let start_rss = rss_mib();
    let n = keys_wanted();
    let postgres = location.starts_with("postgres");
    let store: Arc<dyn KeyStore> = match postgres {
        true => Arc::new(PgStore::open(location).unwrap()),
        false => Arc::new(SqliteStore::open(std::path::Path::new(location)).unwrap()),
    };
    let table = Arc::new(KeyTable::default());
    let sync = KeySync::new(
        store.clone(),
        table.clone(),
        Arc::new(SyncStatus::default()),
        Metrics::new(),
        system_clock(),
    );
    let before = rss_mib();
    let started = Instant::now();
    sync.sync_once().unwrap();
    let load = started.elapsed();
    let after = rss_mib();
    assert_eq!(table.len(), n);
    let from = if postgres { "PostgreSQL" } else { "SQLite" };
    println!("load: {n} keys from {from} into the table in {load:.2?}");
    println!(
        "memory: process RSS {after:.0} MiB after load ({:.0} MiB added by the load; {start_rss:.0} MiB at start)",
        after - before
    );

    let first = store
        .list(&Default::default(), now, 0, 1)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let service = keygate::control::keys::KeyService::new(
        store.clone(),
        hasher,
        system_clock(),
        keygate::control::store::Actor::Cli,
    );
    service.revoke(&first.id).unwrap();
    let started = Instant::now();
    sync.sync_once().unwrap();
    println!(
        "sync: one changed key applied to the {n}-key table in {:.2?}",
        started.elapsed()
    );
    changes(&table, &store, &sync, &service);
    if !postgres {
        snapshot(&table, std::path::Path::new(location));
    }
}

/// A change to one key applied to the loaded table, many times: the table's upsert alone (a key
/// taken out and put back revoked or not, as the sync applies a changed row), and the whole
/// sync of one changed key (the store's read of it included). p50, p99 and the worst.
fn changes(
    table: &KeyTable,
    store: &Arc<dyn KeyStore>,
    sync: &KeySync,
    service: &keygate::control::keys::KeyService,
) {
    let rounds: usize = std::env::var("KEYGATE_SCALE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut seqs = Vec::with_capacity(table.len());
    table.for_each(|key| seqs.push(key.seq));
    let step = (seqs.len() / rounds.max(1)).max(1);
    let mut upserts = Vec::with_capacity(rounds);
    for seq in seqs.iter().step_by(step).take(rounds) {
        let Some(mut key) = table.get(*seq) else { continue };
        key.revoked = !key.revoked;
        let started = Instant::now();
        table.upsert(key);
        upserts.push(started.elapsed());
    }
    report("the table's upsert of one changed key", table.len(), &mut upserts);
    let listed = store.list(&Default::default(), Timestamp::now(), 0, 50).unwrap();
    let mut syncs = Vec::with_capacity(listed.len());
    for key in listed.iter().skip(1) {
        if service.revoke(&key.id).is_err() {
            continue;
        }
        let started = Instant::now();
        sync.sync_once().unwrap();
        syncs.push(started.elapsed());
    }
    report(
        "a sync of one changed key (store read included)",
        table.len(),
        &mut syncs,
    );
}

fn report(what: &str, keys: usize, times: &mut [std::time::Duration]) {
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "change: {what}, {keys}-key table, {} rounds: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The snapshot's whole write, in its parts: what the sync waits for (the journal's rotation)
/// and what runs beside it (the capture, the write).
fn snapshot(table: &KeyTable, store: &std::path::Path) {
    use keygate::control::snapshot;
    let path = store.with_extension("snap");
    let mut journal = snapshot::journal::Journal::new(&path);
    let mut seq = 0;
    table.for_each(|key| seq = key.seq);
    let key = table.get(seq).unwrap();
    let change = snapshot::journal::Change {
        put: &[&key],
        ..Default::default()
    };
    journal.record(&change, table.revision(), 0);
    let started = Instant::now();
    let rotation = journal.rotate().unwrap();
    let rotated = started.elapsed();
    let started = Instant::now();
    let capture = snapshot::Capture::of(table, &keygate::proxy::customers::CustomerMap::default());
    let captured = started.elapsed();
    let started = Instant::now();
    let temporary = snapshot::write_temporary(&capture, &path, 0, 0).unwrap();
    let written = started.elapsed();
    let started = Instant::now();
    assert!(journal.install(&rotation, &temporary).unwrap());
    snapshot::sync_folder(&path).unwrap();
    journal.retire(&rotation).unwrap();
    let installed = started.elapsed();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len()) / (1024 * 1024);
    println!(
        "snapshot: journal rotated in {rotated:.2?} (under the sync's turn); beside the sync: \
         table captured in {captured:.2?}, {size} MiB written and synced in {written:.2?}, \
         installed in {installed:.2?}"
    );
}
