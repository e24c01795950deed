//! hyper's own refusals, given the gateway's body (data plane). A request head that hyper's
//! HTTP/1 parser cannot take (a header line that does not parse: 400; a head past the size or
//! header-count limit: 431; a target past its limit: 414) never becomes a request: hyper
//! answers it itself with a bare head (`connection: close`, `content-length: 0`, `date`) and
//! closes. Every other refusal of the gateway is JSON with `Cache-Control: no-store` and a
//! request id, so a client and a log reader can tell what happened; these are made so as they
//! are written, by [`answer`], at the one place that sees them: the connection's write side
//! (see [`super::wire::Watched`]).
//!
//! hyper's bare head is recognised exactly: its status is one of the three, and it has no
//! header but those three. Every answer that goes through the pipeline carries
//! `x-request-id`, so it can never look like one.

use super::error::{BAD_REQUEST, HEADERS_TOO_LARGE, URI_TOO_LONG};

/// The longest head hyper's bare refusal can be.
pub const MAX_BARE: usize = 160;

/// The gateway's own answer in place of hyper's bare `head`, when `head` is one; `request_id`
/// is asked only then.
pub fn answer(head: &[u8], request_id: impl FnOnce() -> String) -> Option<Vec<u8>> {
    if head.len() > MAX_BARE || !head.starts_with(b"HTTP/1.1 ") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text[..text.len() - 4].split("\r\n");
    let status_line = lines.next()?;
    let body = match status_line.get(9..12)? {
        "400" => BAD_REQUEST,
        "414" => URI_TOO_LONG,
        "431" => HEADERS_TOO_LARGE,
        _ => return None,
    };
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match name {
            "connection" if value == "close" => {}
            "content-length" if value == "0" => {}
            "date" => date = Some(value),
            _ => return None,
        }
    }
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json; charset=utf-8\r\ncache-control: no-store\r\n\
         x-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
        request_id(),
        body.len()
    );
    if let Some(date) = date {
        answer.push_str(&format!("date: {date}\r\n"));
    }
    answer.push_str("\r\n");
    answer.push_str(body);
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::answer;

    const DATE: &str = "date: Tue, 01 Dec 2026 16:04:12 GMT\r\n";

    fn bare(status: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n").into_bytes()
    }

    #[test]
    fn hyper_bare_refusals_get_the_json_body_of_their_kind() {
        for (status, body) in [
            ("400 Bad Request", r#"{"error":"bad request"}"#),
            ("414 URI Too Long", r#"{"error":"uri too long"}"#),
            (
                "431 Request Header Fields Too Large",
                r#"{"error":"request header fields too large"}"#,
            ),
        ] {
            let answer = String::from_utf8(answer(&bare(status), || "abc".into()).unwrap()).unwrap();
            let (head, got) = answer.split_once("\r\n\r\n").unwrap();
            assert_eq!(got, body);
            assert!(head.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{head}");
            for header in [
                "content-type: application/json; charset=utf-8",
                "cache-control: no-store",
                "x-request-id: abc",
                "connection: close",
                &format!("content-length: {}", body.len()),
                DATE.trim_end(),
            ] {
                assert!(head.contains(header), "{header} in {head}");
            }
        }
    }

    #[test]
    fn anything_else_is_left_as_it_is() {
        for head in [
            // Other statuses, other headers, a body, another version, a cut head.
            bare("404 Not Found"),
            bare("500 Internal Server Error"),
            b"HTTP/1.1 400 Bad Request\r\nx-request-id: r\r\ncontent-length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 2\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n{}".to_vec(),
            b"HTTP/1.0 400 Bad Request\r\nconnection: close\r\n\r\n".to_vec(),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n".to_vec(),
            b"HTTP/1.1 4".to_vec(),
            Vec::new(),
        ] {
            assert_eq!(
                answer(&head, || "abc".into()),
                None,
                "{}",
                String::from_utf8_lossy(&head)
            );
        }
    }
}
