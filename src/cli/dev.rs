//! `keygate serve --dev`: a working gateway with nothing to set up. A temporary store, a
//! built-in echo upstream, one route, one demo key and an admin token, and curl lines to paste.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::distr::{Alphanumeric, SampleString};
use tokio::net::TcpListener;

use super::{runtime, serve::serve_until_stopped, Failure};
use crate::control::keys::{KeyService, KeySpec};
use crate::control::store::{self, Actor};
use crate::core::clock::system_clock;
use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::secret::Hasher;
use crate::gateway::{Gateway, Options};

const PREFERRED_PROXY: &str = "127.0.0.1:8080";
const PREFERRED_ADMIN: &str = "127.0.0.1:9901";

/// The addresses `serve --dev` was asked to listen on; `None` takes the preferred one, or any
/// free port when that is taken.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

pub fn run(addresses: Addresses) -> Result<(), Failure> {
    runtime(None)?.block_on(async {
        let dir = tempfile::tempdir()
            .map_err(|e| Failure::Runtime(format!("cannot make a temporary folder: {e}")))?;
        let proxy = chosen_or_free(addresses.listen, "--listen", PREFERRED_PROXY).await?;
        let admin = chosen_or_free(addresses.admin_listen, "--admin-listen", PREFERRED_ADMIN).await?;
        let upstream = echo_upstream().await?;
        let config_text = dev_config(proxy, admin, upstream);
        let config = crate::config::parse(&config_text, dir.path())
            .map_err(|e| Failure::Runtime(format!("the built-in dev config is invalid: {e}")))?;
        let store = store::create(&config.store.url).map_err(|e| Failure::Runtime(e.to_string()))?;
        let service = KeyService::new(store, Hasher::unkeyed(), system_clock(), Actor::Cli);
        let demo = service.create(demo_key())?;
        // Long enough to sign fleet requests (credential::MIN_TOKEN_CHARS), like any token should be.
        let admin_token = format!("adm_{}", Alphanumeric.sample_string(&mut rand::rng(), 32));
        let options = Options {
            hasher: Hasher::unkeyed(),
            admin_token: Some(admin_token.clone()),
            admin_read_token: None,
            clock: system_clock(),
        };
        let gateway = Gateway::start(config, options).await?;
        gateway.loaded().await;
        print_welcome(&gateway, &demo.key, &admin_token);
        serve_until_stopped(gateway, None).await
    })
}

fn demo_key() -> KeySpec {
    KeySpec {
        name: "Demo key".into(),
        environment: Environment::Development,
        permissions: vec!["customer:read".parse().expect("a valid permission")],
        rate_limit: Some(RateLimitSpec::from_rate(
            "5/s".parse().expect("a valid rate"),
            None,
        )),
        customer_id: None,
        allowed_ips: Vec::new(),
        expires_at: None,
        metadata: serde_json::Map::new(),
        quota: None,
    }
}

fn dev_config(proxy: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{proxy}"
environment = "development"

[admin]
listen = "{admin}"

[store]
url = "sqlite://keygate-dev.db"

[[upstream]]
name = "echo"
url = "http://{upstream}"

[[route]]
name = "customers"
path = "/v1/customers/{{customer}}"
upstream = "echo"
customer_param = "customer"
permissions = {{ GET = "customer:read", HEAD = "customer:read", "*" = "customer:write" }}
"#
    )
}

/// The address given with `flag`, which must be free (an address asked for is not swapped for
/// another); without one, [`free_or_any`].
async fn chosen_or_free(
    chosen: Option<SocketAddr>,
    flag: &str,
    preferred: &str,
) -> Result<SocketAddr, Failure> {
    match chosen {
        // Port 0 stays 0: the gateway takes a free port and the welcome shows which.
        Some(address) => match TcpListener::bind(address).await {
            Ok(_) => Ok(address),
            Err(error) => Err(Failure::Runtime(format!(
                "cannot listen on {address} ({flag}): {error}"
            ))),
        },
        None => Ok(free_or_any(preferred).await),
    }
}

/// The preferred address if it is free, else any free port on loopback.
async fn free_or_any(preferred: &str) -> SocketAddr {
    let preferred: SocketAddr = preferred.parse().expect("a valid address");
    match TcpListener::bind(preferred).await {
        Ok(listener) => listener.local_addr().unwrap_or(preferred),
        Err(_) => {
            let any = TcpListener::bind("127.0.0.1:0")
                .await
                .and_then(|l| l.local_addr());
            any.unwrap_or(preferred)
        }
    }
}

/// A tiny upstream that answers every request with what it received, as JSON.
async fn echo_upstream() -> Result<SocketAddr, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::Runtime(format!("cannot start the echo upstream: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        while let Ok((stream, _)) = listener.accept().await {
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(|request| async move { Ok::<_, Infallible>(echo(request)) });
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

fn echo(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "upstream": "keygate dev echo",
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "headers": headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Where a curl on this machine reaches a listener: a wildcard address (`0.0.0.0`, `[::]`) is
/// not one to connect to, so its loopback stands in.
fn reachable(mut address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    address
}

fn print_welcome(gateway: &Gateway, key: &str, admin_token: &str) {
    let base = format!("http://{}", reachable(gateway.proxy_addr));
    let url = format!("{base}/v1/customers/acme");
    println!(
        r#"
keygate is running in dev mode (temporary store, built-in echo upstream).

  gateway  {base}
  admin    http://{admin}   (admin API under /v1, /metrics, /healthz, /readyz)
  page     http://{admin}/ui/   (the API Keys page: sign in with the admin token)
  demo key {key}
           development, customer:read, 5 requests/s
  admin token {admin_token}

Try it:

  # 200: the key may read customers; the echo shows what the upstream received
  curl -i -u X:{key} {url}

  # 401: a key that does not exist
  curl -i -u X:kg_dev_000000000000000000000000000000000000000 {url}

  # 403: the key lacks customer:write
  curl -i -u X:{key} -X POST {url}

  # 429: more than 5 requests in a second
  for i in $(seq 1 10); do curl -s -o /dev/null -w '%{{http_code}}\n' -u X:{key} {url}; done

  # metrics
  curl -s http://{admin}/metrics | grep '^keygate_requests_total'

  # admin API: list keys, create one, read the API's OpenAPI document
  curl -s -H 'Authorization: Bearer {admin_token}' http://{admin}/v1/keys
  curl -s -H 'Authorization: Bearer {admin_token}' -H 'Content-Type: application/json' \
       -d '{{"name":"mine","environment":"development","permissions":["customer:*"]}}' http://{admin}/v1/keys
  curl -s -H 'Authorization: Bearer {admin_token}' http://{admin}/v1/openapi.json

Ctrl-C stops it and removes the temporary store.
"#,
        admin = reachable(gateway.admin_addr),
    );
}
