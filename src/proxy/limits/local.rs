//! The local limiter (data plane): every key's and customer's rate limit and quota in this
//! process, decided synchronously on the gateway's clock.
//!
//! All or nothing, exactly: the state of a key and of a customer each sit behind one small
//! mutex, taken key first, customer second (never the other way, so two checks cannot wait on
//! each other). With both held, every limit is asked for the cost, and only when all allow it
//! is each charged. Nothing else runs under the locks: the critical section is a few dozen
//! nanoseconds of arithmetic.
//!
//! Rate limits run on the clock's monotonic reading (a step of the wall clock does not upset
//! a bucket); quotas on its wall-clock time, since their periods are calendar periods. A
//! quota's counter holds one period's use: the first check past the period's end starts the
//! next one, under the lock, so a request at the boundary counts in exactly one period. A check
//! whose clock reading predates a rollover that another thread made first counts in the newer
//! period.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use jiff::Timestamp;
use rustc_hash::FxBuildHasher;

use super::gcra::Bucket;
use super::leased::{AskContext, LeaseLink, LeaseOwner, Leased, Standing};

mod leases;
use super::verdict::{Answer, Verdict};
use super::{Check, Decision, Owner, Subject};
use crate::core::clock::{SystemClock, WallClock};
use crate::core::key::RateLimitSpec;
use crate::core::quota::{Period, QuotaChange, QuotaSpec, QuotaUse, Window};

/// The local limits of every key (by sequence number) and customer (by id), each made on its
/// first check. Keys' quota counters go with their key (see [`LocalLimits::retain`]).
pub struct LocalLimits<C = SystemClock> {
    /// By key sequence number (ours, not a client's: a fast hash is safe).
    keys: DashMap<u64, Mutex<Held>, FxBuildHasher>,
    /// By customer id (an operator's, not a client's).
    customers: DashMap<Box<str>, Mutex<Held>, FxBuildHasher>,
    clock: C,
    /// Quota leases from the store (`leased.rs`); `None`: quotas are counted here alone.
    leases: Option<LeaseLink>,
}

/// A check a quota's lease cannot pay for yet: an answer from the store is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending;

/// The name the request path and the benches know the local limiter by.
pub type KeyLimits<C = SystemClock> = LocalLimits<C>;

/// The gateway's clock ([`crate::core::clock::Clock`]) as the limiter's: the system's in
/// production, a test's manual clock under test.
#[derive(Clone)]
pub struct GatewayClock(pub crate::core::clock::Clock);

impl WallClock for GatewayClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }

    fn monotonic(&self) -> std::time::Duration {
        self.0.monotonic()
    }
}

/// One key's or customer's limits.
#[derive(Default)]
struct Held {
    rate: Option<Bucket>,
    quota: Option<Counter>,
}

/// One period's use of a quota. The limit is not kept: a changed limit applies to the use
/// so far; a changed period or anchor that moves the window starts afresh.
struct Counter {
    period: Period,
    anchor: Timestamp,
    window: Window,
    used: u64,
    added: u64,
    /// With quota leases: what this replica leased of the fleet's counter.
    lease: Option<Box<Leased>>,
}

/// The time of one check.
#[derive(Clone, Copy)]
struct Now {
    /// Monotonic nanoseconds, for rate limits.
    tick: u64,
    /// Wall-clock time, for quotas (read only when a quota is checked).
    wall: Timestamp,
}

impl Default for LocalLimits<SystemClock> {
    fn default() -> Self {
        Self::with_clock(SystemClock)
    }
}

