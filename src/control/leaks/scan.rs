//! Finding keygate keys in text (control plane, pure): the pattern secret scanners are given,
//! and the checksum that tells a key from a look-alike. `keygate scan` reads files through
//! [`Stream`]; scanner vendors get [`PATTERN`] and the checksum rule (README, "Leaked keys").
//!
//! A match of the pattern is a key only when its last six characters are the base62 CRC32 of
//! the rest ([`check_format`]): a typo, a truncated key or a made-up example is not reported.

use crate::core::environment::Environment;
use crate::core::secret::{check_format, Format, Secret, GENERATED_BODY_LEN};

/// The regular expression for scanner vendors: a generated key between two bytes that are not
/// word characters (or the ends of the text); group 1 is the key. What it finds is a key only
/// when the checksum holds.
pub const PATTERN: &str = r"(?:^|[^0-9A-Za-z_])(kg_(?:prod|stg|dev)_[0-9A-Za-z]{38})(?:[^0-9A-Za-z_]|$)";

/// The longest key: `kg_prod_` and the body.
const MAX_KEY_LEN: usize = "kg_prod_".len() + GENERATED_BODY_LEN;

/// The keys in a whole text whose checksum holds, in order.
pub fn find_keys(text: &[u8]) -> Vec<Secret> {
    find(text, true).into_iter().map(|found| found.secret).collect()
}

/// A key found at `start..end` of a text.
#[derive(Debug)]
struct Found {
    start: usize,
    end: usize,
    secret: Secret,
}

/// The keys in `text`. One that reaches the end of `text` counts only when the text is
/// `complete`: in a chunk, the next byte could make it part of a longer word.
fn find(text: &[u8], complete: bool) -> Vec<Found> {
    memchr::memmem::find_iter(text, b"kg_")
        .filter_map(|start| {
            let end = key_end(text, start, complete)?;
            let key = String::from_utf8(text[start..end].to_vec()).ok()?;
            let secret = Secret::import(key).ok()?;
            Some(Found { start, end, secret })
        })
        .collect()
}

/// Where the key starting at `start` ends, if one does: the pattern's boundaries, an
/// environment tag, the body's length, and the checksum.
fn key_end(text: &[u8], start: usize, complete: bool) -> Option<usize> {
    if start > 0 && is_word(text[start - 1]) {
        return None;
    }
    let rest = &text[start + "kg_".len()..];
    let tag = Environment::ALL
        .iter()
        .map(|env| env.key_tag().as_bytes())
        .find(|tag| rest.starts_with(tag) && rest.get(tag.len()) == Some(&b'_'))?;
    let end = start + "kg_".len() + tag.len() + 1 + GENERATED_BODY_LEN;
    let key = text.get(start..end)?;
    match text.get(end) {
        Some(&next) if is_word(next) => return None,
        None if !complete => return None,
        _ => {}
    }
    matches!(check_format(key), Format::Generated(_)).then_some(end)
}

/// `[0-9A-Za-z_]`: what may not touch a key on either side.
fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// A key found in a [`Stream`], on line `line` (from 1).
#[derive(Debug)]
pub struct Sighting {
    pub line: u64,
    pub secret: Secret,
}

/// Finds keys in a text read in chunks, so a file of any size is read in constant memory. A key
/// cut in two by a chunk's end is found once the next chunk arrives.
#[derive(Debug, Default)]
pub struct Stream {
    /// The text not yet dropped: the last chunk, and the end of the one before.
    buffer: Vec<u8>,
    /// Where `buffer` starts in the whole text, in bytes and in lines.
    offset: u64,
    lines: u64,
    /// Keys starting before this offset were reported already.
    reported_until: u64,
}

