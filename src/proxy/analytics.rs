//! Per-key request counts by route, status and hour (data plane), for `GET /v1/usage`: an
//! atomic add per request in a sharded map, drained into the store by the control plane's
//! usage flush, so the analytics cost no store write per request.
//!
//! Only requests whose credential matched a key are counted (admitted or refused), so a flood
//! of unknown keys leaves nothing behind: the map is bounded by keys in use, their routes and
//! the statuses they got within one flush interval and the current hour.
//!
//! Route names are interned once per config snapshot (a route's id is the same across
//! reloads), so a count's key is four integers: hashing it costs no string.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use http::StatusCode;
use rustc_hash::FxBuildHasher;

use super::context::Context;
use super::state::Snapshot;

/// Seconds in an hour, the resolution of the counts.
pub const HOUR: i64 = 3600;

/// What one count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cell {
    seq: u64,
    /// Hours since the Unix epoch.
    hour: u32,
    route: u32,
    status: u16,
}

/// Requests of one key on one route answered with one status within one hour, since the last
/// drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourCount {
    pub seq: u64,
    pub route: Arc<str>,
    pub status: u16,
    /// Unix seconds of the hour's start.
    pub hour: i64,
    pub requests: u64,
}

#[derive(Debug, Default)]
pub struct Analytics {
    counts: DashMap<Cell, AtomicU64, FxBuildHasher>,
    /// Route names by id; only ever grows (by the routes of reloaded configs).
    routes: RwLock<Vec<Arc<str>>>,
}

impl Analytics {
    /// The id of route `name`, the same for the same name across snapshots.
    pub fn route_id(&self, name: &str) -> u32 {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let index = match routes.iter().position(|known| &**known == name) {
            Some(index) => index,
            None => {
                routes.push(name.into());
                routes.len() - 1
            }
        };
        u32::try_from(index).expect("fewer than 2^32 route names")
    }

    /// Counts one request of key `seq` on route `route` (an id of [`Analytics::route_id`])
    /// answered with `status`, made at `at` (Unix seconds).
    pub fn record(&self, seq: u64, route: u32, status: u16, at: i64) {
        let cell = Cell {
            seq,
            hour: hour_index(at),
            route,
            status,
        };
        match self.counts.get(&cell) {
            Some(count) => count.fetch_add(1, Ordering::Relaxed),
            None => self
                .counts
                .entry(cell)
                .or_default()
                .fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Takes every count. A cell of hour `now` (Unix seconds) that counted something stays, at
    /// zero, as it is likely to count again; the others go, so the map holds only what is in
    /// use.
    pub fn drain(&self, now: i64) -> Vec<HourCount> {
        let current = hour_index(now);
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut counted = Vec::new();
        self.counts.retain(|cell, count| {
            let requests = std::mem::take(count.get_mut());
            if requests == 0 {
                return false;
            }
            counted.push(HourCount {
                seq: cell.seq,
                route: routes[cell.route as usize].clone(),
                status: cell.status,
                hour: i64::from(cell.hour) * HOUR,
                requests,
            });
            cell.hour == current
        });
        counted
    }

    /// Puts counts back after a failed write, so a store outage loses none.
    pub fn restore(&self, counted: &[HourCount]) {
        for c in counted {
            let route = self.route_id(&c.route);
            let cell = Cell {
                seq: c.seq,
                hour: hour_index(c.hour),
                route,
                status: c.status,
            };
            self.counts
                .entry(cell)
                .or_default()
                .fetch_add(c.requests, Ordering::Relaxed);
        }
    }

    /// Cells held now (counted since the last drain, or kept for the current hour).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The final phase's count of a request whose credential matched a key, whatever its answer.
pub(super) fn count(snapshot: &Snapshot, ctx: &Context, status: StatusCode) {
    if let (Some(key), Some(route)) = (&ctx.key, ctx.route) {
        let route = snapshot.routes[route].analytics_id;
        snapshot
            .analytics
            .record(key.seq, route, status.as_u16(), ctx.key_at);
    }
}

/// Hours since the Unix epoch of Unix second `at`; times before 1970 or after the year
/// 491,000 count in the nearest hour the index can hold.
fn hour_index(at: i64) -> u32 {
    u32::try_from(at.div_euclid(HOUR).max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut counted: Vec<HourCount>) -> Vec<HourCount> {
        counted.sort_by_key(|c| (c.seq, c.route.clone(), c.status, c.hour));
        counted
    }

    fn count(seq: u64, route: &str, status: u16, hour: i64, requests: u64) -> HourCount {
        HourCount {
            seq,
            route: route.into(),
            status,
            hour,
            requests,
        }
    }

    #[test]
    fn requests_are_counted_by_key_route_status_and_hour() {
        let analytics = Analytics::default();
        let (a, b) = (analytics.route_id("a"), analytics.route_id("b"));
        let t = 1_000 * HOUR;
        analytics.record(1, a, 200, t);
        analytics.record(1, a, 200, t + HOUR - 1);
        analytics.record(1, a, 429, t + 5);
        analytics.record(1, b, 200, t + 5);
        analytics.record(2, a, 200, t + HOUR);
        assert_eq!(
            sorted(analytics.drain(t + HOUR)),
            vec![
                count(1, "a", 200, t, 2),
                count(1, "a", 429, t, 1),
                count(1, "b", 200, t, 1),
                count(2, "a", 200, t + HOUR, 1),
            ]
        );
        assert!(analytics.drain(t + HOUR).is_empty(), "drained once");
    }

    #[test]
    fn only_the_current_hours_busy_cells_are_kept_past_a_drain() {
        let analytics = Analytics::default();
        let a = analytics.route_id("a");
        analytics.record(1, a, 200, 0);
        analytics.record(1, a, 200, HOUR);
        analytics.drain(HOUR);
        assert_eq!(analytics.len(), 1, "the past hour's cell is gone");
        analytics.drain(HOUR);
        assert!(analytics.is_empty(), "idle for a flush interval: gone");
    }

    #[test]
    fn restored_counts_are_drained_again() {
        let analytics = Analytics::default();
        let a = analytics.route_id("a");
        analytics.record(7, a, 503, 3 * HOUR);
        let drained = analytics.drain(3 * HOUR);
        analytics.restore(&drained);
        analytics.record(7, a, 503, 3 * HOUR);
        assert_eq!(analytics.drain(3 * HOUR), vec![count(7, "a", 503, 3 * HOUR, 2)]);
    }

    #[test]
    fn a_route_keeps_its_id_across_snapshots() {
        let analytics = Analytics::default();
        let first = analytics.route_id("orders");
        analytics.route_id("users");
        assert_eq!(analytics.route_id("orders"), first);
    }
}
