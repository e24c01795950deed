//! Traces (SPEC section 7, `[tracing]`): one span per request, exported over OTLP/HTTP.
//!
//! Data plane reads, gateway builds. The request path holds an `Option<Traces>`: off (the
//! default), a request pays one branch at its start, one when it goes upstream and one at its
//! end. On, its span is started as the request arrives (so its id is known before the request
//! goes upstream, in the `traceparent` the upstream receives), given the request's outcome in
//! the final phase and ended there; ended spans go to the SDK's batch processor, a bounded
//! queue (spans past it are dropped, with a warning in the log) that a thread of its own
//! exports every `export_interval`. The request path never waits on the collector.
//!
//! Sampling is parent-based: a request whose `traceparent` says sampled is traced, one that
//! says not sampled is not, and a root request (no valid `traceparent`) is traced with the
//! probability `sample_ratio`, decided by its trace id.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use opentelemetry_sdk::Resource;

use crate::config::Tracing;
use crate::core::outbound::{self, OutboundClient};

/// Ended spans waiting for export at most; past it new ones are dropped.
const QUEUE: usize = 2048;
/// Longest one export may take, retries included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a shutdown waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest collector answer read.
const MAX_ANSWER: usize = 64 * 1024;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The exporter and the tracer of a gateway with `[tracing] otlp_endpoint`.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Traces")
    }
}

impl Traces {
    /// The tracer `config` asks for, `None` when it names no collector. Within a Tokio runtime:
    /// the exports run on it.
    pub fn start(config: &Tracing) -> anyhow::Result<Option<Traces>> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(Transport::new()?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(config.export_interval)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let root = Sampler::TraceIdRatioBased(config.sample_ratio);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(root)))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("keygate");
        Ok(Some(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// The span of a request arriving now with `headers`: the child of the span its
    /// `traceparent` names, if valid, or the root of a new trace.
    pub fn begin(&self, headers: &HeaderMap) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder("keygate")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        RequestSpan { span: Box::new(span) }
    }

    /// Exports the spans still queued, for at most a few seconds.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "the last spans were not all exported at shutdown");
        }
    }
}

impl Drop for Traces {
    /// A gateway dropped without [`Traces::shutdown`] (a test's) shuts its exporter down in a
    /// thread of its own: the SDK's shutdown blocks, and would block a runtime thread.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("keygate-traces-stop".into())
            .spawn(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
    }
}

/// One request's span, from its arrival to its final phase. Boxed: the SDK's span is some
/// hundreds of bytes, and the request's context holds an `Option` of it, off too.
pub struct RequestSpan {
    span: Box<Span>,
}

/// What the final phase knows of a request, for its span.
pub struct Outcome<'a> {
    pub method: &'a http::Method,
    pub route: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub status: StatusCode,
    /// Whether the request went upstream.
    pub allowed: bool,
    pub reason: Option<&'static str>,
    pub upstream_time: Option<Duration>,
}

impl RequestSpan {
    /// Sets `traceparent` (the gateway's span as the parent) and `tracestate` on the request
    /// going upstream.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        let context = self.span.span_context();
        let parent = format!(
            "00-{:032x}-{:016x}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        );
        if let Ok(value) = HeaderValue::from_str(&parent) {
            headers.insert(TRACEPARENT, value);
        }
        let state = context.trace_state().header();
        match HeaderValue::from_str(&state) {
            Ok(value) if !state.is_empty() => {
                headers.insert(TRACESTATE, value);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// Ends the span with the request's outcome.
    pub fn end(mut self, outcome: &Outcome) {
        let span = &mut *self.span;
        if !span.is_recording() {
            return;
        }
        let name = match outcome.route {
            Some(route) => format!("keygate {route}"),
            None => "keygate".to_owned(),
        };
        span.update_name(name);
        let mut attributes = Vec::with_capacity(8);
        attributes.push(KeyValue::new("http.request.method", outcome.method.to_string()));
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(outcome.status.as_u16()),
        ));
        let decision = if outcome.allowed { "allowed" } else { "refused" };
        attributes.push(KeyValue::new("keygate.decision", decision));
        let texts = [
            ("http.route", outcome.route),
            ("keygate.key_id", outcome.key_id),
            ("keygate.environment", outcome.environment),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                attributes.push(KeyValue::new(name, value.to_owned()));
            }
        }
        if let Some(reason) = outcome.reason {
            attributes.push(KeyValue::new("keygate.reason", reason));
        }
        if let Some(time) = outcome.upstream_time {
            attributes.push(KeyValue::new("keygate.upstream_ms", time.as_secs_f64() * 1000.0));
        }
        span.set_attributes(attributes);
        if outcome.status.is_server_error() {
            span.set_status(Status::error(outcome.reason.unwrap_or("")));
        }
        span.end();
    }
}

/// The exporter's HTTP client: the hyper-util client the gateway has, on the gateway's runtime
/// (the SDK's export thread has none).
struct Transport {
    client: OutboundClient,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport")
    }
}

impl Transport {
    fn new() -> anyhow::Result<Transport> {
        Ok(Transport {
            client: outbound::client()?,
            runtime: tokio::runtime::Handle::try_current()?,
        })
    }
}

#[async_trait]
impl HttpClient for Transport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // The timer is made inside the task: made here, on the SDK's thread, it finds no runtime.
        let timed = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match timed.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the collector did not answer in time".into()),
            Err(_) => Err("the gateway's runtime stopped".into()),
        }
    }
}
