//! `POST /v1/leaks {"key","source","url"}`: any secret scanner's report of a leaked secret
//! (TruffleHog, GitGuardian, an internal one), decided by `control::leaks` as GitHub's and
//! GitLab's are, audited as actor `api` with the caller's token and address.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{ok, read_json, Admin, Answer, ApiError, Caller};
use crate::control::leaks::{Outcome, Report, Source};
use crate::control::store::Origin;

/// Longest `source` and `url` taken: a name, and a link to a line of a file.
const MAX_SOURCE: usize = 100;
const MAX_URL: usize = 2048;
/// Longer than any key, generated or imported.
const MAX_KEY: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeakBody {
    key: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

impl LeakBody {
    fn check(&self) -> Result<(), ApiError> {
        if self.key.is_empty() || self.key.len() > MAX_KEY {
            return Err(ApiError::bad("key", format!("must be 1 to {MAX_KEY} bytes")));
        }
        text(self.source.as_deref(), "source", MAX_SOURCE)?;
        text(self.url.as_deref(), "url", MAX_URL)
    }
}

/// An optional text field: at most `max` bytes, no control characters (it reaches the log).
fn text(value: Option<&str>, field: &'static str, max: usize) -> Result<(), ApiError> {
    match value {
        Some(text) if text.len() > max || text.chars().any(char::is_control) => Err(ApiError::bad(
            field,
            format!("must be at most {max} bytes without control characters"),
        )),
        _ => Ok(()),
    }
}

pub(super) async fn report(admin: &Admin, caller: Caller, request: Request<Incoming>) -> Answer {
    let body: LeakBody = read_json(request).await?;
    body.check()?;
    let Some(leaks) = admin.leaks.clone() else {
        return Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "leak reports are not set up",
        ));
    };
    let source = Source::Api(Some(Origin {
        token: caller.token,
        client: caller.client,
    }));
    let sync = admin.sync.clone();
    let scanner = body.source.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let outcome = leaks.report(&[Report::new(body.key, body.url)], source);
        // In force on this gateway before the answer, as every change through the API.
        if let Err(error) = sync.sync_once() {
            tracing::error!(%error, "admin API: leak report stored, but not yet in force on this gateway");
        }
        outcome
    })
    .await;
    let outcome = match decided {
        Ok(Ok(mut outcomes)) => outcomes.pop().unwrap_or(Outcome::Unknown),
        Ok(Err(error)) => {
            tracing::error!(%error, "admin API: leak report failed");
            return Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ));
        }
        Err(error) => {
            tracing::error!(%error, "admin API: leak report task failed");
            return Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ));
        }
    };
    tracing::info!(
        scanner = scanner.as_deref(),
        result = outcome.as_str(),
        "leak reported through the admin API"
    );
    Ok(ok(&serde_json::json!({
        "result": outcome.as_str(),
        "key_id": outcome.key_id(),
    })))
}
