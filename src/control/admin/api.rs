//! The admin API under `/v1` (SPEC 5): key and customer management over HTTP through the same
//! [`KeyService`] the CLI uses, so no lifecycle rule exists twice. The document that describes
//! it is `openapi.json` beside this file; the tests check every answer against it.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod customers;
mod idle;
mod leaks;
mod quota;
mod replicas;
mod usage;
mod verify;

use super::{json, Admin, AdminBody, Caller};
use crate::control::keys::{KeyError, KeyRequest, KeyService};
use crate::control::store::{KeyFilter, TokenKind, Usage};
use crate::core::key::KeyStatus;
use crate::core::secret::Secret;
use crate::core::units::parse_duration;
use crate::telemetry::recent::{Filter as RecentFilter, RecentRequest, StatusFilter};

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 64 * 1024;
/// Keys or events per page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;

pub const OPENAPI: &str = include_str!("openapi.json");

/// An answer that is not a success: status and the JSON error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    fn status(status: StatusCode, message: &str) -> Self {
        ApiError {
            status,
            message: message.to_owned(),
            field: None,
        }
    }

    fn into_response(self) -> Response<AdminBody> {
        let body = match &self.field {
            Some(field) => serde_json::json!({ "error": self.message, "field": field }),
            None => serde_json::json!({ "error": self.message }),
        };
        json(self.status, body.to_string().into())
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Invalid { field, message } => ApiError::bad(field, message),
            KeyError::NotFound(_) => ApiError::status(StatusCode::NOT_FOUND, "key not found"),
            KeyError::Conflict(why) => ApiError {
                status: StatusCode::CONFLICT,
                message: why,
                field: None,
            },
            KeyError::SecretInUse => ApiError {
                status: StatusCode::CONFLICT,
                message: error.to_string(),
                field: Some("key".into()),
            },
            KeyError::Store(error) => {
                tracing::error!(%error, "admin API: store failed");
                ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
            }
        }
    }
}

type Answer = Result<Response<AdminBody>, ApiError>;

