//! The fleet's quota counters (control plane, both stores): one row per owner (a key or a
//! customer) and quota period, holding the period's use, its top-ups, a generation a reset
//! bumps, and the warnings already given. Replicas lease blocks of the allowance from it (see
//! `control::quota_leases`); what the row becomes is computed here, once, for both backends,
//! which only read and write it inside a transaction that holds the row.
//!
//! `used` counts what replicas leased (spent or not) less what they gave back: so the fleet
//! never admits past the allowance while leases are granted, and after every replica gave its
//! leases back (drain, lapse) it is exactly what was admitted.

use crate::core::quota::{warning_mark, QuotaChange};

/// Names one counter: whose quota, and which period (its start, in Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterId<'a> {
    /// `key` or `customer`.
    pub kind: &'a str,
    /// The key's or the customer's id.
    pub owner: &'a str,
    pub period: i64,
}

/// A counter's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterRow {
    /// Leased out (spent or not), less what was given back.
    pub used: u64,
    /// This period's top-ups.
    pub added: u64,
    /// Bumped by every reset: units leased before it are not given back to after it.
    pub generation: i64,
    /// Bit `i` set: the warning at share `warn_at[i]` went out this period.
    pub warned: u64,
}

/// One replica's round trip for a counter: it gives back what it did not spend of its last
/// block and asks for the next.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    pub counter: CounterId<'a>,
    /// The quota's limit (the store adds the period's top-ups).
    pub limit: u64,
    /// Unspent units given back, leased in `generation`.
    pub returned: u64,
    pub generation: i64,
    /// Units asked for; 0 only gives back.
    pub want: u64,
    /// Units the replica spent without a lease (the store did not answer), to count.
    pub spent: u64,
    /// `[quotas] warn_at`, for the warnings the grant reaches.
    pub warn_at: &'a [f64],
}

/// The store's answer to a [`LeaseAsk`].
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseGrant {
    /// Units leased now: what was asked, or what was left.
    pub granted: u64,
    /// The counter after the grant.
    pub row: CounterRow,
    /// The shares of `warn_at` the fleet's use reached with this grant, first time this
    /// period.
    pub reached: Vec<f64>,
}

impl CounterRow {
    /// The period's allowance under a quota of `limit`.
    pub fn allowance(&self, limit: u64) -> u64 {
        limit.saturating_add(self.added)
    }

    /// The row after `ask`, and the grant.
    pub fn lease(mut self, ask: &LeaseAsk<'_>) -> LeaseGrant {
        if ask.generation == self.generation {
            self.used = self.used.saturating_sub(ask.returned);
        }
        self.used = self.used.saturating_add(ask.spent);
        let allowance = self.allowance(ask.limit);
        let granted = ask.want.min(allowance.saturating_sub(self.used));
        self.used += granted;
        let mut reached = Vec::new();
        for (bit, &share) in ask.warn_at.iter().enumerate().take(64) {
            let mask = 1u64 << bit;
            let mark = warning_mark(share, allowance);
            if self.warned & mask == 0 && self.used >= mark {
                self.warned |= mask;
                reached.push(share);
            }
        }
        LeaseGrant {
            granted,
            row: self,
            reached,
        }
    }

    /// The row after an operator's `change`.
    pub fn changed(self, change: QuotaChange) -> CounterRow {
        match change {
            QuotaChange::Read => self,
            QuotaChange::Add(more) => CounterRow {
                added: self.added.saturating_add(more),
                ..self
            },
            // The warnings given stay given: once a period, whatever an operator does.
            QuotaChange::Reset => CounterRow {
                used: 0,
                added: 0,
                generation: self.generation.wrapping_add(1),
                warned: self.warned,
            },
        }
    }
}

/// The `period` column of the counter of a quota that never renews (period `none`), which no
/// prune deletes.
pub fn forever_period() -> i64 {
    crate::core::quota::Window::FOREVER.start.as_second()
}

/// A count as a BIGINT column (saturating), and back.
pub(crate) fn to_column(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn from_column(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(returned: u64, generation: i64, want: u64) -> LeaseAsk<'static> {
        LeaseAsk {
            counter: CounterId {
                kind: "key",
                owner: "key_1",
                period: 0,
            },
            limit: 100,
            returned,
            generation,
            want,
            spent: 0,
            warn_at: &[0.8, 1.0],
        }
    }

    #[test]
    fn a_lease_grants_what_is_left_and_counts_it_used() {
        let row = CounterRow::default();
        let first = row.lease(&ask(0, 0, 60));
        assert_eq!((first.granted, first.row.used), (60, 60));
        let second = first.row.lease(&ask(0, 0, 60));
        assert_eq!((second.granted, second.row.used), (40, 100));
        assert_eq!(second.reached, [0.8, 1.0]);
        let third = second.row.lease(&ask(10, 0, 5));
        assert_eq!((third.granted, third.row.used), (5, 95));
        assert!(third.reached.is_empty(), "each share warns once a period");
    }

    #[test]
    fn units_leased_before_a_reset_are_not_given_back_after_it() {
        let row = CounterRow::default().lease(&ask(0, 0, 50)).row;
        let reset = row.changed(QuotaChange::Reset);
        assert_eq!((reset.used, reset.generation), (0, 1));
        assert_eq!(reset.lease(&ask(50, 0, 0)).row.used, 0);
        let topped = reset.changed(QuotaChange::Add(20));
        assert_eq!(topped.lease(&ask(0, 1, 500)).granted, 120);
    }
}
