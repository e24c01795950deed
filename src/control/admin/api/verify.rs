//! `POST /v1/keys/verify`: the proxy's verdict on a key without forwarding anything, for
//! services that check keys themselves; the same table, the same checks
//! ([`AuthKey::usable`]) and the same limiter as the request path.

use std::num::NonZeroU32;

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{ok, read_json, Admin, AdminBody, Answer, ApiError, Caller};
use crate::core::environment::Environment;
use crate::core::permission::Permission;
use crate::core::secret::{check_format, Format};
use crate::proxy::error::AuthFailure;
use crate::proxy::limits::DraftPolicies;
use crate::proxy::pipeline::check_freshness;
use crate::proxy::state::Shared;
use crate::proxy::table::{AuthKey, Presented};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    key: String,
    #[serde(default)]
    permission: Option<Permission>,
    #[serde(default)]
    environment: Option<Environment>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Code {
    Valid,
    NotFound,
    Revoked,
    Expired,
    WrongEnvironment,
    InsufficientPermissions,
    RateLimited,
    QuotaExceeded,
}

#[derive(Serialize)]
struct Verdict {
    valid: bool,
    code: Code,
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<Environment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<Vec<Permission>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<VerdictLimit>,
}

#[derive(Serialize)]
struct VerdictLimit {
    limit: u32,
    remaining: u32,
    reset: u64,
}

/// `POST /v1/keys/verify`: the proxy's verdict on a key, from the same table and limits,
/// without forwarding anything. A check of a valid key counts as a use and against its limit.
/// A key that fails authentication counts against the failed-auth allowance of the caller
/// (its token's kind and address), as on the proxy: past it, such a check is 429 while a valid
/// key still gets its verdict.
pub(super) async fn verify(admin: &Admin, caller: Caller, request: Request<Incoming>) -> Answer {
    let body: VerifyBody = read_json(request).await?;
    let shared = &admin.shared;
    // Past store.max_staleness the proxy fails closed; so does its verdict here.
    if check_freshness(shared, &shared.snapshot.load()).is_err() {
        return Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable",
        ));
    }
    let verdict = |code, key: Option<&AuthKey>| Verdict {
        valid: matches!(code, Code::Valid),
        code,
        key_id: key.map(|k| k.id.to_string()),
        environment: key.map(|k| k.environment),
        customer_id: key.and_then(|k| k.customer_id.as_deref().map(str::to_owned)),
        permissions: key.map(|k| k.permissions.to_vec()),
        rate_limit: None,
    };
    let now = shared.clock.now().as_second();
    let (key, which) = match authenticate(shared, body.key.as_bytes(), now) {
        Ok(found) => found,
        Err((code, key)) => {
            let throttle = &shared.snapshot.load().verify_throttle;
            let caller = (caller.token.as_str(), caller.client);
            if let Some(retry_after) = throttle.throttled(caller) {
                return Ok(throttled(retry_after));
            }
            throttle.record_failure(caller);
            return Ok(ok(&verdict(code, key.as_deref())));
        }
    };
    let code = if body.environment.is_some_and(|env| env != key.environment) {
        Code::WrongEnvironment
    } else if body
        .permission
        .as_ref()
        .is_some_and(|p| !key.permissions.grants(p))
    {
        Code::InsufficientPermissions
    } else {
        Code::Valid
    };
    if !matches!(code, Code::Valid) {
        return Ok(ok(&verdict(code, Some(&key))));
    }
    let snapshot = shared.snapshot.load();
    // A verification counts like a request of cost 1: against the rate limit and the quota.
    let ask = shared.ask(&snapshot, &key, NonZeroU32::MIN);
    let limited = shared.limit(&key, &ask).await;
    let state = limited.key_decision().state();
    let code = match limited.refused.map(|refused| refused.by.is_quota()) {
        None => {
            let previous = matches!(which, Presented::Previous { .. });
            shared.record_use(&key, previous, now, snapshot.config.metrics.per_key);
            Code::Valid
        }
        Some(false) => Code::RateLimited,
        Some(true) => Code::QuotaExceeded,
    };
    let mut answer = verdict(code, Some(&key));
    answer.rate_limit = Some(VerdictLimit {
        limit: state.limit,
        remaining: state.remaining,
        reset: state.reset,
    });
    let mut response = ok(&answer);
    let draft = snapshot.config.rate_limit.draft_headers;
    let named = draft.then(|| DraftPolicies::of(&limited));
    state.write_headers(response.headers_mut(), named.as_ref());
    Ok(response)
}

/// A verdict other than valid, with the key when the secret is one of its (revoked, expired).
type NotUsable = (Code, Option<Box<AuthKey>>);

/// The key a secret presents, and which of its secrets, if it authenticates now.
fn authenticate(shared: &Shared, secret: &[u8], now: i64) -> Result<(AuthKey, Presented), NotUsable> {
    if secret.is_empty() || check_format(secret) == Format::Malformed {
        return Err((Code::NotFound, None));
    }
    let Some((key, which)) = shared.keys.lookup(&shared.hasher().hash(secret)) else {
        return Err((Code::NotFound, None));
    };
    match key.usable(which, now) {
        Ok(()) => Ok((key, which)),
        Err(AuthFailure::Revoked) => Err((Code::Revoked, Some(Box::new(key)))),
        Err(AuthFailure::Expired) => Err((Code::Expired, Some(Box::new(key)))),
        // A replaced secret past its grace period is unknown, as on the proxy.
        Err(
            AuthFailure::Unknown
            | AuthFailure::Missing
            | AuthFailure::Malformed
            | AuthFailure::WrongEnvironment,
        ) => Err((Code::NotFound, None)),
    }
}

/// 429 for a caller past its allowance of failed authentications, like the proxy's.
fn throttled(retry_after: u64) -> Response<AdminBody> {
    let mut response =
        ApiError::status(StatusCode::TOO_MANY_REQUESTS, "too many failed authentications").into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
}
