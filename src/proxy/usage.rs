//! Per-key request counters (data plane), so that tracking last use costs an atomic add, not a
//! store write, per request. The control plane drains them into the store every few seconds,
//! and the metrics endpoint reads the per-key totals from them at scrape time (so the
//! per-key metric costs no label lookup per request either).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

#[derive(Debug, Default)]
struct Counter {
    requests: AtomicU64,
    /// Unix seconds.
    last_used: AtomicI64,
    /// Requests counted for the per-key metric, and how many of them it has shown.
    total: AtomicU64,
    exported: AtomicU64,
}

/// Requests counted for one key and secret since the last drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub seq: u64,
    pub previous: bool,
    pub requests: u64,
    pub last_used: i64,
}

#[derive(Debug, Default)]
pub struct UsageCounters {
    counters: DashMap<(u64, bool), Counter, FxBuildHasher>,
}

impl UsageCounters {
    /// Counts one admitted request of key `seq` (`previous`: with its pre-regeneration secret);
    /// `per_key`: also for the per-key metric.
    pub fn record(&self, seq: u64, previous: bool, now: i64, per_key: bool) {
        let count = |counter: &Counter| {
            counter.requests.fetch_add(1, Ordering::Relaxed);
            counter.last_used.fetch_max(now, Ordering::Relaxed);
            if per_key {
                counter.total.fetch_add(1, Ordering::Relaxed);
            }
        };
        match self.counters.get(&(seq, previous)) {
            Some(counter) => count(&counter),
            None => count(&self.counters.entry((seq, previous)).or_default()),
        }
    }

    /// Hands the per-key requests counted since the last call to `export`, by key.
    pub fn export_totals(&self, mut export: impl FnMut(u64, u64)) {
        for entry in self.counters.iter() {
            let total = entry.total.load(Ordering::Relaxed);
            let shown = entry.exported.swap(total, Ordering::Relaxed);
            if total > shown {
                export(entry.key().0, total - shown);
            }
        }
    }

    /// Takes every non-zero count, leaving zero behind. Idle counters are dropped once the
    /// metric has shown their totals, so the map holds only keys in recent use.
    pub fn drain(&self) -> Vec<Drained> {
        let mut counted = Vec::new();
        self.counters.retain(|&(seq, previous), counter| {
            let requests = counter.requests.swap(0, Ordering::Relaxed);
            if requests == 0 {
                let unshown =
                    counter.total.load(Ordering::Relaxed) != counter.exported.load(Ordering::Relaxed);
                return unshown;
            }
            counted.push(Drained {
                seq,
                previous,
                requests,
                last_used: counter.last_used.load(Ordering::Relaxed),
            });
            true
        });
        counted
    }

    /// Puts counts back after a failed write, so a store outage loses no usage.
    pub fn restore(&self, counted: &[Drained]) {
        for c in counted {
            let counter = self.counters.entry((c.seq, c.previous)).or_default();
            counter.requests.fetch_add(c.requests, Ordering::Relaxed);
            counter.last_used.fetch_max(c.last_used, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_drained_once_and_idle_counters_dropped() {
        let usage = UsageCounters::default();
        usage.record(1, false, 10, false);
        usage.record(1, false, 12, false);
        usage.record(1, true, 11, false);
        let mut drained = usage.drain();
        drained.sort_by_key(|c| (c.seq, c.previous));
        assert_eq!(
            drained,
            vec![
                Drained {
                    seq: 1,
                    previous: false,
                    requests: 2,
                    last_used: 12
                },
                Drained {
                    seq: 1,
                    previous: true,
                    requests: 1,
                    last_used: 11
                },
            ]
        );
        assert!(usage.drain().is_empty());
        assert!(usage.drain().is_empty());
    }

    #[test]
    fn restored_counts_are_drained_again() {
        let usage = UsageCounters::default();
        usage.record(7, false, 5, false);
        let drained = usage.drain();
        usage.restore(&drained);
        assert_eq!(usage.drain(), drained);
    }

    #[test]
    fn per_key_totals_are_exported_once_and_kept_until_shown() {
        let usage = UsageCounters::default();
        usage.record(3, false, 5, true);
        usage.record(3, true, 6, true);
        usage.drain();
        usage.drain();
        let mut shown = Vec::new();
        usage.export_totals(|seq, delta| shown.push((seq, delta)));
        assert_eq!(shown, [(3, 1), (3, 1)], "kept past the drain until exported");
        usage.export_totals(|_, _| panic!("nothing new"));
        usage.drain();
        assert!(usage.counters.is_empty(), "idle and shown: dropped");
    }
}
