//! A key's row as both stores keep it (control plane). Its columns are listed once, here
//! ([`KEY_COLUMNS`], in the order of [`KeyRow::cells`] and [`KeyRow::read`]); every statement
//! that selects, inserts or updates a key in either backend is made from that list
//! ([`KeyWrite`]), and a row becomes a [`StoredKey`] only through [`KeyRow::decode`]. A new key
//! field is a column here, a line in each of those functions, and a migration per backend.
//!
//! The values are the columns as stored: times in Unix seconds, JSON fields as their text, so
//! a dump carries them unchanged from one backend to the other.

use std::sync::LazyLock;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::model::{NewKey, StoredKey};
use crate::core::key::KeySpec;
use crate::core::secret::KeyHash;

/// How many columns a key row has.
pub const KEY_COLUMN_COUNT: usize = 23;

/// The columns of a key row, in the order every statement lists them.
pub const KEY_COLUMNS: [&str; KEY_COLUMN_COUNT] = [
    "seq",
    "id",
    "name",
    "environment",
    "hash",
    "prefix",
    "permissions",
    "rate_limit",
    "customer_id",
    "allowed_ips",
    "expires_at",
    "status",
    "created_at",
    "updated_at",
    "last_used_at",
    "previous_hash",
    "grace_until",
    "previous_last_used_at",
    "metadata",
    "revision",
    "idle_from",
    "quarantined",
    "quota",
];

/// [`KEY_COLUMNS`] as a select list: `seq, id, name, ...`.
pub fn select_list() -> &'static str {
    static LIST: LazyLock<String> = LazyLock::new(|| KEY_COLUMNS.join(", "));
    &LIST
}

/// Where `revision` is in [`KEY_COLUMNS`]: the reader of changes keeps the last one it read
/// even from a row it cannot decode.
pub const REVISION_COLUMN: usize = 19;

/// A key row, every column, deleted keys (tombstones) included: what the stores hold and what a
/// dump carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRow {
    pub seq: i64,
    pub id: String,
    pub name: String,
    pub environment: String,
    pub hash: Hex,
    pub prefix: String,
    pub permissions: String,
    pub rate_limit: Option<String>,
    pub customer_id: Option<String>,
    pub allowed_ips: String,
    pub expires_at: Option<i64>,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    pub previous_hash: Option<Hex>,
    pub grace_until: Option<i64>,
    pub previous_last_used_at: Option<i64>,
    pub metadata: String,
    pub revision: i64,
    pub idle_from: Option<i64>,
    /// 1 for a quarantined key, else 0. Absent from dumps written before it (0).
    #[serde(default)]
    pub quarantined: i64,
    /// Absent from dumps made before quotas.
    #[serde(default)]
    pub quota: Option<String>,
}

/// One column's value as a statement binds it; each backend turns it into its own parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Bytes(Option<&'a [u8]>),
}

/// A selected row, read column by column in the order the select listed them: each backend
/// implements it for its row type. `Err` is why a value could not be read (a type the column
/// should not hold): the row is bad, the query is not.
pub trait ReadCells {
    fn int(&mut self) -> Result<Option<i64>, String>;
    fn text(&mut self) -> Result<Option<String>, String>;
    fn bytes(&mut self) -> Result<Option<Vec<u8>>, String>;
}

