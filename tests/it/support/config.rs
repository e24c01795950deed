//! Edits of config texts that fail loudly. A test edits a template (most often
//! [`super::STANDARD`]); were the text it edits to change, a plain `str::replace` would change
//! nothing and the test would run quietly on the default config. These panic instead, naming
//! the text they looked for.

/// Edits of a config text. Each panics unless the text it looks for occurs exactly once: not
/// at all means the template changed under the test, twice means the edit is ambiguous.
pub trait ConfigEdit {
    /// The text with `from` replaced by `to`.
    fn edit(&self, from: &str, to: &str) -> String;

    /// The text with `lines` added at the top of its `[table]` (e.g. `"server"`). A setting the
    /// table has already makes the config a duplicate key, which fails to parse: loud too.
    fn set(&self, table: &str, lines: &str) -> String;
}

impl ConfigEdit for str {
    #[track_caller]
    fn edit(&self, from: &str, to: &str) -> String {
        match self.matches(from).count() {
            1 => self.replacen(from, to, 1),
            0 => panic!("the config edit found no {from:?} in:\n{self}"),
            n => panic!("the config edit found {from:?} {n} times, so it is ambiguous, in:\n{self}"),
        }
    }

    #[track_caller]
    fn set(&self, table: &str, lines: &str) -> String {
        let header = format!("[{table}]\n");
        self.edit(&header, &format!("{header}{}\n", lines.trim_end()))
    }
}

/// The `[rate_limit]` lines of the shared (Redis) backend at `url`, with a bucket `prefix` of
/// the test's own and a budget of `timeout` (e.g. `"50ms"`).
pub fn redis_limits(url: &str, prefix: &str, timeout: &str) -> String {
    format!(
        "backend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\nredis_timeout = \"{timeout}\""
    )
}

#[test]
fn an_edit_applies_once_and_a_missing_or_ambiguous_text_panics() {
    const TEXT: &str = "[server]\nlisten = \"a\"\n[admin]\nlisten = \"a\"\n";
    assert_eq!(
        TEXT.set("admin", "x = 1"),
        "[server]\nlisten = \"a\"\n[admin]\nx = 1\nlisten = \"a\"\n"
    );
    for edit in [
        (|| TEXT.edit("gone", "x")) as fn() -> String,
        || TEXT.edit("listen", "x"),
        || TEXT.set("store", "x = 1"),
    ] {
        assert!(std::panic::catch_unwind(edit).is_err());
    }
}
