//! The local limiter's side of quota leases (data plane): the lease task's answers taken in,
//! operators' changes, and the give-backs of unused leases, each under the counter's lock.
//! What a lease decides at a check is in `super::super::leased`.

use std::sync::Mutex;

use jiff::Timestamp;

use super::super::leased::{LeaseOwner, Outcome, Want};
use super::{lock, Counter, Held, LocalLimits};
use crate::core::clock::WallClock;

impl<C: WallClock> LocalLimits<C> {
    /// Takes the store's answer to `want` in; the units granted that no counter took (the
    /// period rolled over, the key is gone) are returned, to be given back.
    pub fn apply_lease(&self, want: &Want, outcome: Outcome) -> u64 {
        let now = self.clock.now();
        let granted = match outcome {
            Outcome::Granted { granted, .. } => granted,
            Outcome::Failed { .. } => 0,
        };
        let taken = self.with_lease(&want.owner, |counter| {
            let lease = counter
                .lease
                .as_mut()
                .filter(|_| counter.window.start == want.period);
            match (lease, outcome) {
                (None, _) => false,
                (Some(lease), _) if want.want > 0 => {
                    lease.apply(outcome, now);
                    true
                }
                (Some(lease), Outcome::Failed { spent }) => {
                    lease.restore(want.returned, want.generation, spent);
                    true
                }
                (Some(_), Outcome::Granted { .. }) => true,
            }
        });
        if let Some(link) = &self.leases {
            link.wake();
        }
        if taken == Some(true) {
            0
        } else {
            granted
        }
    }

    /// An operator topped up or reset (`reset`) the owner's quota: its lease asks again at
    /// once.
    pub fn refresh_lease(&self, owner: &LeaseOwner, reset: bool) {
        self.with_lease(owner, |counter| {
            if let Some(lease) = counter.lease.as_mut() {
                lease.refresh(reset);
            }
        });
    }

    /// Whether the owner's lease has a round trip out (its grant may be in the store and not
    /// yet here).
    pub fn lease_asking(&self, owner: &LeaseOwner) -> bool {
        self.with_lease(owner, |counter| {
            counter.lease.as_ref().is_some_and(|l| l.is_asking())
        })
        .unwrap_or(false)
    }

    /// Whether any lease has a round trip out (a drain waits for their grants).
    pub fn leases_asking(&self) -> bool {
        let asking = |held: &Mutex<Held>| {
            let held = lock(held);
            let lease = held.quota.as_ref().and_then(|counter| counter.lease.as_ref());
            lease.is_some_and(|lease| lease.is_asking())
        };
        self.keys.iter().any(|entry| asking(entry.value()))
            || self.customers.iter().any(|entry| asking(entry.value()))
    }

    /// What this replica holds of the owner's lease in the period starting at `period`: its
    /// unspent credit, the generation it was leased in, its unreported provisional use.
    pub fn lease_held(&self, owner: &LeaseOwner, period: Timestamp) -> Option<(u64, i64, u64)> {
        self.with_lease(owner, |counter| {
            let lease = counter
                .lease
                .as_ref()
                .filter(|_| counter.window.start == period)?;
            Some(lease.held())
        })
        .flatten()
    }

    /// The give-backs of leases held past `ttl` (every lease when `ttl` is zero: at drain).
    pub fn lapse(&self, ttl: std::time::Duration) -> Vec<Want> {
        let now = self.clock.now();
        let mut wants = Vec::new();
        let mut take = |held: &Mutex<Held>| {
            let mut held = lock(held);
            if let Some(counter) = held.quota.as_mut() {
                let period = counter.window.start;
                if let Some(lease) = counter.lease.as_mut() {
                    wants.extend(lease.lapse(ttl, now, period));
                }
            }
        };
        self.keys.iter().for_each(|entry| take(entry.value()));
        self.customers.iter().for_each(|entry| take(entry.value()));
        wants
    }

    fn with_lease<T>(&self, owner: &LeaseOwner, work: impl FnOnce(&mut Counter) -> T) -> Option<T> {
        let run = |held: &Mutex<Held>| lock(held).quota.as_mut().map(work);
        match owner {
            LeaseOwner::Key { seq, .. } => self.keys.get(seq).and_then(|held| run(&held)),
            LeaseOwner::Customer { id } => self.customers.get(id).and_then(|held| run(&held)),
        }
    }
}
