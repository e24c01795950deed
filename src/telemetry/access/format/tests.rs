use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::*;

/// 2026-12-01T11:56:46.012345Z
const TIME_US: u64 = 1_796_126_206_012_345;

fn record() -> Record<'static> {
    Record {
        time_us: TIME_US,
        request_id: b"0f1e2d3c",
        route: Some("customers"),
        key_id: Some("key_2Vx9"),
        environment: Some("production"),
        client: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        method: "GET",
        path: Some(b"/v1/customers/acme"),
        status: 200,
        duration: Duration::from_micros(1_234),
        upstream: Some(Duration::from_micros(987)),
        reason: None,
    }
}

fn as_json(record: &Record) -> String {
    let mut out = Vec::new();
    json(record, &mut TimeCache::default(), &mut out);
    String::from_utf8(out).expect("every record is UTF-8")
}

fn as_text(record: &Record) -> String {
    let mut out = Vec::new();
    text(record, &mut TimeCache::default(), &mut out);
    String::from_utf8(out).expect("every record is UTF-8")
}

#[test]
fn a_json_record_has_every_field_in_the_spec_order() {
    let line = as_json(&record());
    assert_eq!(
        line,
        concat!(
            r#"{"time":"2026-12-01T11:56:46.012345Z","request_id":"0f1e2d3c","route":"customers","#,
            r#""key_id":"key_2Vx9","environment":"production","client":"10.0.0.7","method":"GET","#,
            r#""path":"/v1/customers/acme","status":200,"duration_ms":1.234,"upstream_ms":0.987,"#,
            r#""reason":null}"#,
            "\n"
        )
    );
}

#[test]
fn a_text_record_reads_like_tracing_lines() {
    assert_eq!(
        as_text(&record()),
        "2026-12-01T11:56:46.012345Z  INFO keygate::access: request_id=0f1e2d3c route=customers \
         key_id=key_2Vx9 environment=production client=10.0.0.7 method=GET path=/v1/customers/acme \
         status=200 duration_ms=1.234 upstream_ms=0.987 reason=-\n"
    );
}

#[test]
fn absent_fields_are_null_in_json_and_a_dash_in_text() {
    let refused = Record {
        route: None,
        key_id: None,
        environment: None,
        path: None,
        upstream: None,
        reason: Some("no_route"),
        status: 404,
        ..record()
    };
    let json_line = as_json(&refused);
    for field in ["route", "key_id", "environment", "path", "upstream_ms"] {
        assert!(
            json_line.contains(&format!("\"{field}\":null")),
            "{field}: {json_line}"
        );
    }
    assert!(json_line.contains(r#""reason":"no_route""#), "{json_line}");
    let text_line = as_text(&refused);
    for field in ["route", "key_id", "environment", "path", "upstream_ms"] {
        assert!(
            text_line.contains(&format!(" {field}=- ")),
            "{field}: {text_line}"
        );
    }
    assert!(text_line.ends_with(" reason=no_route\n"), "{text_line}");
}

#[test]
fn paths_are_escaped_for_json_and_text() {
    for (path, in_json, in_text) in [
        (
            &b"/plain/path-1.json"[..],
            r#""/plain/path-1.json""#,
            "/plain/path-1.json",
        ),
        (b"/a\"b", r#""/a\"b""#, r#""/a\"b""#),
        (b"/a\\b", r#""/a\\b""#, r#""/a\\b""#),
        (b"/a\nb\r\t", r#""/a\nb\r\t""#, r#""/a\nb\r\t""#),
        (
            b"/nul\x00bell\x07del\x7f",
            r#""/nul\u0000bell\u0007del\u007F""#,
            r#""/nul\u0000bell\u0007del\u007F""#,
        ),
        (b"/bad\xffutf8\xc3", r#""/bad%FFutf8%C3""#, r#""/bad%FFutf8%C3""#),
        (
            "/caf\u{e9}/\u{1f600}".as_bytes(),
            "\"/caf\u{e9}/\u{1f600}\"",
            "\"/caf\u{e9}/\u{1f600}\"",
        ),
        (b"/a b=c", r#""/a b=c""#, r#""/a b=c""#),
        (b"", r#""""#, r#""""#),
        (b"-", r#""-""#, r#""-""#),
    ] {
        let record = Record {
            path: Some(path),
            ..record()
        };
        let json_line = as_json(&record);
        assert!(
            json_line.contains(&format!(",\"path\":{in_json},")),
            "{path:?}: {json_line}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json_line).expect("valid JSON");
        assert!(parsed["path"].is_string(), "{path:?}");
        let text_line = as_text(&record);
        assert!(
            text_line.contains(&format!(" path={in_text} status=")),
            "{path:?}: {text_line}"
        );
        assert_eq!(text_line.matches('\n').count(), 1, "one line: {text_line:?}");
    }
}

#[test]
fn route_and_request_id_are_escaped_too() {
    let record = Record {
        request_id: br#"id"with\quotes"#,
        route: Some("we\"ird"),
        ..record()
    };
    let parsed: serde_json::Value = serde_json::from_str(&as_json(&record)).expect("valid JSON");
    assert_eq!(parsed["request_id"], r#"id"with\quotes"#);
    assert_eq!(parsed["route"], "we\"ird");
}

#[test]
fn durations_are_milliseconds_to_the_microsecond() {
    for (duration, written) in [
        (Duration::ZERO, "0.000"),
        (Duration::from_nanos(18_834), "0.018"),
        (Duration::from_micros(19), "0.019"),
        (Duration::from_micros(1_000), "1.000"),
        (Duration::from_micros(236_942), "236.942"),
        (Duration::from_secs(30), "30000.000"),
    ] {
        let mut out = Vec::new();
        millis(&mut out, duration);
        assert_eq!(String::from_utf8(out).unwrap(), written);
    }
}

#[test]
fn clients_of_both_families_are_written() {
    for (client, written) in [
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), "127.0.0.1"),
        (IpAddr::V4(Ipv4Addr::new(255, 255, 0, 10)), "255.255.0.10"),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), "::1"),
        (
            "2001:db8::8a2e:370:7334".parse().unwrap(),
            "2001:db8::8a2e:370:7334",
        ),
    ] {
        let line = as_json(&Record { client, ..record() });
        assert!(line.contains(&format!(r#""client":"{written}""#)), "{line}");
    }
}

#[test]
fn times_are_rfc3339_utc_with_microseconds() {
    let mut cache = TimeCache::default();
    for second in [
        0u64,
        951_782_400,
        1_709_164_800,
        1_796_126_206,
        4_102_444_799,
        253_402_207_199,
    ] {
        for micros in [0u64, 7, 999_999] {
            let time_us = second * 1_000_000 + micros;
            let mut out = Vec::new();
            cache.write(time_us, &mut out);
            let expected = jiff::Timestamp::from_microsecond(time_us as i64)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
