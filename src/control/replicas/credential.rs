//! The fleet credential (control plane, SPEC 12): how one replica asks another for its recent
//! requests (`GET /v1/requests?scope=fleet`) without sending any reusable secret.
//!
//! The addresses asked come from the store's replicas table, which anyone able to write one row
//! there controls; so the caller's admin token never leaves the replica. The asking replica
//! sends instead `Authorization: KeygateFleet ts=<unix seconds>,nonce=<32 hex>,sig=<64 hex>`,
//! where `sig` is BLAKE3 keyed by a key derived from the admin token
//! (`blake3::derive_key(CONTEXT, token)`: the write token when one is set, the read-only one
//! otherwise; the replicas share their config and tokens) over, each field length-prefixed:
//! the method, the path and query, the asked replica's id and advertised address, `ts` and the
//! nonce. The receiving replica accepts it only:
//! - on `GET /v1/requests?scope=local` (read-only, the one call the fleet makes);
//! - addressed to itself (its own id and advertised address, so a credential sent to a row
//!   that is not this replica's is worth nothing here);
//! - within [`WINDOW`] of its own clock;
//! - once: a nonce seen within the window is refused (a bounded set, see [`Seen`]).
//!
//! A credential captured at a false address thus opens nothing: not the admin API, not
//! another replica, not the same call twice.
//!
//! It does let its receiver test guesses of the admin token offline (the MAC is over fields
//! the receiver knows), at BLAKE3's speed; so a token shorter than [`MIN_TOKEN_CHARS`] signs
//! nothing and accepts nothing ([`FleetKey::signs`]): `scope=fleet` then names every other
//! replica in `missing`, and `serve`/`check` warn when this replica advertises itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

/// The `Authorization` scheme.
pub const SCHEME: &str = "KeygateFleet";
/// The only path a fleet credential opens.
pub const PATH: &str = "/v1/requests";
/// The key derivation's context string (BLAKE3's `derive_key`): fixed forever for this use.
const CONTEXT: &str = "keygate 2026-12-07 fleet request credential v1";
/// How far a credential's time may be from the receiving replica's clock, either way.
pub const WINDOW: Duration = Duration::from_secs(30);
/// The most nonces remembered; past it, new credentials are refused until old ones expire.
/// Only a holder of the key can fill it, at more than a hundred fleet reads a second.
const MAX_SEEN: usize = 4096;
/// The shortest admin token that signs fleet requests: a shorter one could be guessed offline
/// from a credential received at a false address.
pub const MIN_TOKEN_CHARS: usize = 32;
/// Why a replica with a short admin token asks no other (`missing[].reason`, the warning).
pub const TOO_SHORT: &str = "the admin token is too short to sign fleet requests (at least 32 characters)";

/// The warning `serve` and `check` give when this replica advertises itself for fleet reads
/// (`admin.advertise` or `advertise_env`) but `token` (the write token, else the read-only
/// one, as [`FleetKey`] takes) is too short to sign them; `None` when all is well.
pub fn short_token_warning(config: &crate::config::Config, token: Option<&str>) -> Option<String> {
    let advertises = config.admin.advertise.is_some() || config.admin.advertise_env.is_some();
    let short = token.is_some_and(|token| token.chars().count() < MIN_TOKEN_CHARS);
    (advertises && short).then(|| {
        format!("{TOO_SHORT}: GET /v1/requests?scope=fleet asks no other replica, and no other asks this one ({} is set)",
            if config.admin.advertise.is_some() { "admin.advertise" } else { "admin.advertise_env" })
    })
}

/// Which replica a credential is for: its id and advertised admin address, as its row says.
#[derive(Debug, Clone, Copy)]
pub struct Audience<'a> {
    pub id: &'a str,
    pub advertise: &'a str,
}

/// Why a credential is refused (logged; the caller sees only a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a fleet credential")]
    Malformed,
    #[error("only GET /v1/requests?scope=local")]
    NotAllowed,
    #[error("outside the clock window")]
    Stale,
    #[error("wrong signature")]
    Signature,
    #[error("nonce already used")]
    Replayed,
    #[error("too many fleet credentials within the window")]
    Full,
    #[error("this replica's admin token is too short to accept fleet credentials")]
    TooShort,
}

