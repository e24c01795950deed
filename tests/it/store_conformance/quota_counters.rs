//! The store conformance suite's quota counter cases: the blocks replicas lease from the
//! fleet's counter of a quota period, given back and reported, topped up and reset by an
//! operator, and the warnings each grant reaches once. Each case gets two handles on one
//! store: two replicas.

use keygate::control::store::quota::{CounterId, CounterRow, LeaseAsk};
use keygate::control::store::KeyStore;
use keygate::core::quota::QuotaChange;

const WARN_AT: &[f64] = &[0.5, 1.0];

fn counter(owner: &str) -> CounterId<'_> {
    CounterId {
        kind: "key",
        owner,
        period: 1_796_515_200,
    }
}

/// A round trip on `owner`'s counter of a quota of 100.
fn ask(owner: &str, want: u64, returned: u64, generation: i64) -> LeaseAsk<'_> {
    LeaseAsk {
        counter: counter(owner),
        limit: 100,
        returned,
        generation,
        want,
        spent: 0,
        warn_at: WARN_AT,
    }
}

fn replicas_lease_what_is_left_and_give_back_what_they_did_not_spend(a: &dyn KeyStore, b: &dyn KeyStore) {
    let first = a.lease_quota(&ask("key_1", 60, 0, 0)).unwrap();
    assert_eq!((first.granted, first.row.used), (60, 60));
    assert_eq!(first.reached, [0.5], "half the allowance is leased out");
    let second = b.lease_quota(&ask("key_1", 60, 0, 0)).unwrap();
    assert_eq!((second.granted, second.row.used), (40, 100));
    assert_eq!(second.reached, [1.0]);
    let back = a.lease_quota(&ask("key_1", 0, 25, 0)).unwrap();
    assert_eq!((back.granted, back.row.used), (0, 75));
    let again = b.lease_quota(&ask("key_1", 60, 0, 0)).unwrap();
    assert_eq!((again.granted, again.row.used), (25, 100));
    assert!(again.reached.is_empty(), "each share is reached once a period");
    // Another owner, another kind, another period: other counters.
    assert_eq!(a.lease_quota(&ask("key_2", 10, 0, 0)).unwrap().row.used, 10);
    let customer = LeaseAsk {
        counter: CounterId {
            kind: "customer",
            ..counter("key_1")
        },
        ..ask("key_1", 10, 0, 0)
    };
    assert_eq!(a.lease_quota(&customer).unwrap().row.used, 10);
    let next_period = LeaseAsk {
        counter: CounterId {
            period: 1_796_515_200 + 86_400,
            ..counter("key_1")
        },
        ..ask("key_1", 10, 0, 0)
    };
    assert_eq!(b.lease_quota(&next_period).unwrap().row.used, 10);
}

fn provisional_use_is_counted_even_past_the_allowance(a: &dyn KeyStore, b: &dyn KeyStore) {
    a.lease_quota(&ask("key_1", 100, 0, 0)).unwrap();
    let reported = LeaseAsk {
        spent: 7,
        ..ask("key_1", 5, 0, 0)
    };
    let grant = b.lease_quota(&reported).unwrap();
    assert_eq!((grant.granted, grant.row.used), (0, 107));
}

fn an_operator_tops_up_and_resets_the_fleets_counter(a: &dyn KeyStore, b: &dyn KeyStore) {
    let id = counter("key_1");
    assert_eq!(
        a.change_quota(&id, QuotaChange::Read).unwrap(),
        CounterRow::default()
    );
    a.lease_quota(&ask("key_1", 100, 0, 0)).unwrap();
    assert_eq!(b.lease_quota(&ask("key_1", 10, 0, 0)).unwrap().granted, 0);
    let topped = b.change_quota(&id, QuotaChange::Add(30)).unwrap();
    assert_eq!((topped.used, topped.added), (100, 30));
    assert_eq!(b.lease_quota(&ask("key_1", 10, 0, 0)).unwrap().granted, 10);
    let reset = a.change_quota(&id, QuotaChange::Reset).unwrap();
    assert_eq!((reset.used, reset.added, reset.generation), (0, 0, 1));
    // A give-back of units leased before the reset is not taken off after it.
    let stale = b.lease_quota(&ask("key_1", 0, 10, 0)).unwrap();
    assert_eq!(stale.row.used, 0);
    let fresh = b.lease_quota(&ask("key_1", 60, 0, 1)).unwrap();
    assert_eq!(fresh.granted, 60);
    assert!(
        fresh.reached.is_empty(),
        "a reset does not warn again in the period"
    );
    assert_eq!(a.change_quota(&id, QuotaChange::Read).unwrap().used, 60);
}

