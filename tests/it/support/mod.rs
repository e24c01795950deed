//! The integration harness: a recording upstream and a gateway started from a config, both on
//! port 0, driven through their public interfaces. No fixed ports, no sleeps as
//! synchronisation: waits poll with a deadline.

pub mod browser;
pub mod clients;
pub mod config;
pub mod postgres;
pub mod process;
pub mod relay;
pub mod services;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use keygate::control::keys::{KeyService, KeySpec};
use keygate::control::store;
use keygate::core::clock::{Clock, ManualClock};
use keygate::core::environment::Environment;
use keygate::core::secret::Hasher;
use keygate::gateway::{Gateway, Options};

pub use config::ConfigEdit;

/// The admin token every harness gateway runs with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghijkl";
/// The read-only admin token every harness gateway also takes.
pub const READ_TOKEN: &str = "test-read-token-0123456789abcdefghijkl";

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An upstream that records every request and answers 200 `{"upstream":"ok"}`. Paths starting
/// with `/slow` answer after 3 s.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let slow = parts.uri.path().starts_with("/slow");
                            log.lock().unwrap().push(Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            });
                            if slow {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(br#"{"upstream":"ok"}"#)));
                            response
                                .headers_mut()
                                .insert("x-upstream", "yes".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, received }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// The standard test config: one production route with permissions and a customer segment,
/// one staging route, one open route. `{upstream}` and `{extra}` are filled in.
pub const STANDARD: &str = r#"
[server]
listen = "127.0.0.1:0"
environment = "production"
trusted_proxies = ["127.0.0.2/32"]

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://keygate.db"
sync_interval = "100ms"

[auth]
failed_per_ip = "1000/m"

[rate_limit]
default = "1000/s"

[[upstream]]
name = "api"
url = "http://{upstream}"
timeout = "1s"

[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "api"
customer_param = "customer"
permissions = { GET = "customer:read", HEAD = "customer:read", "*" = "customer:write" }

[[route]]
name = "staging-customers"
path = "/staging/customers"
environment = "staging"
upstream = "api"

[[route]]
name = "status"
path = "/v1/status"
upstream = "api"

[[route]]
name = "slow"
path = "/slow"
upstream = "api"
"#;

/// A gateway on a temporary store, with its upstream and a key service on the same store.
pub struct Harness {
    pub gateway: Gateway,
    pub upstream: Upstream,
    pub keys: KeyService,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::with_config(STANDARD, "").await
    }

    /// Starts from `template` with `{upstream}` replaced and `extra` appended.
    pub async fn with_config(template: &str, extra: &str) -> Harness {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n{extra}",
            template.replace("{upstream}", &upstream.addr.to_string())
        );
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = keygate::config::parse(&text, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let clock = ManualClock::new(jiff::Timestamp::now());
        let shared_clock: Clock = Arc::new(clock.clone());
        let store = store::create(&config.store.url).unwrap();
        let keys = KeyService::new(store, Hasher::unkeyed(), shared_clock.clone(), store::Actor::Cli);
        let options = Options {
            hasher: Hasher::unkeyed(),
            admin_token: Some(ADMIN_TOKEN.into()),
            admin_read_token: Some(READ_TOKEN.into()),
            clock: shared_clock,
        };
        let gateway = Gateway::start(config, options).await.unwrap();
        loaded(&gateway).await;
        Harness {
            gateway,
            upstream,
            keys,
            clock,
            dir,
            config_path,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.proxy_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.admin_addr)
    }

    /// Creates a key and waits until the gateway knows it. Returns (id, secret).
    pub async fn create_key(&self, spec: KeySpec) -> (String, String) {
        let created = self.keys.create(spec).unwrap();
        self.gateway.sync_now().await.unwrap();
        (created.view.id, created.key)
    }

    /// A production key with `permissions`.
    pub async fn key(&self, permissions: &[&str]) -> (String, String) {
        self.create_key(spec(Environment::Production, permissions)).await
    }

    pub async fn sync(&self) {
        self.gateway.sync_now().await.unwrap();
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        let response = self.client.request(request).await.expect("the gateway answers");
        read(response).await
    }

    /// `method path` with the key as Basic password (when given) and extra headers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(self.url(path));
        if let Some(key) = key {
            builder = builder.header("authorization", basic(key));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.send(builder.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// Like [`Harness::call`], from another loopback address (e.g. a trusted proxy's).
    pub async fn call_from(
        &self,
        local: &str,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(Some(local.parse().unwrap()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let mut builder = Request::builder().method(method).uri(self.url(path));
        if let Some(key) = key {
            builder = builder.header("authorization", basic(key));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = client
            .request(builder.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        read(response).await
    }

    pub fn clock_now(&self) -> jiff::Timestamp {
        use keygate::core::clock::WallClock;
        self.clock.now()
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.call("GET", path, Some(key), &[]).await
    }

    pub async fn admin_get(&self, path: &str) -> Answer {
        let request = Request::get(self.admin_url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(request).await
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text()
    }

    /// The value of one series of `/metrics` now (see [`sample`]).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    /// This replica's recent access records of `request_id`, from `GET /v1/requests`.
    pub async fn records_of(&self, request_id: &str) -> Vec<serde_json::Value> {
        let answer = admin_call(&self.gateway, "GET", "/v1/requests?limit=1000", "").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let items = answer.json()["items"].as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .filter(|record| record["request_id"] == request_id)
            .collect()
    }

    /// [`Harness::records_of`], once there is at least one (waiting up to 10 s).
    pub async fn recorded(&self, request_id: &str) -> Vec<serde_json::Value> {
        let found = eventually(Duration::from_secs(10), || async {
            !self.records_of(request_id).await.is_empty()
        })
        .await;
        assert!(found, "no record of {request_id}");
        self.records_of(request_id).await
    }

    /// Sends raw bytes on a new connection and returns the raw response head and body.
    pub async fn raw(&self, bytes: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.gateway.proxy_addr)
            .await
            .unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

pub async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("X:{key}"))
    )
}

pub fn spec(environment: Environment, permissions: &[&str]) -> KeySpec {
    KeySpec {
        name: "test key".into(),
        environment,
        permissions: permissions.iter().map(|p| p.parse().unwrap()).collect(),
        rate_limit: None,
        customer_id: None,
        allowed_ips: Vec::new(),
        expires_at: None,
        metadata: serde_json::Map::new(),
        quota: None,
    }
}

/// Polls `check` until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `check` holds throughout `window`, polled; `false` as soon as it does not. For what
/// must *not* happen, which only a window can show.
pub async fn throughout<F, Fut>(window: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        if !check().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

/// Config reloads that succeeded, and that were refused.
pub const RELOAD_SUCCESSES: &str = r#"keygate_config_reloads_total{result="success"}"#;
pub const RELOAD_FAILURES: &str = r#"keygate_config_reloads_total{result="failure"}"#;

/// The value of one sample line of the Prometheus text, e.g.
/// `keygate_auth_failures_total{reason="unknown"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Harness {
    /// Another gateway from the same config file, on the same store and clock: a second
    /// replica, or this one after a restart.
    pub async fn another_gateway(&self) -> Gateway {
        let gateway = self.another_gateway_loading().await;
        loaded(&gateway).await;
        gateway
    }

    /// [`Harness::another_gateway`], answering before its key table has loaded.
    pub async fn another_gateway_loading(&self) -> Gateway {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let config = keygate::config::parse(&text, self.dir.path()).unwrap_or_else(|e| panic!("{e}"));
        Gateway::start(config, self.options()).await.unwrap()
    }

    /// What every harness gateway starts with: both admin tokens and the harness clock.
    pub fn options(&self) -> Options {
        Options {
            hasher: Hasher::unkeyed(),
            admin_token: Some(ADMIN_TOKEN.into()),
            admin_read_token: Some(READ_TOKEN.into()),
            clock: Arc::new(self.clock.clone()),
        }
    }
}

/// Waits (with a deadline) until the gateway's key table has loaded.
pub async fn loaded(gateway: &Gateway) {
    tokio::time::timeout(Duration::from_secs(30), gateway.loaded())
        .await
        .expect("the key table loads within 30 s");
}

/// `method path` on a gateway's admin listener with the admin token and a JSON `body`.
pub async fn admin_call(gateway: &Gateway, method: &str, path: &str, body: &str) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gateway.admin_addr))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    read(client.request(request).await.unwrap()).await
}

/// The Redis of the tests that need one: see [`services`].
pub fn redis_url() -> Option<String> {
    services::redis_url()
}
