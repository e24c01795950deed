//! What the upstream receives: the request as sent, less hop-by-hop headers and the credential,
//! plus identity headers nobody can forge (SPEC section 1, "What the upstream receives").

use crate::support;

use crate::support::{basic, ConfigEdit, Harness};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn the_upstream_gets_the_request_less_the_credential_plus_identity() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    let request = Request::post(h.url("/v1/customers/acme/notes?sort=desc&x=%20y"))
        .header("authorization", basic(&key))
        .header("x-keygate-key-id", "forged")
        .header("x-keygate-customer", "forged")
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"a body that streams through")))
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-upstream"], "yes");
    assert_eq!(answer.text(), r#"{"upstream":"ok"}"#);
    let got = h.upstream.last();
    assert_eq!(got.method, "POST");
    assert_eq!(got.uri.path(), "/v1/customers/acme/notes");
    assert_eq!(got.uri.query(), Some("sort=desc&x=%20y"));
    assert_eq!(got.body, Bytes::from_static(b"a body that streams through"));
    let headers = &got.headers;
    assert!(headers.get("authorization").is_none());
    assert!(headers.get("x-hop").is_none());
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["x-keygate-key-id"], id.as_str());
    assert_eq!(headers["x-keygate-environment"], "production");
    assert!(
        headers.get("x-keygate-customer").is_none(),
        "only customer-scoped keys carry a customer"
    );
    // The peer is no trusted proxy: its X-Forwarded-For is its own address, nothing it wrote.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-host"],
        h.gateway.proxy_addr.to_string().as_str()
    );
    assert_eq!(headers["host"], h.upstream.addr.to_string().as_str());
    let request_id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(request_id.len(), 32);
    assert_eq!(answer.headers["x-request-id"], request_id);
}

/// SPEC 1: the client's IP is appended to a trusted chain only; an untrusted peer's chain is
/// replaced (any client could write one).
#[tokio::test]
async fn forwarded_for_is_extended_from_a_trusted_proxy_and_replaced_from_anyone_else() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let chain = [("x-forwarded-for", "198.51.100.9, 6.6.6.6")];
    for (peer, forwarded_for) in [
        ("127.0.0.1", "127.0.0.1"),
        // 127.0.0.2 is the standard config's trusted proxy.
        ("127.0.0.2", "198.51.100.9, 6.6.6.6, 127.0.0.2"),
    ] {
        let answer = h.call_from(peer, "GET", "/v1/status", Some(&key), &chain).await;
        assert_eq!(answer.status, 200);
        let headers = h.upstream.last().headers;
        let all: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, [forwarded_for], "from {peer}");
    }
}

#[tokio::test]
async fn a_client_request_id_is_kept_both_ways() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h
        .call("GET", "/v1/status", Some(&key), &[("x-request-id", "trace-42")])
        .await;
    assert_eq!(answer.headers["x-request-id"], "trace-42");
    assert_eq!(h.upstream.last().headers["x-request-id"], "trace-42");
}

#[tokio::test]
async fn the_api_key_header_is_stripped_and_foreign_authorization_kept() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h
        .call(
            "GET",
            "/v1/status",
            None,
            &[("x-api-key", &key), ("authorization", "Digest upstream-own")],
        )
        .await;
    assert_eq!(answer.status, 200);
    let headers = h.upstream.last().headers;
    assert!(headers.get("x-api-key").is_none());
    assert_eq!(headers["authorization"], "Digest upstream-own");
}

#[tokio::test]
async fn the_api_key_header_is_stripped_even_with_its_scheme_off() {
    let config = support::STANDARD.set("auth", "schemes = [\"basic\"]");
    let h = Harness::with_config(&config, "").await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h
        .call(
            "GET",
            "/v1/status",
            Some(&key),
            &[("x-api-key", "some-other-secret")],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(h.upstream.last().headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn routes_can_forward_credentials_and_preserve_host() {
    let config = support::STANDARD.edit(
        "name = \"status\"\npath = \"/v1/status\"",
        "name = \"status\"\npath = \"/v1/status\"\nforward_credentials = true\npreserve_host = true",
    );
    let h = Harness::with_config(&config, "").await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h
        .call("GET", "/v1/status", Some(&key), &[("host", "api.example.com")])
        .await;
    assert_eq!(answer.status, 200);
    let headers = h.upstream.last().headers;
    assert_eq!(headers["authorization"], basic(&key).as_str());
    assert_eq!(headers["host"], "api.example.com");
}

#[tokio::test]
async fn a_large_body_streams_through_unchanged() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let body: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = Request::put(h.url("/v1/status"))
        .header("authorization", basic(&key))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    assert_eq!(h.send(request).await.status, 200);
    assert_eq!(h.upstream.last().body, Bytes::from(body));
}

#[tokio::test]
async fn raw_utf8_beside_an_escape_reaches_the_upstream_as_the_same_bytes() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let head = format!(
        "GET /v1/%73tatus/\u{44b}\u{43d} HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic(&key)
    );
    let answer = h.raw(head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        h.upstream.last().uri.path().as_bytes(),
        "/v1/status/\u{44b}\u{43d}".as_bytes()
    );
}
