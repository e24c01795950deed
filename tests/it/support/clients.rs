//! Clients the tests drive a gateway with beyond [`super::Harness`]'s own: a raw HTTP/1.1 GET,
//! an HTTP/2 connection in prior-knowledge mode, a TLS connection trusting given roots, and a
//! proxy GET on any [`Gateway`] (a second replica, say).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use keygate::gateway::Gateway;

use super::{basic, read, Answer};

/// `GET path` over HTTP/1.1 on a new connection to `addr` (`Connection: close`), with `key` as
/// Basic password when given: the status (0 when there is none) and the whole raw response.
pub async fn raw_get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let authorization = key.map(|key| format!("authorization: {}\r\n", basic(key)));
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: keygate.test\r\n{}connection: close\r\n\r\n",
        authorization.unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// An HTTP/2 connection (prior knowledge) to `addr`, driven by a task of its own.
pub async fn h2(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A TLS connection to `addr` as `localhost`, trusting only `roots`; the handshake must
/// succeed within 10 s.
pub async fn tls(addr: SocketAddr, roots: rustls::RootCertStore) -> TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("the handshake ends in time")
        .expect("the handshake succeeds")
}

/// `GET path` through `gateway`'s proxy with `key` as Basic password.
pub async fn get(gateway: &Gateway, path: &str, key: &str) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{}{path}", gateway.proxy_addr))
        .header("authorization", basic(key))
        .body(Full::new(Bytes::new()))
        .unwrap();
    read(client.request(request).await.unwrap()).await
}
