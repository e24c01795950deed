//! Usage analytics at scale: the memory the hot path's hourly counts take for N active keys
//! over an hour, and the rows, bytes and time of one usage flush of them into SQLite and (when
//! `KEYGATE_BENCH_POSTGRES_URL` names a database) PostgreSQL.
//!
//! `cargo bench --bench analytics_scale` (100,000 keys), or with `KEYGATE_SCALE_KEYS=N`.
//! Each key is used on two routes and answered 200; every tenth also got a 429: 2.1 cells a
//! key, the worst case of a flush (every cell counted again within one flush interval).

use std::sync::Arc;
use std::time::Instant;

use keygate::control::store::{HourRow, KeyStore, PgStore, SqliteStore};
use keygate::proxy::analytics::{Analytics, HOUR};

fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib * 1024.0
}

fn keys_wanted() -> u64 {
    std::env::var("KEYGATE_SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// One hour of traffic of `n` keys, as the final phase counts it.
fn count_an_hour(analytics: &Analytics, n: u64, now: i64) {
    let (orders, customers) = (analytics.route_id("orders"), analytics.route_id("customers"));
    for seq in 1..=n {
        for _ in 0..3 {
            analytics.record(seq, orders, 200, now);
            analytics.record(seq, customers, 200, now);
        }
        if seq % 10 == 0 {
            analytics.record(seq, orders, 429, now);
        }
    }
}

fn rows(analytics: &Analytics, now: i64) -> Vec<HourRow> {
    let mut rows: Vec<HourRow> = analytics
        .drain(now)
        .into_iter()
        .map(|c| HourRow {
            seq: c.seq,
            route: c.route,
            status: c.status,
            hour: c.hour,
            requests: c.requests,
        })
        .collect();
    rows.sort_unstable_by(|a, b| {
        (a.seq, a.hour, &a.route, a.status).cmp(&(b.seq, b.hour, &b.route, b.status))
    });
    rows
}

/// Bytes of the values a flush sends: key, route name, status, hour, count.
fn payload(rows: &[HourRow]) -> usize {
    rows.iter().map(|r| 8 + r.route.len() + 2 + 8 + 8).sum()
}

fn flush_twice(name: &str, store: &dyn KeyStore, rows: &[HourRow]) {
    for round in ["first (inserts)", "again (adds to the rows)"] {
        let started = Instant::now();
        store.record_usage_rows(&[], rows).unwrap();
        println!(
            "{name}: one flush of {} rows, {round}: {:.0} ms",
            rows.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let n = keys_wanted();
    let now = 1_796_515_200 + 10 * HOUR;
    let before = rss_bytes();
    let analytics = Arc::new(Analytics::default());
    let started = Instant::now();
    count_an_hour(&analytics, n, now);
    let counting = started.elapsed();
    let cells = analytics.len();
    let memory = rss_bytes() - before;
    println!(
        "{n} keys: {cells} cells in memory, {:.1} MiB RSS, {:.0} bytes a cell",
        memory / 1048576.0,
        memory / cells as f64
    );
    println!(
        "counting {} requests on one thread: {:.0} ns a request",
        n * 6 + n / 10,
        counting.as_nanos() as f64 / (n * 6 + n / 10) as f64
    );
    let started = Instant::now();
    let rows = rows(&analytics, now);
    println!(
        "drain: {} rows, {:.1} MiB of values, {:.0} ms (drained and sorted)",
        rows.len(),
        payload(&rows) as f64 / 1048576.0,
        started.elapsed().as_secs_f64() * 1e3
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.db");
    let sqlite = SqliteStore::create(&path).unwrap();
    let empty = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    flush_twice("sqlite", &sqlite, &rows);
    drop(sqlite);
    let grown = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) - empty;
    println!(
        "sqlite: the file grew {:.1} MiB, {:.0} bytes a row (index on hour included)",
        grown as f64 / 1048576.0,
        grown as f64 / rows.len() as f64
    );

    if let Ok(url) = std::env::var("KEYGATE_BENCH_POSTGRES_URL") {
        let pg = PgStore::open(&url).unwrap();
        // Rows of an earlier run would turn the first flush's inserts into updates.
        pg.prune_usage_rows(i64::MAX).unwrap();
        flush_twice("postgres", &pg, &rows);
    }
}
