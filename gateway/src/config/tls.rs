//! TLS to the broker: the CA, client certificate and key files read and
//! parsed into a rustls client configuration when the config is loaded, so
//! that `kite check` refuses a file `kite run` could not use, and a reload
//! with unusable files changes nothing. The certificates' expiry dates are
//! kept, so that one about to expire is seen before the broker refuses it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files named in `[mqtt]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// Trust anchors; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// The TLS settings in use: the files, what they held when read, and the
/// client configuration built from them.
#[derive(Clone)]
pub struct Tls {
    pub files: TlsFiles,
    /// The files' bytes: the same paths with new contents are a change.
    contents: Vec<Vec<u8>>,
    /// Every certificate of the files, for their expiry.
    pub certificates: Vec<Certificate>,
    pub client: Arc<rustls::ClientConfig>,
}

/// A certificate is warned about this long before it expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// A certificate of `ca_file` or `cert_file`, for its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub file: TlsFile,
    /// The subject, as in `CN=broker-ca, O=Example`.
    pub subject: String,
    /// Not valid after this time, in ms since the Unix epoch.
    pub not_after_ms: i64,
}

impl Certificate {
    /// None for a certificate rustls took but x509-parser cannot read: its
    /// expiry is then the broker's to enforce.
    fn read(file: TlsFile, der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Self {
            file,
            subject: cert.subject().to_string(),
            not_after_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
        })
    }

    /// What to say of it at `now_ms`: nothing until [`EXPIRY_WARNING`]
    /// before it expires.
    pub fn warning(&self, now_ms: i64) -> Option<String> {
        let left_ms = self.not_after_ms - now_ms;
        if left_ms > EXPIRY_WARNING.as_millis() as i64 {
            return None;
        }
        let when = kite_core::utc(self.not_after_ms);
        let what = format!("mqtt.{} certificate {:?}", self.file.key(), self.subject);
        Some(if left_ms <= 0 {
            format!("{what} expired on {when}: the broker will refuse it")
        } else {
            let days = left_ms / 86_400_000;
            let hours = left_ms / 3_600_000 % 24;
            format!("{what} expires on {when}, in {days}d{hours}h: replace it and reload")
        })
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.contents == other.contents
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// Which file a problem or certificate is in, by its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    Cert,
    Key,
}

impl TlsFile {
    pub fn key(self) -> &'static str {
        match self {
            TlsFile::Ca => "ca_file",
            TlsFile::Cert => "cert_file",
            TlsFile::Key => "key_file",
        }
    }
}

/// A file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsProblem {
    pub file: Option<TlsFile>,
    pub message: String,
}

impl TlsProblem {
    fn of(file: TlsFile, path: &Path, what: impl fmt::Display) -> Self {
        Self {
            file: Some(file),
            message: format!("mqtt.{} {}: {what}", file.key(), path.display()),
        }
    }
}

