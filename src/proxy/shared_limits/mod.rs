//! Shared rate limits and quotas in Redis (data plane): one limit across the whole fleet.
//!
//! Each check is one atomic Lua script (`script.rs`, sent as `EVALSHA`): every rate bucket and
//! quota counter of the request (the key's and its customer's) is read and asked for the cost,
//! then all are charged or none, in one round trip. Replicas never race each other (no
//! GET-then-SET). Rate buckets run on Redis's own clock (TIME), so replicas' clocks need not
//! agree for them; quota periods are computed by the replica ([`crate::core::quota`], the same
//! code as the local limiter) and name the counter of that period, so a replica whose clock is
//! off by a few seconds moves its period boundaries by as much, and still counts each request
//! in exactly one period. The Redis keys one check touches share a hash tag, so the script
//! runs on Redis Cluster too (the layout is in `script.rs`).
//!
//! Redis must never hold a request up: a check waits at most `rate_limit.redis_timeout`. Past
//! it, or on any error, the check is decided by the replica's local limiter, counted in
//! `keygate_rate_limit_fallback_total`, and the backend is marked down. While it is down every
//! check is local at once (no request waits on a dead Redis) and [`SharedLimits::watch`] pings
//! Redis until it answers; then shared limiting resumes by itself.
//!
//! What the fallback means for quotas: the local counters are per replica, start empty and are
//! not merged into Redis when it returns. While Redis is down, each replica admits up to a
//! quota's whole allowance on its own, so a fleet of N replicas may overshoot a quota by up to
//! N times its allowance for the periods the outage spans. Quotas held in Redis also live only
//! as long as Redis keeps its data: a Redis without persistence that restarts forgets this
//! period's use, and the credits of period `none`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod script;

use super::limits::{Check, Decision, Limiter, Owner, Unavailable, Verdict};
use crate::core::clock::{system_clock, Clock};
use crate::core::key::RateLimitSpec;
use crate::core::quota::{QuotaChange, QuotaSpec, QuotaUse};
use script::{At, Scripts};

/// How often a down backend is pinged.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe or a reconnect may take; a probe is off the request path.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared limiter of `rate_limit.backend = "redis"`.
pub struct SharedLimits {
    redis: ConnectionManager,
    scripts: Scripts,
    prefix: String,
    budget: Duration,
    up: AtomicBool,
    fallbacks: IntCounter,
    /// The wall clock of quota periods (the gateway's).
    clock: Clock,
    /// Rate buckets on `clock` rather than on Redis's TIME (tests on a manual clock).
    rates_on_clock: bool,
}

/// Whose clock the rate buckets in Redis run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateClock {
    /// Redis's own (TIME): replicas' clocks need not agree. Production.
    Redis,
    /// The limiter's clock, for tests that move a manual clock.
    Caller,
}

/// The settings of the Redis backend.
pub struct RedisSettings<'a> {
    pub url: &'a str,
    pub prefix: &'a str,
    /// The longest a check waits on Redis.
    pub timeout: Duration,
}

