//! Validation of `[tracing]`: the OTLP collector spans are exported to, and the sampling.

use http::Uri;

use super::raw::RawTracing;
use super::validate::Checker;
use super::Tracing;

pub(super) fn tracing(checker: &mut Checker, raw: &RawTracing) -> Tracing {
    let otlp_endpoint = checker.parsed(&raw.otlp_endpoint, "tracing.otlp_endpoint", |text| endpoint(text));
    let sample_ratio = checker
        .parsed(&raw.sample_ratio, "tracing.sample_ratio", |&ratio| {
            if (0.0..=1.0).contains(&ratio) {
                Ok(ratio)
            } else {
                Err(format!("{ratio} is not between 0.0 and 1.0"))
            }
        })
        .unwrap_or(Tracing::DEFAULT_SAMPLE_RATIO);
    let service_name = checker
        .parsed(&raw.service_name, "tracing.service_name", |name| {
            match name.trim() {
                "" => Err("must not be empty"),
                name => Ok(name.to_owned()),
            }
        })
        .unwrap_or_else(|| Tracing::DEFAULT_SERVICE_NAME.to_owned());
    let export_interval = checker.duration_or(
        &raw.export_interval,
        "tracing.export_interval",
        Tracing::DEFAULT_EXPORT_INTERVAL,
    );
    Tracing {
        otlp_endpoint,
        sample_ratio,
        service_name,
        export_interval,
    }
}

/// An `http://` or `https://` base URL without query or fragment; spans go to its
/// `/v1/traces`, as OTLP/HTTP's `OTEL_EXPORTER_OTLP_ENDPOINT` does.
fn endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() && !text.contains('#') => {
            Ok(text.trim_end_matches('/').to_owned())
        }
        _ => Err(format!(
            "{text:?} must be an http:// or https:// URL like \"http://collector:4318\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn collector_urls_are_http_or_https_bases() {
        for (text, expected) in [
            ("http://collector:4318", Some("http://collector:4318")),
            ("https://otlp.example.com/", Some("https://otlp.example.com")),
            ("http://127.0.0.1:4318/otlp", Some("http://127.0.0.1:4318/otlp")),
            ("grpc://collector:4317", None),
            ("collector:4318", None),
            ("http://collector:4318/?a=b", None),
            ("", None),
            ("http://", None),
        ] {
            assert_eq!(endpoint(text).ok().as_deref(), expected, "{text}");
        }
    }
}
