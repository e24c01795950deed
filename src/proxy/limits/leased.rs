//! Quota leases, the request path's side (data plane): with the local limiter and a shared
//! store (no Redis), a replica spends a quota only out of blocks it leased from the store's
//! counter of the period. The control plane (`control::quota_leases`) does every store round
//! trip; the request path only reads and spends the credit under the counter's lock, and asks
//! for the next block (a `try_send`) before the current one runs out: at half a block left.
//!
//! A check a quota's credit cannot pay for is *pending* when more may come (no answer yet, or
//! the last answer had enough): the request then waits for the answer, off the synchronous
//! path (the exchange awaits it, like a Redis check). It is refused when the store's last
//! answer said the allowance is spent (asked again at most once a [`RETRY`], so a top-up from
//! another replica is seen). If no answer comes within [`WAIT`] (the store is unreachable),
//! the replica spends one provisional block of its own, which it reports to the store when it
//! answers again: so a replica overshoots by at most one block, and not again until the store
//! has recorded it; once the store said the allowance is spent, there is none. With that block
//! spent and the store still silent past [`WAIT`], checks are refused at once rather than each
//! waiting again. A pending lease is waited for even when another limit refuses the check, so
//! that the refusal names the limit that lifts last, as it does without leases.

use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, Notify};

use crate::core::quota::{QuotaSpec, QuotaUse, Window};

/// How long a request waits for a lease before the replica spends a provisional block.
pub const WAIT: Duration = Duration::from_secs(2);
/// How often a replica asks again for a quota the store said is spent (a top-up may come).
pub const RETRY: Duration = Duration::from_secs(1);
/// Lease round trips queued before new asks are dropped (asked again by the next request).
const CAPACITY: usize = 4096;

/// Whose quota a lease is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOwner {
    /// A key, by sequence number (where the limiter keeps it) and id (the store's name).
    Key {
        seq: u64,
        id: Box<str>,
    },
    Customer {
        id: Box<str>,
    },
}

impl LeaseOwner {
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseOwner::Key { .. } => "key",
            LeaseOwner::Customer { .. } => "customer",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            LeaseOwner::Key { id, .. } | LeaseOwner::Customer { id } => id,
        }
    }
}

/// One round trip for the control plane to make: give back, report, ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub owner: LeaseOwner,
    pub spec: QuotaSpec,
    /// The period, by its start.
    pub period: Timestamp,
    /// Units asked for; 0: only give back and report.
    pub want: u64,
    /// Leased units given back unspent, leased in `generation`.
    pub returned: u64,
    pub generation: i64,
    /// Provisional units spent without a lease, for the store to count.
    pub spent: u64,
}

/// The store's answer, as the limiter takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Granted {
        granted: u64,
        /// Whether the grant was all that was asked (less: the allowance is spent).
        whole: bool,
        generation: i64,
        /// The fleet's use (leases included) and allowance after the grant.
        used: u64,
        allowance: u64,
    },
    /// The store did not answer; `spent` provisional units are still to report.
    Failed { spent: u64 },
}

/// The link from the limiter to the lease task.
pub struct LeaseLink {
    wants: mpsc::Sender<Want>,
    /// Woken when an answer has been applied.
    answered: Notify,
    /// Share of the allowance a block is.
    block: f64,
}

impl LeaseLink {
    /// A link leasing blocks of `block` of the allowance; the task's end is returned.
    pub fn new(block: f64) -> (Self, mpsc::Receiver<Want>) {
        let (wants, receiver) = mpsc::channel(CAPACITY);
        let link = LeaseLink {
            wants,
            answered: Notify::new(),
            block,
        };
        (link, receiver)
    }