impl Refused {
    /// The refusal's name in `keygate_fleet_credential_refusals_total{reason}`.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::NotAllowed => "not_allowed",
            Refused::Stale => "stale",
            Refused::Signature => "signature",
            Refused::Replayed => "replayed",
            Refused::Full => "full",
            Refused::TooShort => "too_short",
        }
    }

    /// Whether it took the key to cause it (stale, replayed, full): worth a warning. The
    /// others anyone can send, so they are only counted (and logged at debug).
    pub fn needed_the_key(self) -> bool {
        matches!(self, Refused::Stale | Refused::Replayed | Refused::Full)
    }
}

/// The key both sides derive, and the nonces this replica has accepted.
pub struct FleetKey {
    /// `None` when the token is shorter than [`MIN_TOKEN_CHARS`].
    key: Option<[u8; 32]>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// The key of `token` (the admin token the replicas share); one that signs nothing when
    /// the token is shorter than [`MIN_TOKEN_CHARS`].
    pub fn derive(token: &str) -> FleetKey {
        let long_enough = token.chars().count() >= MIN_TOKEN_CHARS;
        FleetKey {
            key: long_enough.then(|| blake3::derive_key(CONTEXT, token.as_bytes())),
            seen: Mutex::default(),
        }
    }

    /// Whether the token was long enough to sign and accept fleet credentials.
    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    /// The `Authorization` value for `GET path_and_query` on `audience`, at `now`; `None`
    /// when the token is too short to sign ([`FleetKey::signs`]).
    pub fn sign(&self, audience: Audience<'_>, path_and_query: &str, now: Timestamp) -> Option<String> {
        let key = self.key.as_ref()?;
        let nonce = format!("{:032x}", rand::random::<u128>());
        let ts = now.as_second();
        let sig = mac(key, "GET", path_and_query, audience, ts, &nonce);
        Some(format!("{SCHEME} ts={ts},nonce={nonce},sig={}", sig.to_hex()))
    }

    /// Accepts `authorization` (the whole header value) for `method path_and_query` on this
    /// replica (`audience`) at `now`, and remembers its nonce; or says why not.
    pub fn verify(
        &self,
        authorization: &str,
        method: &http::Method,
        path_and_query: &str,
        audience: Audience<'_>,
        now: Timestamp,
    ) -> Result<(), Refused> {
        let presented = Presented::parse(authorization)?;
        if method != http::Method::GET || !only_local_requests(path_and_query) {
            return Err(Refused::NotAllowed);
        }
        let key = self.key.as_ref().ok_or(Refused::TooShort)?;
        let expected = mac(
            key,
            method.as_str(),
            path_and_query,
            audience,
            presented.ts,
            presented.nonce,
        );
        // blake3::Hash compares in constant time.
        if expected != presented.sig {
            return Err(Refused::Signature);
        }
        if now.as_second().abs_diff(presented.ts) > WINDOW.as_secs() {
            return Err(Refused::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.admit(presented.nonce, presented.ts, now.as_second())
    }
}

/// The MAC of one call under `key`, each field length-prefixed.
fn mac(
    key: &[u8; 32],
    method: &str,
    path_and_query: &str,
    audience: Audience<'_>,
    ts: i64,
    nonce: &str,
) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    let ts = ts.to_string();
    let fields = [
        method,
        path_and_query,
        audience.id,
        audience.advertise,
        &ts,
        nonce,
    ];
    for field in fields {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize()
}

/// Whether a request is `/v1/requests` with exactly one `scope`, `local`, however encoded.
fn only_local_requests(path_and_query: &str) -> bool {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let decode = |text: &str| crate::core::percent::decode(text, true);
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(name), decode(value)) {
            (Some(name), Some(value)) if name == "scope" => scopes.push(value),
            (Some(_), Some(_)) => {}
            _ => return false,
        }
    }
    path == PATH && scopes == ["local"]
}

/// The fields of a presented credential.
struct Presented<'a> {
    ts: i64,
    nonce: &'a str,
    sig: blake3::Hash,
}

