//! The API Keys page (control plane, SPEC 9): static files compiled into the binary and served
//! at `/ui/` on the admin listener. The page talks only to the admin API under `/v1`, with the
//! token the person signs in with, so there is one API and no second way in.
//!
//! Every answer here, the 404s included, carries the headers of SPEC 9: a CSP that allows only
//! this origin's scripts and styles (no inline script, so no injected markup can run), no
//! framing, no sniffing, no caching and no referrer.

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::AdminBody;

/// The page's Content-Security-Policy. `require-trusted-types-for 'script'` makes the browser
/// refuse every string-to-DOM sink (`innerHTML`, `document.write`, ...) the page never uses.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
                       require-trusted-types-for 'script'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the page: its path under `/ui/`, content type and bytes.
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("", HTML, include_str!("ui/index.html")),
    ("style.css", CSS, include_str!("ui/style.css")),
    ("app.js", JS, include_str!("ui/app.js")),
    ("api.js", JS, include_str!("ui/api.js")),
    ("address.js", JS, include_str!("ui/address.js")),
    ("dom.js", JS, include_str!("ui/dom.js")),
    ("format.js", JS, include_str!("ui/format.js")),
    ("signin.js", JS, include_str!("ui/signin.js")),
    ("keys.js", JS, include_str!("ui/keys.js")),
    ("dialogs.js", JS, include_str!("ui/dialogs.js")),
    ("key.js", JS, include_str!("ui/key.js")),
    ("chart.js", JS, include_str!("ui/chart.js")),
    ("usage.js", JS, include_str!("ui/usage.js")),
    ("quota.js", JS, include_str!("ui/quota.js")),
    ("idle.js", JS, include_str!("ui/idle.js")),
    ("requests.js", JS, include_str!("ui/requests.js")),
    ("replicas.js", JS, include_str!("ui/replicas.js")),
    ("events.js", JS, include_str!("ui/events.js")),
    ("customers.js", JS, include_str!("ui/customers.js")),
    ("customer.js", JS, include_str!("ui/customer.js")),
    ("customer-form.js", JS, include_str!("ui/customer-form.js")),
];

/// Whether `path` belongs to the page: `/ui` and everything under `/ui/`.
pub fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Answers a request for `path` (one for which [`is_ui`] holds).
pub fn serve(method: &Method, path: &str) -> Response<AdminBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/ui" {
        let mut response = plain(StatusCode::PERMANENT_REDIRECT, "the page is at /ui/");
        response
            .headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/ui/"));
        return response;
    }
    let name = path.strip_prefix("/ui/").unwrap_or("");
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, kind, body)) => respond(StatusCode::OK, kind, Bytes::from_static(body.as_bytes())),
        None => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<AdminBody> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn respond(status: StatusCode, kind: &'static str, body: Bytes) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 5] = [
        (CONTENT_TYPE, kind),
        (CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (CACHE_CONTROL, "no-store"),
        (REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_and_error_carries_the_security_headers() {
        let paths = ASSETS.iter().map(|(name, _, _)| format!("/ui/{name}")).chain([
            "/ui".into(),
            "/ui/nope.js".into(),
            "/ui/../v1/keys".into(),
        ]);
        for path in paths {
            let response = serve(&Method::GET, &path);
            let headers = response.headers();
            assert_eq!(headers[CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(headers[CACHE_CONTROL], "no-store", "{path}");
            assert_eq!(headers[REFERRER_POLICY], "no-referrer", "{path}");
        }
    }

    #[test]
    fn content_types_follow_the_file_kind() {
        for (name, kind, _) in ASSETS {
            let expected = match name.rsplit_once('.').map(|(_, ext)| ext) {
                None => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some(other) => panic!("unexpected asset kind {other}"),
            };
            assert_eq!(*kind, expected, "{name}");
        }
    }

    #[test]
    fn the_bare_path_redirects_and_unknown_files_are_404() {
        let response = serve(&Method::GET, "/ui");
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[LOCATION], "/ui/");
        assert_eq!(serve(&Method::GET, "/ui/").status(), StatusCode::OK);
        assert_eq!(
            serve(&Method::GET, "/ui/missing.js").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::GET, "/ui/index.html").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::POST, "/ui/").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_csp_forbids_inline_script_and_framing() {
        assert!(!CSP.contains("unsafe-inline"));
        assert!(!CSP.contains("unsafe-eval"));
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert!(CSP.contains("script-src 'self'"));
        assert!(CSP.contains("require-trusted-types-for 'script'"));
    }

    /// The CSP would block inline script and handlers anyway; the page must not need them.
    #[test]
    fn no_asset_has_inline_script_handlers_or_style_attributes() {
        for (name, kind, body) in ASSETS {
            if *kind != HTML {
                continue;
            }
            let lower = body.to_ascii_lowercase();
            for (at, _) in lower.match_indices("<script") {
                let tag_end = at + lower[at..].find('>').expect("a closed script tag");
                let tag = &lower[at..tag_end];
                assert!(tag.contains(" src="), "{name}: inline <script> at {at}");
                assert!(
                    lower[tag_end + 1..].starts_with("</script>"),
                    "{name}: script with a body"
                );
            }
            assert!(!has_handler_attribute(&lower), "{name}: an on*= attribute");
            assert!(!lower.contains(" style="), "{name}: a style attribute");
        }
    }

    fn has_handler_attribute(html: &str) -> bool {
        html.split(|c: char| c.is_ascii_whitespace())
            .any(|word| word.starts_with("on") && word.contains('=') && !word.starts_with("on="))
    }

    #[test]
    fn the_handler_check_finds_handlers() {
        assert!(has_handler_attribute("<img src=x onerror=alert(1)>"));
        assert!(has_handler_attribute("<body onload=\"x()\">"));
        assert!(!has_handler_attribute("<p>one=two</p>"));
    }

    /// Scripts build the page with DOM calls: a user's text never goes through the HTML parser.
    #[test]
    fn no_script_writes_html() {
        for (name, kind, body) in ASSETS {
            if *kind != JS {
                continue;
            }
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!body.contains(sink), "{name} uses {sink}");
            }
        }
    }
}
