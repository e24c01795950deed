//! Quota leases, the control plane's side: the store round trips the request path asks for
//! (`proxy::limits::leased`), the give-backs of leases left unused for `[quotas] lease_ttl`
//! and of every lease at drain, and operators' reads, top-ups and resets of the fleet's
//! counters (`control::store::quota`).
//!
//! On when quotas are not shared through Redis (`rate_limit.backend = "local"`): every replica
//! on the store spends a quota only out of blocks it leased, so the fleet never admits past
//! the allowance while the store answers; a replica the store does not answer spends at most
//! one provisional block (reported when the store answers again). Each round trip runs on a
//! blocking thread, off the request path; a request waits for one only when its replica holds
//! no credit for it (the first request of a period, or a burst that outran the prefetch).
//!
//! The warnings of `[quotas] warn_at` are taken from the store's counter here: the grant that
//! carries the fleet's use (leases included, so up to a block early) past a share reports it,
//! once per period across the fleet.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::quota_warnings::Warner;
use super::store::quota::{CounterId, CounterRow, LeaseAsk, LeaseGrant};
use super::store::{KeyStore, StoreError};
use crate::core::clock::Clock;
use crate::core::quota::{QuotaChange, QuotaSpec, QuotaUse};
use crate::proxy::limits::{Crossing, LeaseOwner, Outcome, QuotaOwner, Want, LEASE_WAIT};
use crate::proxy::state::Shared;

/// The longest a drain waits for the answers of lease round trips still out.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The most give-back rounds a drain makes.
const DRAIN_ROUNDS: usize = 4;

/// The shortest pause between sweeps for unused leases.
const MIN_SWEEP: Duration = Duration::from_millis(100);

pub struct QuotaLeases {
    store: Arc<dyn KeyStore>,
    shared: Arc<Shared>,
    warner: Arc<Warner>,
    warn_at: Vec<f64>,
    ttl: Duration,
    clock: Clock,
}

impl QuotaLeases {
    pub fn new(
        store: Arc<dyn KeyStore>,
        shared: Arc<Shared>,
        warner: Arc<Warner>,
        quotas: &crate::config::Quotas,
        clock: Clock,
    ) -> Self {
        QuotaLeases {
            store,
            shared,
            warner,
            warn_at: quotas.warn_at.clone(),
            ttl: quotas.lease_ttl,
            clock,
        }
    }

    /// Makes the round trips the request path asks for, each in a task of its own, until the
    /// request path is gone.
    pub async fn run(self: Arc<Self>, mut wants: mpsc::Receiver<Want>) {
        while let Some(want) = wants.recv().await {
            tokio::spawn(self.clone().serve(want));
        }
    }

    /// Gives back the leases left unused for the lease's lifetime (on the gateway's clock),
    /// looking every quarter of it.
    pub async fn sweep(self: Arc<Self>) {
        let mut ticker = tokio::time::interval((self.ttl / 4).max(MIN_SWEEP));
        loop {
            ticker.tick().await;
            for want in self.shared.key_limits.lapse(self.ttl) {
                self.clone().serve(want).await;
            }
        }
    }

    /// At drain, once the proxy no longer admits: gives every lease back and reports the
    /// provisional use, including the blocks of round trips still out when it began (their
    /// grants arrive during the drain). Rounds until no lease holds anything and none is
    /// asking (at most [`DRAIN_ROUNDS`]), waiting for answers at most [`DRAIN_WAIT`] in all.
    pub async fn drain(self: &Arc<Self>) {
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        let mut count = 0;
        // A give-back the store refused is restored to its lease: a few rounds, not forever.
        for _ in 0..DRAIN_ROUNDS {
            let asking = self.answers_out(deadline).await;
            let wants = self.shared.key_limits.lapse(Duration::ZERO);
            if wants.is_empty() && !asking {
                break;
            }
            count += wants.len();
            let tasks: Vec<_> = wants
                .into_iter()
                .map(|want| tokio::spawn(self.clone().serve(want)))
                .collect();
            for task in tasks {
                let _ = task.await;
            }
            if asking {
                tracing::warn!(
                    "quota lease round trips still unanswered at drain; their blocks stay counted as used"
                );
                break;
            }
        }
        if count > 0 {
            tracing::info!(leases = count, "quota leases given back");
        }
    }

    /// Waits until no lease of this replica has a round trip out, or `deadline`: whether one
    /// still has.
    async fn answers_out(&self, deadline: tokio::time::Instant) -> bool {
        let limits = &self.shared.key_limits;
        let Some(link) = limits.lease_link() else {
            return false;
        };
        loop {
            let answered = link.answered();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !limits.leases_asking() {
                return false;
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return limits.leases_asking();
            }
        }
    }