    /// Resolves at the next applied answer (made before the check, so none is missed).
    pub fn answered(&self) -> tokio::sync::futures::Notified<'_> {
        self.answered.notified()
    }

    /// Queues a give-back (dropped when the queue is full: the units stay counted as used).
    pub(super) fn give_back(&self, want: Want) {
        let _ = self.wants.try_send(want);
    }

    pub(super) fn wake(&self) {
        self.answered.notify_waiters();
    }

    fn block_of(&self, allowance: u64, cost: u64) -> u64 {
        self.share_of(allowance).max(cost)
    }

    /// The block's share of `allowance`, at least 1.
    fn share_of(&self, allowance: u64) -> u64 {
        ((allowance as f64 * self.block).ceil() as u64).max(1)
    }
}

/// What a quota's credit says of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Enough,
    /// More may come: the check waits for the answer.
    Pending,
    /// The store said the allowance is spent.
    Short,
}

/// One quota counter's lease.
#[derive(Debug)]
pub(super) struct Leased {
    owner: LeaseOwner,
    /// The quota as last checked (a lapse's give-back names it).
    spec: QuotaSpec,
    /// Leased and not yet spent.
    credit: u64,
    /// Provisional and not yet spent (the store did not answer).
    spare: u64,
    /// Provisional units spent, not yet reported.
    unrecorded: u64,
    generation: i64,
    asking: bool,
    /// The last answer granted less than asked.
    spent_out: bool,
    asked_at: Option<Timestamp>,
    /// The last grant or spend: a lease unused for the lease's lifetime lapses.
    used_at: Option<Timestamp>,
    /// The fleet's use and allowance at the last answer.
    fleet: Option<(u64, u64)>,
    /// The last allowance a block was sized for, and the block's share of it: a check that
    /// may ask sizes the block, and the allowance hardly ever changes.
    share: (u64, u64),
}

impl Leased {
    pub(super) fn new(owner: LeaseOwner, spec: QuotaSpec) -> Self {
        Leased {
            owner,
            spec,
            credit: 0,
            spare: 0,
            unrecorded: 0,
            generation: 0,
            asking: false,
            spent_out: false,
            asked_at: None,
            used_at: None,
            fleet: None,
            share: (0, 0),
        }
    }

    pub(super) fn standing(&self, cost: u64, now: Timestamp) -> Standing {
        if self.credit + self.spare >= cost {
            return Standing::Enough;
        }
        let since_asked = self.asked_at.map(|at| now.duration_since(at).unsigned_abs());
        // The store has not answered for longer than a request waits, and the provisional
        // block is spent: requests are refused at once until it answers, not each after a wait.
        let stalled = self.asking && since_asked.is_some_and(|d| d >= WAIT) && self.unrecorded > 0;
        let retry_due = since_asked.is_none_or(|d| d >= RETRY);
        if stalled || (self.spent_out && !self.asking && !retry_due) {
            Standing::Short
        } else {
            Standing::Pending
        }
    }

    /// Spends `cost`, leased credit first.
    pub(super) fn spend(&mut self, cost: u64, now: Timestamp) {
        self.used_at = Some(now);
        let leased = cost.min(self.credit);
        self.credit -= leased;
        let provisional = (cost - leased).min(self.spare);
        self.spare -= provisional;
        self.unrecorded += provisional;
    }

    /// Asks for the next block when the credit is low (or `needed`), unless an ask is out.
    pub(super) fn ask(&mut self, ctx: &AskContext<'_>, needed: bool) {
        if self.asking || (self.spent_out && !needed) {
            return;
        }
        let block = self.block(ctx);
        let low = self.credit + self.spare < block.div_ceil(2).max(ctx.cost);
        if !(needed || low) {
            return;
        }
        self.spec = *ctx.spec;
        let want = Want {
            owner: self.owner.clone(),
            spec: *ctx.spec,
            period: ctx.window.start,
            want: block,
            returned: 0,
            generation: self.generation,
            spent: std::mem::take(&mut self.unrecorded),
        };
        match ctx.link.wants.try_send(want) {
            Ok(()) => {
                self.asking = true;
                self.asked_at = Some(ctx.now);
            }
            // Full: the next check asks again.
            Err(error) => self.unrecorded += error.into_inner().spent,
        }
    }

