//! The store's and the shared limiter's URLs (configuration): parsed here as the store and
//! the limiter will use them, so that `check` refuses what `serve` would. Nothing is dialled.

use std::path::{Path, PathBuf};

use super::StoreUrl;

/// How the PostgreSQL store uses TLS, from the URL's `sslmode` and `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTls {
    /// Whether the server's name must match its certificate: every mode but `verify-ca`.
    pub verify_name: bool,
    /// Trust these roots (PEM) instead of the system's and Mozilla's: `sslrootcert`.
    pub root_cert: Option<PathBuf>,
}

/// A `postgres://` URL as the store connects with it (parsed, not dialled): libpq's form, with
/// `sslmode` (`disable`, the default; `prefer`; `require`, `verify-ca`, `verify-full`) and
/// `sslrootcert` (an absolute path to PEM roots, read here so `check` refuses what `serve`
/// would) taken out for rustls. Whenever TLS is used the server's chain is verified; the name
/// too, except with `verify-ca`.
pub fn postgres_url(text: &str) -> Result<(tokio_postgres::Config, PostgresTls), String> {
    let (base, query) = text.split_once('?').unwrap_or((text, ""));
    let mut mode = "disable";
    let mut root_cert = None;
    let mut rest: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = value,
            Some(("sslrootcert", value)) => root_cert = Some(root_cert_path(value)?),
            _ => rest.push(pair),
        }
    }
    let (libpq_mode, verify_name) = match mode {
        "disable" => ("disable", true),
        "prefer" => ("prefer", true),
        "require" | "verify-full" => ("require", true),
        "verify-ca" => ("require", false),
        other => {
            return Err(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    };
    rest.push(match libpq_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let config = format!("{base}?{}", rest.join("&"))
        .parse::<tokio_postgres::Config>()
        .map_err(|e| format!("is not a PostgreSQL URL: {e}"))?;
    Ok((
        config,
        PostgresTls {
            verify_name,
            root_cert,
        },
    ))
}

/// `sslrootcert`: an absolute path (percent-decoded) to a file of PEM certificates, at least one.
fn root_cert_path(value: &str) -> Result<PathBuf, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let decoded = crate::core::percent::decode(value, false)
        .ok_or("sslrootcert is not a valid percent-encoded path")?;
    let path = PathBuf::from(decoded);
    if !path.is_absolute() {
        return Err(format!("sslrootcert={} must be an absolute path", path.display()));
    }
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "sslrootcert: cannot read certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(path)
}

/// A `redis://` or `rediss://` URL the Redis client can connect with (parsed, not dialled).
pub(super) fn redis_url(text: &str) -> Result<(), String> {
    if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
        return Err("must start with redis:// or rediss://".to_owned());
    }
    redis::Client::open(text)
        .map(drop)
        .map_err(|e| format!("is not a Redis URL: {e}"))
}

pub fn store_url(text: &str, base_dir: &Path) -> Result<StoreUrl, String> {
    let text = text.trim();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        // Parsed as the store will, so `check` refuses what `serve` would.
        postgres_url(text)?;
        return Ok(StoreUrl::Postgres(text.to_owned()));
    }
    let path = text
        .strip_prefix("sqlite://")
        .or_else(|| text.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("{text:?} must start with sqlite://, postgres:// or postgresql://"))?;
    if path.is_empty() || path == ":memory:" {
        return Err("sqlite:// needs a file path, e.g. \"sqlite://keygate.db\"".to_owned());
    }
    Ok(StoreUrl::Sqlite(resolve(base_dir, path)))
}

pub(super) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base_dir.join(path)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn postgres_tls_roots_come_from_an_absolute_pem_file() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let ca = fixtures.join("ca.pem");
        let (_, tls) = postgres_url(&format!(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert={}",
            ca.display()
        ))
        .unwrap();
        assert_eq!(
            tls,
            PostgresTls {
                verify_name: false,
                root_cert: Some(ca.clone()),
            }
        );
        let (_, tls) = postgres_url("postgres://u@h/db?sslmode=verify-full").unwrap();
        assert!(tls.verify_name && tls.root_cert.is_none());
        let not_pem = fixtures.join("README.md");
        for (url, why) in [
            ("postgres://u@h/db?sslrootcert=ca.pem".to_owned(), "absolute path"),
            (
                "postgres://u@h/db?sslrootcert=/nonexistent/ca.pem".to_owned(),
                "cannot read",
            ),
            (
                format!("postgres://u@h/db?sslrootcert={}", not_pem.display()),
                "no PEM certificate",
            ),
            ("postgres://u@h/db?sslrootcert=%zz".to_owned(), "percent-encoded"),
        ] {
            let error = postgres_url(&url).unwrap_err();
            assert!(error.contains(why), "{url}: {error}");
        }
    }
}