impl KeyRow {
    /// The row's values, in [`KEY_COLUMNS`] order. Which kind each column is does not depend
    /// on its value: the cells of any row give the column types (PostgreSQL's `COPY`).
    pub fn cells(&self) -> [Cell<'_>; KEY_COLUMN_COUNT] {
        fn text(value: &Option<String>) -> Cell<'_> {
            Cell::Text(value.as_deref())
        }
        [
            Cell::Int(Some(self.seq)),
            Cell::Text(Some(&self.id)),
            Cell::Text(Some(&self.name)),
            Cell::Text(Some(&self.environment)),
            Cell::Bytes(Some(&self.hash.0)),
            Cell::Text(Some(&self.prefix)),
            Cell::Text(Some(&self.permissions)),
            text(&self.rate_limit),
            text(&self.customer_id),
            Cell::Text(Some(&self.allowed_ips)),
            Cell::Int(self.expires_at),
            Cell::Text(Some(&self.status)),
            Cell::Int(Some(self.created_at)),
            Cell::Int(Some(self.updated_at)),
            Cell::Int(self.last_used_at),
            Cell::Bytes(self.previous_hash.as_ref().map(|hash| &hash.0[..])),
            Cell::Int(self.grace_until),
            Cell::Int(self.previous_last_used_at),
            Cell::Text(Some(&self.metadata)),
            Cell::Int(Some(self.revision)),
            Cell::Int(self.idle_from),
            Cell::Int(Some(self.quarantined)),
            text(&self.quota),
        ]
    }

    /// Reads a row selected as [`select_list`]; `Err` says why it is bad, naming the key.
    pub fn read(cells: &mut impl ReadCells) -> Result<KeyRow, String> {
        let seq = required(cells.int(), "seq")?;
        let id = required(cells.text(), "id")?;
        let mut rest = || {
            // Fields are read in the order they are written: the order of the columns.
            Ok::<_, String>(KeyRow {
                seq,
                id: id.clone(),
                name: required(cells.text(), "name")?,
                environment: required(cells.text(), "environment")?,
                hash: Hex::from_column(&required(cells.bytes(), "hash")?, "hash")?,
                prefix: required(cells.text(), "prefix")?,
                permissions: required(cells.text(), "permissions")?,
                rate_limit: cells.text()?,
                customer_id: cells.text()?,
                allowed_ips: required(cells.text(), "allowed_ips")?,
                expires_at: cells.int()?,
                status: required(cells.text(), "status")?,
                created_at: required(cells.int(), "created_at")?,
                updated_at: required(cells.int(), "updated_at")?,
                last_used_at: cells.int()?,
                previous_hash: match cells.bytes()? {
                    Some(bytes) => Some(Hex::from_column(&bytes, "previous_hash")?),
                    None => None,
                },
                grace_until: cells.int()?,
                previous_last_used_at: cells.int()?,
                metadata: required(cells.text(), "metadata")?,
                revision: required(cells.int(), "revision")?,
                idle_from: cells.int()?,
                quarantined: required(cells.int(), "quarantined")?,
                quota: cells.text()?,
            })
        };
        rest().map_err(|why| format!("key {id}: {why}"))
    }

    /// A new key's row at `revision`: active, created now, never used. Its `seq` is the
    /// store's to number ([`KeyWrite::New`] leaves it out).
    pub fn of_new(key: &NewKey, revision: u64) -> KeyRow {
        let now = key.now.as_second();
        KeyRow {
            seq: 0,
            id: key.id.clone(),
            hash: Hex(key.hash.0),
            prefix: key.prefix.clone(),
            status: "active".into(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            previous_hash: None,
            grace_until: None,
            previous_last_used_at: None,
            revision: signed(revision),
            idle_from: None,
            quarantined: 0,
            ..spec_columns(&key.spec)
        }
    }

    /// The row of a stored key, as a change writes it back.
    pub fn of_stored(key: &StoredKey) -> KeyRow {
        KeyRow {
            seq: signed(key.seq),
            id: key.id.clone(),
            hash: Hex(key.hash.0),
            prefix: key.prefix.clone(),
            status: key.status.as_str().into(),
            created_at: key.created_at.as_second(),
            updated_at: key.updated_at.as_second(),
            last_used_at: key.last_used_at.map(|at| at.as_second()),
            previous_hash: key.previous_hash.map(|hash| Hex(hash.0)),
            grace_until: key.grace_until.map(|at| at.as_second()),
            previous_last_used_at: key.previous_last_used_at.map(|at| at.as_second()),
            revision: signed(key.revision),
            idle_from: key.idle_from.map(|at| at.as_second()),
            quarantined: i64::from(key.quarantined),
            ..spec_columns(&key.spec)
        }
    }

    /// The key this row holds; `Err` says why it is bad, naming the key.
    pub fn decode(self) -> Result<StoredKey, String> {
        let id = self.id;
        let decoded = (|| {
            let spec = KeySpec {
                name: self.name,
                environment: self.environment.parse()?,
                permissions: json("permissions", &self.permissions)?,
                rate_limit: self
                    .rate_limit
                    .map(|text| json("rate_limit", &text))
                    .transpose()?,
                customer_id: self.customer_id,
                allowed_ips: json("allowed_ips", &self.allowed_ips)?,
                expires_at: instant(self.expires_at)?,
                metadata: json("metadata", &self.metadata)?,
                quota: self.quota.map(|text| json("quota", &text)).transpose()?,
            };
            Ok::<_, String>(StoredKey {
                seq: self.seq as u64,
                id: id.clone(),
                spec,
                hash: KeyHash(self.hash.0),
                prefix: self.prefix,
                status: self.status.parse()?,
                created_at: instant(Some(self.created_at))?.ok_or("no created_at")?,
                updated_at: instant(Some(self.updated_at))?.ok_or("no updated_at")?,
                last_used_at: instant(self.last_used_at)?,
                previous_hash: self.previous_hash.map(|hash| KeyHash(hash.0)),
                grace_until: instant(self.grace_until)?,
                previous_last_used_at: instant(self.previous_last_used_at)?,
                revision: self.revision as u64,
                idle_from: instant(self.idle_from)?,
                quarantined: self.quarantined != 0,
            })
        })();
        decoded.map_err(|why| format!("key {id}: {why}"))
    }
}

