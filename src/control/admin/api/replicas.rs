//! The fleet on the admin API (SPEC 12): `GET /v1/replicas`, the receipt of any change asked
//! with `?wait=applied` or `Prefer: wait=N`, and `GET /v1/requests?scope=fleet`.
//!
//! The receipt is added in one place, around every change the API makes ([`super::serve`]):
//! whatever the change (a key's create, patch, regeneration, revocation, activation or
//! deletion, a leak report, a quota top-up), once it has answered with success the store's
//! revision is read and the answer waits for the live replicas to report it. The answer's JSON
//! object gets a `receipt` field; a change that answers 204 answers 200 with
//! `{"receipt":...}`. Past the wait, 202 with the replicas still `behind`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::{ok, Admin, AdminBody, Answer, ApiError};
use crate::control::replicas::fleet::Fleet;
use crate::control::replicas::gather::{gather, Ask};
use crate::control::replicas::receipt::{self, Receipt, DEFAULT_WAIT, MAX_WAIT};
use crate::telemetry::recent::{Filter, StatusFilter};

/// What a change asked to wait for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Wait {
    within: Duration,
    /// `Prefer: wait=N` set it: answered with `Preference-Applied`.
    preferred: bool,
}

/// The wait a change asks for: `?wait=applied`, `Prefer: wait=N` (seconds, at most
/// [`MAX_WAIT`]), or both; `None` for neither.
pub(super) fn wait_of<B>(request: &Request<B>) -> Result<Option<Wait>, ApiError> {
    let mut asked = None;
    for pair in request.uri().query().unwrap_or("").split('&') {
        if let Some(value) = pair.strip_prefix("wait=") {
            if value != "applied" {
                return Err(ApiError::bad("wait", "must be applied"));
            }
            asked = Some(Wait {
                within: DEFAULT_WAIT,
                preferred: false,
            });
        }
    }
    for value in request.headers().get_all("prefer") {
        let text = value.to_str().map_err(|_| ApiError::bad("Prefer", "not ASCII"))?;
        if let Some(seconds) = preferred_wait(text)? {
            asked = Some(Wait {
                within: Duration::from_secs(seconds),
                preferred: true,
            });
        }
    }
    Ok(asked)
}

/// The `wait` preference of a `Prefer` header (RFC 7240), in seconds; others are ignored.
fn preferred_wait(header: &str) -> Result<Option<u64>, ApiError> {
    for preference in header.split(',') {
        let token = preference.split(';').next().unwrap_or("").trim();
        let Some((name, value)) = token.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("wait") {
            continue;
        }
        let max = MAX_WAIT.as_secs();
        return match value.trim().trim_matches('"').parse::<u64>() {
            Ok(seconds) if seconds <= max => Ok(Some(seconds)),
            _ => Err(ApiError::bad(
                "Prefer",
                format!("wait must be a whole number of seconds from 0 to {max}"),
            )),
        };
    }
    Ok(None)
}

/// `response` (a change's success) with its receipt, once every live replica reports the
/// store's revision or `wait` runs out.
pub(super) async fn with_receipt(
    admin: &Admin,
    response: Response<AdminBody>,
    wait: Wait,
) -> Response<AdminBody> {
    let Some(replica) = admin.replica.clone() else {
        return response;
    };
    let store = replica.store().clone();
    let revision = match tokio::task::spawn_blocking(move || store.revision()).await {
        Ok(Ok(revision)) => revision,
        _ => admin.shared.keys.revision(),
    };
    let receipt = receipt::wait(&replica, revision, wait.within).await;
    let (mut parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut object = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => object,
        _ => serde_json::Map::new(),
    };
    let complete = match receipt {
        Ok(receipt) => {
            let complete = receipt.complete();
            object.insert("receipt".into(), to_value(&receipt));
            complete
        }
        Err(error) => {
            tracing::warn!(%error, "receipt: the replicas cannot be read");
            object.insert(
                "receipt".into(),
                serde_json::json!({ "error": format!("the replicas cannot be read: {error}") }),
            );
            false
        }
    };
    parts.status = match (complete, parts.status) {
        (false, _) => StatusCode::ACCEPTED,
        (true, StatusCode::NO_CONTENT) => StatusCode::OK,
        (true, status) => status,
    };
    parts.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if wait.preferred {
        let applied = format!("wait={}", wait.within.as_secs());
        if let Ok(applied) = HeaderValue::from_str(&applied) {
            parts.headers.insert("preference-applied", applied);
        }
    }
    let body = Value::Object(object).to_string();
    Response::from_parts(parts, Full::new(Bytes::from(body)))
}

fn to_value(receipt: &Receipt) -> Value {
    serde_json::to_value(receipt).unwrap_or(Value::Null)
}