/// Serves one request under `/v1`, the admin token already checked.
pub(super) async fn serve(admin: &Admin, caller: Caller, request: Request<Incoming>) -> Response<AdminBody> {
    let answer = if caller.token == TokenKind::Read && !reads(&request) {
        Err(ApiError::status(StatusCode::FORBIDDEN, "read-only admin token"))
    } else if reads(&request) {
        dispatch(&admin.for_caller(caller), caller, request).await
    } else {
        changed(&admin.for_caller(caller), caller, request).await
    };
    let mut response = answer.unwrap_or_else(ApiError::into_response);
    // Answers carry new secrets (create, regenerate) and key details: no cache keeps them.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A change, answered with its receipt when it asks to wait for the replicas (see
/// [`replicas`]): the one place every change passes.
async fn changed(admin: &Admin, caller: Caller, request: Request<Incoming>) -> Answer {
    let wait = replicas::wait_of(&request)?;
    let answer = dispatch(admin, caller, request).await?;
    match wait {
        Some(wait) if answer.status().is_success() => Ok(replicas::with_receipt(admin, answer, wait).await),
        _ => Ok(answer),
    }
}

/// Whether a request only reads: every `GET` and `HEAD`, and `verify`, which changes no key
/// (it counts a use, as a proxied request would).
fn reads<B>(request: &Request<B>) -> bool {
    match *request.method() {
        Method::GET | Method::HEAD => true,
        Method::POST => request.uri().path() == "/v1/keys/verify",
        _ => false,
    }
}

async fn dispatch(admin: &Admin, caller: Caller, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.strip_prefix("/v1/").unwrap_or("").split('/').collect();
    // HEAD is GET without the body (hyper leaves the body out).
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    match (segments.as_slice(), &method) {
        (["openapi.json"], &Method::GET) => Ok(openapi()),
        (["token"], &Method::GET) => Ok(ok(&serde_json::json!({ "access": caller.token.as_str() }))),
        (["requests"], &Method::GET) => requests(admin, &request).await,
        (["replicas"], &Method::GET) => replicas::list(admin).await,
        (["keys"], &Method::GET) => list(admin, &request).await,
        (["keys"], &Method::POST) => create(admin, request).await,
        (["keys", "verify"], &Method::POST) => verify::verify(admin, caller, request).await,
        (["keys", "verify"], _) => Ok(method_not_allowed("POST")),
        (["keys", id], &Method::GET) => quota::show(admin, id.to_string()).await,
        (["keys", id], &Method::PATCH) => quota::update(admin, id.to_string(), request).await,
        (["keys", id], &Method::DELETE) => {
            let id = id.to_string();
            changing(admin, move |keys| keys.delete(&id))
                .await
                .map(|()| no_content())
        }
        (["keys", id, "regenerate"], &Method::POST) => regenerate(admin, id.to_string(), request).await,
        (["keys", id, "revoke"], &Method::POST) => {
            let id = id.to_string();
            read_empty(request).await?;
            changing(admin, move |keys| keys.revoke(&id))
                .await
                .map(|key| ok(&key))
        }
        (["keys", id, "activate"], &Method::POST) => {
            let id = id.to_string();
            read_empty(request).await?;
            changing(admin, move |keys| keys.activate(&id))
                .await
                .map(|key| ok(&key))
        }
        (["keys", id, "quota"], &Method::POST) => quota::change(admin, id.to_string(), request).await,
        (["keys", id, "usage"], &Method::GET) => usage(admin, id.to_string()).await,
        (["keys", id, "events"], &Method::GET) => events(admin, id.to_string(), &request).await,
        (["customers"], &Method::GET) => customers::list(admin, &request).await,
        (["customers"], &Method::POST) => customers::create(admin, request).await,
        (["customers", id], &Method::GET) => customers::show(admin, id).await,
        (["customers", id], &Method::PATCH) => customers::update(admin, id, request).await,
        (["customers", id], &Method::DELETE) => customers::delete(admin, id).await,
        (["customers", id, "quota"], &Method::POST) => customers::change_quota(admin, id, request).await,
        (["customers", id, "events"], &Method::GET) => customers::events(admin, id, &request).await,
        (["idle-keys"], &Method::GET) => idle::idle_keys(admin, &request).await,
        (["usage"], &Method::GET) => usage::usage(admin, &request).await,
        (["leaks"], &Method::POST) => leaks::report(admin, caller, request).await,
        (shape, _) => match allowed(shape) {
            Some(allow) => Ok(method_not_allowed(allow)),
            None => Err(ApiError::status(StatusCode::NOT_FOUND, "not found")),
        },
    }
}

/// The methods a known path takes, for 405's `Allow`.
fn allowed(shape: &[&str]) -> Option<&'static str> {
    match shape {
        ["openapi.json" | "token" | "requests" | "replicas"] => Some("GET, HEAD"),
        ["keys"] => Some("GET, HEAD, POST"),
        ["keys", "verify"] => Some("POST"),
        ["keys", _] => Some("GET, HEAD, PATCH, DELETE"),
        ["keys", _, "regenerate" | "revoke" | "activate" | "quota"] => Some("POST"),
        ["keys", _, "usage" | "events"] => Some("GET, HEAD"),
        ["customers"] => Some("GET, HEAD, POST"),
        ["customers", _] => Some("GET, HEAD, PATCH, DELETE"),
        ["customers", _, "quota"] => Some("POST"),
        ["customers", _, "events"] => Some("GET, HEAD"),
        ["idle-keys"] => Some("GET, HEAD"),
        ["usage"] => Some("GET, HEAD"),
        ["leaks"] => Some("POST"),
        _ => None,
    }
}

fn method_not_allowed(allow: &'static str) -> Response<AdminBody> {
    let mut response = ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn openapi() -> Response<AdminBody> {
    json(StatusCode::OK, Bytes::from_static(OPENAPI.as_bytes()))
}

fn ok<T: Serialize>(value: &T) -> Response<AdminBody> {
    with_status(StatusCode::OK, value)
}

fn with_status<T: Serialize>(status: StatusCode, value: &T) -> Response<AdminBody> {
    match serde_json::to_vec(value) {
        Ok(body) => json(status, body.into()),
        Err(error) => {
            tracing::error!(%error, "admin API: answer did not serialize");
            ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "answer could not be written").into_response()
        }
    }
}

fn no_content() -> Response<AdminBody> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Runs a key service call on the blocking pool: the store is synchronous.
async fn blocking<T: Send + 'static>(
    admin: &Admin,
    call: impl FnOnce(&KeyService) -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    let keys = admin.keys.clone();
    match tokio::task::spawn_blocking(move || call(&keys)).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => {
            tracing::error!(%error, "admin API: store task failed");
            Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ))
        }
    }
}

/// Like [`blocking`] for a change: once it is in the store, this gateway's key table takes it
/// before the answer goes out, so a key revoked here is refused here from the next request on.
/// (Other gateways take it at their next sync.) If that sync fails, the change stands and is
/// answered as made; the failure is logged and counted, and the periodic sync brings it in.
async fn changing<T: Send + 'static>(
    admin: &Admin,
    call: impl FnOnce(&KeyService) -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    let sync = admin.sync.clone();
    blocking(admin, move |keys| {
        let changed = call(keys)?;
        if let Err(error) = sync.sync_once() {
            tracing::error!(%error, "admin API: change stored, but not yet in force on this gateway");
        }
        Ok(changed)
    })
    .await
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes into `T`; an empty body reads as `{}`.
async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = read_body(request).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(body_error)?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad("body", format!("not one JSON document: {e}")))?;
    Ok(value)
}

