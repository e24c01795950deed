//! The API Keys page's files as the admin listener serves them, without a browser: every file
//! the page loads (followed from index.html through its imports) answers with the headers of
//! SPEC 9 and its content type, and no HTML carries inline script, handlers or styles.

use crate::support::Harness;
use http::StatusCode;

/// The files a served text refers to: `src`/`href` under /ui/ and `from "./x.js"` imports.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (marker, end) in [("src=\"/ui/", '"'), ("href=\"/ui/", '"'), ("from \"./", '"')] {
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            found.push(format!("/ui/{}", &rest[..rest.find(end).unwrap()]));
        }
    }
    found
}

/// Without a browser: every file the page loads is served with the headers of SPEC 9 and its
/// type, no HTML carries inline script or handlers, and the page itself needs no token.
#[tokio::test]
async fn the_page_is_served_whole_with_its_security_headers() {
    let harness = Harness::start().await;
    let bare = harness.admin_get("/ui").await;
    assert_eq!(bare.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.headers["location"], "/ui/");

    let mut pending = vec!["/ui/".to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let answer = harness.admin_get(&path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        let headers = &answer.headers;
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        let kind = headers["content-type"].to_str().unwrap();
        let text = answer.text();
        match path.rsplit_once('.').map(|(_, ext)| ext) {
            Some("js") => assert!(kind.starts_with("text/javascript"), "{path}: {kind}"),
            Some("css") => assert!(kind.starts_with("text/css"), "{path}: {kind}"),
            _ => {
                assert!(kind.starts_with("text/html"), "{path}: {kind}");
                let lower = text.to_ascii_lowercase();
                assert!(
                    !lower.contains("<script>") && !lower.contains("<script type=\"module\">"),
                    "{path}: inline script"
                );
                let handler = lower
                    .split_ascii_whitespace()
                    .any(|word| word.starts_with("on") && word.contains('='));
                assert!(!handler, "{path}: an on*= attribute");
                assert!(!lower.contains(" style="), "{path}: a style attribute");
            }
        }
        pending.extend(references(&text));
    }
    assert!(seen.len() > 5, "the page loads its scripts: {seen:?}");

    let missing = harness.admin_get("/ui/nothing-here.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.headers["x-content-type-options"], "nosniff");
    assert!(missing.headers.contains_key("content-security-policy"));
    assert_eq!(
        harness.admin_get("/v1/keys").await.status,
        StatusCode::UNAUTHORIZED
    );
}
