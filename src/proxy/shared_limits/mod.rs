//! Shared rate limits in Redis (data plane): one GCRA bucket per key across the whole fleet.
//!
//! Each check is one atomic Lua script ([`GCRA`], sent as `EVALSHA`) that reads and advances
//! the key's theoretical arrival time on Redis's own clock, so replicas never race each other
//! (no GET-then-SET) and their clocks need not agree.
//!
//! Redis must never hold a request up: a check waits at most `rate_limit.redis_timeout`. Past
//! it, or on any error, the check is decided by the replica's local limiter, counted in
//! `keygate_rate_limit_fallback_total`, and the backend is marked down. While it is down every
//! check is local at once (no request waits on a dead Redis) and [`SharedLimits::watch`] pings
//! Redis until it answers; then shared limiting resumes by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::limits::{ceil_secs, Decision, LimitState};
use crate::core::key::RateLimitSpec;

/// GCRA in one step. KEYS[1]: the key's bucket. ARGV[1]: the emission interval (microseconds
/// per request, fractional), ARGV[2]: the burst. Answers `{allowed, remaining, retry_after_us,
/// reset_us}`. The bucket expires once it is full again, so idle keys leave nothing behind.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / interval), 0, math.ceil(new_tat - now)}
";

/// How often a down backend is pinged.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe or a reconnect may take; a probe is off the request path.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared limiter of `rate_limit.backend = "redis"`.
pub struct SharedLimits {
    redis: ConnectionManager,
    script: Script,
    prefix: String,
    budget: Duration,
    up: AtomicBool,
    fallbacks: IntCounter,
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
            script: Script::new(GCRA),
            prefix: settings.prefix.to_owned(),
            budget: settings.timeout,
            up: AtomicBool::new(false),
            fallbacks,
        })
    }

    /// Whether checks are being decided in Redis (false while it is unreachable).
    pub fn is_shared(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Takes one request from the key's shared bucket. `None`: Redis did not answer within the
    /// budget, or is down; the caller decides locally (counted here).
    pub async fn check(&self, key_id: &str, spec: &RateLimitSpec) -> Option<Decision> {
        if self.is_shared() {
            match tokio::time::timeout(self.budget, self.eval(key_id, spec)).await {
                Ok(Ok(decision)) => return Some(decision),
                Ok(Err(error)) => self.mark_down(Down::Unreachable(&error)),
                Err(_) => self.mark_down(Down::Slow(self.budget)),
            }
        }
        self.fallbacks.inc();
        None
    }

    async fn eval(&self, key_id: &str, spec: &RateLimitSpec) -> redis::RedisResult<Decision> {
        let burst = spec.burst().get();
        let interval_us = spec.per.as_secs_f64() * 1e6 / f64::from(spec.requests.get());
        let mut redis = self.redis.clone();
        let mut bucket = String::with_capacity(self.prefix.len() + 3 + key_id.len());
        bucket.push_str(&self.prefix);
        bucket.push_str("rl:");
        bucket.push_str(key_id);
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) = self
            .script
            .key(bucket)
            .arg(interval_us)
            .arg(burst)
            .invoke_async(&mut redis)
            .await?;
        Ok(decision(spec, allowed == 1, remaining, retry_us, reset_us))
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

/// The script's answer as the local limiter would give it: the same `RateLimit-*` numbers.
fn decision(spec: &RateLimitSpec, allowed: bool, remaining: i64, retry_us: i64, reset_us: i64) -> Decision {
    let limit = spec.burst().get();
    let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
    let window = ceil_secs(spec.per).max(1);
    let reset = ceil_secs(micros(reset_us));
    if allowed {
        let remaining = u32::try_from(remaining.clamp(0, i64::from(limit))).unwrap_or(limit);
        return Decision::Allowed(LimitState {
            limit,
            remaining,
            reset,
            window,
        });
    }
    let retry_after = ceil_secs(micros(retry_us)).max(1);
    Decision::Limited {
        state: LimitState {
            limit,
            remaining: 0,
            reset: reset.max(retry_after),
            window,
        },
        retry_after,
    }
}

/// Why checks went local: Redis failed, or answered later than the budget allows.
enum Down<'a> {
    Unreachable(&'a dyn std::fmt::Display),
    Slow(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn spec(requests: u32, per_secs: u64) -> RateLimitSpec {
        RateLimitSpec {
            requests: NonZeroU32::new(requests).unwrap(),
            per: Duration::from_secs(per_secs),
            burst: None,
        }
    }

    #[test]
    fn answers_become_the_headers_the_local_limiter_sends() {
        let six_a_minute = spec(6, 60);
        assert_eq!(
            decision(&six_a_minute, true, 5, 0, 10_000_000),
            Decision::Allowed(LimitState {
                limit: 6,
                remaining: 5,
                reset: 10,
                window: 60
            })
        );
        assert_eq!(
            decision(&six_a_minute, false, 0, 9_500_001, 59_000_000),
            Decision::Limited {
                state: LimitState {
                    limit: 6,
                    remaining: 0,
                    reset: 59,
                    window: 60
                },
                retry_after: 10
            }
        );
    }

    #[test]
    fn odd_answers_stay_in_range() {
        let one = spec(1, 1);
        assert_eq!(
            decision(&one, false, -3, 0, -1),
            Decision::Limited {
                state: LimitState {
                    limit: 1,
                    remaining: 0,
                    reset: 1,
                    window: 1
                },
                retry_after: 1
            }
        );
        assert!(matches!(
            decision(&one, true, i64::MAX, 0, 0),
            Decision::Allowed(LimitState { remaining: 1, .. })
        ));
    }
}