impl<C: WallClock> LocalLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        LocalLimits {
            keys: DashMap::with_hasher_and_shard_amount(FxBuildHasher, 64),
            customers: DashMap::with_hasher_and_shard_amount(FxBuildHasher, 64),
            clock,
            leases: None,
        }
    }

    /// Quotas spent out of blocks leased through `link`.
    pub fn with_leases(self, link: LeaseLink) -> Self {
        LocalLimits {
            leases: Some(link),
            ..self
        }
    }

    pub fn lease_link(&self) -> Option<&LeaseLink> {
        self.leases.as_ref()
    }

    /// Asks every limit of the check for its cost; charges them all, or none. A quota whose
    /// lease is pending refuses (see [`LocalLimits::try_admit`] to wait for it instead).
    pub fn admit(&self, check: &Check<'_>) -> Verdict {
        self.decide(check, true, None).unwrap_or_default()
    }

    /// Like [`LocalLimits::admit`], but a quota whose lease cannot pay yet and may is
    /// [`Pending`]: a lease has been asked for, and nothing is charged.
    pub fn try_admit(&self, check: &Check<'_>) -> Result<Verdict, Pending> {
        self.decide(check, false, None)
    }

    /// Like [`LocalLimits::try_admit`], with the wall-clock time `wall` the caller read from
    /// this limiter's clock for the request (the request path reads it once, at step 3): the
    /// quotas' periods are taken at it rather than at a second reading.
    pub fn try_admit_at(&self, check: &Check<'_>, wall: Timestamp) -> Result<Verdict, Pending> {
        self.decide(check, false, Some(wall))
    }

    /// `last`: no more waiting; a lease that did not answer spends a provisional block.
    /// `wall`: the time already read, if any.
    fn decide(&self, check: &Check<'_>, last: bool, wall: Option<Timestamp>) -> Result<Verdict, Pending> {
        match check.rate_only() {
            Some(spec) => Ok(self.rate_only(check.seq, spec, check.cost.get())),
            None => self.every_limit(check, last, wall),
        }
    }

    /// The whole check: up to four limits, quota leases among them.
    fn every_limit(
        &self,
        check: &Check<'_>,
        last: bool,
        wall: Option<Timestamp>,
    ) -> Result<Verdict, Pending> {
        let quotas = check.key.quota.is_some() || check.customer.is_some_and(|c| c.quota.is_some());
        let now = self.now(quotas, wall);
        let key = held(&self.keys, &check.seq, || check.seq);
        let customer = check
            .customer
            .filter(Subject::has_limits)
            .map(|customer| held(&self.customers, customer.id, || customer.id.into()));
        let mut key_guard = lock(&key);
        let key = &mut *key_guard;
        let mut customer_guard = customer.as_ref().map(|held| lock(held));
        let cost = check.cost.get();
        let leases = self.leases.as_ref();
        let key_owner = || LeaseOwner::Key {
            seq: check.seq,
            id: check.key.id.into(),
        };
        let customer_id = check.customer.map_or("", |c| c.id);
        let customer_owner = || LeaseOwner::Customer {
            id: customer_id.into(),
        };
        let mut limits = [
            check.key.rate.map(|spec| Limit::rate(&mut key.rate, spec)),
            None,
            check.key.quota.map(|spec| {
                Limit::quota(
                    &mut key.quota,
                    spec,
                    now.wall,
                    leases.map(|l| (l, &key_owner as _)),
                )
            }),
            None,
        ];
        if let (Some(held), Some(subject)) = (customer_guard.as_deref_mut(), check.customer) {
            limits[1] = subject.rate.map(|spec| Limit::rate(&mut held.rate, spec));
            limits[3] = subject.quota.map(|spec| {
                Limit::quota(
                    &mut held.quota,
                    spec,
                    now.wall,
                    leases.map(|l| (l, &customer_owner as _)),
                )
            });
        }
        // Loops into arrays made empty, not `array::map`: measured, the maps of these large
        // values cost several times the loops' instructions.
        let mut standings = [None; 4];
        for (standing, limit) in standings.iter_mut().zip(limits.iter_mut()) {
            *standing = limit.as_mut().map(|l| l.standing(cost, now, last));
        }
        // A pending lease is waited for even when another limit refuses, so that the refusal
        // names the limit that lifts last, as without leases.
        if standings.iter().flatten().any(|s| *s == Standing::Pending) {
            for limit in limits.iter_mut().flatten() {
                limit.ask_if_pending(cost, now);
            }
            return Err(Pending);
        }
        let admitted = !standings.iter().flatten().any(|s| *s == Standing::Short);
        let mut answers = [None, None, None, None];
        for ((answer, limit), standing) in answers.iter_mut().zip(limits).zip(standings) {
            *answer = limit.map(|limit| limit.answer(admitted, standing, cost, now));
        }
        Ok(Verdict::assemble(&answers, now.wall))
    }

    /// The most common check, a key's rate limit alone: one bucket under the key's lock, no
    /// wall-clock reading, no lease, nothing of the other three limits built. The same answer
    /// as the whole check's (the conformance suite runs both).
    fn rate_only(&self, seq: u64, spec: &RateLimitSpec, cost: u32) -> Verdict {
        let tick = self.now(false, None).tick;
        let entry = held(&self.keys, &seq, || seq);
        let mut state = lock(&entry);
        let bucket = Bucket::of(&mut state.rate, spec);
        // The bucket is the check's one limit: it is charged exactly when it allows the cost.
        let answer = bucket.answer(true, cost, tick);
        drop(state);
        Verdict::assemble(&[Some(answer), None, None, None], Timestamp::UNIX_EPOCH)
    }

    /// Takes one request from key `seq`'s rate limit: a check of that one limit, as the request
    /// path makes it while it knows no other.
    pub fn check(&self, seq: u64, spec: &RateLimitSpec) -> Decision {
        let check = Check::key_rate(seq, "", spec);
        self.admit(&check).key_decision()
    }

    /// Reads, tops up or resets the current period of a quota.
    pub fn quota(&self, owner: Owner<'_>, spec: &QuotaSpec, change: QuotaChange) -> QuotaUse {
        let now = self.clock.now();
        let read = |held: Option<&Mutex<Held>>| {
            let Some(held) = held else {
                return QuotaUse::new(spec.limit, 0, 0, &spec.window(now));
            };
            let mut held = lock(held);
            let counter = current(&mut held.quota, spec, now);
            match change {
                QuotaChange::Read => {}
                QuotaChange::Add(more) => counter.added = counter.added.saturating_add(more),
                QuotaChange::Reset => (counter.used, counter.added) = (0, 0),
            }
            counter.state(spec)
        };
        let creates = !matches!(change, QuotaChange::Read);
        match owner {
            Owner::Key { seq, .. } if creates => read(Some(&*held(&self.keys, &seq, || seq))),
            Owner::Key { seq, .. } => read(self.keys.get(&seq).as_deref()),
            Owner::Customer { id } if creates => read(Some(&*held(&self.customers, id, || id.into()))),
            Owner::Customer { id } => read(self.customers.get(id).as_deref()),
        }
    }

    /// Forgets the limits of keys that are gone.
    pub fn retain(&self, mut keep: impl FnMut(u64) -> bool) {
        self.keys.retain(|seq, _| keep(*seq));
    }

    /// Forgets the limits of customers that are gone.
    pub fn retain_customers(&self, mut keep: impl FnMut(&str) -> bool) {
        self.customers.retain(|id, _| keep(id));
    }

    /// The time of a check; the wall clock is read only for quotas, and not again when the
    /// caller has (`wall`).
    fn now(&self, quotas: bool, wall: Option<Timestamp>) -> Now {
        let tick = self.clock.monotonic().as_nanos();
        Now {
            tick: u64::try_from(tick).unwrap_or(u64::MAX),
            wall: match (quotas, wall) {
                (false, _) => Timestamp::UNIX_EPOCH,
                (true, Some(wall)) => wall,
                (true, None) => self.clock.now(),
            },
        }
    }
}

