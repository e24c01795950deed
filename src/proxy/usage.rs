//! Per-key request counters (data plane), so that tracking last use costs an atomic add, not a
//! store write, per request. The control plane drains them into the store every few seconds.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;

#[derive(Debug, Default)]
struct Counter {
    requests: AtomicU64,
    /// Unix seconds.
    last_used: AtomicI64,
}

/// Requests counted for one key and secret since the last drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub seq: u64,
    pub previous: bool,
    pub requests: u64,
    pub last_used: i64,
}

#[derive(Debug, Default)]
pub struct UsageCounters {
    counters: DashMap<(u64, bool), Counter>,
}

impl UsageCounters {
    /// Counts one admitted request of key `seq` (`previous`: with its pre-regeneration secret).
    pub fn record(&self, seq: u64, previous: bool, now: i64) {
        if let Some(counter) = self.counters.get(&(seq, previous)) {
            counter.requests.fetch_add(1, Ordering::Relaxed);
            counter.last_used.fetch_max(now, Ordering::Relaxed);
            return;
        }
        let counter = self.counters.entry((seq, previous)).or_default();
        counter.requests.fetch_add(1, Ordering::Relaxed);
        counter.last_used.fetch_max(now, Ordering::Relaxed);
    }

    /// Takes every non-zero count, leaving zero behind. Idle counters are dropped, so the map
    /// holds only keys in recent use.
    pub fn drain(&self) -> Vec<Counted> {
        let mut counted = Vec::new();
        self.counters.retain(|&(seq, previous), counter| {
            let requests = counter.requests.swap(0, Ordering::Relaxed);
            if requests == 0 {
                return false;
            }
            counted.push(Counted {
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
    pub fn restore(&self, counted: &[Counted]) {
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
        usage.record(1, false, 10);
        usage.record(1, false, 12);
        usage.record(1, true, 11);
        let mut drained = usage.drain();
        drained.sort_by_key(|c| (c.seq, c.previous));
        assert_eq!(
            drained,
            vec![
                Counted {
                    seq: 1,
                    previous: false,
                    requests: 2,
                    last_used: 12
                },
                Counted {
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
        usage.record(7, false, 5);
        let drained = usage.drain();
        usage.restore(&drained);
        assert_eq!(usage.drain(), drained);
    }
}