/// Reads and parses the files and builds the client configuration.
pub fn load(files: TlsFiles) -> Result<Tls, TlsProblem> {
    let mut contents = Vec::new();
    let mut read = |file: TlsFile, path: &Path| {
        let bytes = std::fs::read(path).map_err(|e| TlsProblem::of(file, path, e))?;
        contents.push(bytes.clone());
        Ok::<_, TlsProblem>(bytes)
    };
    let mut roots = rustls::RootCertStore::empty();
    let mut certificates_read = Vec::new();
    match &files.ca_file {
        Some(path) => {
            let pem = read(TlsFile::Ca, path)?;
            for cert in certificates(TlsFile::Ca, path, &pem)? {
                certificates_read.extend(Certificate::read(TlsFile::Ca, &cert));
                roots
                    .add(cert)
                    .map_err(|e| TlsProblem::of(TlsFile::Ca, path, e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // One unusable system certificate must not hide the others.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsProblem {
                    file: None,
                    message:
                        "no trusted CA certificates on this system for mqtts://: set mqtt.ca_file"
                            .into(),
                });
            }
        }
    }
    let client_auth = match &files.client_auth {
        None => None,
        Some((cert_path, key_path)) => {
            let pem = read(TlsFile::Cert, cert_path)?;
            let chain = certificates(TlsFile::Cert, cert_path, &pem)?;
            certificates_read.extend(
                chain
                    .iter()
                    .filter_map(|c| Certificate::read(TlsFile::Cert, c)),
            );
            let pem = read(TlsFile::Key, key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| TlsProblem::of(TlsFile::Key, key_path, pem_error("private key", e)))?;
            Some((chain, key, cert_path))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem {
            file: None,
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let client = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key, cert_path)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsProblem::of(TlsFile::Cert, cert_path, e))?,
    };
    Ok(Tls {
        files,
        contents,
        certificates: certificates_read,
        client: Arc::new(client),
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsProblem::of(file, path, pem_error("certificate", e)))?;
    if certs.is_empty() {
        return Err(TlsProblem::of(
            file,
            path,
            "no certificate in it: expected PEM \"BEGIN CERTIFICATE\" sections",
        ));
    }
    Ok(certs)
}

/// Why a PEM file held no `what` ("certificate", "private key").
fn pem_error(what: &str, error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no {what} in it: expected a PEM file with one")
        }
        other => format!("not valid PEM ({other}): expected a {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_close_to_their_expiry_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["kite".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw-17");
        params.not_after = rcgen::date_time_ymd(2030, 1, 15);
        let cert = params.self_signed(&key_pair).unwrap();
        let path = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let tls = load(TlsFiles {
            ca_file: Some(path("ca.pem", &cert.pem())),
            client_auth: Some((
                path("cert.pem", &cert.pem()),
                path("key.pem", &key_pair.serialize_pem()),
            )),
        })
        .unwrap();
        let expiry = 1_894_665_600_000; // 2030-01-15T00:00:00Z
        let day = 86_400_000;
        assert_eq!(
            tls.certificates,
            [TlsFile::Ca, TlsFile::Cert].map(|file| Certificate {
                file,
                subject: "CN=gw-17".into(),
                not_after_ms: expiry,
            })
        );
        let ca = &tls.certificates[0];
        assert_eq!(ca.warning(expiry - 15 * day), None);
        assert_eq!(
            ca.warning(expiry - 5 * day - 3_600_000).as_deref(),
            Some("mqtt.ca_file certificate \"CN=gw-17\" expires on 2030-01-15T00:00:00.000Z, in 5d1h: replace it and reload")
        );
        assert_eq!(
            tls.certificates[1].warning(expiry + 1).as_deref(),
            Some("mqtt.cert_file certificate \"CN=gw-17\" expired on 2030-01-15T00:00:00.000Z: the broker will refuse it")
        );
    }

    /// Each broken file must be refused with a message naming its key and
    /// containing `expected`.
    #[test]
    fn unusable_files_are_refused_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["kite".to_string()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        let good_cert = cert.pem();
        let good_key = key_pair.serialize_pem();
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let garbled = good_cert.replace("CERTIFICATE-----\n", "CERTIFICATE-----\n%%%");
        let cases: &[(&str, &str, &str, Option<TlsFile>, &str)] = &[
            (&good_cert, &good_cert, &good_key, None, ""),
            (
                "",
                &good_cert,
                &good_key,
                Some(TlsFile::Ca),
                "no certificate",
            ),
            (
                &garbled,
                &good_cert,
                &good_key,
                Some(TlsFile::Ca),
                "not valid PEM",
            ),
            (
                &good_key,
                &good_cert,
                &good_key,
                Some(TlsFile::Ca),
                "no certificate",
            ),
            (
                &good_cert,
                &garbled,
                &good_key,
                Some(TlsFile::Cert),
                "not valid PEM",
            ),
            (
                &good_cert,
                &good_cert,
                &good_cert,
                Some(TlsFile::Key),
                "no private key",
            ),
            (&good_cert, &good_cert, &other_key, Some(TlsFile::Cert), ""),
        ];
        for (i, (ca, cert, key, wrong, expected)) in cases.iter().enumerate() {
            let path = |name: &str, text: &str| {
                let path = dir.path().join(format!("{i}-{name}"));
                std::fs::write(&path, text).unwrap();
                path
            };
            let files = TlsFiles {
                ca_file: Some(path("ca.pem", ca)),
                client_auth: Some((path("cert.pem", cert), path("key.pem", key))),
            };
            match (load(files), wrong) {
                (Ok(_), None) => {}
                (Err(problem), Some(key)) => {
                    assert_eq!(problem.file, Some(*key), "case {i}: {problem:?}");
                    assert!(problem.message.contains(expected), "case {i}: {problem:?}");
                }
                (result, _) => panic!("case {i}: {:?}", result.map(|_| ())),
            }
        }
    }

    #[test]
    fn new_contents_at_the_same_paths_are_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pem = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .pem()
        };
        let files = TlsFiles {
            ca_file: Some(ca.clone()),
            client_auth: None,
        };
        std::fs::write(&ca, pem("one")).unwrap();
        let first = load(files.clone()).unwrap();
        assert_eq!(first, load(files.clone()).unwrap());
        std::fs::write(&ca, pem("two")).unwrap();
        assert_ne!(first, load(files).unwrap());
    }
}