/// The entry of `id` in `map`, made empty if it has none.
fn held<'a, K, Q>(
    map: &'a DashMap<K, Mutex<Held>, FxBuildHasher>,
    id: &Q,
    owned: impl FnOnce() -> K,
) -> Ref<'a, K, Mutex<Held>>
where
    K: std::borrow::Borrow<Q> + Eq + std::hash::Hash,
    Q: Eq + std::hash::Hash + ?Sized,
{
    if let Some(found) = map.get(id) {
        return found;
    }
    map.entry(owned()).or_default().downgrade()
}

/// A poisoned lock still holds consistent numbers: nothing under it panics midway.
fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One limit of a check, borrowed from its holder's state for the check's length.
enum Limit<'a> {
    Rate(&'a mut Bucket),
    Quota(&'a mut Counter, &'a QuotaSpec, Option<&'a LeaseLink>),
}

/// The lease link and, for a counter's first lease, its owner.
type Leasing<'a> = (&'a LeaseLink, &'a dyn Fn() -> LeaseOwner);

impl<'a> Limit<'a> {
    fn rate(slot: &'a mut Option<Bucket>, spec: &'a RateLimitSpec) -> Self {
        Limit::Rate(Bucket::of(slot, spec))
    }

    fn quota(
        slot: &'a mut Option<Counter>,
        spec: &'a QuotaSpec,
        now: Timestamp,
        leasing: Option<Leasing<'a>>,
    ) -> Self {
        if let Some((link, _)) = leasing {
            give_back_if_over(slot, spec, now, link);
        }
        let counter = current(slot, spec, now);
        let link = leasing.map(|(link, owner)| {
            counter
                .lease
                .get_or_insert_with(|| Box::new(Leased::new(owner(), *spec)));
            link
        });
        Limit::Quota(counter, spec, link)
    }

    /// `last`: a lease that cannot pay spends a provisional block, and is short if it still
    /// cannot.
    fn standing(&mut self, cost: u32, now: Now, last: bool) -> Standing {
        let allowed = match self {
            Limit::Rate(bucket) => bucket.gcra.take(bucket.tat, now.tick, cost).is_ok(),
            Limit::Quota(counter, spec, None) => counter.allows(spec, cost),
            Limit::Quota(counter, spec, Some(link)) => {
                let window = counter.window;
                let lease = counter.lease.as_mut().expect("made with the link");
                if last {
                    lease.provision(&ask_context(link, spec, &window, cost, now.wall));
                }
                return match lease.standing(cost.into(), now.wall) {
                    Standing::Pending if last => Standing::Short,
                    standing => standing,
                };
            }
        };
        if allowed {
            Standing::Enough
        } else {
            Standing::Short
        }
    }

    /// Asks for a lease if this limit is one that cannot pay yet.
    fn ask_if_pending(&mut self, cost: u32, now: Now) {
        if let Limit::Quota(counter, spec, Some(link)) = self {
            let window = counter.window;
            let lease = counter.lease.as_mut().expect("made with the link");
            if lease.standing(cost.into(), now.wall) == Standing::Pending {
                lease.ask(&ask_context(link, spec, &window, cost, now.wall), true);
            }
        }
    }

    /// Charges the limit when the check is `admitted`, and answers with its state after. A
    /// lease's `standing` is the check's: one that could still be leased did not refuse.
    fn answer(self, admitted: bool, standing: Option<Standing>, cost: u32, now: Now) -> Answer {
        match self {
            Limit::Rate(bucket) => bucket.answer(admitted, cost, now.tick),
            Limit::Quota(counter, spec, None) => {
                let allowed = counter.allows(spec, cost);
                if admitted {
                    counter.used = counter.used.saturating_add(cost.into());
                }
                Answer::Quota {
                    allowed,
                    state: counter.state(spec),
                    window: counter.window,
                }
            }
            Limit::Quota(counter, spec, Some(link)) => {
                let window = counter.window;
                let lease = counter.lease.as_mut().expect("made with the link");
                let allowed = standing != Some(Standing::Short);
                if admitted {
                    counter.used = counter.used.saturating_add(cost.into());
                    lease.spend(cost.into(), now.wall);
                    lease.ask(&ask_context(link, spec, &window, cost, now.wall), false);
                }
                Answer::Quota {
                    allowed,
                    state: lease.state(spec, &window),
                    window,
                }
            }
        }
    }
}

fn ask_context<'a>(
    link: &'a LeaseLink,
    spec: &'a QuotaSpec,
    window: &'a Window,
    cost: u32,
    now: Timestamp,
) -> AskContext<'a> {
    AskContext {
        link,
        spec,
        window,
        cost: cost.into(),
        now,
    }
}

