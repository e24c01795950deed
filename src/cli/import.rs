//! `keygate keys import-file FILE`: JSON Lines, one key per line, read and checked whole before
//! anything is written. A mistake is named by its line in the file and the field at fault, with
//! the shape the field takes (not serde's type names or its idea of a line).

use std::io::BufRead;
use std::path::Path;
use std::str::FromStr;

use jiff::Timestamp;
use serde_json::Value;

use super::Failure;
use crate::control::keys::{KeyRequest, KeySpec};
use crate::core::environment::Environment;
use crate::core::key::reword;
use crate::core::secret::Secret;

/// Every key of the file; blank lines are skipped.
pub fn read_file(path: &Path) -> Result<Vec<(KeySpec, Secret)>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?;
    let mut items = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = |why: String| Failure::Usage(format!("{}: line {}: {why}", path.display(), index + 1));
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = parse_line(&line).map_err(at)?;
        let (spec, secret) = item.into_spec(Timestamp::now()).map_err(|e| at(e.to_string()))?;
        let secret = secret.ok_or_else(|| at("key: the secret to import is missing".into()))?;
        let secret = Secret::import(secret).map_err(|why| at(format!("key: {why}")))?;
        items.push((spec, secret));
    }
    Ok(items)
}

/// One line as a key request; the error names the field and, for bad JSON, the column.
fn parse_line(line: &str) -> Result<KeyRequest, String> {
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