impl Stream {
    /// The next chunk of the text; the keys it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Sighting> {
        self.buffer.extend_from_slice(chunk);
        let sightings = self.scan(false);
        // Kept: enough for a key that the next chunk completes, and the byte before it.
        let drop = self.buffer.len().saturating_sub(MAX_KEY_LEN + 1);
        self.lines += newlines(&self.buffer[..drop]);
        self.offset += drop as u64;
        self.buffer.drain(..drop);
        sightings
    }

    /// The end of the text: a key that ends it.
    pub fn finish(mut self) -> Vec<Sighting> {
        self.scan(true)
    }

    fn scan(&mut self, complete: bool) -> Vec<Sighting> {
        let (mut lines, mut counted) = (self.lines, 0);
        let mut sightings = Vec::new();
        for found in find(&self.buffer, complete) {
            if self.offset + (found.start as u64) < self.reported_until {
                continue;
            }
            lines += newlines(&self.buffer[counted..found.start]);
            counted = found.start;
            self.reported_until = self.offset + found.end as u64;
            sightings.push(Sighting {
                line: lines + 1,
                secret: found.secret,
            });
        }
        sightings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of `env` whose last character is changed: the checksum no longer holds.
    fn broken(key: &str) -> String {
        let mut bytes = key.as_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn keys_are_found_between_non_word_characters_and_only_when_their_checksum_holds() {
        let key = Secret::generate(Environment::Production).expose().to_owned();
        let dev = Secret::generate(Environment::Development).expose().to_owned();
        let bad = broken(&key);
        for (text, expected) in [
            (key.clone(), vec![key.as_str()]),
            (format!("API_KEY={key}\n"), vec![&key]),
            (format!(r#"{{"key":"{key}","dev":"{dev}"}}"#), vec![&key, &dev]),
            (format!("curl -u x:{key} https://api"), vec![&key]),
            (format!("{key}\n{dev}"), vec![&key, &dev]),
            (format!("key: {bad}"), vec![]),
            (format!("x{key}"), vec![]),
            (format!("_{key}"), vec![]),
            (format!("{key}0"), vec![]),
            (format!("{key}_"), vec![]),
            (key[..key.len() - 1].to_owned(), vec![]),
            (key.to_uppercase(), vec![]),
            (key.replacen("kg_prod_", "kg_qa_", 1), vec![]),
            (key.replacen("kg_prod_", "kg_prod__", 1), vec![]),
            (format!("{}\n{}", &key[..20], &key[20..]), vec![]),
            ("kg_ kg_prod_ kg_".to_owned(), vec![]),
        ] {
            let found = find_keys(text.as_bytes());
            let found: Vec<&str> = found.iter().map(Secret::expose).collect();
            assert_eq!(found, expected, "in {text:?}");
        }
    }

    #[test]
    fn the_pattern_describes_what_the_scanner_accepts() {
        let key = Secret::generate(Environment::Staging).expose().to_owned();
        assert_eq!(MAX_KEY_LEN, "kg_prod_".len() + key.len() - "kg_stg_".len());
        assert!(PATTERN.contains(&format!("{{{GENERATED_BODY_LEN}}}")));
        for env in Environment::ALL {
            assert!(PATTERN.contains(env.key_tag()), "{env}");
        }
    }

    #[test]
    fn non_text_bytes_around_a_key_are_boundaries() {
        let key = Secret::generate(Environment::Development).expose().to_owned();
        let mut text = vec![0u8, 0xff, 0xc3, 0xa9];
        text.extend_from_slice(key.as_bytes());
        text.extend_from_slice(&[0, 0xff]);
        assert_eq!(find_keys(&text).len(), 1);
    }

    /// The text's keys and lines, fed in chunks of `size`.
    fn streamed(text: &[u8], size: usize) -> Vec<(u64, String)> {
        let mut stream = Stream::default();
        let mut sightings = Vec::new();
        for chunk in text.chunks(size) {
            sightings.extend(stream.feed(chunk));
        }
        sightings.extend(stream.finish());
        sightings
            .into_iter()
            .map(|s| (s.line, s.secret.expose().to_owned()))
            .collect()
    }

    #[test]
    fn a_stream_finds_each_key_once_with_its_line_whatever_the_chunks() {
        let keys: Vec<String> = Environment::ALL
            .iter()
            .map(|env| Secret::generate(*env).expose().to_owned())
            .collect();
        let text = format!(
            "{}\nfirst line\nA={} B={}\n\n{}x\n{}\n{}",
            keys[0],
            keys[1],
            keys[2],
            keys[0],
            broken(&keys[1]),
            keys[2]
        );
        let expected = vec![
            (1, keys[0].clone()),
            (3, keys[1].clone()),
            (3, keys[2].clone()),
            (7, keys[2].clone()),
        ];
        for size in 1..=text.len() {
            assert_eq!(streamed(text.as_bytes(), size), expected, "chunks of {size}");
        }
    }

    #[test]
    fn a_key_the_next_chunk_extends_into_a_longer_word_is_not_one() {
        let key = Secret::generate(Environment::Production).expose().to_owned();
        let mut stream = Stream::default();
        assert!(stream.feed(key.as_bytes()).is_empty());
        assert!(stream.feed(b"more").is_empty());
        assert!(stream.finish().is_empty());
    }
}
