//! `keygate serve --config FILE`.

use std::path::Path;

use tokio::signal::unix::{signal, SignalKind};

use super::{runtime, Failure};
use crate::config::{self, Config};
use crate::control::store::{self, StoreError};
use crate::gateway::{Gateway, Options};

/// [`super::load`], with what would keep the gateway from serving checked too: no route or no
/// upstream, and the files `serve` reads (the TLS pair).
fn load_to_serve(path: &Path) -> Result<Config, Failure> {
    config::load_to_serve(path).map_err(|error| super::not_valid(path, &error))
}

pub fn run(path: std::path::PathBuf) -> Result<(), Failure> {
    let config = load_to_serve(&path)?;
    // Before anything binds: a store that is not there, or a file that is not one (an empty
    // file included), is the operator's to create. A locked store is waited for.
    if let Err(error @ (StoreError::Missing(_) | StoreError::NotAStore(_))) = store::check(&config.store.url)
    {
        return Err(super::store::failure(error, &config, &path));
    }
    runtime(config.server.worker_threads)?.block_on(async move {
        let options = Options::from_env(&config)?;
        let gateway = Gateway::start(config, options).await?;
        serve_until_stopped(gateway, Some(&path)).await
    })
}

/// Serves until SIGTERM or Ctrl-C; SIGHUP reloads the config from `path`.
pub async fn serve_until_stopped(gateway: Gateway, path: Option<&Path>) -> Result<(), Failure> {
    let signal_error = |e: std::io::Error| Failure::Runtime(format!("cannot install signal handlers: {e}"));
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    loop {
        tokio::select! {
            _ = hangup.recv() => match path {
                // Refusals are logged and counted there.
                Some(path) => {
                    let _ = gateway.reload_file(path);
                }
                None => tracing::info!("SIGHUP ignored: no config file to reload"),
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}
