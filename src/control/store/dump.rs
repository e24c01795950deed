//! A whole store as data (control plane): what `keygate store export` writes, `store import`
//! reads, and `store copy` passes from one store to another in-process, so every copy goes
//! through the same format.
//!
//! JSON Lines: a header `{"keygate_dump":1,"revision":N,"pepper":"...",...}`, then one object a
//! row with its `kind`: `key`, `usage`, `event`, `idle_warning`, `webhook`, `customer`,
//! `customer_event`. Rows carry the
//! store's columns as they are (times in Unix seconds, webhook times in milliseconds, JSON
//! fields as the text the store holds), so a copy is exact whatever the backends. Secrets never
//! appear: a key has its BLAKE3 hash in hex, which only authenticates under the same pepper.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

pub use super::customers::{CustomerEventRow, CustomerRow};
pub use super::row::{Hex, KeyRow};
use crate::core::secret::{Hasher, KeyHash};

/// The format's version, the header's `keygate_dump`.
pub const VERSION: u32 = 1;

/// Every row of a store, read in one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dump {
    /// The store revision the snapshot is at.
    pub revision: u64,
    pub keys: Vec<KeyRow>,
    pub usage: Vec<UsageRow>,
    pub events: Vec<EventRow>,
    pub warnings: Vec<WarningRow>,
    pub webhooks: Vec<WebhookRow>,
    /// Customers, tombstones included (absent from dumps made before customers).
    pub customers: Vec<CustomerRow>,
    pub customer_events: Vec<CustomerEventRow>,
}

/// Requests of one key on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub key_seq: i64,
    pub day: String,
    pub requests: i64,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: i64,
    pub key_id: String,
    pub at: i64,
    pub actor: String,
    pub event: String,
    pub changes: String,
    pub token: Option<String>,
    pub client: Option<String>,
}

/// An idle-expiry warning already sent (each goes out once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarningRow {
    pub key_seq: i64,
    pub deadline: i64,
    pub threshold: i64,
    pub sent_at: i64,
}

/// A webhook delivery still in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRow {
    pub id: i64,
    pub payload: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

/// The first line of a dump.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    keygate_dump: u32,
    revision: u64,
    /// [`pepper_fingerprint`] of the store's hasher.
    pepper: String,
    exported_at: String,
    counts: Counts,
}

/// How many rows of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub keys: usize,
    pub usage: usize,
    pub events: usize,
    pub idle_warnings: usize,
    pub webhooks: usize,
    #[serde(default)]
    pub customers: usize,
    #[serde(default)]
    pub customer_events: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} keys, {} usage rows, {} audit events, {} idle warnings, {} pending webhooks, {} customers, {} customer events",
            self.keys,
            self.usage,
            self.events,
            self.idle_warnings,
            self.webhooks,
            self.customers,
            self.customer_events
        )
    }
}

/// Each kind of row's count and sum of hashes, in the order of [`Line`]: see [`Dump::digest`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest([(usize, u128); 7]);

impl Digest {
    /// The kinds of rows whose digests differ between `self` and `other`.
    pub fn differences(&self, other: &Digest) -> Vec<&'static str> {
        const KINDS: [&str; 7] = [
            "keys",
            "usage rows",
            "audit events",
            "idle warnings",
            "pending webhooks",
            "customers",
            "customer events",
        ];
        (KINDS.iter().zip(self.0.iter().zip(other.0.iter())))
            .filter(|(_, (a, b))| a != b)
            .map(|(kind, _)| *kind)
            .collect()
    }
}

/// One row after the header.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Key(Box<KeyRow>),
    Usage(UsageRow),
    Event(EventRow),
    IdleWarning(WarningRow),
    Webhook(WebhookRow),
    Customer(CustomerRow),
    CustomerEvent(CustomerEventRow),
}

