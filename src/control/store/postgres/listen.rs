//! The PostgreSQL store's change feed (control plane): one connection per store `LISTEN`s on
//! the store's channel and wakes the key sync on each `NOTIFY`, which every change sends in its
//! own transaction; reconnecting with backoff, and proving itself alive, since a connection
//! through a network that drops packets never fails by itself.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::{postgres_error, Tx};
use crate::control::store::replicas::FleetSignals;
use crate::control::store::StoreError;

/// How often the listening connection proves it is alive; a silent one is replaced.
const LISTEN_CHECK: Duration = Duration::from_secs(5);
/// How long the listener waits before it reconnects, at first and at most.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Holds one connection that `LISTEN`s on the store's channel and passes each notification on,
/// reconnecting with backoff when it drops. After a reconnect it wakes the reader once, since
/// notifications sent meanwhile were lost. The fleet's own payloads (receipts, replica
/// reports) go to `fleet`, not to the key sync.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: String,
    changes: watch::Sender<u64>,
    fleet: FleetSignals,
) {
    let mut backoff = LISTEN_BACKOFF.0;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The LISTEN is answered through the connection, so both are polled together.
                let mut listening = std::pin::pin!(listening);
                let ready = loop {
                    tokio::select! {
                        result = &mut listening => break result.is_ok(),
                        message = messages.next() => if message.is_none() { break false },
                    }
                };
                if ready {
                    backoff = LISTEN_BACKOFF.0;
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                    relay_notifications(&client, &mut messages, &changes, &fleet).await;
                }
            }
            Err(error) => {
                tracing::warn!(error = %postgres_error(&error), retry_in_s = backoff.as_secs_f64(), "PostgreSQL change listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF.1);
    }
}

/// Passes each notification on until the connection fails or stops answering the periodic
/// check (a connection through a network that silently drops packets never fails by itself).
async fn relay_notifications(
    client: &tokio_postgres::Client,
    messages: &mut (impl futures_util::Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin),
    changes: &watch::Sender<u64>,
    fleet: &FleetSignals,
) {
    let pass_on = |note: &tokio_postgres::Notification| {
        if !fleet.take(note.payload()) {
            tracing::trace!(revision = note.payload(), "store change announced");
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    };
    let mut check = tokio::time::interval(LISTEN_CHECK);
    check.tick().await;
    loop {
        let alive = async {
            matches!(
                tokio::time::timeout(LISTEN_CHECK, client.simple_query("SELECT 1")).await,
                Ok(Ok(_))
            )
        };
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(note))) => pass_on(&note),
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(error = %postgres_error(&error), "PostgreSQL change listener lost its connection");
                    return;
                }
                None => return,
            },
            _ = check.tick() => {
                // The check's answer arrives through `messages`, so both are polled together.
                let mut alive = std::pin::pin!(alive);
                let answered = loop {
                    tokio::select! {
                        answered = &mut alive => break answered,
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(note))) => pass_on(&note),
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break false,
                        },
                    }
                };
                if !answered {
                    tracing::warn!("PostgreSQL change listener's connection stopped answering; reconnecting");
                    return;
                }
            }
        }
    }
}

/// Tells every listening gateway that `revision` is in, when the transaction commits.
pub(super) async fn announce(tx: &Tx<'_>, channel: &str, revision: u64) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &revision.to_string()])
        .await?;
    Ok(())
}
