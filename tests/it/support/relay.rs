//! A TCP relay a test puts between a gateway and a service (Redis, a database), to cut the
//! service off and bring it back without touching the machine's own server (toxiproxy's idea).
//!
//! Cut, the relay forwards nothing: open connections go silent (a black hole, the worst case:
//! no error comes back, only time passes) and new ones are accepted and held silent too. Restored,
//! the held connections are closed, so clients reconnect, and new ones are forwarded again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Relay {
    /// A relay on a spare loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let signal = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pump(client, target, signal.subscribe()));
            }
        });
        Relay { addr, cut }
    }

    /// Stops forwarding: every connection goes silent.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again; connections held silent are closed.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

async fn pump(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    if !*cut.borrow_and_update() {
        let Ok(mut server) = TcpStream::connect(target).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = cut.wait_for(|cut| *cut) => {}
        }
    }
    // Cut: hold the client's socket, silent, until the relay is restored; then close it.
    let _ = cut.wait_for(|cut| !*cut).await;
}

/// The `host:port` of a `redis://` or `postgres://` URL, for a relay's target.
pub fn service_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("{host_port:?} from {url:?} is not an address: {e}"))
}