impl<'a> Presented<'a> {
    fn parse(header: &'a str) -> Result<Presented<'a>, Refused> {
        let rest = header
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(Refused::Malformed)?;
        let mut fields = rest.split(',');
        let mut next = |name: &str| {
            fields
                .next()
                .and_then(|field| field.trim().strip_prefix(name))
                .and_then(|field| field.strip_prefix('='))
                .ok_or(Refused::Malformed)
        };
        let ts_text = next("ts")?;
        let ts = ts_text.parse::<i64>().map_err(|_| Refused::Malformed)?;
        let nonce = next("nonce")?;
        let sig = next("sig")?;
        // One spelling for each value: the signed `ts` is its decimal text, with no sign or
        // leading zero, and the hex is lower-case, as `sign` writes them.
        let lower_hex = |text: &str| text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ts_text != ts.to_string()
            || nonce.len() != 32
            || !lower_hex(nonce)
            || !lower_hex(sig)
            || fields.next().is_some()
        {
            return Err(Refused::Malformed);
        }
        let sig = blake3::Hash::from_hex(sig).map_err(|_| Refused::Malformed)?;
        Ok(Presented { ts, nonce, sig })
    }
}

/// The nonces accepted within the window, with their credentials' times, and the latest
/// clock reading seen (so a clock stepped back reopens no window already passed).
#[derive(Default)]
struct Seen {
    nonces: HashMap<String, i64>,
    high_water: i64,
}

impl Seen {
    fn admit(&mut self, nonce: &str, ts: i64, now: i64) -> Result<(), Refused> {
        let window = WINDOW.as_secs() as i64;
        self.high_water = self.high_water.max(now);
        if ts < self.high_water - window {
            return Err(Refused::Stale);
        }
        if self.nonces.contains_key(nonce) {
            return Err(Refused::Replayed);
        }
        // A nonce older than the window needs no remembering: its time refuses it already.
        // One ahead of a clock stepped back is kept: it may come within the window again.
        let oldest = self.high_water - window;
        self.nonces.retain(|_, at| *at >= oldest);
        if self.nonces.len() >= MAX_SEEN {
            return Err(Refused::Full);
        }
        self.nonces.insert(nonce.to_owned(), ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const ASKED: Audience<'static> = Audience {
        id: "rep_00000000000000aa",
        advertise: "http://10.0.0.2:9901",
    };
    const QUERY: &str = "/v1/requests?status=200&scope=local";
    const TOKEN: &str = "a-shared-admin-token-of-40-characters-xx";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn verify(
        key: &FleetKey,
        header: &str,
        method: Method,
        path: &str,
        audience: Audience<'_>,
        now: i64,
    ) -> Result<(), Refused> {
        key.verify(header, &method, path, audience, at(now))
    }

    #[test]
    fn a_credential_signed_with_the_shared_key_is_accepted_once() {
        let (asker, asked) = (FleetKey::derive(TOKEN), FleetKey::derive(TOKEN));
        let header = asker.sign(ASKED, QUERY, at(0)).unwrap();
        assert!(
            header.starts_with("KeygateFleet ts=1800000000,nonce="),
            "{header}"
        );
        assert!(!header.contains(TOKEN));
        assert_eq!(verify(&asked, &header, Method::GET, QUERY, ASKED, 1), Ok(()));
        assert_eq!(
            verify(&asked, &header, Method::GET, QUERY, ASKED, 2),
            Err(Refused::Replayed)
        );
        let fresh = asker.sign(ASKED, QUERY, at(0)).unwrap();
        assert_eq!(
            verify(&asked, &fresh, Method::GET, QUERY, ASKED, 2),
            Ok(()),
            "a new nonce"
        );
    }

    #[test]
    fn another_tokens_key_is_refused() {
        let header = FleetKey::derive("another-admin-token-of-40-characters-xxx")
            .sign(ASKED, QUERY, at(0))
            .unwrap();
        let asked = FleetKey::derive(TOKEN);
        assert_eq!(
            verify(&asked, &header, Method::GET, QUERY, ASKED, 0),
            Err(Refused::Signature)
        );
    }

    #[test]
    fn a_credential_outside_the_window_is_refused_either_way() {
        let key = FleetKey::derive(TOKEN);
        let header = key.sign(ASKED, QUERY, at(0)).unwrap();
        assert_eq!(
            verify(&key, &header, Method::GET, QUERY, ASKED, 31),
            Err(Refused::Stale)
        );
        assert_eq!(
            verify(&key, &header, Method::GET, QUERY, ASKED, -31),
            Err(Refused::Stale)
        );
        assert_eq!(verify(&key, &header, Method::GET, QUERY, ASKED, 30), Ok(()));
    }

    #[test]
    fn a_credential_opens_only_the_call_and_the_replica_it_was_made_for() {
        let key = FleetKey::derive(TOKEN);
        let header = key.sign(ASKED, QUERY, at(0)).unwrap();
        let other = Audience {
            id: ASKED.id,
            advertise: "http://10.0.0.3:9901",
        };
        let cases: [(Method, &str, Audience<'_>, Refused); 7] = [
            (
                Method::GET,
                "/v1/requests?status=500&scope=local",
                ASKED,
                Refused::Signature,
            ),
            (Method::GET, QUERY, other, Refused::Signature),
            (Method::GET, "/v1/keys?scope=local", ASKED, Refused::NotAllowed),
            (
                Method::GET,
                "/v1/requests?scope=fleet",
                ASKED,
                Refused::NotAllowed,
            ),
            (
                Method::GET,
                "/v1/requests?scope=local&scope=fleet",
                ASKED,
                Refused::NotAllowed,
            ),
            (
                Method::GET,
                "/v1/requests?sc%6Fpe=fleet&scope=local",
                ASKED,
                Refused::NotAllowed,
            ),
            (Method::POST, QUERY, ASKED, Refused::NotAllowed),
        ];
        for (method, path, audience, refused) in cases {
            assert_eq!(
                verify(&key, &header, method.clone(), path, audience, 0),
                Err(refused),
                "{method} {path}"
            );
        }
        assert_eq!(verify(&key, &header, Method::GET, QUERY, ASKED, 0), Ok(()));
    }

    #[test]
    fn a_malformed_header_is_refused_without_panicking() {
        let key = FleetKey::derive(TOKEN);
        let nonce = "0".repeat(32);
        let sig = "0".repeat(64);
        let headers = [
            String::new(),
            "Bearer token".to_owned(),
            "KeygateFleet".to_owned(),
            format!("KeygateFleet ts=x,nonce={nonce},sig={sig}"),
            format!("KeygateFleet ts=1,nonce=zz,sig={sig}"),
            format!("KeygateFleet ts=1,nonce={nonce},sig=abc"),
            format!("KeygateFleet nonce={nonce},ts=1,sig={sig}"),
            format!("KeygateFleet ts=1,nonce={nonce},sig={sig},more=1"),
            format!("KeygateFleet ts=99999999999999999999,nonce={nonce},sig={sig}"),
            format!("KeygateFleet ts=+1,nonce={nonce},sig={sig}"),
            format!("KeygateFleet ts=01,nonce={nonce},sig={sig}"),
            format!("KeygateFleet ts=-0,nonce={nonce},sig={sig}"),
            format!("KeygateFleet ts=1,nonce={nonce},sig={}", "A".repeat(64)),
            format!("KeygateFleet ts=1,nonce={},sig={sig}", "A".repeat(32)),
        ];
        for header in headers {
            assert_eq!(
                verify(&key, &header, Method::GET, QUERY, ASKED, 0),
                Err(Refused::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn the_nonces_remembered_are_bounded_and_expire_with_the_window() {
        let mut seen = Seen::default();
        for n in 0..MAX_SEEN {
            assert_eq!(seen.admit(&n.to_string(), 0, 0), Ok(()));
        }
        assert_eq!(seen.admit("one more", 0, 0), Err(Refused::Full));
        assert_eq!(seen.admit("one more", 31, 31), Ok(()), "the old ones expired");
        assert_eq!(seen.nonces.len(), 1);
    }

    #[test]
    fn a_clock_stepped_back_reopens_no_window_already_passed() {
        let mut seen = Seen::default();
        assert_eq!(seen.admit("a", 100, 100), Ok(()));
        // The clock steps back 60 s: a credential of that time is within 30 s of it, but
        // older than the window of the latest time seen.
        assert_eq!(seen.admit("b", 40, 40), Err(Refused::Stale));
        assert_eq!(
            seen.admit("a", 100, 40),
            Err(Refused::Replayed),
            "still remembered"
        );
        assert_eq!(seen.admit("c", 70, 40), Ok(()));
    }

    #[test]
    fn a_token_too_short_signs_nothing_and_accepts_nothing() {
        let short = FleetKey::derive(&TOKEN[..MIN_TOKEN_CHARS - 1]);
        assert!(!short.signs());
        assert_eq!(short.sign(ASKED, QUERY, at(0)), None);
        assert!(FleetKey::derive(&TOKEN[..MIN_TOKEN_CHARS]).signs());
        let header = FleetKey::derive(TOKEN).sign(ASKED, QUERY, at(0)).unwrap();
        assert_eq!(
            verify(&short, &header, Method::GET, QUERY, ASKED, 0),
            Err(Refused::TooShort)
        );
    }

    #[test]
    fn only_refusals_that_took_the_key_are_worth_a_warning() {
        assert!(Refused::Stale.needed_the_key() && Refused::Replayed.needed_the_key());
        assert!(Refused::Full.needed_the_key());
        for anyone in [
            Refused::Malformed,
            Refused::NotAllowed,
            Refused::Signature,
            Refused::TooShort,
        ] {
            assert!(!anyone.needed_the_key(), "{anyone}");
        }
    }
}
