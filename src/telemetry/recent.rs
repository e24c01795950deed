//! The last `logs.recent` access records of this replica, kept in memory for
//! `GET /v1/requests` and the API Keys page. Written by the data plane, read by the admin plane.
//!
//! A ring of slots. A request takes the next slot with one atomic increment and copies its
//! record into it under that slot's own lock, held for those few copies and never across
//! requests: two requests meet on a slot only when `logs.recent` others came between them.
//! A slot keeps the record's strings in one buffer that it keeps, so a slot allocates once
//! (when first filled, or for a longer record than it has held) and once warm a record
//! allocates nothing. The reader locks one slot at a time, newest first.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::access::Record;

/// Longest path kept, in bytes; a longer one is cut there and marked with `...`.
const MAX_PATH: usize = 512;

/// The ring. `capacity` records; 0 keeps none.
pub struct Recent {
    slots: Box<[Mutex<Slot>]>,
    /// How many records were ever taken: the next record's sequence number.
    next: AtomicU64,
}

/// One record, its strings in a buffer that outlives it. `seq` is the record's number plus
/// one; 0 is empty. Strings are kept as the bytes they came as and turned into text when read:
/// the request pays for copies only.
struct Slot {
    seq: u64,
    time_us: u64,
    client: IpAddr,
    status: u16,
    duration_us: u64,
    upstream_us: Option<u64>,
    /// The [`Field`]s, one after another.
    text: Vec<u8>,
    /// Where each field ends in `text`.
    ends: [u32; FIELDS],
    /// Which of the optional fields the record has, one bit each by [`Field`].
    present: u8,
}

/// The strings of a record, in the order they are kept in a slot.
#[derive(Clone, Copy)]
enum Field {
    RequestId,
    Route,
    KeyId,
    Environment,
    Method,
    Path,
    Reason,
}

const FIELDS: usize = 7;

/// Which records a reader wants.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub key_id: Option<String>,
    pub status: Option<StatusFilter>,
    /// Only records older than this one: the cursor [`Recent::page`] gave for the next page.
    pub before: Option<u64>,
}

/// `403` or a class, `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    Class(u16),
}

impl StatusFilter {
    /// `"403"`, or `"4xx"` for every 4xx (`X` as well): `None` for anything else.
    pub fn parse(text: &str) -> Option<StatusFilter> {
        let bytes = text.as_bytes();
        match bytes {
            [class @ b'1'..=b'5', rest @ ..] if rest.eq_ignore_ascii_case(b"xx") => {
                Some(StatusFilter::Class(u16::from(class - b'0')))
            }
            [b'1'..=b'5', _, _] => text.parse().ok().map(StatusFilter::Code),
            _ => None,
        }
    }

    fn admits(self, status: u16) -> bool {
        match self {
            StatusFilter::Code(code) => status == code,
            StatusFilter::Class(class) => status / 100 == class,
        }
    }
}

