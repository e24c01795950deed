//! The admin listener (control plane): `/healthz`, `/readyz`, `/metrics` open, the admin API
//! under `/v1` behind the admin token, and the API Keys page at `/ui/` (static files that call
//! that API), on its own port so the data plane's port exposes nothing but the proxied API.

mod api;
pub mod ui;

pub use api::{MAX_BODY, OPENAPI};

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::keys::KeyService;
use crate::control::leaks::Leaks;
use crate::control::replicas::credential::{Audience, FleetKey, SCHEME};
use crate::control::replicas::Replica;
use crate::control::store::{Actor, Origin, TokenKind};
use crate::control::sync::KeySync;
use crate::control::usage::UsageFlusher;
use crate::core::environment::Environment;
use crate::core::key::KeyStatus;
use crate::core::secret::{Hasher, KeyHash};
use crate::proxy::client_ip::client_ip;
use crate::proxy::state::Shared;

type AdminBody = Full<Bytes>;

/// How the 401 of a gateway without an admin token starts; the page tells it by these words.
pub const NO_ADMIN_TOKEN: &str = "no admin token is configured";

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const PROMETHEUS: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

pub struct Admin {
    shared: Arc<Shared>,
    /// Records its changes as the admin API's; each request's own origin is set on a copy.
    keys: KeyService,
    /// Run after every change, so the change is in force on this gateway when it answers.
    sync: Arc<KeySync>,
    /// BLAKE3 of the admin tokens: compared in constant time, whatever the lengths.
    write_token: Option<KeyHash>,
    read_token: Option<KeyHash>,
    /// Derived from the admin token: signs this replica's fleet asks and checks the others'.
    fleet_key: Option<Arc<FleetKey>>,
    /// True once the gateway drains (SIGTERM): `/readyz` answers 503 until the process exits.
    draining: Option<watch::Receiver<bool>>,
    /// This replica's usage writer, for when it last wrote (`GET /v1/keys/{id}/usage`).
    usage: Option<Arc<UsageFlusher>>,
    /// Decides `POST /v1/leaks`.
    leaks: Option<Leaks>,
    /// This replica in the fleet: `GET /v1/replicas`, receipts, fleet-wide requests.
    replica: Option<Arc<Replica>>,
    /// The fleet's quota counters, when replicas lease quotas from the store.
    quota_leases: Option<Arc<crate::control::quota_leases::QuotaLeases>>,
}

/// The admin tokens, as the environment gives them.
pub struct Tokens {
    /// May do everything.
    pub write: Option<String>,
    /// May read: every `GET`, and `verify`.
    pub read: Option<String>,
}

