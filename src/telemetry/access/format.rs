//! The access record of SPEC section 7, written straight into a byte buffer: JSON or text,
//! numbers by `itoa` and by hand, strings escaped by hand. No `fmt` machinery per field and no
//! allocation: a record costs a few hundred byte copies.
//!
//! Strings may hold any bytes (a path is what the client sent): `"` and `\` are escaped,
//! control characters become `\n`, `\t`, `\r` or `\u00XX`, and a byte that is not part of valid
//! UTF-8 becomes `%XX`, as it would be written in a URI, so every line is valid UTF-8 and every
//! JSON line parses.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

/// One request, as its access record tells it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// When the answer was ready, in microseconds since the Unix epoch.
    pub time_us: u64,
    pub request_id: &'a [u8],
    pub route: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub client: IpAddr,
    pub method: &'a str,
    /// Without the query string.
    pub path: Option<&'a [u8]>,
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    /// Why the request was refused; `None` for one that was answered by the upstream.
    pub reason: Option<&'a str>,
}

/// `{"time":"...","request_id":"...",...}` and a newline.
pub fn json(record: &Record, time: &mut TimeCache, out: &mut Vec<u8>) {
    write::<Json>(record, time, out);
}

/// The layout of `tracing`'s text lines, so both read alike on one stdout:
/// `TIME  INFO keygate::access: request_id=... route=... ... reason=-` and a newline; `-` for
/// an absent value, a value that needs it quoted and escaped as in JSON.
pub fn text(record: &Record, time: &mut TimeCache, out: &mut Vec<u8>) {
    write::<Text>(record, time, out);
}

/// The fields of a record in their order, each through the layout; monomorphized, so a layout
/// costs no more than writing its line by hand.
fn write<L: Layout>(record: &Record, time: &mut TimeCache, out: &mut Vec<u8>) {
    L::begin(out, time, record.time_us);
    L::string(out, Some(record.request_id));
    L::field(out, b"route");
    L::string(out, record.route.map(str::as_bytes));
    L::field(out, b"key_id");
    L::string(out, record.key_id.map(str::as_bytes));
    L::field(out, b"environment");
    L::string(out, record.environment.map(str::as_bytes));
    L::field(out, b"client");
    L::ip(out, record.client);
    L::field(out, b"method");
    L::string(out, Some(record.method.as_bytes()));
    L::field(out, b"path");
    L::string(out, record.path);
    L::field(out, b"status");
    out.extend_from_slice(itoa::Buffer::new().format(record.status).as_bytes());
    L::field(out, b"duration_ms");
    millis(out, record.duration);
    L::field(out, b"upstream_ms");
    match record.upstream {
        Some(upstream) => millis(out, upstream),
        None => L::absent(out),
    }
    L::field(out, b"reason");
    L::string(out, record.reason.map(str::as_bytes));
    L::end(out);
}

/// What tells the two lines apart: how the line begins and ends, how a field is named, and how
/// a string, an absent value and an address are written.
trait Layout {
    /// The time, and whatever comes before the first field's value (`request_id`).
    fn begin(out: &mut Vec<u8>, time: &mut TimeCache, time_us: u64);
    fn field(out: &mut Vec<u8>, name: &[u8]);
    fn string(out: &mut Vec<u8>, value: Option<&[u8]>);
    fn absent(out: &mut Vec<u8>);
    fn ip(out: &mut Vec<u8>, client: IpAddr);
    fn end(out: &mut Vec<u8>);
}

struct Json;

impl Layout for Json {
    fn begin(out: &mut Vec<u8>, time: &mut TimeCache, time_us: u64) {
        out.extend_from_slice(b"{\"time\":\"");
        time.write(time_us, out);
        out.extend_from_slice(b"\",\"request_id\":");
    }

    fn field(out: &mut Vec<u8>, name: &[u8]) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name);
        out.extend_from_slice(b"\":");
    }

    fn string(out: &mut Vec<u8>, value: Option<&[u8]>) {
        json_option(out, value);
    }

    fn absent(out: &mut Vec<u8>) {
        out.extend_from_slice(b"null");
    }

    fn ip(out: &mut Vec<u8>, client: IpAddr) {
        out.push(b'"');
        ip(out, client);
        out.push(b'"');
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(b"}\n");
    }
}

struct Text;