/// `GET /v1/replicas`: the live replicas, each flagged (see [`Fleet`]).
pub(super) async fn list(admin: &Admin) -> Answer {
    let Some(replica) = admin.replica.clone() else {
        return Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "replicas are not recorded",
        ));
    };
    let store = replica.store().clone();
    let live_since = replica.live_since();
    let rows = match tokio::task::spawn_blocking(move || store.replicas(live_since)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::error!(%error, "admin API: cannot read the replicas");
            return Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ));
        }
        Err(error) => {
            tracing::error!(%error, "admin API: replicas task failed");
            return Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ));
        }
    };
    Ok(ok(&Fleet::new(&rows, &replica.id)))
}

/// `GET /v1/requests?scope=fleet`: this replica's records and every other live replica's,
/// asked with a fleet credential for each (never the caller's token: see
/// [`crate::control::replicas::credential`]).
pub(super) async fn fleet_requests(admin: &Admin, filter: &Filter, limit: usize) -> Answer {
    if filter.before.is_some() {
        return Err(ApiError::bad(
            "cursor",
            "scope=fleet answers one page, newest first",
        ));
    }
    let (Some(replica), Some(key)) = (admin.replica.clone(), admin.fleet_key.clone()) else {
        return Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "replicas are not recorded",
        ));
    };
    let store = replica.store().clone();
    let live_since = replica.live_since();
    let rows = tokio::task::spawn_blocking(move || store.replicas(live_since))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"))?;
    let others: Vec<_> = rows.into_iter().filter(|row| row.id != replica.id).collect();
    let recent = admin.shared.snapshot.load().recent.clone();
    let own = recent
        .newest(filter, limit)
        .iter()
        .filter_map(|record| serde_json::to_value(record).ok())
        .collect();
    let query = fleet_query(filter, limit);
    let asked = Ask {
        query: &query,
        key: &key,
        now: admin.shared.clock.now(),
    };
    let gathered = gather(&replica.id, own, &others, &asked, limit).await;
    Ok(ok(&gathered))
}

/// The filters and limit asked of each replica, written from what this one parsed (never the
/// caller's text passed on): `key_id`, `status`, `limit`.
fn fleet_query(filter: &Filter, limit: usize) -> String {
    let mut pairs = Vec::new();
    if let Some(key_id) = &filter.key_id {
        pairs.push(format!("key_id={}", encode(key_id)));
    }
    match filter.status {
        Some(StatusFilter::Code(code)) => pairs.push(format!("status={code}")),
        Some(StatusFilter::Class(class)) => pairs.push(format!("status={class}xx")),
        None => {}
    }
    pairs.push(format!("limit={limit}"));
    pairs.join("&")
}

/// `text` percent-encoded but for RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(char::from(byte));
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, prefer: Option<&str>) -> Request<()> {
        let mut builder = Request::post(uri);
        if let Some(prefer) = prefer {
            builder = builder.header("prefer", prefer);
        }
        builder.body(()).unwrap()
    }

    fn within(uri: &str, prefer: Option<&str>) -> Result<Option<u64>, String> {
        wait_of(&request(uri, prefer))
            .map(|wait| wait.map(|w| w.within.as_secs()))
            .map_err(|e| e.message)
    }

    #[test]
    fn the_fleet_query_is_written_from_the_parsed_filter() {
        let filter = Filter {
            key_id: Some("key_a&scope=fleet é".to_owned()),
            status: Some(StatusFilter::Class(4)),
            before: None,
        };
        assert_eq!(
            fleet_query(&filter, 20),
            "key_id=key_a%26scope%3Dfleet%20%C3%A9&status=4xx&limit=20"
        );
        let filter = Filter {
            status: Some(StatusFilter::Code(403)),
            ..Filter::default()
        };
        assert_eq!(fleet_query(&filter, 1000), "status=403&limit=1000");
    }

    #[test]
    fn a_wait_is_asked_by_the_query_or_the_prefer_header() {
        assert_eq!(within("/v1/keys/k/revoke", None), Ok(None));
        assert_eq!(within("/v1/keys/k/revoke?wait=applied", None), Ok(Some(5)));
        assert_eq!(within("/v1/keys/k/revoke", Some("wait=2")), Ok(Some(2)));
        assert_eq!(
            within("/v1/keys/k/revoke?wait=applied", Some("return=minimal, wait=10")),
            Ok(Some(10))
        );
        assert_eq!(within("/v1/keys/k/revoke", Some("respond-async")), Ok(None));
    }

    #[test]
    fn a_wait_past_the_bound_or_of_another_kind_is_refused() {
        assert!(within("/v1/keys/k/revoke", Some("wait=31")).is_err());
        assert!(within("/v1/keys/k/revoke", Some("wait=soon")).is_err());
        assert!(within("/v1/keys/k/revoke?wait=committed", None).is_err());
    }
}