/// Who is calling the admin API: the token's kind and the client's address.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller {
    token: TokenKind,
    client: IpAddr,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, keys: KeyService, sync: Arc<KeySync>, tokens: Tokens) -> Self {
        let hash = |token: String| Hasher::unkeyed().hash(token.as_bytes());
        // The write token when set: every replica of one config derives the same key.
        let fleet_key = tokens.write.as_ref().or(tokens.read.as_ref());
        Admin {
            shared,
            keys,
            sync,
            fleet_key: fleet_key.map(|token| Arc::new(FleetKey::derive(token))),
            write_token: tokens.write.map(hash),
            read_token: tokens.read.map(hash),
            draining: None,
            usage: None,
            leaks: None,
            replica: None,
            quota_leases: None,
        }
    }

    /// The fleet endpoints and receipts read the replicas' rows as `replica` sees them.
    pub fn with_replica(mut self, replica: Arc<Replica>) -> Self {
        self.replica = Some(replica);
        self
    }

    /// `POST /v1/leaks` reports to `leaks`.
    /// Quota states and changes go to the fleet's counters in the store.
    pub fn with_quota_leases(mut self, leases: Arc<crate::control::quota_leases::QuotaLeases>) -> Self {
        self.quota_leases = Some(leases);
        self
    }

    pub fn with_leaks(mut self, leaks: Leaks) -> Self {
        self.leaks = Some(leaks);
        self
    }

    /// Usage answers say when `flusher` last wrote this replica's counts to the store.
    pub fn with_usage(mut self, flusher: Arc<UsageFlusher>) -> Self {
        self.usage = Some(flusher);
        self
    }

    fn usage_flushed_at(&self) -> Option<jiff::Timestamp> {
        self.usage.as_ref().and_then(|usage| usage.flushed_at())
    }

    /// `/readyz` answers 503 once `draining` turns true, so that a load balancer sees the
    /// replica leave while it finishes its requests.
    pub fn with_drain(mut self, draining: watch::Receiver<bool>) -> Self {
        self.draining = Some(draining);
        self
    }

    fn is_draining(&self) -> bool {
        self.draining.as_ref().is_some_and(|draining| *draining.borrow())
    }

    /// This admin API as one caller uses it: its changes recorded with the caller's origin.
    fn for_caller(&self, caller: Caller) -> Admin {
        let origin = Origin {
            token: caller.token,
            client: caller.client,
        };
        Admin {
            shared: self.shared.clone(),
            keys: self.keys.acting_as(Actor::AdminApi(Some(origin))),
            sync: self.sync.clone(),
            write_token: None,
            read_token: None,
            fleet_key: self.fleet_key.clone(),
            draining: None,
            usage: self.usage.clone(),
            leaks: self.leaks.clone(),
            replica: self.replica.clone(),
            quota_leases: self.quota_leases.clone(),
        }
    }

    /// The kind of the admin token in `Authorization: Bearer <token>`, if it is one. Both
    /// comparisons always run, so the time taken tells nothing about which token is near.
    fn token_kind<B>(&self, request: &Request<B>) -> Option<TokenKind> {
        let mut presented = request.headers().get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (presented.next(), presented.next()) else {
            return None;
        };
        let token = value.as_bytes();
        let token = match token.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &token[7..],
            _ => return None,
        };
        let presented = Hasher::unkeyed().hash(token);
        let is = |expected: &Option<KeyHash>| expected.as_ref().is_some_and(|e| presented.ct_eq(e));
        match (is(&self.write_token), is(&self.read_token)) {
            (true, _) => Some(TokenKind::Write),
            (false, true) => Some(TokenKind::Read),
            (false, false) => None,
        }
    }

    /// A replica of the fleet asking for this one's recent requests with a fleet credential:
    /// read-only, and only that call (see [`crate::control::replicas::credential`]).
    fn fleet_caller<B>(&self, request: &Request<B>, peer: SocketAddr) -> Option<TokenKind> {
        let mut presented = request.headers().get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (presented.next(), presented.next()) else {
            return None;
        };
        let value = value.to_str().ok().filter(|v| v.starts_with(SCHEME))?;
        let (key, replica) = (self.fleet_key.as_ref()?, self.replica.as_ref()?);
        let advertise = replica.advertised()?;
        let audience = Audience {
            id: &replica.id,
            advertise: &advertise,
        };
        let path = request.uri().path_and_query().map_or("", |p| p.as_str());
        let now = self.shared.clock.now();
        match key.verify(value, request.method(), path, audience, now) {
            Ok(()) => Some(TokenKind::Read),
            Err(refused) => {
                let metrics = &self.shared.metrics;
                metrics
                    .fleet_credential_refusals
                    .with_label_values(&[refused.name()])
                    .inc();
                // Only a holder of the key can cause these; the others anyone can send, as
                // often as they like, so they are counted and not logged above debug.
                if refused.needed_the_key() {
                    tracing::warn!(%refused, %peer, "admin API: fleet credential refused");
                } else {
                    tracing::debug!(%refused, %peer, "admin API: fleet credential refused");
                }
                None
            }
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<AdminBody> {
        let path = request.uri().path();
        if ui::is_ui(path) {
            return ui::serve(request.method(), path);
        }
        if path == "/v1" || path.starts_with("/v1/") {
            let token = self
                .token_kind(&request)
                .or_else(|| self.fleet_caller(&request, peer));
            let Some(token) = token else {
                let mut response = json(StatusCode::UNAUTHORIZED, self.refusal().into());
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate admin\""),
                );
                return response;
            };
            let trusted = &self.shared.snapshot.load().config.server.trusted_proxies;
            let client = client_ip(peer.ip(), request.headers(), trusted);
            return api::serve(self, Caller { token, client }, request).await;
        }
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            (&Method::GET | &Method::HEAD, "/readyz") => self.readyz(),
            (&Method::GET | &Method::HEAD, "/metrics") => self.metrics(),
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
        }
    }

    /// The 401 body under `/v1`. A gateway started without an admin token accepts none, and
    /// says so (which variable to set), so that nobody keeps trying tokens at it: that it has
    /// none tells a caller nothing more than that every token fails.
    fn refusal(&self) -> String {
        if self.write_token.is_some() || self.read_token.is_some() {
            return r#"{"error":"admin token required"}"#.to_owned();
        }
        let variable = &self.shared.snapshot.load().config.admin.token_env;
        let error = format!(
            "{NO_ADMIN_TOKEN}: set the environment variable {variable} (admin.token_env) and restart the gateway"
        );
        serde_json::json!({ "error": error }).to_string()
    }

    /// 200 once the key table is loaded and, with `store.max_staleness`, no older than that:
    /// ready means the data plane admits keys. Otherwise 503 with the reason.
    fn readyz(&self) -> Response<AdminBody> {
        let shared = &self.shared;
        let loaded = shared.sync.is_loaded();
        let age_ms = shared.clock.now().as_millisecond() - shared.sync.last_success_ms();
        let config = shared.snapshot.load().config.clone();
        let last_error = shared.sync.last_error();
        let reason = self.not_ready();
        // Ready whether limits are shared or not: a replica limiting locally still serves.
        let rate_limit = match &shared.shared_limits {
            None => serde_json::json!({ "backend": "local" }),
            Some(limits) => serde_json::json!({ "backend": "redis", "shared": limits.is_shared() }),
        };
        let body = serde_json::json!({
            "ready": reason.is_none(),
            "reason": reason,
            "key_table_revision": shared.keys.revision(),
            "keys": shared.keys.len(),
            "last_sync_age_seconds": loaded.then(|| age_ms.max(0) as f64 / 1000.0),
            "max_staleness_seconds": config.store.max_staleness.map(|max| max.as_secs_f64()),
            "last_sync_error": last_error,
            "table_source": if shared.sync.from_snapshot() { "snapshot" } else { "store" },
            "rate_limit": rate_limit,
        });
        let status = match reason {
            None => StatusCode::OK,
            Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        json(status, body.to_string().into())
    }

    /// Why this replica is not ready, or `None` when it is: what `/readyz` and `keygate_ready`
    /// say.
    fn not_ready(&self) -> Option<String> {
        let shared = &self.shared;
        let loaded = shared.sync.is_loaded();
        let config = shared.snapshot.load().config.clone();
        let last_error = shared.sync.last_error();
        if self.is_draining() {
            Some("shutting down: finishing in-flight requests".to_owned())
        } else if !loaded {
            Some(match &last_error {
                Some(error) if error.starts_with("store unavailable") => error.clone(),
                Some(error) => format!("store unavailable: {error}"),
                None => "key table not loaded yet".to_owned(),
            })
        } else {
            shared.staleness(&config).map(|age_ms| {
                let max = config.store.max_staleness.unwrap_or_default();
                format!(
                    "key table is {:.1}s old, past store.max_staleness ({}s): the proxy answers 503",
                    age_ms as f64 / 1000.0,
                    max.as_secs_f64()
                )
            })
        }
    }

    fn metrics(&self) -> Response<AdminBody> {
        self.update_key_gauge();
        let metrics = &self.shared.metrics;
        metrics.ready.set(i64::from(self.not_ready().is_none()));
        let shared_limits = self.shared.shared_limits.as_ref();
        metrics
            .rate_limit_shared
            .set(i64::from(shared_limits.is_some_and(|limits| limits.is_shared())));
        self.export_key_requests();
        let dropped = &self.shared.metrics.log_lines_dropped;
        dropped.inc_by(crate::telemetry::logs::dropped_lines().saturating_sub(dropped.get()));
        let mut response = Response::new(Full::new(Bytes::from(self.shared.metrics.encode())));
        response.headers_mut().insert(CONTENT_TYPE, PROMETHEUS);
        response
    }

    /// `keygate_keys` by environment and status, counted at scrape time: expiry changes the
    /// status of a key without any write, so only a count at the moment is right.
    fn update_key_gauge(&self) {
        let now = self.shared.clock.now().as_second();
        let mut counts = [[0i64; 3]; 3];
        self.shared
            .keys
            .for_each_state(|environment, revoked, expires_at| {
                let status = match (revoked, expires_at <= now) {
                    (true, _) => 1,
                    (false, true) => 2,
                    (false, false) => 0,
                };
                counts[environment as usize][status] += 1;
            });
        let statuses = [KeyStatus::Active, KeyStatus::Revoked, KeyStatus::Expired];
        for env in Environment::ALL {
            for (i, status) in statuses.iter().enumerate() {
                self.shared
                    .metrics
                    .keys
                    .with_label_values(&[env.as_str(), status.as_str()])
                    .set(counts[env as usize][i]);
            }
        }
    }

    /// `keygate_key_requests_total`, from the usage counters the hot path keeps anyway.
    fn export_key_requests(&self) {
        let shared = &self.shared;
        shared.usage.export_totals(|seq, requests| {
            if let Some(key) = shared.keys.get(seq) {
                shared
                    .metrics
                    .key_requests
                    .with_label_values(&[&key.id, key.environment.as_str()])
                    .inc_by(requests);
            }
        });
    }

    /// Serves the admin API until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::error!(%error, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let admin = self.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(request, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn.into_owned()).await;
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}
