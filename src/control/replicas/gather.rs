//! `GET /v1/requests?scope=fleet` (SPEC 12): every live replica's recent requests, asked of it
//! at its advertised admin address, merged newest first, each record marked with its replica.
//! A replica that advertises nothing, or does not answer well within [`BUDGET`], is named in
//! `missing`; the others' records are answered all the same.
//!
//! The addresses come from the store, which this replica does not trust with a secret: each
//! replica is asked with a [`credential`](super::credential) made for it alone (that call, that
//! replica, once, within seconds), never with the caller's admin token. Redirects are not
//! followed (the client has no such layer: a 3xx is an answer like any other failure), an
//! address is asked only when it is exactly `http://host:port` ([`Advertise::parse`], nothing
//! more), and the reasons in `missing` are fixed words, never a connection error's text (which
//! would tell the caller about ports inside the network).
//!
//! One read's memory is bounded: at most [`MAX_ASKED`] replicas are asked (the others named in
//! `missing`), an answer is read up to [`max_answer`] bytes for `limit` records, and only
//! `limit` records are kept of each.

use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

use super::credential::{Audience, FleetKey, TOO_SHORT};
use crate::config::Advertise;
use crate::control::store::ReplicaRow;

/// How long one replica has to answer.
pub const BUDGET: Duration = Duration::from_secs(2);
/// The most other replicas one fleet read asks.
pub const MAX_ASKED: usize = 64;
/// The room one record of an answer may take, on average (a record is a few hundred bytes).
const RECORD_ROOM: usize = 2 * 1024;

/// The largest answer read from one replica asked for `limit` records: about 2 MiB for the
/// 1000 maximum.
fn max_answer(limit: usize) -> usize {
    4 * 1024 + limit.max(1) * RECORD_ROOM
}

/// The fleet's records, and the replicas that gave none.
#[derive(Debug, Serialize)]
pub struct Gathered {
    pub items: Vec<Value>,
    /// The replicas whose records are in, by id.
    pub replicas: Vec<String>,
    pub missing: Vec<Missing>,
}

#[derive(Debug, Serialize)]
pub struct Missing {
    pub replica: String,
    pub host: String,
    /// Why: `not advertised`, `bad address`, `too many replicas`, `unreachable`, `timed out`,
    /// `answered <status>`, or the admin token being too short to sign.
    pub reason: String,
}

/// What a gathering asks: the caller's filters and limit (`scope=local` is added), signed
/// with `key` at `now`.
pub struct Ask<'a> {
    pub query: &'a str,
    pub key: &'a FleetKey,
    pub now: jiff::Timestamp,
}

/// Asks each of `others` as `asked` says, merges their records with `own` (this replica's, as
/// `this` gives them), newest first, and keeps `limit`.
pub async fn gather(
    this: &str,
    own: Vec<Value>,
    others: &[ReplicaRow],
    asked: &Ask<'_>,
    limit: usize,
) -> Gathered {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let signs = asked.key.signs();
    let (to_ask, beyond) = if signs {
        others.split_at(others.len().min(MAX_ASKED))
    } else {
        (&[][..], others)
    };
    let asks = to_ask.iter().map(|row| {
        let client = client.clone();
        async move { (row, ask(&client, row, asked, limit).await) }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut items = marked(own, this);
    let mut gathered = Gathered {
        items: Vec::new(),
        replicas: vec![this.to_owned()],
        missing: Vec::new(),
    };
    for (row, answer) in answers {
        match answer {
            Ok(records) => {
                items.extend(marked(records, &row.id));
                gathered.replicas.push(row.id.clone());
            }
            Err(reason) => gathered.missing.push(missing(row, reason)),
        }
    }
    let unasked = if signs { "too many replicas" } else { TOO_SHORT };
    gathered
        .missing
        .extend(beyond.iter().map(|row| missing(row, unasked.to_owned())));
    items.sort_by_key(|item| std::cmp::Reverse(time_of(item)));
    items.truncate(limit);
    gathered.items = items;
    gathered
}

fn missing(row: &ReplicaRow, reason: String) -> Missing {
    Missing {
        replica: row.id.clone(),
        host: row.host.clone(),
        reason,
    }
}

/// One replica's newest `limit` records, or why there are none.
async fn ask(
    client: &Client<HttpConnector, Full<Bytes>>,
    row: &ReplicaRow,
    asked: &Ask<'_>,
    limit: usize,
) -> Result<Vec<Value>, String> {
    let Some(advertised) = &row.advertise else {
        return Err("not advertised (admin.advertise)".to_owned());
    };
    let base = exact_address(advertised).ok_or("bad address")?;
    let path = path_and_query(asked.query);
    let audience = Audience {
        id: &row.id,
        advertise: &base,
    };
    let authorization = asked.key.sign(audience, &path, asked.now).ok_or(TOO_SHORT)?;
    tracing::info!(replica = %row.id, host = %row.host, address = %base, "asking a replica for its recent requests");
    let request = Request::get(format!("{base}{path}"))
        .header(AUTHORIZATION, authorization)
        .body(Full::new(Bytes::new()))
        .map_err(|_| "bad address")?;
    let call = async {
        let response = client.request(request).await.map_err(|error| {
            tracing::debug!(replica = %row.id, %error, "cannot reach a replica");
            "unreachable".to_owned()
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {}", status.as_u16()));
        }
        let body = Limited::new(response.into_body(), max_answer(limit))
            .collect()
            .await
            .map_err(|_| "answer too large or cut short")?
            .to_bytes();
        newest(&body, limit)
    };
    match tokio::time::timeout(BUDGET, call).await {
        Ok(answer) => answer,
        Err(_) => Err("timed out".to_owned()),
    }
}

/// `advertised` when it is exactly `http://host:port`, as a replica writes its row; `None`
/// for anything more or less (a path, a query, user info, no port).
fn exact_address(advertised: &str) -> Option<String> {
    let parsed = Advertise::parse(advertised).ok()?;
    let exact = parsed.to_string();
    (parsed.port.is_some() && exact == advertised).then_some(exact)
}

/// The first `limit` records of an answer's `items`, taken out without copying.
fn newest(body: &[u8], limit: usize) -> Result<Vec<Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut answer)) => match answer.remove("items") {
            Some(Value::Array(mut items)) => {
                items.truncate(limit);
                Ok(items)
            }
            _ => Err("no items in the answer".to_owned()),
        },
        Ok(_) => Err("no items in the answer".to_owned()),
        Err(_) => Err("not JSON".to_owned()),
    }
}