/// The columns a key's spec fills; the rest are placeholders for the caller to set.
fn spec_columns(spec: &KeySpec) -> KeyRow {
    KeyRow {
        seq: 0,
        id: String::new(),
        name: spec.name.clone(),
        environment: spec.environment.as_str().into(),
        hash: Hex([0; 32]),
        prefix: String::new(),
        permissions: to_json(&spec.permissions),
        rate_limit: spec.rate_limit.as_ref().map(to_json),
        customer_id: spec.customer_id.clone(),
        allowed_ips: to_json(&spec.allowed_ips),
        expires_at: spec.expires_at.map(|at| at.as_second()),
        status: String::new(),
        created_at: 0,
        updated_at: 0,
        last_used_at: None,
        previous_hash: None,
        grace_until: None,
        previous_last_used_at: None,
        metadata: to_json(&spec.metadata),
        revision: 0,
        idle_from: None,
        quarantined: 0,
        quota: spec.quota.as_ref().map(to_json),
    }
}

fn required<T>(value: Result<Option<T>, String>, column: &str) -> Result<T, String> {
    value?.ok_or_else(|| format!("{column} is NULL"))
}

/// What a statement writes of a key row: which columns it sets, and which find the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrite {
    /// A new key: every column but `seq`, which the store numbers.
    New,
    /// A change to a key, by `seq`: what a change may touch. Never its id, environment or
    /// creation time, nor `last_used_at`, which only counted usage moves.
    Change,
    /// A dump's row as a new row: every column (`seq` too).
    Restore,
    /// A dump's row over the stored key of the same id, by `seq` and `id`: every other column.
    RestoreOver,
}

impl KeyWrite {
    /// The columns the statement sets, and those it finds the row by (none for an insert), as
    /// places in [`KEY_COLUMNS`].
    fn columns(self) -> (Vec<usize>, Vec<usize>) {
        let (skipped, by): (&[&str], &[&str]) = match self {
            KeyWrite::New => (&["seq"], &[]),
            KeyWrite::Change => (
                &["seq", "id", "environment", "created_at", "last_used_at"],
                &["seq"],
            ),
            KeyWrite::Restore => (&[], &[]),
            KeyWrite::RestoreOver => (&["seq", "id"], &["seq", "id"]),
        };
        let places =
            |keep: &dyn Fn(&str) -> bool| (0..KEY_COLUMNS.len()).filter(|&i| keep(KEY_COLUMNS[i])).collect();
        (
            places(&|name| !skipped.contains(&name)),
            places(&|name| by.contains(&name)),
        )
    }