    /// One round trip, and its answer applied.
    async fn serve(self: Arc<Self>, want: Want) {
        let outcome = match self.lease(&want).await {
            Ok(grant) => {
                self.warn(&want, &grant);
                Outcome::Granted {
                    granted: grant.granted,
                    whole: grant.granted >= want.want,
                    generation: grant.row.generation,
                    used: grant.row.used,
                    allowance: grant.row.allowance(want.spec.limit),
                }
            }
            Err(error) => {
                tracing::warn!(%error, kind = want.owner.kind(), id = want.owner.id(), "quota lease failed");
                Outcome::Failed { spent: want.spent }
            }
        };
        let unclaimed = self.shared.key_limits.apply_lease(&want, outcome);
        if unclaimed > 0 {
            let give_back = Want {
                want: 0,
                returned: unclaimed,
                spent: 0,
                generation: match outcome {
                    Outcome::Granted { generation, .. } => generation,
                    Outcome::Failed { .. } => want.generation,
                },
                ..want
            };
            if let Err(error) = self.lease(&give_back).await {
                tracing::warn!(%error, "an unclaimed quota lease could not be given back");
            }
        }
    }

    async fn lease(&self, want: &Want) -> Result<LeaseGrant, StoreError> {
        let store = self.store.clone();
        let (want, warn_at) = (want.clone(), self.warn_at.clone());
        let joined = tokio::task::spawn_blocking(move || {
            store.lease_quota(&LeaseAsk {
                counter: counter(&want.owner, want.period.as_second()),
                limit: want.spec.limit,
                returned: want.returned,
                generation: want.generation,
                want: want.want,
                spent: want.spent,
                warn_at: &warn_at,
            })
        })
        .await;
        joined.map_err(|error| StoreError::Unavailable(error.to_string()))?
    }

    fn warn(&self, want: &Want, grant: &LeaseGrant) {
        for &share in &grant.reached {
            let window = want.spec.window(want.period);
            let crossing = Crossing {
                kind: match want.owner {
                    LeaseOwner::Key { .. } => QuotaOwner::Key,
                    LeaseOwner::Customer { .. } => QuotaOwner::Customer,
                },
                id: want.owner.id().into(),
                share,
                used: grant.row.used,
                limit: grant.row.allowance(want.spec.limit),
                period_start: window.start,
                resets_at: window.end,
            };
            let warner = self.warner.clone();
            tokio::spawn(async move { warner.emit(crossing).await });
        }
    }

    /// Reads, tops up or resets the fleet's counter of the owner's current period; the state
    /// after. This replica's lease asks the store again at its next check.
    pub async fn change(
        &self,
        owner: LeaseOwner,
        spec: QuotaSpec,
        change: QuotaChange,
    ) -> Result<QuotaUse, StoreError> {
        let window = spec.window(self.clock.now());
        self.settled(&owner).await;
        let store = self.store.clone();
        let id = owner.clone();
        let row: CounterRow = tokio::task::spawn_blocking(move || {
            store.change_quota(&counter(&id, window.start.as_second()), change)
        })
        .await
        .map_err(|error| StoreError::Unavailable(error.to_string()))??;
        let limits = &self.shared.key_limits;
        if change != QuotaChange::Read {
            limits.refresh_lease(&owner, change == QuotaChange::Reset);
        }
        // Spent here is what the counter counts, less what this replica holds unspent.
        let used = match limits.lease_held(&owner, window.start) {
            Some((credit, generation, unrecorded)) if generation == row.generation => {
                row.used.saturating_sub(credit).saturating_add(unrecorded)
            }
            _ => row.used,
        };
        Ok(QuotaUse::new(spec.limit, row.added, used, &window))
    }
}

impl QuotaLeases {
    /// Waits (up to a request's wait) for this replica's round trip on the owner's counter to
    /// be answered, so that what it holds and what the store counts agree when read.
    async fn settled(&self, owner: &LeaseOwner) {
        let limits = &self.shared.key_limits;
        let Some(link) = limits.lease_link() else { return };
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            let answered = link.answered();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !limits.lease_asking(owner) || tokio::time::timeout_at(deadline, answered).await.is_err() {
                return;
            }
        }
    }
}

fn counter(owner: &LeaseOwner, period: i64) -> CounterId<'_> {
    CounterId {
        kind: owner.kind(),
        owner: owner.id(),
        period,
    }
}