fn replicas_leasing_at_once_never_lease_past_the_allowance(a: &dyn KeyStore, b: &dyn KeyStore) {
    let granted: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let store = if n % 2 == 0 { a } else { b };
                scope.spawn(move || {
                    (0..10)
                        .map(|_| store.lease_quota(&ask("key_1", 3, 0, 0)).unwrap().granted)
                        .sum::<u64>()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(granted, 100);
    assert_eq!(
        a.change_quota(&counter("key_1"), QuotaChange::Read).unwrap().used,
        100
    );
}

fn counters_of_periods_long_over_are_pruned_and_the_current_ones_kept(a: &dyn KeyStore, b: &dyn KeyStore) {
    const DAY: i64 = 86_400;
    let day0 = counter("key_1").period;
    let lease = |owner: &'static str, period: i64, want: u64| LeaseAsk {
        counter: CounterId {
            period,
            ..counter(owner)
        },
        ..ask(owner, want, 0, 0)
    };
    // key_1 counted in three days; key_2 in one, long ago: its latest, kept.
    for day in 0..3 {
        a.lease_quota(&lease("key_1", day0 + day * DAY, 10 + day as u64))
            .unwrap();
    }
    b.lease_quota(&lease("key_2", day0, 5)).unwrap();
    // Credits that never renew have one counter, at the earliest period: never pruned.
    let forever = keygate::control::store::quota::forever_period();
    b.lease_quota(&lease("key_1", forever, 7)).unwrap();
    let read = |owner: &'static str, period: i64| {
        let id = CounterId {
            period,
            ..counter(owner)
        };
        a.change_quota(&id, QuotaChange::Read).unwrap().used
    };
    // Nothing ended before day 1 started: nothing goes.
    assert_eq!(b.prune_quota_counters(day0 + DAY - 1).unwrap(), 0);
    // Day 0 ended when day 1 started.
    assert_eq!(b.prune_quota_counters(day0 + DAY).unwrap(), 1);
    // Read back: gone (a read shows zero and, on either store, makes no row).
    assert_eq!(read("key_1", day0), 0, "day 0's is gone");
    assert_eq!(
        b.prune_quota_counters(day0 + DAY).unwrap(),
        0,
        "the read made no row to prune"
    );
    assert_eq!(
        read("key_1", day0 + DAY),
        11,
        "day 1's is kept: day 2 starts later"
    );
    assert_eq!(a.prune_quota_counters(day0 + 10 * DAY).unwrap(), 1, "day 1's");
    assert_eq!(a.prune_quota_counters(day0 + 10 * DAY).unwrap(), 0, "idempotent");
    assert_eq!(read("key_1", day0 + 2 * DAY), 12, "the latest period is kept");
    assert_eq!(read("key_2", day0), 5, "another owner's latest is kept");
    assert_eq!(read("key_1", forever), 7, "credits are kept");
}

pub(super) type Case = fn(&dyn KeyStore, &dyn KeyStore);

pub(super) const SUITE: &[(&str, Case)] = &[
    (
        "replicas_lease_what_is_left_and_give_back_what_they_did_not_spend",
        replicas_lease_what_is_left_and_give_back_what_they_did_not_spend,
    ),
    (
        "provisional_use_is_counted_even_past_the_allowance",
        provisional_use_is_counted_even_past_the_allowance,
    ),
    (
        "an_operator_tops_up_and_resets_the_fleets_counter",
        an_operator_tops_up_and_resets_the_fleets_counter,
    ),
    (
        "replicas_leasing_at_once_never_lease_past_the_allowance",
        replicas_leasing_at_once_never_lease_past_the_allowance,
    ),
    (
        "counters_of_periods_long_over_are_pruned_and_the_current_ones_kept",
        counters_of_periods_long_over_are_pruned_and_the_current_ones_kept,
    ),
];