    /// No answer in time: one provisional block, unless one is still unreported or the store
    /// said the allowance is spent.
    pub(super) fn provision(&mut self, ctx: &AskContext<'_>) {
        if self.spare == 0 && self.unrecorded == 0 && !self.spent_out {
            self.spare = ctx.link.block_of(self.allowance(ctx.spec), ctx.cost);
        }
    }

    /// Takes an answer in.
    pub(super) fn apply(&mut self, outcome: Outcome, now: Timestamp) {
        self.asking = false;
        match outcome {
            Outcome::Granted {
                granted,
                whole,
                generation,
                used,
                allowance,
            } => {
                if generation != self.generation {
                    // Reset since: what was held counts in the old generation.
                    self.credit = 0;
                    self.generation = generation;
                }
                self.credit += granted;
                self.spare = 0;
                self.spent_out = !whole;
                self.used_at = Some(now);
                self.fleet = Some((used, allowance));
            }
            Outcome::Failed { spent } => self.unrecorded += spent,
        }
    }

    /// A give-back the store did not take: the units are this replica's to spend again.
    pub(super) fn restore(&mut self, returned: u64, generation: i64, spent: u64) {
        if generation == self.generation {
            self.credit += returned;
        }
        self.unrecorded += spent;
    }

    /// An operator changed the counter: ask again at the next check. After a reset, what is
    /// held was leased before it and is void.
    pub(super) fn refresh(&mut self, reset: bool) {
        self.spent_out = false;
        if reset {
            self.credit = 0;
            self.spare = 0;
        }
    }

    /// What this replica holds of the counter: leased unspent, its generation, and the
    /// provisional use not yet reported.
    pub(super) fn held(&self) -> (u64, i64, u64) {
        (self.credit, self.generation, self.unrecorded)
    }

    pub(super) fn is_asking(&self) -> bool {
        self.asking
    }

    /// The give-back of a lease unused for `ttl` (of every lease when `ttl` is zero): the
    /// unspent credit and the unreported provisional use, taken out, for the period that
    /// starts at `period`. A replica still spending keeps its lease: it will spend it.
    pub(super) fn lapse(&mut self, ttl: Duration, now: Timestamp, period: Timestamp) -> Option<Want> {
        let lapsed = self
            .used_at
            .is_none_or(|at| now.duration_since(at).unsigned_abs() >= ttl);
        if self.asking || !lapsed || (self.credit == 0 && self.unrecorded == 0) {
            return None;
        }
        Some(Want {
            owner: self.owner.clone(),
            spec: self.spec,
            period,
            want: 0,
            returned: std::mem::take(&mut self.credit),
            generation: self.generation,
            spent: std::mem::take(&mut self.unrecorded),
        })
    }

    /// The block to ask for: [`LeaseLink::block_of`] the allowance, its share kept for the next
    /// check (every admitted check asks whether the credit is low).
    fn block(&mut self, ctx: &AskContext<'_>) -> u64 {
        let allowance = self.allowance(ctx.spec);
        if self.share.0 != allowance || self.share.1 == 0 {
            self.share = (allowance, ctx.link.share_of(allowance));
        }
        self.share.1.max(ctx.cost)
    }

    fn allowance(&self, spec: &QuotaSpec) -> u64 {
        self.fleet.map_or(spec.limit, |(_, allowance)| allowance)
    }

    /// The quota's state for the headers: the fleet's use at the last answer, less what this
    /// replica holds unspent.
    pub(super) fn state(&self, spec: &QuotaSpec, window: &Window) -> QuotaUse {
        let (used, allowance) = self.fleet.unwrap_or((0, spec.limit));
        let used = used.saturating_sub(self.credit) + self.unrecorded;
        QuotaUse::new(allowance, 0, used, window)
    }
}