impl Layout for Text {
    fn begin(out: &mut Vec<u8>, time: &mut TimeCache, time_us: u64) {
        time.write(time_us, out);
        out.extend_from_slice(b"  INFO keygate::access: request_id=");
    }

    fn field(out: &mut Vec<u8>, name: &[u8]) {
        out.push(b' ');
        out.extend_from_slice(name);
        out.push(b'=');
    }

    fn string(out: &mut Vec<u8>, value: Option<&[u8]>) {
        text_value(out, value);
    }

    fn absent(out: &mut Vec<u8>) {
        out.push(b'-');
    }

    fn ip(out: &mut Vec<u8>, client: IpAddr) {
        ip(out, client);
    }

    fn end(out: &mut Vec<u8>) {
        out.push(b'\n');
    }
}

fn json_option(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) => json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of any bytes, quotes included.
fn json_string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    escape(out, value);
    out.push(b'"');
}

/// A text value: as it is when nothing in it could be misread, quoted and escaped otherwise.
fn text_value(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.push(b'-'),
        Some(value) if plain(value) => out.extend_from_slice(value),
        Some(value) => json_string(out, value),
    }
}

/// Whether a text value can go unquoted: not empty, not `-` (which means absent), and only
/// printable ASCII other than `"`, `\` and `=`.
fn plain(value: &[u8]) -> bool {
    !value.is_empty() && value != b"-" && value.iter().all(|&b| BYTES[usize::from(b)] & TEXT_PLAIN != 0)
}

/// A byte that goes as it is in a text value...
const TEXT_PLAIN: u8 = 1;
/// ...and in a JSON string.
const JSON_PLAIN: u8 = 2;

/// What each byte may go as: every byte of every field is looked up here, one load rather than
/// a chain of comparisons.
static BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0x20;
    while b < 0x7f {
        if b != b'"' && b != b'\\' {
            table[b as usize] = JSON_PLAIN;
            if b != b' ' && b != b'=' {
                table[b as usize] |= TEXT_PLAIN;
            }
        }
        b += 1;
    }
    table
};

/// The inside of a JSON string.
fn escape(out: &mut Vec<u8>, value: &[u8]) {
    if value.iter().all(|&b| BYTES[usize::from(b)] & JSON_PLAIN != 0) {
        out.extend_from_slice(value);
        return;
    }
    for chunk in value.utf8_chunks() {
        escape_utf8(out, chunk.valid().as_bytes());
        for &byte in chunk.invalid() {
            out.push(b'%');
            hex_byte(out, byte);
        }
    }
}

/// The inside of a JSON string, of valid UTF-8: multi-byte characters pass as they are.
fn escape_utf8(out: &mut Vec<u8>, value: &[u8]) {
    let mut start = 0;
    for (i, &byte) in value.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&value[start..i]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            hex_byte(out, byte);
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&value[start..]);
}

fn hex_byte(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(HEX[usize::from(byte >> 4)]);
    out.push(HEX[usize::from(byte & 0xf)]);
}

/// Milliseconds with microsecond precision: `0.019`, `12.500`, never `0.018834999999999998`.
pub fn millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let fraction = (micros % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        // Rare enough for `fmt`, which writes it without allocating.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 3339 UTC with microseconds, `2026-12-01T11:56:46.123456Z`; the date and time of day
/// are formatted once per second and kept, so most records copy them and add the fraction.
#[derive(Debug, Default)]
pub struct TimeCache {
    second: Option<u64>,
    /// `2026-12-01T11:56:46`.
    text: [u8; 19],
}

impl TimeCache {
    pub fn write(&mut self, time_us: u64, out: &mut Vec<u8>) {
        let second = time_us / 1_000_000;
        if self.second != Some(second) {
            self.text = date_time(second);
            self.second = Some(second);
        }
        out.extend_from_slice(&self.text);
        let micros = (time_us % 1_000_000) as u32;
        let mut fraction = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
        let mut rest = micros;
        for digit in fraction[1..7].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&fraction);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (UTC; years past 9999 are not expected).
fn date_time(second: u64) -> [u8; 19] {
    let days = (second / 86_400) as i64;
    let of_day = second % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, u64::from(month), 2);
    put(8, u64::from(day), 2);
    put(11, of_day / 3600, 2);
    put(14, of_day / 60 % 60, 2);
    put(17, of_day % 60, 2);
    text
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
