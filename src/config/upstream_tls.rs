//! The TLS client of an `https` upstream, from its `ca`, `client_cert` and `client_key`
//! settings: the files are read and parsed and the client certificate matched to its key here,
//! at validation, so `keygate check` reports what `serve` would fail on. The one part of
//! validation that reads files other than the config itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::raw::{Field, RawUpstream};
use super::upstream_verifier::UpstreamVerifier;
use super::validate::Checker;
use super::UpstreamTls;

/// The TLS client for an upstream at `url`; `None` for `http` (where any TLS setting is an
/// error: it would not be honoured) and when a setting is wrong (reported).
pub(super) fn upstream_tls(
    checker: &mut Checker,
    raw: &RawUpstream,
    label: &str,
    url: &Uri,
    base_dir: &Path,
) -> Option<UpstreamTls> {
    let settings = [
        (&raw.ca, "ca"),
        (&raw.client_cert, "client_cert"),
        (&raw.client_key, "client_key"),
    ];
    if url.scheme_str() != Some("https") {
        for (value, name) in settings {
            checker.parsed(value, &format!("{label}.{name}"), |_| {
                Err::<(), _>("applies only to an https:// upstream url")
            });
        }
        return None;
    }
    let field = |name: &str| format!("{label}.{name}");
    let mut digest = blake3::Hasher::new();
    let mut read = |checker: &mut Checker, value: &Field<String>, name: &str| {
        let bytes = checker.parsed(value, &field(name), |text| read_file(base_dir, text));
        // Absent and present are told apart, so moving a file between settings changes it.
        let hashed = bytes.as_ref().map_or(&[][..], |(_, bytes)| &bytes[..]);
        digest.update(&(hashed.len() as u64 + u64::from(bytes.is_some())).to_le_bytes());
        digest.update(hashed);
        bytes
    };
    let ca = read(checker, &raw.ca, "ca");
    let cert = read(checker, &raw.client_cert, "client_cert");
    let key = read(checker, &raw.client_key, "client_key");
    let path = |file: &Option<(PathBuf, Vec<u8>)>| file.as_ref().map(|(path, _)| path.clone());
    let files = [path(&ca), path(&cert), path(&key)];
    let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
    digest.update(host.as_bytes());

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match ca {
        Some((path, bytes)) => {
            let verifier = checker.parsed(&raw.ca, &field("ca"), |_| {
                let certificates = certificates(&path, &bytes)?;
                UpstreamVerifier::new(certificates, provider)
                    .map_err(|why| format!("{} {why}", path.display()))
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
        None if raw.ca.is_some() => return None,
        None => builder.with_root_certificates(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
    };
    let mut client = match (cert, key) {
        (None, None) if raw.client_cert.is_none() && raw.client_key.is_none() => {
            builder.with_no_client_auth()
        }
        (Some(cert), Some(key)) => checker.parsed(&raw.client_cert, &field("client_cert"), |_| {
            client_auth(builder, (&cert.0, &cert.1), (&key.0, &key.1))
        })?,
        _ => {
            let lone = [
                (&raw.client_cert, "client_cert", "client_key"),
                (&raw.client_key, "client_key", "client_cert"),
            ];
            // Both named, one unreadable: already reported.
            let named_one = raw.client_cert.is_some() != raw.client_key.is_some();
            for (value, name, other) in lone {
                if named_one && value.is_some() {
                    checker.parsed(value, &field(name), |_| {
                        Err::<(), _>(format!("needs {other} as well"))
                    });
                }
            }
            return None;
        }
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = checker.parsed(&raw.url, &field("url"), |_| {
        ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} cannot be verified as a TLS name"))
    })?;
    let [ca, client_cert, client_key] = files;
    Some(UpstreamTls {
        client: Arc::new(client),
        server_name,
        digest: *digest.finalize().as_bytes(),
        ca,
        client_cert,
        client_key,
    })
}

fn read_file(base_dir: &Path, text: &str) -> Result<(PathBuf, Vec<u8>), String> {
    if text.trim().is_empty() {
        return Err("must name a PEM file".into());
    }
    let path = base_dir.join(text);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((path, bytes))
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn client_auth(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    (cert_path, cert): (&Path, &[u8]),
    (key_path, key): (&Path, &[u8]),
) -> Result<ClientConfig, String> {
    let chain = certificates(cert_path, cert)?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("{} holds no PEM private key: {e}", key_path.display()))?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a certificate and its key: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use crate::config::{parse, Config, Problem};

    /// A CA, a server certificate it signed for `localhost`, and a client certificate and
    /// key, as files in a temporary folder.
    pub(in crate::config) fn files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["client.test".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        write("client.pem", cert.pem());
        write("client.key", key.serialize_pem());
        write("other.key", KeyPair::generate().unwrap().serialize_pem());
        write("not-pem.txt", "hello".to_owned());
        dir
    }

    fn upstream(settings: &str) -> String {
        format!("[[upstream]]\nname = \"a\"\nurl = \"https://localhost:8443\"\n{settings}\n")
    }

    fn config(dir: &Path, settings: &str) -> Result<Config, Vec<Problem>> {
        parse(&upstream(settings), dir).map_err(|e| e.problems)
    }

    fn problem(dir: &Path, settings: &str) -> String {
        match config(dir, settings) {
            Ok(_) => panic!("accepted: {settings}"),
            Err(problems) => problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn an_https_upstream_takes_the_web_roots_a_ca_file_and_a_client_certificate() {
        let dir = files();
        for settings in [
            "",
            "ca = \"ca.pem\"",
            "ca = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"",
        ] {
            let config = config(dir.path(), settings).unwrap_or_else(|p| panic!("{settings}: {p:?}"));
            let tls = config.upstreams[0].tls.as_ref().expect("https has a TLS client");
            assert_eq!(tls.client.alpn_protocols, [b"http/1.1".to_vec()]);
            assert_eq!(
                format!("{:?}", tls.server_name),
                format!(
                    "{:?}",
                    rustls::pki_types::ServerName::try_from("localhost").unwrap()
                )
            );
        }
    }

    #[test]
    fn tls_files_that_are_missing_not_pem_or_not_a_pair_are_refused_at_check() {
        let dir = files();
        for (settings, expected) in [
            ("ca = \"missing.pem\"", "upstream \"a\".ca: cannot read"),
            ("ca = \"not-pem.txt\"", "holds no PEM certificate"),
            ("ca = \"client.key\"", "holds no PEM certificate"),
            (
                "client_cert = \"client.pem\"",
                "upstream \"a\".client_cert: needs client_key as well",
            ),
            (
                "client_key = \"client.key\"",
                "upstream \"a\".client_key: needs client_cert as well",
            ),
            (
                "client_cert = \"client.pem\"\nclient_key = \"not-pem.txt\"",
                "holds no PEM private key",
            ),
            (
                "client_cert = \"client.pem\"\nclient_key = \"other.key\"",
                "do not make a certificate and its key",
            ),
            (
                "client_cert = \"client.pem\"\nclient_key = \"missing.key\"",
                "upstream \"a\".client_key: cannot read",
            ),
        ] {
            let found = problem(dir.path(), settings);
            assert!(found.contains(expected), "{settings}: {found}");
        }
    }

    #[test]
    fn tls_settings_on_an_http_upstream_are_refused_as_not_honoured() {
        let dir = files();
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://localhost\"\nca = \"ca.pem\"\n";
        let problems = parse(text, dir.path()).unwrap_err().problems;
        assert!(
            problems[0]
                .to_string()
                .contains("ca: applies only to an https:// upstream url"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_digest_changes_with_the_files_and_the_name_only() {
        let dir = files();
        let digest = |settings: &str| {
            config(dir.path(), settings).unwrap().upstreams[0]
                .tls
                .as_ref()
                .unwrap()
                .digest
        };
        let with_ca = digest("ca = \"ca.pem\"");
        assert_eq!(with_ca, digest("ca = \"ca.pem\""));
        assert_ne!(with_ca, digest(""));
        std::fs::copy(dir.path().join("client.pem"), dir.path().join("ca.pem")).unwrap();
        assert_ne!(with_ca, digest("ca = \"ca.pem\""), "the file's contents count");
    }
}