/// What an ask needs to know besides the lease.
pub(super) struct AskContext<'a> {
    pub link: &'a LeaseLink,
    pub spec: &'a QuotaSpec,
    pub window: &'a Window,
    pub cost: u64,
    pub now: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::quota::Period;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const SPEC: QuotaSpec = QuotaSpec {
        limit: 100,
        period: Period::None,
        anchor: Timestamp::UNIX_EPOCH,
    };

    fn granted(granted: u64, whole: bool) -> Outcome {
        Outcome::Granted {
            granted,
            whole,
            generation: 0,
            used: 100,
            allowance: 100,
        }
    }

    #[test]
    fn credit_pays_then_pending_until_the_store_says_spent() {
        let now = at("2026-01-01T00:00:00Z");
        let (link, mut wants) = LeaseLink::new(0.1);
        let ctx = AskContext {
            link: &link,
            spec: &SPEC,
            window: &Window::FOREVER,
            cost: 1,
            now,
        };
        let mut lease = Leased::new(LeaseOwner::Customer { id: "acme".into() }, SPEC);
        assert_eq!(lease.standing(1, now), Standing::Pending);
        lease.ask(&ctx, true);
        assert_eq!(wants.try_recv().unwrap().want, 10);
        lease.ask(&ctx, true);
        assert!(wants.try_recv().is_err(), "one ask at a time");
        lease.apply(granted(10, true), now);
        assert_eq!(lease.standing(10, now), Standing::Enough);
        lease.spend(10, now);
        lease.ask(&ctx, true);
        wants.try_recv().unwrap();
        lease.apply(granted(0, false), now);
        assert_eq!(lease.standing(1, now), Standing::Short);
        let later = at("2026-01-01T00:00:01Z");
        assert_eq!(
            lease.standing(1, later),
            Standing::Pending,
            "asked again after RETRY"
        );
    }

    #[test]
    fn a_provisional_block_is_spent_once_and_reported() {
        let now = at("2026-01-01T00:00:00Z");
        let (link, mut wants) = LeaseLink::new(0.1);
        let ctx = AskContext {
            link: &link,
            spec: &SPEC,
            window: &Window::FOREVER,
            cost: 1,
            now,
        };
        let mut lease = Leased::new(LeaseOwner::Customer { id: "acme".into() }, SPEC);
        lease.provision(&ctx);
        lease.spend(10, now);
        assert_eq!(lease.standing(1, now), Standing::Pending);
        lease.provision(&ctx);
        assert_eq!(
            lease.spare, 0,
            "no second block before the store counted the first"
        );
        lease.ask(&ctx, true);
        assert_eq!(wants.try_recv().unwrap().spent, 10);
        lease.apply(Outcome::Failed { spent: 10 }, now);
        let give_back = lease.lapse(Duration::ZERO, now, now).unwrap();
        assert_eq!((give_back.want, give_back.returned, give_back.spent), (0, 0, 10));
    }

    /// A give-back the store failed to take (`restore`) is held again, and the next lapse
    /// (the sweep's, or the drain's next round) gives it back again: not lost.
    #[test]
    fn a_give_back_the_store_refused_is_given_back_at_the_next_lapse() {
        let now = at("2026-01-01T00:00:00Z");
        let mut lease = Leased::new(LeaseOwner::Customer { id: "acme".into() }, SPEC);
        lease.apply(granted(10, true), now);
        lease.spend(3, now);
        let give_back = lease.lapse(Duration::ZERO, now, now).unwrap();
        assert_eq!((give_back.returned, lease.held().0), (7, 0));
        lease.restore(give_back.returned, give_back.generation, give_back.spent);
        let later = at("2026-01-01T00:00:30Z");
        assert!(
            lease.lapse(Duration::from_secs(60), later, now).is_none(),
            "not yet unused for the ttl"
        );
        let again = lease.lapse(Duration::from_secs(30), later, now).unwrap();
        assert_eq!((again.want, again.returned), (0, 7));
    }
}
