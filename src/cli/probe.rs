//! `keygate probe --config FILE`: exit 0 when the gateway of that config answers `/readyz` with
//! 200, 1 otherwise. A health check for an image without a shell or curl (a container's
//! `HEALTHCHECK`, a Kubernetes exec probe): one plain HTTP/1.1 request to the admin listener on
//! loopback, bounded in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::Failure;

/// Most of the answer the probe reads: the status line and `/readyz`'s small JSON body.
const MAX_ANSWER: u64 = 64 * 1024;

pub fn run(config: &Path, timeout: Duration) -> Result<(), Failure> {
    let config = super::load(config)?;
    let address = reachable(config.admin.listen);
    let (status, body) = readyz(address, timeout).map_err(|why| {
        let why = match why.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("no answer within {timeout:?}"),
            _ => why.to_string(),
        };
        Failure::Runtime(format!("not ready: {address} did not answer /readyz: {why}"))
    })?;
    if status == 200 {
        out!("ready");
        return Ok(());
    }
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|answer| answer["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("/readyz answered {status}"));
    Err(Failure::Runtime(format!("not ready: {reason}")))
}

/// The address to reach a listener on: its own, or loopback for a wildcard one.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// `GET /readyz`: the status code and the body, all within `timeout`.
fn readyz(address: SocketAddr, timeout: Duration) -> std::io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| std::io::Error::new(ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&address, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: keygate-probe\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let mut limited = (&stream).take(MAX_ANSWER);
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        match limited.read(&mut chunk)? {
            0 => break,
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
    parse(&answer).ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "not an HTTP answer"))
}

/// The status code and body of an HTTP/1.x answer read to its end.
fn parse(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        let cases = [
            ("0.0.0.0:9901", "127.0.0.1:9901"),
            ("[::]:9901", "[::1]:9901"),
            ("10.1.2.3:9901", "10.1.2.3:9901"),
        ];
        for (listen, expected) in cases {
            assert_eq!(
                reachable(listen.parse().unwrap()).to_string(),
                expected,
                "{listen}"
            );
        }
    }

    #[test]
    fn answers_are_read_for_their_status_and_body() {
        assert_eq!(
            parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}"),
            Some((503, "{}".to_owned()))
        );
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n\r\n"), Some((200, String::new())));
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse(b"HTTP/1.1 200"), None);
    }
}