    /// The statement, its parameters marked by `mark(n)` (from 1: SQLite's `?n`, PostgreSQL's
    /// `$n`), in the order of [`KeyWrite::values`].
    pub fn sql(self, mark: fn(usize) -> String) -> String {
        let (set, by) = self.columns();
        if by.is_empty() {
            let marks: Vec<String> = (1..=set.len()).map(mark).collect();
            return format!(
                "INSERT INTO keys ({}) VALUES ({})",
                self.names(),
                marks.join(", ")
            );
        }
        let assigned = |places: &[usize], first: usize| -> Vec<String> {
            (places.iter().zip(first..))
                .map(|(&i, n)| format!("{} = {}", KEY_COLUMNS[i], mark(n)))
                .collect()
        };
        format!(
            "UPDATE keys SET {} WHERE {}",
            assigned(&set, 1).join(", "),
            assigned(&by, set.len() + 1).join(" AND ")
        )
    }

    /// The columns the statement sets, as a list: `id, name, ...`.
    pub fn names(self) -> String {
        let (set, _) = self.columns();
        let names: Vec<&str> = set.iter().map(|&i| KEY_COLUMNS[i]).collect();
        names.join(", ")
    }

    /// The parameters of [`KeyWrite::sql`], from a row's [`KeyRow::cells`].
    pub fn values<'c, 'a>(self, cells: &'c [Cell<'a>; KEY_COLUMN_COUNT]) -> Vec<&'c Cell<'a>> {
        let (set, by) = self.columns();
        set.into_iter().chain(by).map(|i| &cells[i]).collect()
    }
}

/// A secret's hash, written as 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hex(pub [u8; 32]);

impl Hex {
    /// From a store column; anything but 32 bytes is a bad row.
    pub fn from_column(bytes: &[u8], column: &str) -> Result<Hex, String> {
        <[u8; 32]>::try_from(bytes)
            .map(Hex)
            .map_err(|_| format!("{column} holds {} bytes, not 32", bytes.len()))
    }
}

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || serde::de::Error::custom("a hash is 64 hex digits");
        if text.len() != 64 || !text.is_ascii() {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Hex(bytes))
    }
}

/// A JSON column's text.
pub fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("key fields always serialize")
}

/// A JSON column read back; `Err` names the column.
pub fn json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{column}: {e}"))
}

/// A time column (Unix seconds) read back.
pub fn instant(seconds: Option<i64>) -> Result<Option<Timestamp>, String> {
    seconds
        .map(|s| Timestamp::from_second(s).map_err(|e| format!("bad timestamp {s}: {e}")))
        .transpose()
}

/// Counts, ids and revisions as the stores' signed 64-bit integers; past `i64::MAX` they
/// saturate (they never get there).
pub fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_sets_what_it_may_and_finds_the_row_by_seq() {
        let sql = KeyWrite::Change.sql(|n| format!("?{n}"));
        assert!(sql.starts_with("UPDATE keys SET name = ?1, hash = ?2,"), "{sql}");
        assert!(
            sql.ends_with("idle_from = ?16, quarantined = ?17, quota = ?18 WHERE seq = ?19"),
            "{sql}"
        );
        for kept in ["id =", "environment =", "created_at =", "last_used_at ="] {
            assert!(!sql.contains(&format!(" {kept}")), "{sql}");
        }
        let row = spec_columns(&KeySpec::new(
            "k",
            crate::core::environment::Environment::Production,
        ));
        let row = KeyRow { seq: 7, ..row };
        let cells = row.cells();
        let values = KeyWrite::Change.values(&cells);
        assert_eq!(values.len(), 19);
        assert_eq!(values[18], &Cell::Int(Some(7)));
    }

    #[test]
    fn inserts_list_their_columns_and_marks_alike() {
        assert_eq!(
            KeyWrite::Restore.sql(|n| format!("${n}")),
            format!(
                "INSERT INTO keys ({}) VALUES ({})",
                select_list(),
                (1..=KEY_COLUMN_COUNT)
                    .map(|n| format!("${n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
        let new = KeyWrite::New.sql(|n| format!("?{n}"));
        assert!(
            new.starts_with("INSERT INTO keys (id, name,")
                && new.ends_with(&format!("?{})", KEY_COLUMN_COUNT - 1)),
            "{new}"
        );
        assert_eq!(KEY_COLUMNS[REVISION_COLUMN], "revision");
    }
}