/// A counter about to be replaced by the next period's gives its lease back to its own period's
/// counter in the store, so that counter ends as what its period admitted.
fn give_back_if_over(slot: &mut Option<Counter>, spec: &QuotaSpec, now: Timestamp, link: &LeaseLink) {
    let Some(counter) = slot.as_mut() else { return };
    let same = (counter.period, counter.anchor) == (spec.period, spec.anchor);
    if (same && !counter.window.is_over(now)) || (!same && spec.window(now) == counter.window) {
        return;
    }
    let period = counter.window.start;
    if let Some(want) = counter
        .lease
        .as_mut()
        .and_then(|lease| lease.lapse(Duration::ZERO, now, period))
    {
        link.give_back(want);
    }
}

/// The counter of the period `now` falls in: the one held while its period lasts, else a
/// fresh one.
fn current<'a>(slot: &'a mut Option<Counter>, spec: &QuotaSpec, now: Timestamp) -> &'a mut Counter {
    // The usual case, the same quota within its period, in place: not moved out and back.
    if slot.as_ref().is_some_and(|counter| counter.counts(spec, now)) {
        return slot.as_mut().expect("checked above");
    }
    let kept = slot.take().and_then(|counter| counter.carried_to(spec, now));
    slot.insert(kept.unwrap_or_else(|| Counter {
        period: spec.period,
        anchor: spec.anchor,
        window: spec.window(now),
        used: 0,
        added: 0,
        lease: None,
    }))
}

