//! `GET /v1/requests?scope=fleet` (SPEC 12): every live replica's recent requests, asked of it
//! at its advertised admin address, merged newest first, each record marked with its replica.
//! A replica that advertises nothing, or does not answer well within [`BUDGET`], is named in
//! `missing`; the others' records are answered all the same.
//!
//! The addresses come from the store, which this replica does not trust with a secret: each
//! replica is asked with a [`credential`](super::credential) made for it alone (that call, that
//! replica, once, within seconds), never with the caller's admin token. Redirects are not
//! followed (the client has no such layer: a 3xx is an answer like any other failure), and an
//! answer is read up to [`MAX_ANSWER`].

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

use super::credential::{Audience, FleetKey};
use crate::control::store::ReplicaRow;

/// How long one replica has to answer.
pub const BUDGET: Duration = Duration::from_secs(2);
/// The largest answer read from one replica: a thousand records with room to spare.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

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
    /// Why: `not advertised`, `timed out`, or what the call answered.
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
    let asks = others.iter().map(|row| {
        let client = client.clone();
        async move { (row, ask(&client, row, asked).await) }
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
            Err(reason) => gathered.missing.push(Missing {
                replica: row.id.clone(),
                host: row.host.clone(),
                reason,
            }),
        }
    }
    items.sort_by_key(|item| std::cmp::Reverse(time_of(item)));
    items.truncate(limit);
    gathered.items = items;
    gathered
}

/// One replica's records, or why there are none.
async fn ask(
    client: &Client<HttpConnector, Full<Bytes>>,
    row: &ReplicaRow,
    asked: &Ask<'_>,
) -> Result<Vec<Value>, String> {
    let Some(base) = &row.advertise else {
        return Err("not advertised (admin.advertise)".to_owned());
    };
    let path = path_and_query(asked.query);
    let audience = Audience {
        id: &row.id,
        advertise: base,
    };
    tracing::info!(replica = %row.id, host = %row.host, address = %base, "asking a replica for its recent requests");
    let request = Request::get(format!("{base}{path}"))
        .header(AUTHORIZATION, asked.key.sign(audience, &path, asked.now))
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad address {base}: {e}"))?;
    let call = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("cannot reach {base}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("answer cut short: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        match answer.get("items") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err("no items in the answer".to_owned()),
        }
    };
    match tokio::time::timeout(BUDGET, call).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("timed out ({} ms)", BUDGET.as_millis())),
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
}
