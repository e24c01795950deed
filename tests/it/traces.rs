//! Traces (SPEC section 7): with `[tracing] otlp_endpoint` every request is a span exported
//! over OTLP/HTTP, an incoming `traceparent` is continued, and the upstream receives one whose
//! parent is the gateway's span. The collector is a small OTLP/HTTP receiver on port 0 that
//! decodes the protobuf bodies it is posted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as SpanStatus, Span};
use prost::Message;
use tokio::net::TcpListener;

use crate::support::{eventually, spec, ConfigEdit, Harness, STANDARD};
use keygate::core::environment::Environment;

/// An OTLP/HTTP receiver: every span posted to `/v1/traces`, with its resource's service name.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let kept = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let kept = kept.clone();
                    async move { Ok::<_, Infallible>(receive(request, &kept).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, spans }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for `n` spans; fails the test if they do not come.
    async fn wait_for(&self, n: usize) -> Vec<Span> {
        let came = eventually(Duration::from_secs(10), || async { self.spans().len() >= n }).await;
        assert!(came, "{n} spans expected, got {:?}", self.spans());
        self.spans().into_iter().map(|(_, span)| span).collect()
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[tracing]\notlp_endpoint = \"http://{}\"\nexport_interval = \"20ms\"\n{extra}",
            self.addr
        )
    }
}

async fn receive(request: Request<Incoming>, kept: &Mutex<Vec<(String, Span)>>) -> Response<Full<Bytes>> {
    let right = request.method() == http::Method::POST
        && request.uri().path() == "/v1/traces"
        && request.headers().get("content-type").map(|v| v.as_bytes()) == Some(b"application/x-protobuf");
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let Some(export) = right
        .then(|| ExportTraceServiceRequest::decode(body).ok())
        .flatten()
    else {
        let mut refused = Response::new(Full::new(Bytes::new()));
        *refused.status_mut() = StatusCode::BAD_REQUEST;
        return refused;
    };
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                kept.lock().unwrap().push((service.clone(), span));
            }
        }
    }
    let mut answer = Response::new(Full::new(Bytes::new()));
    answer
        .headers_mut()
        .insert("content-type", "application/x-protobuf".parse().unwrap());
    answer
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span's attributes, each as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(n) => n.to_string(),
                Value::DoubleValue(x) => x.to_string(),
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span whose `http.response.status_code` is `status`.
fn with_status(spans: &[Span], status: u16) -> &Span {
    spans
        .iter()
        .find(|s| attributes(s).get("http.response.status_code") == Some(&status.to_string()))
        .unwrap_or_else(|| panic!("no span with status {status} in {spans:?}"))
}

#[tokio::test]
async fn admitted_and_refused_requests_each_export_one_span_with_their_outcome() {
    let collector = Collector::start().await;
    let h = Harness::with_config(STANDARD, &collector.config("service_name = \"edge-gw\"")).await;
    let (id, key) = h.key(&["customer:read"]).await;
    let (other_id, other) = h.key(&[]).await;

    assert_eq!(h.get("/v1/customers/c1", &key).await.status, StatusCode::OK);
    assert_eq!(
        h.call("GET", "/v1/customers/c1", None, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.get("/v1/customers/c1", &other).await.status,
        StatusCode::FORBIDDEN
    );
    let spans = collector.wait_for(3).await;
    assert_eq!(spans.len(), 3, "one span per request: {spans:?}");
    assert!(collector.spans().iter().all(|(service, _)| service == "edge-gw"));

    let admitted = with_status(&spans, 200);
    let a = attributes(admitted);
    assert_eq!(admitted.name, "keygate customers");
    assert_eq!(admitted.kind, SpanKind::Server as i32);
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["http.route"], "customers");
    assert_eq!(a["keygate.key_id"], id);
    assert_eq!(a["keygate.environment"], "production");
    assert_eq!(a["keygate.decision"], "allowed");
    assert!(!a.contains_key("keygate.reason"), "{a:?}");
    assert!(a["keygate.upstream_ms"].parse::<f64>().unwrap() >= 0.0, "{a:?}");
    assert!(admitted.end_time_unix_nano >= admitted.start_time_unix_nano);
    assert_ne!(
        admitted.status.as_ref().map_or(0, |s| s.code),
        SpanStatus::Error as i32
    );

    let unauthenticated = attributes(with_status(&spans, 401));
    assert_eq!(unauthenticated["keygate.decision"], "refused");
    assert_eq!(unauthenticated["keygate.reason"], "missing");
    assert_eq!(unauthenticated["http.route"], "customers");
    assert!(!unauthenticated.contains_key("keygate.key_id"));
    assert!(!unauthenticated.contains_key("keygate.upstream_ms"));

    let forbidden = attributes(with_status(&spans, 403));
    assert_eq!(forbidden["keygate.decision"], "refused");
    assert_eq!(forbidden["keygate.reason"], "permission");
    assert_eq!(forbidden["keygate.key_id"], other_id);
    assert_eq!(h.upstream.count(), 1, "only the admitted request went upstream");
}