/// The path and query asked of each replica: the caller's filters, `scope=local`.
fn path_and_query(query: &str) -> String {
    let separator = if query.is_empty() { "" } else { "&" };
    format!("{}?{query}{separator}scope=local", super::credential::PATH)
}

/// Each record with `"replica": id` added.
fn marked(records: Vec<Value>, id: &str) -> Vec<Value> {
    records
        .into_iter()
        .filter_map(|record| match record {
            Value::Object(mut fields) => {
                fields.insert("replica".into(), Value::String(id.to_owned()));
                Some(Value::Object(fields))
            }
            _ => None,
        })
        .collect()
}

/// A record's time, for the order; one without a readable time sorts last.
fn time_of(record: &Value) -> i64 {
    record
        .get("time")
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<jiff::Timestamp>().ok())
        .map_or(i64::MIN, jiff::Timestamp::as_microsecond)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merge_newest_first_by_their_time_not_their_text() {
        let own = vec![
            serde_json::json!({"time": "2026-12-07T10:00:01Z", "n": 1}),
            serde_json::json!({"time": "2026-12-07T10:00:00.5Z", "n": 2}),
        ];
        let mut items = marked(own, "a");
        items.extend(marked(
            vec![
                serde_json::json!({"time": "2026-12-07T10:00:01.25Z", "n": 3}),
                Value::Null,
            ],
            "b",
        ));
        items.sort_by_key(|item| std::cmp::Reverse(time_of(item)));
        let order: Vec<(i64, &str)> = items
            .iter()
            .map(|i| (i["n"].as_i64().unwrap(), i["replica"].as_str().unwrap()))
            .collect();
        assert_eq!(order, [(3, "b"), (1, "a"), (2, "a")]);
    }

    fn rows(count: usize) -> Vec<ReplicaRow> {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        (0..count)
            .map(|n| ReplicaRow {
                id: format!("rep_{n:016x}"),
                host: format!("gw-{n}"),
                version: "0".into(),
                advertise: None,
                config_digest: String::new(),
                revision: 0,
                synced_at: None,
                limiter: "local".into(),
                started_at: now,
                heartbeat_at: now,
            })
            .collect()
    }

    async fn reasons(token: &str, others: &[ReplicaRow]) -> Vec<String> {
        let key = FleetKey::derive(token);
        let asked = Ask {
            query: "limit=5",
            key: &key,
            now: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        };
        let gathered = gather("rep_self", Vec::new(), others, &asked, 5).await;
        assert_eq!(gathered.replicas, ["rep_self"]);
        gathered.missing.into_iter().map(|m| m.reason).collect()
    }

    #[tokio::test]
    async fn at_most_max_asked_replicas_are_asked_the_rest_are_named() {
        let others = rows(MAX_ASKED + 2);
        let reasons = reasons(&"t".repeat(40), &others).await;
        assert_eq!(reasons.len(), MAX_ASKED + 2);
        assert!(reasons[..MAX_ASKED]
            .iter()
            .all(|r| r.starts_with("not advertised")));
        assert_eq!(reasons[MAX_ASKED..], ["too many replicas", "too many replicas"]);
    }

    #[tokio::test]
    async fn a_short_admin_token_asks_no_replica_and_says_why() {
        let mut others = rows(2);
        others[0].advertise = Some("http://127.0.0.1:9".into());
        let reasons = reasons(&"t".repeat(31), &others).await;
        assert_eq!(reasons, [TOO_SHORT, TOO_SHORT]);
        assert!(TOO_SHORT.contains("at least 32 characters"));
    }

    #[test]
    fn only_an_exact_scheme_host_and_port_is_asked() {
        assert_eq!(
            exact_address("http://10.0.0.2:9901").as_deref(),
            Some("http://10.0.0.2:9901")
        );
        assert_eq!(
            exact_address("http://[::1]:9901").as_deref(),
            Some("http://[::1]:9901")
        );
        for bad in [
            "http://10.0.0.2",
            "http://10.0.0.2:9901/",
            "http://10.0.0.2:9901/admin",
            "http://10.0.0.2:9901?x=1",
            "http://user@10.0.0.2:9901",
            "http://10.0.0.2:9901#f",
            "https://10.0.0.2:9901",
            "http://Example.com:9901",
            "unix:/run/admin.sock",
            "",
        ] {
            assert_eq!(exact_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_answer_keeps_only_limit_records_and_its_size_follows_the_limit() {
        let body = serde_json::json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}]}).to_string();
        assert_eq!(newest(body.as_bytes(), 2).unwrap().len(), 2);
        assert_eq!(newest(b"[]", 2), Err("no items in the answer".to_owned()));
        assert_eq!(newest(b"<html>", 2), Err("not JSON".to_owned()));
        assert!((2_000_000..2_200_000).contains(&max_answer(1000)));
        assert!(max_answer(1) < 8 * 1024);
    }
}