/// Endpoints that take no body take an empty one or `{}`.
async fn read_empty(request: Request<Incoming>) -> Result<(), ApiError> {
    read_json::<NoFields>(request).await.map(drop)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    if let Some(kind) = request.headers().get(CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or("").to_ascii_lowercase();
        let media_type = kind.split(';').next().unwrap_or("").trim();
        if media_type != "application/json" {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be application/json",
            ));
        }
    }
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(ApiError::bad("body", "the request body could not be read")),
    }
}

fn too_large() -> ApiError {
    ApiError::status(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
}

/// A JSON error naming the field at fault: its path (`rate_limit.per`), or the unknown,
/// missing or repeated field.
fn body_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let message = error.inner().to_string();
    let path = error.path().to_string();
    let unknown = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .map(|name| match path.as_str() {
            "." => name.to_owned(),
            // An unknown field's path ends with it already; a missing one's is its parent's.
            path if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
            parent => format!("{parent}.{name}"),
        });
    let field = match (unknown, error.inner().classify()) {
        (Some(field), _) => field,
        (None, serde_json::error::Category::Syntax | serde_json::error::Category::Eof) => "body".to_owned(),
        (None, _) if path == "." => "body".to_owned(),
        (None, _) => path,
    };
    // serde's message ends with " at line L column C"; keep only the reason, in the shape the
    // field takes rather than the Rust type it is read into.
    let message = message.split(" at line ").next().unwrap_or(&message);
    let message = crate::core::key::reword(&field, message);
    ApiError::bad(field, message)
}

/// The query string as pairs, refusing names the endpoint does not take.
fn query(request: &Request<Incoming>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let text = request.uri().query().unwrap_or("");
    let mut pairs = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = crate::core::percent::decode(name, true)
            .ok_or_else(|| ApiError::bad("query", "not valid percent-encoded UTF-8"))?;
        let value = crate::core::percent::decode(value, true)
            .ok_or_else(|| ApiError::bad(name.clone(), "not valid percent-encoded UTF-8"))?;
        if !known.contains(&name.as_str()) {
            return Err(ApiError::bad(
                name,
                format!("unknown query parameter; expected one of {}", known.join(", ")),
            ));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// `limit` and `cursor` of a paged listing.
fn paging(pairs: &[(String, String)]) -> Result<(u64, usize), ApiError> {
    let mut after = 0;
    let mut limit = DEFAULT_PAGE;
    for (name, value) in pairs {
        match name.as_str() {
            "cursor" => after = cursor(value)?,
            "limit" => limit = page_limit(value)?,
            _ => {}
        }
    }
    Ok((after, limit))
}

/// A `cursor` this API gave: row numbers the store keeps as signed 64-bit integers, or the
/// sequence number of a recent request.
fn cursor(value: &str) -> Result<u64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| ApiError::bad("cursor", "not a cursor this API returned"))
}

/// `limit`: 1 to [`MAX_PAGE`](crate::control::keys::MAX_PAGE).
fn page_limit(value: &str) -> Result<usize, ApiError> {
    let max = crate::control::keys::MAX_PAGE;
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::bad("limit", format!("must be 1 to {max}")))
}

/// A page of results, with the next page's cursor in `X-Next-Cursor` and a `Link` header.
fn paged<T: Serialize>(items: &[T], next: Option<u64>, request: &Request<Incoming>) -> Response<AdminBody> {
    with_next(ok(&items), next, request)
}

/// `response` with the next page's cursor in `X-Next-Cursor` and a `Link` header, if any.
fn with_next(
    mut response: Response<AdminBody>,
    next: Option<u64>,
    request: &Request<Incoming>,
) -> Response<AdminBody> {
    if let Some(next) = next {
        let others: Vec<&str> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .collect();
        let mut query = others.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        let link = format!("<{}?{query}cursor={next}>; rel=\"next\"", request.uri().path());
        if let Ok(link) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(http::header::LINK, link);
        }
        response
            .headers_mut()
            .insert("x-next-cursor", HeaderValue::from(next));
    }
    response
}

