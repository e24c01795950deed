//! The leak reports' endpoints on the proxy listener (control plane, behind the proxy's
//! [`Intercept`] seam): GitHub's partner endpoint at `leaks.github.path`, GitLab's two at
//! `leaks.gitlab.path`. For each request, in order:
//!
//! 1. the method the endpoint takes (405 with `Allow` otherwise);
//! 2. the body, bounded by `leaks.max_body` by its `Content-Length` and as it streams (413),
//!    and in time: whole within [`BODY_TIMEOUT`] (408), so a client that trickles it cannot
//!    hold the connection;
//! 3. who sent it: GitHub's signature over the raw body, GitLab's token (401, nothing read
//!    further, nothing changed; counted as `result="unauthorized"`);
//! 4. the reports, parsed (400), then decided on the blocking pool ([`Leaks::report`]: the
//!    store is synchronous), and this gateway's key table brought up to date before the answer,
//!    so a revoked key is refused here from the next request on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::github::{self, Verifier, IDENTIFIER_HEADER, SIGNATURE_HEADER};
use super::gitlab::{self, REVOKE_PATH, TYPES_PATH};
use super::{LeakError, Leaks, Outcome, Report, Source};
use crate::control::sync::KeySync;
use crate::proxy::intercept::{Answer, Intercept};
use crate::telemetry::logs::millis;

/// Longest a report's body may take to arrive: GitHub's batch is a few hundred KiB at most.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The endpoints a config turns on, and what they share.
pub struct Endpoints {
    leaks: Leaks,
    /// Brings this gateway's key table up to date after a change.
    sync: Arc<KeySync>,
    max_body: usize,
    github: Option<GithubEndpoint>,
    gitlab: Option<GitlabEndpoint>,
}

struct GithubEndpoint {
    path: String,
    verifier: Verifier,
}

struct GitlabEndpoint {
    types_path: String,
    revoke_path: String,
    endpoint: gitlab::Endpoint,
}

/// Which endpoint a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Github,
    GitlabTypes,
    GitlabRevoke,
}

impl Endpoints {
    pub fn new(leaks: Leaks, sync: Arc<KeySync>, max_body: usize) -> Endpoints {
        Endpoints {
            leaks,
            sync,
            max_body,
            github: None,
            gitlab: None,
        }
    }

    /// With GitHub's endpoint at `path`, its keys checked by `verifier`.
    pub fn with_github(self, path: String, verifier: Verifier) -> Endpoints {
        Endpoints {
            github: Some(GithubEndpoint { path, verifier }),
            ..self
        }
    }

    /// With GitLab's two endpoints under `base`, presenting `token`.
    pub fn with_gitlab(self, base: &str, token: &str) -> Endpoints {
        let gitlab = GitlabEndpoint {
            types_path: format!("{base}{TYPES_PATH}"),
            revoke_path: format!("{base}{REVOKE_PATH}"),
            endpoint: gitlab::Endpoint::new(token, vec![gitlab::DEFAULT_TYPE.to_owned()]),
        };
        Endpoints {
            gitlab: Some(gitlab),
            ..self
        }
    }

    fn which(&self, path: &str) -> Option<Which> {
        if self.github.as_ref().is_some_and(|github| github.path == path) {
            return Some(Which::Github);
        }
        let gitlab = self.gitlab.as_ref()?;
        match path {
            _ if path == gitlab.types_path => Some(Which::GitlabTypes),
            _ if path == gitlab.revoke_path => Some(Which::GitlabRevoke),
            _ => None,
        }
    }

    /// The answer to a request for one of the endpoints.
    pub async fn serve(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let result = match self.which(request.uri().path()) {
            Some(Which::Github) => self.github(request).await,
            Some(Which::GitlabTypes) => self.gitlab_types(&request),
            Some(Which::GitlabRevoke) => self.gitlab_revoke(request).await,
            None => Err(Refused::NotFound),
        };
        result.unwrap_or_else(Refused::into_response)
    }