impl Counter {
    /// Whether this counter is of `spec`'s period and anchor, and `now` is within its window.
    fn counts(&self, spec: &QuotaSpec, now: Timestamp) -> bool {
        (self.period, self.anchor) == (spec.period, spec.anchor) && !self.window.is_over(now)
    }

    /// This counter, if it still counts the period of `spec` that `now` falls in.
    fn carried_to(self, spec: &QuotaSpec, now: Timestamp) -> Option<Counter> {
        if (self.period, self.anchor) == (spec.period, spec.anchor) {
            // Before the window's start: a check that read the clock before another rolled the
            // counter over; it counts in the newer period.
            return (!self.window.is_over(now)).then_some(self);
        }
        // A changed quota keeps its use when its current period is still the same window.
        let window = spec.window(now);
        (window == self.window).then_some(Counter {
            period: spec.period,
            anchor: spec.anchor,
            ..self
        })
    }

    fn allows(&self, spec: &QuotaSpec, cost: u32) -> bool {
        self.used.saturating_add(cost.into()) <= spec.limit.saturating_add(self.added)
    }

    fn state(&self, spec: &QuotaSpec) -> QuotaUse {
        QuotaUse::new(spec.limit, self.added, self.used, &self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use crate::proxy::limits::LimitKind;
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;

    fn spec(requests: u32, per_secs: u64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            requests: NonZeroU32::new(requests).unwrap(),
            per: Duration::from_secs(per_secs),
            burst: NonZeroU32::new(burst),
        }
    }

    fn clock() -> ManualClock {
        ManualClock::new("2026-03-01T00:00:00Z".parse().unwrap())
    }

    #[test]
    fn limits_past_what_a_u64_of_nanoseconds_holds_are_clamped_not_a_panic() {
        let limits = KeyLimits::with_clock(clock());
        for spec in [spec(1, 99_999_999 * 86_400, 1), spec(1, 86_400, u32::MAX)] {
            assert!(matches!(limits.check(7, &spec), Decision::Allowed(_)));
        }
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_for_refill() {
        let clock = clock();
        let limits = KeyLimits::with_clock(clock.clone());
        let spec = spec(2, 1, 2);
        let remaining: Vec<_> = (0..2)
            .map(|_| match limits.check(1, &spec) {
                Decision::Allowed(state) => state.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, [1, 0]);
        assert!(matches!(
            limits.check(1, &spec),
            Decision::Limited { retry_after: 1, .. }
        ));
        clock.advance(Duration::from_millis(500));
        assert!(matches!(limits.check(1, &spec), Decision::Allowed(_)));
    }

    #[test]
    fn keys_have_separate_buckets_and_a_changed_limit_starts_afresh() {
        let limits = KeyLimits::with_clock(clock());
        let one = spec(1, 60, 1);
        assert!(matches!(limits.check(1, &one), Decision::Allowed(_)));
        assert!(matches!(limits.check(1, &one), Decision::Limited { .. }));
        assert!(matches!(limits.check(2, &one), Decision::Allowed(_)));
        assert!(matches!(limits.check(1, &spec(5, 60, 5)), Decision::Allowed(_)));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let limits = KeyLimits::with_clock(clock());
        let slow = spec(1, 90, 1);
        limits.check(1, &slow);
        match limits.check(1, &slow) {
            Decision::Limited { retry_after, state } => {
                assert_eq!(retry_after, 90);
                assert_eq!((state.limit, state.remaining, state.window), (1, 0, 90));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The short path of a key's rate limit alone answers as the whole check does, through
    /// a burst, its refusals, a refill and a changed limit.
    #[test]
    fn the_rate_only_path_answers_as_the_whole_check() {
        let clock = clock();
        let (short, whole) = (
            KeyLimits::with_clock(clock.clone()),
            KeyLimits::with_clock(clock.clone()),
        );
        let plans = [
            spec(3, 1, 3),
            spec(3, 1, 3),
            spec(3, 1, 3),
            spec(3, 1, 3),
            spec(1, 60, 2),
        ];
        for (step, plan) in plans.iter().chain(&plans).enumerate() {
            let check = Check::key_rate(9, "key_9", plan);
            let cost = NonZeroU32::new(1 + u32::from(step % 4 == 3)).unwrap();
            let check = Check { cost, ..check };
            assert_eq!(check.rate_only(), Some(plan));
            assert_eq!(
                short.try_admit(&check),
                whole.every_limit(&check, false, None),
                "step {step}"
            );
            clock.advance(Duration::from_millis(170));
        }
    }

    /// Eight threads on one key's quota of a day while the clock crosses midnight: each day
    /// admits exactly its limit, and the second day's counter shows exactly what it admitted.
    #[test]
    fn a_period_boundary_under_load_neither_loses_nor_double_counts() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let clock = clock();
        clock.set("2026-03-01T23:59:59Z".parse().unwrap());
        let limits = Arc::new(LocalLimits::with_clock(clock.clone()));
        let quota = QuotaSpec {
            limit: 1000,
            period: Period::Day,
            anchor: "2026-01-01T00:00:00Z".parse().unwrap(),
        };
        let attempts = Arc::new(AtomicU64::new(0));
        // How many checks had begun when midnight came (none yet: u64::MAX).
        let midnight = Arc::new(AtomicU64::new(u64::MAX));
        let mover = {
            let (attempts, midnight, clock) = (attempts.clone(), midnight.clone(), clock.clone());
            // Midnight comes once 1,200 checks have begun, while the threads keep checking.
            std::thread::spawn(move || {
                while attempts.load(Ordering::SeqCst) < 1200 {
                    std::thread::yield_now();
                }
                clock.advance(Duration::from_secs(1));
                midnight.store(attempts.load(Ordering::SeqCst), Ordering::SeqCst);
            })
        };
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limits, attempts, midnight) = (limits.clone(), attempts.clone(), midnight.clone());
                std::thread::spawn(move || {
                    let mut admitted = [0u64; 2];
                    let check = Check {
                        seq: 1,
                        key: Subject {
                            id: "key_1",
                            rate: None,
                            quota: Some(&quota),
                        },
                        customer: None,
                        cost: NonZeroU32::MIN,
                    };
                    // Until 2,000 checks have begun after midnight.
                    while attempts.fetch_add(1, Ordering::SeqCst)
                        < midnight.load(Ordering::SeqCst).saturating_add(2000)
                    {
                        let verdict = limits.admit(&check);
                        if verdict.is_admitted() {
                            // One second left: the first day; a whole day: the second.
                            let reset = verdict.policy(LimitKind::KeyQuota).unwrap().reset.unwrap();
                            admitted[usize::from(reset > 1)] += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold([0, 0], |sum, a| [sum[0] + a[0], sum[1] + a[1]]);
        mover.join().unwrap();
        assert_eq!(admitted, [1000, 1000]);
        let owner = Owner::Key {
            seq: 1,
            id: "key_1",
            customer: None,
        };
        let day_two = limits.quota(owner, &quota, QuotaChange::Read);
        assert_eq!(day_two.resets_at, Some("2026-03-03T00:00:00Z".parse().unwrap()));
        assert_eq!((day_two.used, day_two.remaining), (1000, 0));
    }
}
