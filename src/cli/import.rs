//! `keygate keys import-file FILE`: JSON Lines, one key per line, read as it is written: the
//! keys go to the store in batches, in one transaction that a bad line calls off, so nothing
//! of a bad file is imported and a million keys never sit in memory at once. A mistake is named
//! by its line in the file and the field at fault, with the shape the field takes (not serde's
//! type names or its idea of a line).

use std::io::BufRead;
use std::path::Path;
use std::str::FromStr;
use std::sync::mpsc::{Receiver, SyncSender};

use jiff::Timestamp;
use serde_json::Value;

use super::{Detailed, Failure};
use crate::control::keys::{BulkImport, KeyRequest, KeyService, KeySpec};
use crate::control::store::{NewKey, StoreError};
use crate::core::environment::Environment;
use crate::core::key::reword;
use crate::core::secret::Secret;

/// Most bad lines reported one by one; past it, how many more.
const MAX_REPORTED: usize = 100;
/// Keys handed to the store at a time: large enough that a batch's round trips do not count,
/// small enough that a batch's memory does not.
const BATCH: usize = 10_000;

/// The bad lines of a file, in order: the first [`MAX_REPORTED`] with why, and how many.
#[derive(Default)]
pub struct BadLines {
    reported: Vec<(usize, String)>,
    count: usize,
}

impl BadLines {
    fn push(&mut self, line: usize, why: String) {
        if self.reported.len() < MAX_REPORTED {
            self.reported.push((line, why));
        }
        self.count += 1;
    }
}

/// Imports every key of the file at `path`, all or none: how many. Every bad line is found
/// (the file is read to its end) before the import is called off.
///
/// The file is read, checked and hashed on a thread of its own while the store writes the
/// batch before: a channel of [`QUEUED`] batches between them, so the two overlap without the
/// reader running far ahead (memory stays a few batches). The first bad line calls the import
/// off at once (the store rolls back while the rest of the file is read for its bad lines).
pub fn import_file(service: &KeyService, path: &Path) -> Result<u64, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?;
    let lines = std::io::BufReader::with_capacity(READ_BUFFER, file).lines();
    let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUED);
    let (written, bad) = std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("import-reader".into())
            .spawn_scoped(scope, || read_file(lines, service.bulk_import(), sender))
            .map_err(|e| Failure::Runtime(format!("cannot start the file's reader: {e}")))?;
        let mut next = move || receive(&receiver);
        let written = service.import_batches(&mut next);
        // A store that gave up leaves the reader no one to hand batches to: it stops.
        drop(next);
        let bad = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok::<_, Failure>((written, bad))
    })?;
    if bad.count > 0 {
        return Err(bad_lines(path, bad));
    }
    Ok(written?)
}

/// Batches read ahead of the store: one being written, [`QUEUED`] waiting.
const QUEUED: usize = 2;
/// The file is read in large pieces: a million lines are 140 MiB.
const READ_BUFFER: usize = 1 << 20;

/// The next batch for the store: `None` at the end of the file; the import called off when the
/// reader found a bad line (it hangs up without saying the file ended).
fn receive(receiver: &Receiver<Option<Vec<NewKey>>>) -> Result<Option<Vec<NewKey>>, StoreError> {
    receiver
        .recv()
        .map_err(|_| StoreError::Conflict("the import file has bad lines".into()))
}

/// Reads the file to its end, sending its keys in batches, then `None`; after a bad line it
/// sends nothing more (hanging up calls the import off) but still reads on for the bad lines.
/// Stops early when the store hangs up. The bad lines found.
fn read_file(
    lines: impl Iterator<Item = std::io::Result<String>>,
    mut import: BulkImport<'_>,
    sender: SyncSender<Option<Vec<NewKey>>>,
) -> BadLines {
    let mut bad = BadLines::default();
    let mut sender = Some(sender);
    let mut batch = Vec::with_capacity(BATCH);
    for (index, line) in lines.enumerate() {
        match read_key(line, &mut import) {
            Ok(Some(key)) if bad.count == 0 => batch.push(key),
            Ok(_) => {}
            Err(why) => {
                bad.push(index + 1, why);
                sender = None;
            }
        }
        if batch.len() == BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if sender.as_ref().is_some_and(|s| s.send(Some(full)).is_err()) {
                return bad;
            }
        }
    }
    if let Some(sender) = sender {
        let last = (!batch.is_empty()).then_some(batch);
        // The store may have given up meanwhile: then nobody listens, and it has said why.
        let _ = last.map_or(Ok(()), |last| sender.send(Some(last)));
        let _ = sender.send(None);
    }
    bad
}

/// One line's key, checked and hashed; `None` for a blank line.
fn read_key(line: std::io::Result<String>, import: &mut BulkImport<'_>) -> Result<Option<NewKey>, String> {
    let key = line
        .map_err(|e| e.to_string())
        .and_then(|line| read_line(&line))?;
    key.map(|(spec, secret)| import.check(spec, &secret))
        .transpose()
        .map_err(|e| e.to_string())
}

/// One line's key, `None` for a blank line.
fn read_line(line: &str) -> Result<Option<(KeySpec, Secret)>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (spec, secret) = parse_line(line)?
        .into_spec(Timestamp::now())
        .map_err(|e| e.to_string())?;
    let secret = secret.ok_or("key: the secret to import is missing")?;
    let secret = Secret::import(secret).map_err(|why| format!("key: {why}"))?;
    Ok(Some((spec, secret)))
}

