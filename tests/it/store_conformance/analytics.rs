//! The store conformance suite's analytics cases: hourly rows added up across flushes and
//! across replicas writing one store, read back by key or customer, by hour or UTC day, split
//! by status or route, and pruned. Each case gets two handles on one store: two replicas.

use keygate::control::store::{HourRow, KeyStore, StoreError, UsageGroup, UsageOf, UsagePoint, UsageQuery};
use keygate::core::environment::Environment;

use super::{new_key, t, AUDIT};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
/// Midnight UTC, 2026-12-06.
const DAY0: i64 = 1_796_515_200;

fn row(seq: u64, route: &str, status: u16, hour: i64, requests: u64) -> HourRow {
    HourRow {
        seq,
        route: route.into(),
        status,
        hour,
        requests,
    }
}

fn query(of: UsageOf, bucket: i64, group: UsageGroup) -> UsageQuery {
    UsageQuery {
        of,
        from: DAY0 - DAY,
        to: DAY0 + 3 * DAY,
        bucket,
        group,
    }
}

fn key(id: &str) -> UsageOf {
    UsageOf::Key(id.to_owned())
}

fn point(group: &str, t: i64, count: u64) -> UsagePoint {
    UsagePoint {
        group: group.to_owned(),
        t,
        count,
    }
}

/// Keys 1 (customer acme) and 3 (no customer): their sequence numbers.
fn two_keys(store: &dyn KeyStore) -> (u64, u64) {
    let one = store
        .insert(&new_key(2, Environment::Production, t(0)), AUDIT)
        .unwrap();
    let other = store
        .insert(&new_key(3, Environment::Production, t(0)), AUDIT)
        .unwrap();
    (one.seq, other.seq)
}

fn rows_add_up_across_flushes_and_replicas(a: &dyn KeyStore, b: &dyn KeyStore) {
    let (acme, other) = two_keys(a);
    let h = DAY0 + 10 * HOUR;
    a.record_usage_rows(
        &[],
        &[row(acme, "orders", 200, h, 3), row(other, "orders", 200, h, 7)],
    )
    .unwrap();
    a.record_usage_rows(&[], &[row(acme, "orders", 200, h, 2)])
        .unwrap();
    b.record_usage_rows(
        &[],
        &[row(acme, "orders", 200, h, 5), row(acme, "orders", 429, h, 1)],
    )
    .unwrap();
    let by_status = a
        .usage_series(&query(key("key_conformance00002"), HOUR, UsageGroup::Status))
        .unwrap();
    assert_eq!(by_status, [point("200", h, 10), point("429", h, 1)]);
    let all = b
        .usage_series(&query(UsageOf::Customer("acme".into()), HOUR, UsageGroup::All))
        .unwrap();
    assert_eq!(all, [point("all", h, 11)], "key 3 has no customer");
}

fn series_split_by_route_and_summed_by_utc_day(a: &dyn KeyStore, b: &dyn KeyStore) {
    let (acme, _) = two_keys(a);
    a.record_usage_rows(
        &[],
        &[
            row(acme, "orders", 200, DAY0, 1),
            row(acme, "orders", 200, DAY0 + 23 * HOUR, 2),
            row(acme, "users", 500, DAY0 + 5 * HOUR, 4),
            row(acme, "orders", 200, DAY0 + DAY, 8),
        ],
    )
    .unwrap();
    let id = || key("key_conformance00002");
    let by_route = b.usage_series(&query(id(), DAY, UsageGroup::Route)).unwrap();
    assert_eq!(
        by_route,
        [
            point("orders", DAY0, 3),
            point("orders", DAY0 + DAY, 8),
            point("users", DAY0, 4)
        ]
    );
    let hourly = b.usage_series(&query(id(), HOUR, UsageGroup::All)).unwrap();
    assert_eq!(hourly.len(), 4, "{hourly:?}");
    let within = UsageQuery {
        from: DAY0 + HOUR,
        to: DAY0 + 23 * HOUR,
        ..query(id(), HOUR, UsageGroup::All)
    };
    assert_eq!(
        b.usage_series(&within).unwrap(),
        [point("all", DAY0 + 5 * HOUR, 4)],
        "[from, to)"
    );
}

fn usage_of_an_unknown_key_is_not_found_and_of_an_unknown_customer_empty(a: &dyn KeyStore, _: &dyn KeyStore) {
    let missing = a.usage_series(&query(key("key_missing"), HOUR, UsageGroup::All));
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    let nobody = a.usage_series(&query(UsageOf::Customer("nobody".into()), HOUR, UsageGroup::All));
    assert_eq!(nobody.unwrap(), []);
}

fn rows_before_the_retention_are_pruned(a: &dyn KeyStore, b: &dyn KeyStore) {
    let (acme, _) = two_keys(a);
    a.record_usage_rows(
        &[],
        &[
            row(acme, "orders", 200, DAY0, 1),
            row(acme, "orders", 200, DAY0 + HOUR, 2),
        ],
    )
    .unwrap();
    assert_eq!(b.prune_usage_rows(DAY0 + HOUR).unwrap(), 1);
    assert_eq!(a.prune_usage_rows(DAY0 + HOUR).unwrap(), 0, "idempotent");
    let left = a
        .usage_series(&query(key("key_conformance00002"), HOUR, UsageGroup::All))
        .unwrap();
    assert_eq!(left, [point("all", DAY0 + HOUR, 2)]);
}

fn many_rows_go_in_one_flush(a: &dyn KeyStore, _: &dyn KeyStore) {
    let (acme, _) = two_keys(a);
    // More rows than one SQLite statement takes.
    let rows: Vec<HourRow> = (0..2_500)
        .map(|n| row(acme, "orders", 200, DAY0 - n * HOUR, 1))
        .collect();
    a.record_usage_rows(&[], &rows).unwrap();
    let all = UsageQuery {
        from: 0,
        ..query(key("key_conformance00002"), DAY, UsageGroup::All)
    };
    let total: u64 = a.usage_series(&all).unwrap().iter().map(|p| p.count).sum();
    assert_eq!(total, 2_500);
}

pub(super) type Case = fn(&dyn KeyStore, &dyn KeyStore);

pub(super) const SUITE: &[(&str, Case)] = &[
    (
        "rows_add_up_across_flushes_and_replicas",
        rows_add_up_across_flushes_and_replicas,
    ),
    (
        "series_split_by_route_and_summed_by_utc_day",
        series_split_by_route_and_summed_by_utc_day,
    ),
    (
        "usage_of_an_unknown_key_is_not_found_and_of_an_unknown_customer_empty",
        usage_of_an_unknown_key_is_not_found_and_of_an_unknown_customer_empty,
    ),
    (
        "rows_before_the_retention_are_pruned",
        rows_before_the_retention_are_pruned,
    ),
    ("many_rows_go_in_one_flush", many_rows_go_in_one_flush),
];
