//! The floor under keygate's proxying cost: a reverse proxy on the same crates (hyper-util's
//! server, hyper's HTTP/1 client with a keep-alive pool, tokio on one thread) that checks
//! nothing and rewrites nothing. `benches/load/run` runs it beside keygate as `hyper-plain`, so
//! that what keygate's own steps cost shows as the difference between the two, measured in one
//! run, apart from what the HTTP stack costs.
//!
//! Given a third argument, it forwards only requests whose `Authorization` header is exactly
//! that, and answers every other request 401 with an empty body: the floor under a refusal.
//!
//!     cargo run --release --example hyper_floor -- 127.0.0.1:8081 http://127.0.0.1:7001 ['Basic eDpr...']
//!
//! Not part of the product: no timeouts, no limits, no graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

// The allocator keygate's binary uses, so that the two differ only in what keygate does.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Upstream = Client<HttpConnector, Incoming>;
type Body = Either<Incoming, Empty<Bytes>>;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN_ADDR UPSTREAM_URL [AUTHORIZATION]";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let upstream: Uri = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let admitted: Option<Arc<str>> = args.next().map(Into::into);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream, admitted))
}

async fn serve(listen: SocketAddr, upstream: Uri, admitted: Option<Arc<str>>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
    let server = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, mostly: wait it out, as keygate does.
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream, server) = (client.clone(), upstream.clone(), server.clone());
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<Incoming>| {
                let refused = admitted.as_deref().is_some_and(|admitted| {
                    request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .map(|v| v.as_bytes())
                        != Some(admitted.as_bytes())
                });
                forward(client.clone(), upstream.clone(), request, refused)
            });
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn forward(
    client: Upstream,
    upstream: Uri,
    mut request: http::Request<Incoming>,
    refused: bool,
) -> Result<http::Response<Body>, Infallible> {
    if refused {
        return Ok(answer(http::StatusCode::UNAUTHORIZED));
    }
    let mut parts = upstream.into_parts();
    parts.path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .or(Some(PathAndQuery::from_static("/")));
    *request.uri_mut() = Uri::from_parts(parts).expect("an upstream URL with a request's path");
    Ok(match client.request(request).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => answer(http::StatusCode::BAD_GATEWAY),
    })
}

fn answer(status: http::StatusCode) -> http::Response<Body> {
    let mut response = http::Response::new(Either::Right(Empty::new()));
    *response.status_mut() = status;
    response
}