#[tokio::test]
async fn unrouted_requests_and_upstream_failures_have_spans_too_5xx_as_errors() {
    let collector = Collector::start().await;
    let extra = format!(
        "[[upstream]]\nname = \"gone\"\nurl = \"http://127.0.0.1:1\"\n\n[[route]]\nname = \"gone\"\npath = \"/gone\"\nupstream = \"gone\"\n\n{}",
        collector.config("")
    );
    let h = Harness::with_config(STANDARD, &extra).await;
    let (_, key) = h.key(&[]).await;
    assert_eq!(h.get("/nowhere", &key).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.get("/gone", &key).await.status, StatusCode::BAD_GATEWAY);
    let spans = collector.wait_for(2).await;

    let unrouted = with_status(&spans, 404);
    assert_eq!(unrouted.name, "keygate");
    let u = attributes(unrouted);
    assert_eq!(u["keygate.reason"], "no_route");
    assert!(!u.contains_key("http.route"));

    let failed = with_status(&spans, 502);
    let f = attributes(failed);
    assert_eq!(f["keygate.decision"], "allowed", "it went upstream: {f:?}");
    assert!(f.contains_key("keygate.reason"), "{f:?}");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_and_the_upstream_gets_the_gateway_span_as_parent() {
    let collector = Collector::start().await;
    let h = Harness::with_config(STANDARD, &collector.config("")).await;
    let (_, key) = h.key(&[]).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let incoming = format!("00-{trace}-{parent}-01");
    let answer = h
        .call(
            "GET",
            "/v1/status",
            Some(&key),
            &[("traceparent", &incoming), ("tracestate", "vendor=opaque")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let spans = collector.wait_for(1).await;
    let span = &spans[0];
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), parent);
    let sent = h.upstream.last();
    assert_eq!(
        sent.headers["traceparent"],
        format!("00-{trace}-{}-01", hex(&span.span_id)).as_str()
    );
    assert_eq!(sent.headers["tracestate"], "vendor=opaque");

    // A root request: a new trace, the gateway's span its root and the upstream's parent.
    let answer = h.get("/v1/status", &key).await;
    assert_eq!(answer.status, StatusCode::OK);
    let spans = collector.wait_for(2).await;
    let root = spans.iter().find(|s| hex(&s.trace_id) != trace).unwrap();
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(
        h.upstream.last().headers["traceparent"],
        format!("00-{}-{}-01", hex(&root.trace_id), hex(&root.span_id)).as_str()
    );
}

#[tokio::test]
async fn sample_ratio_zero_exports_no_root_request_but_follows_a_sampled_parent() {
    let collector = Collector::start().await;
    let h = Harness::with_config(STANDARD, &collector.config("sample_ratio = 0")).await;
    let (_, key) = h.key(&[]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, StatusCode::OK);
    // The root request is not sampled: its trace goes on, unsampled, to the upstream.
    let unsampled = h.upstream.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        unsampled.starts_with("00-") && unsampled.ends_with("-00"),
        "{unsampled}"
    );
    // A parent's choice is followed: its span, exported after the root one would have been,
    // marks the end of what could come.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let incoming = format!("00-{trace}-b7ad6b7169203331-01");
    let answer = h
        .call("GET", "/v1/status", Some(&key), &[("traceparent", &incoming)])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let spans = collector.wait_for(1).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(hex(&spans[0].trace_id), trace);
    // And an unsampled parent is not traced either.
    let incoming = format!("00-{trace}-b7ad6b7169203331-00");
    h.call("GET", "/v1/status", Some(&key), &[("traceparent", &incoming)])
        .await;
    assert!(h.upstream.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .ends_with("-00"));
    let marker = format!("00-{trace}-b7ad6b7169203332-01");
    h.call("GET", "/v1/status", Some(&key), &[("traceparent", &marker)])
        .await;
    let spans = collector.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
}