/// Tells whether two deployments hash secrets alike (the same `store.pepper_env` secret, or
/// none), without revealing the pepper: the hash of a fixed text, shortened.
pub fn pepper_fingerprint(hasher: &Hasher) -> String {
    let KeyHash(bytes) = hasher.hash(b"keygate dump pepper fingerprint v1");
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Dump {
    pub fn counts(&self) -> Counts {
        Counts {
            keys: self.keys.len(),
            usage: self.usage.len(),
            events: self.events.len(),
            idle_warnings: self.warnings.len(),
            webhooks: self.webhooks.len(),
            customers: self.customers.len(),
            customer_events: self.customer_events.len(),
        }
    }

    /// Writes the dump as JSON Lines.
    pub fn write(&self, out: &mut dyn Write, pepper: &str) -> std::io::Result<()> {
        let header = Header {
            keygate_dump: VERSION,
            revision: self.revision,
            pepper: pepper.to_owned(),
            exported_at: jiff::Timestamp::now().to_string(),
            counts: self.counts(),
        };
        write_line(out, &header)?;
        for line in self.lines() {
            write_line(out, &line)?;
        }
        out.flush()
    }

    /// Every row as a line of the dump, in the order they are written.
    fn lines(&self) -> impl Iterator<Item = Line> + '_ {
        (self.keys.iter().cloned().map(|key| Line::Key(Box::new(key))))
            .chain(self.usage.iter().cloned().map(Line::Usage))
            .chain(self.events.iter().cloned().map(Line::Event))
            .chain(self.warnings.iter().cloned().map(Line::IdleWarning))
            .chain(self.webhooks.iter().cloned().map(Line::Webhook))
            .chain(self.customers.iter().cloned().map(Line::Customer))
            .chain(self.customer_events.iter().cloned().map(Line::CustomerEvent))
    }

    /// The dump written and read back, as `export | import` would pass it, a row at a time and
    /// in place: never more than one row in text, nor a second copy of the rows.
    pub fn through_format(mut self) -> Result<Dump, String> {
        let mut text = Vec::new();
        let mut pass = |line: Line| -> Result<Line, String> {
            text.clear();
            write_line(&mut text, &line).map_err(|e| format!("cannot write the dump: {e}"))?;
            serde_json::from_slice(&text).map_err(|e| format!("cannot read the dump back: {e}"))
        };
        for row in &mut self.keys {
            if let Line::Key(read) = pass(Line::Key(Box::new(row.clone())))? {
                *row = *read;
            }
        }
        for row in &mut self.events {
            if let Line::Event(read) = pass(Line::Event(row.clone()))? {
                *row = read;
            }
        }
        let mut rest = Dump {
            revision: self.revision,
            keys: std::mem::take(&mut self.keys),
            events: std::mem::take(&mut self.events),
            ..Dump::default()
        };
        for line in self.lines() {
            rest.push(pass(line)?);
        }
        Ok(rest)
    }

    /// What the rows of each kind add up to, whatever their order: their count and the sum of
    /// their hashes, without where a row sits in its store (a key's `revision`, a customer's
    /// `seq` and `revision`). Two stores with equal digests hold the same rows; to check a copy
    /// without holding both.
    pub fn digest(&self) -> Digest {
        let mut digest = Digest::default();
        let mut text = Vec::new();
        for mut line in self.lines() {
            let kind = match &mut line {
                Line::Key(row) => {
                    row.revision = 0;
                    0
                }
                Line::Usage(_) => 1,
                Line::Event(_) => 2,
                Line::IdleWarning(_) => 3,
                Line::Webhook(_) => 4,
                Line::Customer(row) => {
                    (row.seq, row.revision) = (0, 0);
                    5
                }
                Line::CustomerEvent(_) => 6,
            };
            text.clear();
            // Writing to memory does not fail.
            let _ = serde_json::to_writer(&mut text, &line);
            let hash = blake3::hash(&text);
            let mut low = [0; 16];
            low.copy_from_slice(&hash.as_bytes()[..16]);
            let (count, sum) = &mut digest.0[kind];
            *count += 1;
            *sum = sum.wrapping_add(u128::from_le_bytes(low));
        }
        digest
    }

    /// Reads a dump written by [`Dump::write`], and the pepper fingerprint it records. A
    /// mistake names its line; a dump whose rows do not add up to its header's counts (cut
    /// short) is refused.
    pub fn read(input: &mut dyn BufRead) -> Result<(Dump, String), String> {
        let mut lines = input.lines().enumerate();
        let header: Header = match lines.next() {
            Some((_, Ok(text))) => {
                serde_json::from_str(&text).map_err(|e| format!("line 1: not a keygate dump header ({e})"))?
            }
            Some((_, Err(e))) => return Err(format!("cannot read the dump: {e}")),
            None => return Err("the dump is empty (no header line)".into()),
        };
        if header.keygate_dump != VERSION {
            return Err(format!(
                "line 1: dump format {} is not one this keygate reads ({VERSION})",
                header.keygate_dump
            ));
        }
        let mut dump = Dump {
            revision: header.revision,
            ..Dump::default()
        };
        for (index, text) in lines {
            let text = text.map_err(|e| format!("cannot read the dump: {e}"))?;
            if text.trim().is_empty() {
                continue;
            }
            let line = serde_json::from_str(&text).map_err(|e| format!("line {}: {e}", index + 1))?;
            dump.push(line);
        }
        if dump.counts() != header.counts {
            return Err(format!(
                "the dump holds {} but its header says {}: cut short?",
                dump.counts(),
                header.counts
            ));
        }
        Ok((dump, header.pepper))
    }

    fn push(&mut self, line: Line) {
        match line {
            Line::Key(row) => self.keys.push(*row),
            Line::Usage(row) => self.usage.push(row),
            Line::Event(row) => self.events.push(row),
            Line::IdleWarning(row) => self.warnings.push(row),
            Line::Webhook(row) => self.webhooks.push(row),
            Line::Customer(row) => self.customers.push(row),
            Line::CustomerEvent(row) => self.customer_events.push(row),
        }
    }

    /// Whether every row of `self` is in `target` as it is here: keys by id (every column but
    /// the internal `seq` and `revision`), usage, warnings by key id, events and webhooks by
    /// id. `Err` names the first difference of each kind.
    pub fn check_contained_in(&self, target: &Dump) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let source_ids = ids_by_seq(&self.keys);
        let target_ids = ids_by_seq(&target.keys);
        let target_keys: HashMap<&str, &KeyRow> = target.keys.iter().map(|k| (k.id.as_str(), k)).collect();
        if let Some(key) = self.keys.iter().find(|key| {
            target_keys
                .get(key.id.as_str())
                .is_none_or(|other| !same_key(key, other))
        }) {
            problems.push(format!("key {} differs in the target or is missing", key.id));
        }
        let usage: HashMap<(Option<&str>, &str), i64> = target
            .usage
            .iter()
            .map(|u| ((target_ids.get(&u.key_seq).copied(), u.day.as_str()), u.requests))
            .collect();
        if let Some(row) = self.usage.iter().find(|u| {
            let id = source_ids.get(&u.key_seq).copied();
            usage.get(&(id, u.day.as_str())) != Some(&u.requests)
        }) {
            problems.push(format!(
                "usage of key seq {} on {} differs in the target",
                row.key_seq, row.day
            ));
        }
        let events: HashMap<i64, &EventRow> = target.events.iter().map(|e| (e.id, e)).collect();
        if let Some(event) = self.events.iter().find(|e| events.get(&e.id) != Some(e)) {
            problems.push(format!(
                "audit event {} differs in the target or is missing",
                event.id
            ));
        }
        let warnings: std::collections::HashSet<(Option<&str>, i64, i64)> = target
            .warnings
            .iter()
            .map(|w| (target_ids.get(&w.key_seq).copied(), w.deadline, w.threshold))
            .collect();
        if self
            .warnings
            .iter()
            .any(|w| !warnings.contains(&(source_ids.get(&w.key_seq).copied(), w.deadline, w.threshold)))
        {
            problems.push("an idle warning is missing in the target".into());
        }
        let webhooks: HashMap<i64, &WebhookRow> = target.webhooks.iter().map(|w| (w.id, w)).collect();
        if let Some(webhook) = self.webhooks.iter().find(|w| !webhooks.contains_key(&w.id)) {
            problems.push(format!("pending webhook {} is missing in the target", webhook.id));
        }
        problems.extend(self.customers_missing_in(target));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Dump {
    /// The customers (by id, but for `seq` and `revision`) and customer events (by id) of
    /// `self` that `target` lacks or holds otherwise: the first of each kind.
    fn customers_missing_in(&self, target: &Dump) -> Vec<String> {
        let mut problems = Vec::new();
        let customers: HashMap<&str, &CustomerRow> =
            target.customers.iter().map(|c| (c.id.as_str(), c)).collect();
        let placed = |row: &CustomerRow| CustomerRow {
            seq: 0,
            revision: 0,
            ..row.clone()
        };
        if let Some(customer) = self.customers.iter().find(|customer| {
            customers
                .get(customer.id.as_str())
                .is_none_or(|other| placed(customer) != placed(other))
        }) {
            problems.push(format!(
                "customer {} differs in the target or is missing",
                customer.id
            ));
        }
        let events: HashMap<i64, &CustomerEventRow> =
            target.customer_events.iter().map(|e| (e.id, e)).collect();
        if let Some(event) = self.customer_events.iter().find(|e| events.get(&e.id) != Some(e)) {
            problems.push(format!(
                "customer audit event {} differs in the target or is missing",
                event.id
            ));
        }
        problems
    }
}

fn write_line(out: &mut dyn Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

fn ids_by_seq(keys: &[KeyRow]) -> HashMap<i64, &str> {
    keys.iter().map(|k| (k.seq, k.id.as_str())).collect()
}

/// Equal but for where the row sits in its store (`seq`) and when it was last written there
/// (`revision`).
fn same_key(a: &KeyRow, b: &KeyRow) -> bool {
    KeyRow {
        seq: 0,
        revision: 0,
        ..a.clone()
    } == KeyRow {
        seq: 0,
        revision: 0,
        ..b.clone()
    }
}

/// How an import treats a store that holds keys already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Onto {
    /// Refuse it: only an empty store is written (the default).
    EmptyOnly,
    /// Update it (`--update`): each of the dump's keys replaces the target's key of the same
    /// id, or is added; usage rows take the dump's counts; audit events, idle warnings and
    /// webhooks the target lacks are added; rows only the target holds stay. Every key written
    /// gets a revision past both stores', so gateways running on the target pick it up.
    Update,
}

/// The revision the rows of an import are stamped with, and the store's after it: on a fresh
/// store (revision 0, no keys) the dump's own, rows as they were; else one past both.
pub fn import_revision(target_revision: u64, target_has_keys: bool, dump_revision: u64) -> Option<u64> {
    (target_revision > 0 || target_has_keys).then(|| target_revision.max(dump_revision) + 1)
}

/// The refusal of a store that holds keys already, without `--update`.
pub fn not_empty(keys: i64) -> super::StoreError {
    super::StoreError::Conflict(format!(
        "the target store holds {keys} keys already; nothing was written (to bring it up to date with the source, run again with --update)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: i64, id: &str) -> KeyRow {
        KeyRow {
            seq,
            id: id.into(),
            name: "n".into(),
            environment: "production".into(),
            hash: Hex([seq as u8; 32]),
            prefix: "kg_prod_Ab".into(),
            permissions: "[]".into(),
            rate_limit: None,
            customer_id: None,
            allowed_ips: "[]".into(),
            expires_at: None,
            status: "active".into(),
            created_at: 1,
            updated_at: 2,
            last_used_at: None,
            previous_hash: Some(Hex([0xab; 32])),
            grace_until: Some(5),
            previous_last_used_at: None,
            metadata: "{}".into(),
            revision: 3,
            idle_from: None,
            quarantined: 0,
            quota: None,
        }
    }

    fn sample() -> Dump {
        Dump {
            revision: 7,
            keys: vec![key(1, "key_a"), key(2, "key_b")],
            usage: vec![UsageRow {
                key_seq: 2,
                day: "2026-12-01".into(),
                requests: 4,
            }],
            events: vec![EventRow {
                id: 1,
                key_id: "key_a".into(),
                at: 1,
                actor: "cli".into(),
                event: "created".into(),
                changes: "{}".into(),
                token: None,
                client: None,
            }],
            warnings: vec![],
            webhooks: vec![],
            customers: vec![CustomerRow {
                seq: 1,
                id: "acme".into(),
                name: "Acme".into(),
                rate_limit: None,
                quota: Some(r#"{"limit":5,"period":"day","anchor":"2026-01-01T00:00:00Z"}"#.into()),
                metadata: "{}".into(),
                created_at: 1,
                updated_at: 2,
                revision: 4,
                deleted: 0,
            }],
            customer_events: vec![CustomerEventRow {
                id: 1,
                customer_id: "acme".into(),
                at: 1,
                actor: "cli".into(),
                event: "created".into(),
                changes: "{}".into(),
                token: None,
                client: None,
            }],
        }
    }

    #[test]
    fn a_written_dump_reads_back_equal_with_its_pepper() {
        let mut text = Vec::new();
        sample().write(&mut text, "00ff").unwrap();
        let (dump, pepper) = Dump::read(&mut text.as_slice()).unwrap();
        assert_eq!(dump, sample());
        assert_eq!(pepper, "00ff");
    }

    #[test]
    fn a_dump_cut_short_is_refused() {
        let mut text = Vec::new();
        sample().write(&mut text, "00ff").unwrap();
        let text = String::from_utf8(text).unwrap();
        let cut: Vec<&str> = text.lines().take(2).collect();
        let error = Dump::read(&mut cut.join("\n").as_bytes()).unwrap_err();
        assert!(error.contains("cut short"), "{error}");
    }

    #[test]
    fn a_bad_hash_names_its_line() {
        let mut text = Vec::new();
        sample().write(&mut text, "00ff").unwrap();
        let text = String::from_utf8(text)
            .unwrap()
            .replacen(&"01".repeat(32), "zz", 1);
        let error = Dump::read(&mut text.as_bytes()).unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
    }

    #[test]
    fn containment_ignores_seq_and_revision_but_not_hashes() {
        let source = sample();
        let mut moved = sample();
        for key in &mut moved.keys {
            key.seq += 10;
            key.revision = 99;
        }
        moved.usage[0].key_seq += 10;
        assert_eq!(source.check_contained_in(&moved), Ok(()));
        moved.keys[0].previous_hash = None;
        assert!(source.check_contained_in(&moved).is_err());
    }

    #[test]
    fn a_dump_passed_through_the_format_is_unchanged() {
        assert_eq!(sample().through_format().unwrap(), sample());
    }

    #[test]
    fn digests_ignore_where_rows_sit_but_not_what_they_hold() {
        let mut placed = sample();
        placed.keys.reverse();
        placed.keys[0].revision = 99;
        placed.customers[0].seq = 8;
        assert_eq!(placed.digest(), sample().digest());
        placed.keys[0].name = "other".into();
        placed.events.clear();
        assert_eq!(
            placed.digest().differences(&sample().digest()),
            ["keys", "audit events"]
        );
    }

    #[test]
    fn the_pepper_changes_the_fingerprint() {
        assert_ne!(
            pepper_fingerprint(&Hasher::unkeyed()),
            pepper_fingerprint(&Hasher::with_pepper(b"pepper"))
        );
    }
}
