//! `keygate keys report-leak [--source S] [--url U]`: any secret scanner's report of a leaked
//! secret, read from stdin so it stays out of the shell's history and the process list, decided
//! by `control::leaks` as the admin API's `POST /v1/leaks` is, audited as actor `cli`.

use std::sync::Arc;

use clap::Args;

use super::{keys::read_line, Failure};
use crate::config::Config;
use crate::control::leaks::{Leaks, Outcome, Report, Source};
use crate::control::store::KeyStore;
use crate::core::clock::system_clock;
use crate::gateway::hasher_from_env;

#[derive(Debug, Args)]
pub struct ReportLeakArgs {
    /// Which scanner found it (trufflehog, gitguardian, ...), for the log.
    #[arg(long)]
    source: Option<String>,
    /// Where it was found, kept in the key's audit record.
    #[arg(long)]
    url: Option<String>,
}

pub fn report_leak(
    args: ReportLeakArgs,
    config: &Config,
    store: Arc<dyn KeyStore>,
    json: bool,
) -> Result<(), Failure> {
    if let Some(url) = args
        .url
        .as_deref()
        .filter(|url| url.chars().any(char::is_control))
    {
        return Err(Failure::Usage(format!("--url {url:?} holds control characters")));
    }
    let secret = read_line("report-leak")?;
    let leaks = Leaks::new(
        store,
        hasher_from_env(config)?,
        system_clock(),
        config.leaks.action,
    )
    .with_webhooks(config.lifecycle.webhook.is_some());
    let mut outcomes = leaks.report(&[Report::new(secret, args.url)], Source::Cli)?;
    let outcome = outcomes.pop().unwrap_or(Outcome::Unknown);
    tracing::info!(
        scanner = args.source.as_deref(),
        result = outcome.as_str(),
        "leak reported from the command line"
    );
    if json {
        let document = serde_json::json!({"result": outcome.as_str(), "key_id": outcome.key_id()});
        out!("{document:#}");
        return Ok(());
    }
    match &outcome {
        Outcome::Unknown => out!("Not a secret of this store: nothing changed."),
        Outcome::Revoked { key_id } => out!("Revoked {key_id}: its secret was reported leaked."),
        Outcome::Quarantined { key_id } => {
            out!("Quarantined {key_id}: it keeps working until it is regenerated.")
        }
        Outcome::GraceEnded { key_id } => {
            out!("Ended the grace period of {key_id}'s previous secret; its current secret works on.")
        }
        Outcome::AlreadyRevoked { key_id } => out!("{key_id} was revoked already; the report is recorded."),
    }
    Ok(())
}