#[tokio::test]
async fn off_by_default_the_traceparent_passes_untouched_and_nothing_is_exported() {
    let h = Harness::start().await;
    assert_eq!(
        h.gateway.shared.snapshot.load().config.tracing.otlp_endpoint,
        None
    );
    assert!(h.gateway.shared.traces.is_none());
    let (_, key) = h.create_key(spec(Environment::Production, &[])).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.call("GET", "/v1/status", Some(&key), &[("traceparent", incoming)])
        .await;
    assert_eq!(h.upstream.last().headers["traceparent"], incoming);
    h.get("/v1/status", &key).await;
    assert!(!h.upstream.last().headers.contains_key("traceparent"));
}

#[tokio::test]
async fn shutdown_exports_the_spans_still_queued() {
    let collector = Collector::start().await;
    // An export interval far past the test: only the shutdown's flush can send the span.
    let extra = format!(
        "[tracing]\notlp_endpoint = \"http://{}\"\nexport_interval = \"1h\"\n",
        collector.addr
    );
    let h = Harness::with_config(STANDARD, &extra).await;
    let (_, key) = h.key(&[]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, StatusCode::OK);
    assert!(collector.spans().is_empty());
    h.gateway.shutdown().await;
    assert_eq!(collector.spans().len(), 1);
}

#[test]
fn check_refuses_a_bad_collector_url_or_ratio_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = STANDARD.edit("{upstream}", "127.0.0.1:9");
    for (tracing, field) in [
        ("otlp_endpoint = \"collector:4318\"", "tracing.otlp_endpoint"),
        (
            "otlp_endpoint = \"grpc://collector:4317\"",
            "tracing.otlp_endpoint",
        ),
        ("sample_ratio = 1.5", "tracing.sample_ratio"),
        ("sample_ratio = -0.1", "tracing.sample_ratio"),
        ("export_interval = \"0s\"", "tracing.export_interval"),
        ("service_name = \"\"", "tracing.service_name"),
    ] {
        let text = format!("{base}\n[tracing]\n{tracing}\n");
        let line = text.lines().count();
        let error = keygate::config::parse(&text, dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("line {line}: {field}")),
            "{tracing}: {error}"
        );
    }
    let text =
        format!("{base}\n[tracing]\notlp_endpoint = \"https://otlp.example.com/\"\nsample_ratio = 0.25\n");
    let config = keygate::config::parse(&text, dir.path()).unwrap();
    assert_eq!(
        config.tracing.otlp_endpoint.as_deref(),
        Some("https://otlp.example.com")
    );
    assert_eq!(config.tracing.sample_ratio, 0.25);
    assert_eq!(config.tracing.service_name, "keygate");
    let printed = keygate::config::effective::Effective::of(&config).to_toml();
    assert!(
        printed.contains("[tracing]") && printed.contains("sample_ratio = 0.25"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_tracing_names_it_as_needing_a_restart() {
    let h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap()
        + "\n[tracing]\notlp_endpoint = \"http://127.0.0.1:9\"\n";
    let config = keygate::config::parse(&text, h.dir.path()).unwrap();
    let reloaded = h.gateway.reload(config).unwrap();
    assert_eq!(reloaded.restart_needed, vec!["tracing"]);
    assert!(
        h.gateway.shared.traces.is_none(),
        "the running gateway exports nothing till restarted"
    );
}