async fn list(admin: &Admin, request: &Request<Incoming>) -> Answer {
    let pairs = query(
        request,
        &["environment", "status", "customer_id", "limit", "cursor"],
    )?;
    let mut filter = KeyFilter::default();
    for (name, value) in &pairs {
        match name.as_str() {
            "environment" => {
                filter.environment = Some(
                    value
                        .parse()
                        .map_err(|e: String| ApiError::bad("environment", e))?,
                )
            }
            "status" => {
                let status: KeyStatus = value.parse().map_err(|e: String| ApiError::bad("status", e))?;
                if status == KeyStatus::Deleted {
                    return Err(ApiError::bad("status", "deleted keys are not listed"));
                }
                filter.status = Some(status);
            }
            "customer_id" => filter.customer_id = Some(value.clone()),
            _ => {}
        }
    }
    let (after, limit) = paging(&pairs)?;
    let page = blocking(admin, move |keys| keys.page(&filter, after, limit)).await?;
    Ok(paged(&page.keys, page.next, request))
}

/// `GET /v1/requests`: this replica's most recent access records, newest first, a page at a
/// time (`cursor`: older than the last record of the page before); with `scope=fleet`, every
/// live replica's ([`replicas::fleet_requests`]).
async fn requests(admin: &Admin, request: &Request<Incoming>) -> Answer {
    let pairs = query(request, &["key_id", "status", "limit", "cursor", "scope"])?;
    let mut filter = RecentFilter::default();
    let mut limit = DEFAULT_PAGE;
    let mut fleet = false;
    for (name, value) in &pairs {
        match name.as_str() {
            "key_id" => filter.key_id = Some(value.clone()),
            "status" => {
                let status = StatusFilter::parse(value)
                    .ok_or_else(|| ApiError::bad("status", "must be a status code (403) or a class (4xx)"))?;
                filter.status = Some(status);
            }
            "limit" => limit = page_limit(value)?,
            "cursor" => filter.before = Some(cursor(value)?),
            "scope" => {
                fleet = match value.as_str() {
                    "fleet" => true,
                    "local" => false,
                    _ => return Err(ApiError::bad("scope", "must be local or fleet")),
                }
            }
            _ => {}
        }
    }
    if fleet {
        return replicas::fleet_requests(admin, &filter, limit).await;
    }
    let recent = admin.shared.snapshot.load().recent.clone();
    // A struct, not `json!`: the records keep the access log's field order.
    #[derive(Serialize)]
    struct Recent {
        items: Vec<RecentRequest>,
        capacity: usize,
    }
    let (items, next) = recent.page(&filter, limit);
    let capacity = recent.capacity();
    Ok(with_next(ok(&Recent { items, capacity }), next, request))
}

/// `GET /v1/keys/{id}/usage`: the store's counts, and when this replica last wrote its own
/// there, so a reader knows how fresh the counts are.
async fn usage(admin: &Admin, id: String) -> Answer {
    let usage = blocking(admin, move |keys| keys.usage(&id)).await?;
    #[derive(Serialize)]
    struct KeyUsage {
        #[serde(flatten)]
        usage: Usage,
        flushed_at: Option<jiff::Timestamp>,
    }
    let flushed_at = admin.usage_flushed_at();
    Ok(ok(&KeyUsage { usage, flushed_at }))
}

async fn events(admin: &Admin, id: String, request: &Request<Incoming>) -> Answer {
    let pairs = query(request, &["limit", "cursor"])?;
    let (after, limit) = paging(&pairs)?;
    let (events, next) = blocking(admin, move |keys| keys.events(&id, after, limit)).await?;
    Ok(paged(&events, next, request))
}

async fn create(admin: &Admin, request: Request<Incoming>) -> Answer {
    let body: KeyRequest = read_json(request).await?;
    let (spec, secret) = body.into_spec(admin.shared.clock.now())?;
    match secret {
        None => {
            let created = changing(admin, move |keys| keys.create(spec)).await?;
            Ok(with_status(StatusCode::CREATED, &created))
        }
        Some(secret) => {
            let secret = Secret::import(secret).map_err(|e| ApiError::bad("key", e))?;
            let imported = changing(admin, move |keys| keys.import(spec, secret)).await?;
            Ok(with_status(StatusCode::CREATED, &imported))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegenerateBody {
    #[serde(default)]
    grace: Option<String>,
}

async fn regenerate(admin: &Admin, id: String, request: Request<Incoming>) -> Answer {
    let body: RegenerateBody = read_json(request).await?;
    let grace = body
        .grace
        .map(|text| parse_duration(&text).map_err(|e| ApiError::bad("grace", e.to_string())))
        .transpose()?;
    let regenerated = changing(admin, move |keys| keys.regenerate(&id, grace)).await?;
    Ok(ok(&regenerated))
}
