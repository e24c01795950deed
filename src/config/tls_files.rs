//! The files of `server.tls`, read and checked: the certificate chain and the private key are
//! PEM, the key belongs to the certificate, and the certificate is valid now (neither expired
//! nor not valid yet: every client would refuse it either way). `keygate
//! check`, `serve` at start and every reload read them through [`read_pair`], so what `check`
//! passes is what the listener can serve, and a pair that would not serve is refused with the
//! setting it came from.
//!
//! This reads files and the clock, so it runs in [`super::load`] and at reload, never in the
//! pure [`super::parse`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::Tls;

/// A certificate chain and its key, ready to serve.
#[derive(Debug, Clone)]
pub struct CertificatePair {
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate expires, in Unix seconds.
    pub not_after: i64,
}

/// Which of the two settings a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

impl TlsFile {
    pub fn field(self) -> &'static str {
        match self {
            TlsFile::Cert => "server.tls.cert",
            TlsFile::Key => "server.tls.key",
        }
    }
}

/// Why a pair cannot serve, and which setting names the file at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub file: TlsFile,
    pub message: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.field(), self.message)
    }
}

impl std::error::Error for TlsFileError {}

fn fault(file: TlsFile, message: String) -> TlsFileError {
    TlsFileError { file, message }
}

/// Reads and checks the pair `tls` names, as of `now` (Unix seconds).
pub fn read_pair(tls: &Tls, now: i64) -> Result<CertificatePair, TlsFileError> {
    let chain = certificates(&tls.cert)?;
    let (not_before, not_after) = validity(&chain[0], &tls.cert)?;
    let when = |t: i64| jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string());
    if not_after <= now {
        return Err(fault(
            TlsFile::Cert,
            format!(
                "the certificate in {} expired at {}",
                tls.cert.display(),
                when(not_after)
            ),
        ));
    }
    if not_before > now {
        return Err(fault(
            TlsFile::Cert,
            format!(
                "the certificate in {} is not valid before {} (notBefore); check the clock of the machine that made it, or wait",
                tls.cert.display(),
                when(not_before)
            ),
        ));
    }
    let key = private_key(&tls.key)?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|error| {
        fault(
            TlsFile::Key,
            format!(
                "the private key in {} does not fit the certificate in {}: {error}",
                tls.key.display(),
                tls.cert.display()
            ),
        )
    })?;
    Ok(CertificatePair {
        key: Arc::new(key),
        not_after,
    })
}

/// The PEM certificates of `path`, leaf first; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path, TlsFile::Cert)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            fault(
                TlsFile::Cert,
                format!("{} is not valid PEM: {error}", path.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(fault(
            TlsFile::Cert,
            format!(
                "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ),
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(path, TlsFile::Key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        let why = match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\")".to_owned()
            }
            other => format!("is not a valid PEM private key: {other}"),
        };
        fault(TlsFile::Key, format!("{} {why}", path.display()))
    })
}

fn read(path: &Path, file: TlsFile) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|error| fault(file, format!("cannot read {}: {error}", path.display())))
}

/// The leaf's `notBefore` and `notAfter`, in Unix seconds.
fn validity(leaf: &CertificateDer<'_>, path: &Path) -> Result<(i64, i64), TlsFileError> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(leaf).map_err(|error| {
        fault(
            TlsFile::Cert,
            format!(
                "the first certificate in {} is not X.509: {error}",
                path.display()
            ),
        )
    })?;
    let validity = &cert.tbs_certificate.validity;
    let seconds =
        |time: &x509_cert::time::Time| i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
    Ok((seconds(&validity.not_before), seconds(&validity.not_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files in a temporary folder, each under a new name.
    struct Files {
        dir: tempfile::TempDir,
        written: std::cell::Cell<usize>,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
                written: std::cell::Cell::new(0),
            }
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            self.written.set(self.written.get() + 1);
            let path = self.dir.path().join(format!("{}-{name}", self.written.get()));
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    /// A self-signed certificate for `localhost` valid from `from` to `until` (year, month,
    /// day), as PEM (certificate, key).
    fn generated(from: Day, until: Day) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    type Day = (i32, u8, u8);

    /// 2027-01-15T08:00:00Z.
    const NOW: i64 = 1_800_000_000;
    const BEFORE: Day = (2027, 1, 1);
    const YESTERDAY: Day = (2027, 1, 14);
    const LATER: Day = (2027, 2, 14);

    fn pair(files: &Files, cert: &str, key: &str) -> Tls {
        Tls {
            cert: files.write("cert.pem", cert),
            key: files.write("key.pem", key),
            cert_line: None,
            key_line: None,
        }
    }

    fn refused(result: Result<CertificatePair, TlsFileError>) -> (TlsFile, String) {
        let error = result.expect_err("the pair is refused");
        (error.file, error.message)
    }

    #[test]
    fn a_fitting_pair_serves_and_reports_its_expiry() {
        let files = Files::new();
        let (cert, key) = generated(BEFORE, LATER);
        let pair = read_pair(&pair(&files, &cert, &key), NOW).unwrap();
        let later: jiff::Timestamp = "2027-02-14T00:00:00Z".parse().unwrap();
        assert_eq!(pair.not_after, later.as_second());
        pair.key.keys_match().unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_the_key() {
        let files = Files::new();
        let (cert, _) = generated(BEFORE, LATER);
        let (_, other_key) = generated(BEFORE, LATER);
        let (file, message) = refused(read_pair(&pair(&files, &cert, &other_key), NOW));
        assert_eq!(file, TlsFile::Key);
        assert!(message.contains("does not fit the certificate"), "{message}");
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_expiry() {
        let files = Files::new();
        let (cert, key) = generated(BEFORE, YESTERDAY);
        let (file, message) = refused(read_pair(&pair(&files, &cert, &key), NOW));
        assert_eq!(file, TlsFile::Cert);
        assert!(message.contains("expired at 2027-01-14"), "{message}");
    }

    #[test]
    fn a_certificate_not_valid_yet_is_refused_with_its_start() {
        let files = Files::new();
        let (cert, key) = generated(LATER, (2028, 1, 1));
        let (file, message) = refused(read_pair(&pair(&files, &cert, &key), NOW));
        assert_eq!(file, TlsFile::Cert);
        assert!(message.contains("is not valid before 2027-02-14"), "{message}");
    }

    #[test]
    fn missing_and_non_pem_files_are_refused_naming_their_setting() {
        let files = Files::new();
        let (cert, key) = generated(BEFORE, LATER);
        let missing = Tls {
            cert: files.dir.path().join("nowhere.pem"),
            ..pair(&files, &cert, &key)
        };
        let cases = [
            (missing, TlsFile::Cert, "cannot read"),
            (pair(&files, "not pem", &key), TlsFile::Cert, "no PEM certificate"),
            (pair(&files, &cert, "not pem"), TlsFile::Key, "no PEM private key"),
            (pair(&files, &key, &key), TlsFile::Cert, "no PEM certificate"),
            (pair(&files, &cert, &cert), TlsFile::Key, "no PEM private key"),
            (
                pair(
                    &files,
                    "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                    &key,
                ),
                TlsFile::Cert,
                "",
            ),
        ];
        for (tls, expected_file, expected) in cases {
            let (file, message) = refused(read_pair(&tls, NOW));
            assert_eq!(file, expected_file, "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }
}