/// The failure for a file with bad lines: each on stderr, up to [`MAX_REPORTED`], a count
/// last; with `--json`, the same in the error document. Exit 1: the command was right, the file
/// is not.
fn bad_lines(path: &Path, bad: BadLines) -> Failure {
    let shown = path.display();
    let BadLines { reported, count } = bad;
    let mut notes: Vec<String> = reported
        .iter()
        .map(|(line, why)| format!("{shown}: line {line}: {why}"))
        .collect();
    if count > MAX_REPORTED {
        notes.push(format!("{shown}: and {} more bad line(s)", count - MAX_REPORTED));
    }
    let lines: Vec<serde_json::Value> = reported
        .iter()
        .map(|(line, why)| serde_json::json!({ "line": line, "error": why }))
        .collect();
    let detail = serde_json::json!({ "file": shown.to_string(), "bad_lines": count, "lines": lines });
    Failure::Detailed(Box::new(Detailed {
        usage: false,
        message: format!("{shown}: {count} bad line(s), nothing imported"),
        notes,
        detail: match detail {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    }))
}

/// One line as a key request; the error names the field and, for bad JSON, the column.
///
/// A line that is right as it stands (the environment spelled as stored) is read straight
/// into the request; any other is read again through a JSON value, which takes the other
/// spellings of an environment and names the field at fault. Both read a good line alike.
fn parse_line(line: &str) -> Result<KeyRequest, String> {
    serde_json::from_str(line).or_else(|_| parse_through_value(line))
}

/// One line as a key request, read through a JSON value: see [`parse_line`].
fn parse_through_value(line: &str) -> Result<KeyRequest, String> {
    let mut value: Value = serde_json::from_str(line).map_err(|e| {
        let message = e.to_string();
        let reason = message.split(" at line ").next().unwrap_or(&message);
        format!("not valid JSON: {reason} (column {})", e.column())
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(
            r#"expected an object, like {"key":"...","name":"...","environment":"production"}"#.into(),
        );
    };
    // The spellings `--env` takes: production, prod, Staging, stg, ...
    if let Some(Value::String(text)) = object.get("environment") {
        let environment = Environment::from_str(text).map_err(|why| format!("environment: {why}"))?;
        object.insert("environment".into(), environment.as_str().into());
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        describe(&path, &message)
    })
}

/// serde's message at `path`, with its type names replaced by the shape the field takes.
fn describe(path: &str, message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    let mut field = if path == "." { "" } else { path };
    // An unknown field's path ends with its name, which the message names already.
    if message.starts_with("unknown field `") {
        field = field.rsplit_once('.').map_or("", |(parent, _)| parent);
    }
    match field {
        "" => message.to_owned(),
        field => format!("{field}: {}", reword(field, message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: &str) -> String {
        match parse_line(line) {
            Ok(request) => panic!("accepted {line}: {request:?}"),
            Err(why) => why,
        }
    }

    #[test]
    fn a_line_read_straight_reads_as_through_a_value() {
        let line = r#"{"key":"legacy-1","name":"n","environment":"staging","permissions":["orders:*"],"rate_limit":{"requests":5,"per":"1s","burst":9},"customer_id":"c","allowed_ips":["10.0.0.0/8"],"expires_at":"2030-01-01T00:00:00Z","metadata":{"a":[1,{"b":null}]},"quota":{"limit":10,"period":"month"}}"#;
        let straight: KeyRequest = serde_json::from_str(line).unwrap();
        let through = parse_through_value(line).unwrap();
        assert_eq!(format!("{straight:?}"), format!("{through:?}"));
        // A duplicated field is refused straight, taken (the last one) through a value, as before.
        let twice = r#"{"key":"k","name":"a","name":"b","environment":"prod"}"#;
        assert_eq!(parse_line(twice).unwrap().name, "b");
    }

    #[test]
    fn every_spelling_of_an_environment_is_taken() {
        for (written, environment) in [
            ("prod", Environment::Production),
            ("Production", Environment::Production),
            ("stg", Environment::Staging),
            ("dev", Environment::Development),
        ] {
            let line = format!(r#"{{"key":"k","name":"n","environment":"{written}"}}"#);
            assert_eq!(parse_line(&line).unwrap().environment, environment, "{written}");
        }
    }

    #[test]
    fn errors_name_the_field_and_its_shape_not_serde_types_or_lines() {
        let base = r#""key":"legacy-secret-1","name":"n","environment":"prod""#;
        for (fields, says) in [
            (
                r#""rate_limit":"5/s""#,
                r#"rate_limit: got string "5/s", expected {"requests":N,"per":"1s","burst":N} or null"#,
            ),
            (
                r#""rate_limit":{"requests":0,"per":"1s"}"#,
                "rate_limit.requests: got integer `0`, expected a whole number from 1",
            ),
            (
                r#""permissions":"x""#,
                "permissions: got string \"x\", expected an array",
            ),
            (
                r#""permissions":[1]"#,
                "permissions[0]: got integer `1`, expected a permission",
            ),
            (
                r#""metadata":[]"#,
                "metadata: got sequence, expected a JSON object",
            ),
            (
                r#""environment":"moon""#,
                "environment: unknown environment \"moon\"",
            ),
            (r#""colour":"red""#, "unknown field `colour`"),
            (
                r#""rate_limit":{"requests":1,"per":"1s","brust":2}"#,
                "rate_limit: unknown field `brust`",
            ),
        ] {
            let found = error(&format!("{{{base},{fields}}}"));
            assert!(found.starts_with(says), "{fields}: {found}");
            for internal in ["struct", "RateLimitSpec", "NonZero", "u32", "line 1"] {
                assert!(!found.contains(internal), "{fields}: {found}");
            }
        }
        assert_eq!(
            error(r#"{"key":"k" "name":"n"}"#),
            "not valid JSON: expected `,` or `}` (column 12)"
        );
        assert!(error("[1]").starts_with("expected an object, like {"));
        assert_eq!(
            error(r#"{"key":"k","environment":"prod"}"#),
            "missing field `name`"
        );
    }
}