    async fn github(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refused> {
        let github = self.github.as_ref().ok_or(Refused::NotFound)?;
        only(&request, Method::POST, "POST")?;
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (identifier, signature) = (header(IDENTIFIER_HEADER), header(SIGNATURE_HEADER));
        let body = self.body(request).await?;
        let started = std::time::Instant::now();
        let verified = github
            .verifier
            .verify(&body, identifier.as_deref(), signature.as_deref())
            .await;
        tracing::debug!(
            verify_ms = millis(started.elapsed()),
            "GitHub alert's signature checked"
        );
        if let Err(error) = verified {
            tracing::warn!(%error, "GitHub leak report refused: bad signature");
            return Err(self.unauthorized(Source::Github));
        }
        let alerts = github::parse_alerts(&body).map_err(|_| Refused::BadBody)?;
        let reports = alerts.iter().map(github::Alert::report).collect();
        let outcomes = self.decide(reports, Source::Github).await?;
        Ok(json(StatusCode::OK, &github::feedback(&alerts, &outcomes)))
    }

    fn gitlab_types(&self, request: &Request<Incoming>) -> Result<Response<Full<Bytes>>, Refused> {
        let gitlab = self.gitlab.as_ref().ok_or(Refused::NotFound)?;
        only(request, Method::GET, "GET")?;
        if !gitlab.endpoint.authorized(authorization(request)) {
            return Err(self.unauthorized(Source::Gitlab));
        }
        let document = gitlab.endpoint.types_document();
        Ok(answer(StatusCode::OK, Bytes::from(document)))
    }

    async fn gitlab_revoke(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refused> {
        let gitlab = self.gitlab.as_ref().ok_or(Refused::NotFound)?;
        only(&request, Method::POST, "POST")?;
        if !gitlab.endpoint.authorized(authorization(&request)) {
            return Err(self.unauthorized(Source::Gitlab));
        }
        let body = self.body(request).await?;
        let revocations = gitlab
            .endpoint
            .parse_revocations(&body)
            .map_err(|_| Refused::BadBody)?;
        let reports = revocations.iter().map(gitlab::Revocation::report).collect();
        self.decide(reports, Source::Gitlab).await?;
        let mut response = answer(StatusCode::NO_CONTENT, Bytes::new());
        response.headers_mut().remove(CONTENT_TYPE);
        Ok(response)
    }

    /// The request body, at most `leaks.max_body` bytes.
    async fn body(&self, request: Request<Incoming>) -> Result<Bytes, Refused> {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body as u64) {
            return Err(Refused::TooLarge);
        }
        let body = Limited::new(request.into_body(), self.max_body).collect();
        match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Refused::TooLarge),
            Ok(Err(_)) => Err(Refused::BadBody),
            Err(_) => Err(Refused::Timeout),
        }
    }

    fn unauthorized(&self, source: Source) -> Refused {
        self.leaks.count(source, "unauthorized");
        Refused::Unauthorized
    }

    /// Decides the reports on the blocking pool, then syncs this gateway's key table.
    async fn decide(&self, reports: Vec<Report>, source: Source) -> Result<Vec<Outcome>, Refused> {
        let (leaks, sync) = (self.leaks.clone(), self.sync.clone());
        let decided = tokio::task::spawn_blocking(move || {
            let outcomes = leaks.report(&reports, source)?;
            if outcomes.iter().any(|outcome| outcome.key_id().is_some()) {
                let started = std::time::Instant::now();
                if let Err(error) = sync.sync_once() {
                    tracing::error!(%error, "leak report stored, but not yet in force on this gateway");
                }
                tracing::debug!(
                    sync_ms = millis(started.elapsed()),
                    "leak report in force on this gateway"
                );
            }
            Ok::<_, LeakError>(outcomes)
        })
        .await;
        match decided {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(error)) => {
                tracing::error!(%error, source = source.as_str(), "leak report failed; the scanner may retry");
                Err(Refused::Unavailable)
            }
            Err(error) => {
                tracing::error!(%error, "leak report task failed");
                Err(Refused::Unavailable)
            }
        }
    }
}

impl Intercept for Endpoints {
    fn claims(&self, path: &str) -> bool {
        self.which(path).is_some()
    }

    fn answer(self: Arc<Self>, request: Request<Incoming>) -> Answer {
        Box::pin(async move { self.serve(request).await })
    }
}

/// Why a request is refused; each a static JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    NotFound,
    Method(&'static str),
    TooLarge,
    Unauthorized,
    BadBody,
    Timeout,
    Unavailable,
}

impl Refused {
    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, body) = match self {
            Refused::NotFound => (StatusCode::NOT_FOUND, r#"{"error":"no route"}"#),
            Refused::Method(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed"}"#,
            ),
            Refused::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"error":"request body too large"}"#,
            ),
            Refused::Unauthorized => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#),
            Refused::BadBody => (StatusCode::BAD_REQUEST, r#"{"error":"bad request"}"#),
            Refused::Timeout => (StatusCode::REQUEST_TIMEOUT, r#"{"error":"request timeout"}"#),
            Refused::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"service unavailable"}"#,
            ),
        };
        let mut response = answer(status, Bytes::from_static(body.as_bytes()));
        if let Refused::Method(allow) = self {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

fn only(request: &Request<Incoming>, method: Method, allow: &'static str) -> Result<(), Refused> {
    match *request.method() == method {
        true => Ok(()),
        false => Err(Refused::Method(allow)),
    }
}

fn authorization(request: &Request<Incoming>) -> Option<&[u8]> {
    request.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes)
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => answer(status, body.into()),
        Err(_) => Refused::Unavailable.into_response(),
    }
}