/// One record as the admin API answers it: the fields of the access log (SPEC 7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentRequest {
    pub time: jiff::Timestamp,
    pub request_id: String,
    pub route: Option<String>,
    pub key_id: Option<String>,
    pub environment: Option<String>,
    pub client: IpAddr,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub reason: Option<String>,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            slots: (0..capacity).map(|_| Mutex::new(Slot::empty())).collect(),
            next: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keeps `record`, in place of the oldest one.
    pub fn push(&self, record: &Record) {
        if self.slots.is_empty() {
            return;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let index = (seq % self.slots.len() as u64) as usize;
        // A panic while a slot was held (none can happen in `fill`) leaves a record half
        // written: still one that reads, so the poison is ignored.
        let mut slot = self.slots[index].lock().unwrap_or_else(|e| e.into_inner());
        // A writer that was overtaken by one a whole ring later leaves the newer record.
        if slot.seq < seq {
            slot.fill(seq, record);
        }
    }

    /// At most `limit` records that `filter` admits, newest first.
    pub fn newest(&self, filter: &Filter, limit: usize) -> Vec<RecentRequest> {
        self.page(filter, limit).0
    }

    /// The same, and the cursor of the next (older) page when at least one more record there
    /// is admitted: the sequence number of the last record given, for [`Filter::before`]. The
    /// ring moves on meanwhile, so a later page holds what is still kept of the older records.
    pub fn page(&self, filter: &Filter, limit: usize) -> (Vec<RecentRequest>, Option<u64>) {
        let len = self.slots.len() as u64;
        let newest = self.next.load(Ordering::Relaxed);
        let top = filter
            .before
            .map_or(newest, |before| newest.min(before.saturating_sub(1)));
        let mut found = Vec::new();
        let mut last = None;
        if len == 0 {
            return (found, None);
        }
        for seq in (newest.saturating_sub(len) + 1..=top).rev() {
            let slot = self.slots[(seq % len) as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Not written yet, or already replaced by a newer record (seen earlier, or not).
            if slot.seq != seq || !slot.admitted_by(filter) {
                continue;
            }
            if found.len() >= limit {
                return (found, last);
            }
            found.push(slot.to_request());
            last = Some(seq);
        }
        (found, None)
    }
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            seq: 0,
            time_us: 0,
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            status: 0,
            duration_us: 0,
            upstream_us: None,
            text: Vec::new(),
            ends: [0; FIELDS],
            present: 0,
        }
    }

    fn fill(&mut self, seq: u64, record: &Record) {
        self.seq = seq;
        self.time_us = record.time_us;
        self.client = record.client;
        self.status = record.status;
        self.duration_us = micros(record.duration);
        self.upstream_us = record.upstream.map(micros);
        let path = record.path.unwrap_or_default();
        let (path, cut) = match path.len() > MAX_PATH {
            true => (&path[..MAX_PATH], &b"..."[..]),
            false => (path, &b""[..]),
        };
        let fields = [
            Some(record.request_id),
            record.route.map(str::as_bytes),
            record.key_id.map(str::as_bytes),
            record.environment.map(str::as_bytes),
            Some(record.method.as_bytes()),
            Some(path),
            record.reason.map(str::as_bytes),
        ];
        self.text.clear();
        // One reservation for the whole record: a slot grows at most once per fill.
        let len = fields.iter().flatten().map(|field| field.len()).sum::<usize>() + cut.len();
        self.text.reserve(len);
        self.present = 0;
        for (i, field) in fields.into_iter().enumerate() {
            if let Some(bytes) = field {
                self.text.extend_from_slice(bytes);
                self.present |= 1 << i;
            }
            if i == Field::Path as usize {
                self.text.extend_from_slice(cut);
            }
            self.ends[i] = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        }
    }

    /// A field of the record, `None` when it has none.
    fn get(&self, field: Field) -> Option<&[u8]> {
        let i = field as usize;
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before] as usize);
        let end = self.ends[i] as usize;
        (self.present & (1 << i) != 0).then(|| self.text.get(start..end).unwrap_or_default())
    }

    fn text(&self, field: Field) -> Option<String> {
        self.get(field).map(lossy)
    }

    /// A field every record has.
    fn always(&self, field: Field) -> String {
        self.text(field).unwrap_or_default()
    }

    fn admitted_by(&self, filter: &Filter) -> bool {
        filter
            .key_id
            .as_deref()
            .is_none_or(|id| self.get(Field::KeyId) == Some(id.as_bytes()))
            && filter.status.is_none_or(|status| status.admits(self.status))
    }

    fn to_request(&self) -> RecentRequest {
        let time_us = i64::try_from(self.time_us).unwrap_or(i64::MAX);
        RecentRequest {
            time: jiff::Timestamp::from_microsecond(time_us).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            request_id: self.always(Field::RequestId),
            route: self.text(Field::Route),
            key_id: self.text(Field::KeyId),
            environment: self.text(Field::Environment),
            client: self.client,
            method: self.always(Field::Method),
            path: self.always(Field::Path),
            status: self.status,
            duration_ms: self.duration_us as f64 / 1000.0,
            upstream_ms: self.upstream_us.map(|us| us as f64 / 1000.0),
            reason: self.text(Field::Reason),
        }
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Bytes as text; a byte that is not part of valid UTF-8 as `%XX`, as the access log writes it.
fn lossy(mut bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                text.push_str(valid);
                return text;
            }
            Err(error) => {
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let Some((&bad, rest)) = rest.split_first() else {
                    return text;
                };
                text.push_str(&format!("%{bad:02X}"));
                bytes = rest;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record<'a>(key_id: Option<&'a str>, status: u16, path: &'a [u8]) -> Record<'a> {
        Record {
            time_us: 1_700_000_000_000_000,
            request_id: b"0123456789abcdef",
            route: Some("customers"),
            key_id,
            environment: Some("production"),
            client: "192.0.2.7".parse().unwrap(),
            method: "GET",
            path: Some(path),
            status,
            duration: Duration::from_micros(1500),
            upstream: Some(Duration::from_micros(1200)),
            reason: (status >= 400).then_some("permission"),
        }
    }

    fn statuses(recent: &Recent, filter: &Filter, limit: usize) -> Vec<u16> {
        recent.newest(filter, limit).iter().map(|r| r.status).collect()
    }

    #[test]
    fn the_newest_records_come_first_and_the_oldest_make_room() {
        let recent = Recent::new(3);
        for status in [200, 201, 202, 203, 204] {
            recent.push(&record(None, status, b"/"));
        }
        assert_eq!(statuses(&recent, &Filter::default(), 10), [204, 203, 202]);
        assert_eq!(statuses(&recent, &Filter::default(), 2), [204, 203]);
    }

    #[test]
    fn a_ring_of_none_keeps_nothing() {
        let recent = Recent::new(0);
        recent.push(&record(None, 200, b"/"));
        assert!(recent.newest(&Filter::default(), 10).is_empty());
    }

    #[test]
    fn filters_by_key_and_status() {
        let recent = Recent::new(10);
        recent.push(&record(Some("key_a"), 200, b"/"));
        recent.push(&record(Some("key_b"), 403, b"/"));
        recent.push(&record(Some("key_a"), 403, b"/"));
        recent.push(&record(None, 401, b"/"));
        let key_a = Filter {
            key_id: Some("key_a".into()),
            ..Filter::default()
        };
        assert_eq!(statuses(&recent, &key_a, 10), [403, 200]);
        let refused = Filter {
            status: StatusFilter::parse("4xx"),
            ..Filter::default()
        };
        assert_eq!(statuses(&recent, &refused, 10), [401, 403, 403]);
        let forbidden_a = Filter {
            key_id: Some("key_a".into()),
            status: StatusFilter::parse("403"),
            before: None,
        };
        assert_eq!(statuses(&recent, &forbidden_a, 10), [403]);
    }

    #[test]
    fn pages_go_back_by_cursor_until_the_oldest_record_kept() {
        let recent = Recent::new(5);
        for status in [200, 401, 201, 402, 202, 403, 203] {
            recent.push(&record(None, status, b"/"));
        }
        let mut filter = Filter::default();
        let mut pages = Vec::new();
        loop {
            let (items, next) = recent.page(&filter, 2);
            pages.push(items.iter().map(|r| r.status).collect::<Vec<_>>());
            match next {
                Some(cursor) => filter.before = Some(cursor),
                None => break,
            }
        }
        assert_eq!(pages, [vec![203, 403], vec![202, 402], vec![201]]);

        let refused = Filter {
            status: StatusFilter::parse("4xx"),
            ..Filter::default()
        };
        let (first, next) = recent.page(&refused, 1);
        assert_eq!(first[0].status, 403);
        let (rest, next) = recent.page(
            &Filter {
                before: next,
                ..refused.clone()
            },
            5,
        );
        assert_eq!(rest.iter().map(|r| r.status).collect::<Vec<_>>(), [402]);
        assert_eq!(next, None, "no cursor when nothing older is admitted");
        let (none, _) = recent.page(
            &Filter {
                before: Some(1),
                ..Filter::default()
            },
            5,
        );
        assert!(none.is_empty(), "nothing before the first record");
        let (all, _) = recent.page(
            &Filter {
                before: Some(u64::MAX),
                ..Filter::default()
            },
            5,
        );
        assert_eq!(
            all.len(),
            5,
            "a cursor past the newest record starts at the newest"
        );
    }

    #[test]
    fn status_filters_parse_codes_and_classes_only() {
        assert_eq!(StatusFilter::parse("403"), Some(StatusFilter::Code(403)));
        assert_eq!(StatusFilter::parse("5xx"), Some(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse("2XX"), Some(StatusFilter::Class(2)));
        for bad in ["", "4", "40", "4000", "6xx", "abc", "4x", "-403", "4+3"] {
            assert_eq!(StatusFilter::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_record_reads_back_with_the_access_log_fields() {
        let recent = Recent::new(1);
        recent.push(&record(Some("key_a"), 403, b"/v1/\xffx"));
        let got = recent.newest(&Filter::default(), 1).remove(0);
        assert_eq!(got.path, "/v1/%FFx");
        assert_eq!(got.key_id.as_deref(), Some("key_a"));
        assert_eq!(got.reason.as_deref(), Some("permission"));
        assert_eq!(got.duration_ms, 1.5);
        assert_eq!(got.upstream_ms, Some(1.2));
        assert_eq!(got.time.to_string(), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_long_path_is_cut() {
        let recent = Recent::new(1);
        let long = vec![b'a'; 2000];
        recent.push(&record(None, 200, &long));
        let got = recent.newest(&Filter::default(), 1).remove(0);
        assert_eq!(got.path.len(), MAX_PATH + 3);
        assert!(got.path.ends_with("..."));
        let whole = vec![b'a'; MAX_PATH];
        recent.push(&record(None, 200, &whole));
        assert_eq!(recent.newest(&Filter::default(), 1)[0].path.len(), MAX_PATH);
    }
}
