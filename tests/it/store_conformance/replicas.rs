//! The store conformance suite's replica cases (SPEC 12): each replica writes its own row, a
//! row silent for three intervals is dropped by the next heartbeat, a clean stop removes its
//! row, and a heartbeat written to answer a receipt wakes the replicas that listen. Each case
//! gets two handles on one store: two replicas.

use std::time::Duration;

use jiff::Timestamp;
use keygate::control::store::{KeyStore, ReplicaRow};

use super::t;

fn row(id: &str, revision: u64, at: Timestamp) -> ReplicaRow {
    ReplicaRow {
        id: id.into(),
        host: "host-1".into(),
        version: "0.1.0".into(),
        advertise: (id == "rep_a").then(|| "http://127.0.0.1:9901".to_owned()),
        config_digest: "0123456789abcdef".into(),
        revision,
        synced_at: (revision > 0).then_some(at),
        limiter: "local".into(),
        started_at: t(0),
        heartbeat_at: at,
    }
}

fn ids(rows: &[ReplicaRow]) -> Vec<&str> {
    rows.iter().map(|row| row.id.as_str()).collect()
}

fn each_replica_writes_its_own_row_and_reads_every_live_one(a: &dyn KeyStore, b: &dyn KeyStore) {
    assert!(a.replicas(t(0)).unwrap().is_empty());
    let live = a.heartbeat(&row("rep_a", 0, t(10)), t(7), false).unwrap();
    assert_eq!(live, [row("rep_a", 0, t(10))], "read back as written");
    let live = b.heartbeat(&row("rep_b", 5, t(10)), t(7), false).unwrap();
    assert_eq!(ids(&live), ["rep_a", "rep_b"]);
    // The next beat replaces the row.
    a.heartbeat(&row("rep_a", 6, t(11)), t(8), false).unwrap();
    let rows = b.replicas(t(8)).unwrap();
    assert_eq!(rows[0], row("rep_a", 6, t(11)));
    assert_eq!(rows.len(), 2);
}

fn a_silent_replica_is_dropped_and_a_stopped_one_removed(a: &dyn KeyStore, b: &dyn KeyStore) {
    a.heartbeat(&row("rep_a", 1, t(10)), t(7), false).unwrap();
    b.heartbeat(&row("rep_b", 1, t(10)), t(7), false).unwrap();
    assert_eq!(
        ids(&a.replicas(t(11)).unwrap()),
        Vec::<&str>::new(),
        "not live since 11 s"
    );
    let live = a.heartbeat(&row("rep_a", 1, t(14)), t(11), false).unwrap();
    assert_eq!(ids(&live), ["rep_a"], "b's row, silent since 10 s, is dropped");
    assert_eq!(
        ids(&b.replicas(t(0)).unwrap()),
        ["rep_a"],
        "gone, not only hidden"
    );
    b.remove_replica("rep_a").unwrap();
    assert!(a.replicas(t(0)).unwrap().is_empty());
    b.remove_replica("rep_a").unwrap();
}

fn a_receipt_and_an_early_heartbeat_wake_the_replicas_that_listen(a: &dyn KeyStore, b: &dyn KeyStore) {
    let Some(mut feed) = b.fleet_feed() else {
        // A store that pushes nothing: its replicas report every change they apply.
        a.want_receipt(7).unwrap();
        return;
    };
    // The listener announces itself once it listens; from then on nothing is missed.
    let changes = b.change_feed().expect("a store that pushes changes");
    assert!(within(|| *changes.borrow() > 0), "b listens");
    a.heartbeat(&row("rep_a", 1, t(10)), t(7), false).unwrap();
    a.want_receipt(7).unwrap();
    let wanted = within(|| *feed.wanted.borrow() == 7);
    assert!(
        wanted,
        "the revision a receipt waits for reached the other replica"
    );
    feed.reported.borrow_and_update();
    a.heartbeat(&row("rep_a", 7, t(11)), t(8), true).unwrap();
    assert!(
        within(|| feed.reported.has_changed().unwrap_or(false)),
        "announced"
    );
}

/// Polls `done` for up to 10 s.
fn within(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// One case: its name and the function that runs it against two handles on one store.
pub type Case = (&'static str, fn(&dyn KeyStore, &dyn KeyStore));

pub const SUITE: &[Case] = &[
    (
        "each_replica_writes_its_own_row_and_reads_every_live_one",
        each_replica_writes_its_own_row_and_reads_every_live_one,
    ),
    (
        "a_silent_replica_is_dropped_and_a_stopped_one_removed",
        a_silent_replica_is_dropped_and_a_stopped_one_removed,
    ),
    (
        "a_receipt_and_an_early_heartbeat_wake_the_replicas_that_listen",
        a_receipt_and_an_early_heartbeat_wake_the_replicas_that_listen,
    ),
];