impl SharedLimits {
    /// A limiter on the Redis at `settings.url`. It connects lazily and counts as down until
    /// Redis first answers. Needs a tokio runtime.
    pub fn new(settings: &RedisSettings<'_>, fallbacks: IntCounter) -> redis::RedisResult<Self> {
        let client = redis::Client::open(settings.url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(PROBE_EVERY);
        Ok(SharedLimits {
            redis: ConnectionManager::new_lazy_with_config(client, config)?,
            scripts: Scripts::default(),
            prefix: settings.prefix.to_owned(),
            budget: settings.timeout,
            up: AtomicBool::new(false),
            fallbacks,
            clock: system_clock(),
            rates_on_clock: false,
        })
    }

    /// On `clock` for quota periods (the gateway's, so a test moves them), and for rate
    /// buckets too with [`RateClock::Caller`].
    pub fn with_clock(self, clock: Clock, rates: RateClock) -> Self {
        SharedLimits {
            clock,
            rates_on_clock: rates == RateClock::Caller,
            ..self
        }
    }

    /// Whether checks are being decided in Redis (false while it is unreachable).
    pub fn is_shared(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Takes one request from the key's shared bucket: a check of its rate limit alone (see
    /// [`SharedLimits::admit`]).
    pub async fn check(&self, key_id: &str, spec: &RateLimitSpec) -> Option<Decision> {
        let verdict = self.admit(&Check::key_rate(0, key_id, spec)).await?;
        Some(verdict.key_decision())
    }

    /// Asks every limit of `check` for its cost and charges all or none, in one script call.
    /// `None`: Redis did not answer within the budget, or is down; the caller decides locally
    /// (counted here).
    pub async fn admit(&self, check: &Check<'_>) -> Option<Verdict> {
        if self.is_shared() {
            match tokio::time::timeout(self.budget, self.eval(check)).await {
                Ok(Ok(verdict)) => return Some(verdict),
                Ok(Err(error)) => self.mark_down(Down::Unreachable(&error)),
                Err(_) => self.mark_down(Down::Slow(self.budget)),
            }
        }
        self.fallbacks.inc();
        None
    }

    async fn eval(&self, check: &Check<'_>) -> redis::RedisResult<Verdict> {
        let wall = self.clock.now();
        let at = At {
            wall,
            rates: self.rates_on_clock.then_some(wall),
        };
        let (call, asked) = script::check(&self.scripts, &self.prefix, check, at);
        let mut redis = self.redis.clone();
        let reply: Vec<i64> = call.invoke_async(&mut redis).await?;
        let answers = script::answers(&asked, &reply).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a short answer from the check script",
            ))
        })?;
        Ok(Verdict::assemble(&answers, wall))
    }

    /// Reads, tops up or resets the current period of a quota in Redis (the admin API's
    /// change; it waits up to a second, and does not mark the backend down).
    pub async fn quota(
        &self,
        owner: Owner<'_>,
        spec: &QuotaSpec,
        change: QuotaChange,
    ) -> Result<QuotaUse, Unavailable> {
        let now = self.clock.now();
        let window = spec.window(now);
        let call = script::change(&self.scripts, &self.prefix, owner, &window, now, change);
        let mut redis = self.redis.clone();
        let reply = tokio::time::timeout(PROBE_TIMEOUT, call.invoke_async::<(i64, i64)>(&mut redis)).await;
        match reply {
            Ok(Ok((used, added))) => Ok(QuotaUse::new(
                spec.limit,
                u64::try_from(added).unwrap_or(0),
                u64::try_from(used).unwrap_or(0),
                &window,
            )),
            Ok(Err(_)) | Err(_) => Err(Unavailable),
        }
    }

    fn mark_down(&self, why: Down<'_>) {
        if !self.up.swap(false, Ordering::Relaxed) {
            return;
        }
        match why {
            Down::Unreachable(error) => {
                tracing::warn!(%error, "Redis rate-limit backend unreachable: limiting locally until it answers")
            }
            Down::Slow(budget) => tracing::warn!(
                budget_ms = crate::telemetry::logs::millis(budget),
                "Redis rate-limit backend slow: a check got no answer within rate_limit.redis_timeout; limiting locally until it answers a probe in time"
            ),
        }
    }

    /// Pings Redis while it is down and marks it up once it answers. Runs for the gateway's
    /// life.
    pub async fn watch(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(PROBE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.is_shared() {
                continue;
            }
            if let Ok(true) = tokio::time::timeout(PROBE_TIMEOUT, self.ping()).await {
                tracing::info!("Redis rate-limit backend answers: limits are shared again");
            }
        }
    }

    /// Waits until Redis answers or `within` passes (start-up, so the first requests are not
    /// counted as fallbacks for want of a connection yet). True once it answered.
    pub async fn connect(self: &Arc<Self>, within: Duration) -> bool {
        let probe = async {
            while !self.ping().await {
                tokio::time::sleep(PROBE_EVERY).await;
            }
        };
        tokio::time::timeout(within, probe).await.is_ok()
    }

    /// One PING; marks the backend up when it answers.
    async fn ping(&self) -> bool {
        let mut redis = self.redis.clone();
        let answered = redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok();
        if answered {
            self.up.store(true, Ordering::Relaxed);
        }
        answered
    }
}

/// Why checks went local: Redis failed, or answered later than the budget allows.
enum Down<'a> {
    Unreachable(&'a dyn std::fmt::Display),
    Slow(Duration),
}

impl Limiter for SharedLimits {
    async fn admit(&self, check: &Check<'_>) -> Result<Verdict, Unavailable> {
        SharedLimits::admit(self, check).await.ok_or(Unavailable)
    }

    async fn quota(
        &self,
        owner: Owner<'_>,
        spec: &QuotaSpec,
        change: QuotaChange,
    ) -> Result<QuotaUse, Unavailable> {
        SharedLimits::quota(self, owner, spec, change).await
    }
}
