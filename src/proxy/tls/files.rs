//! Loading the PEM files behind `[listener.tls]` and `[kafka.tls]`, and describing a
//! certificate for operators (`check-config`, reload logs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {}: no PEM certificate in the file", path.display())]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{key} {}: {reason}", path.display())]
    BadPem {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key} {}: the private key does not belong to the certificate in {}", path.display(), cert.display())]
    KeyMismatch {
        key: &'static str,
        path: PathBuf,
        cert: PathBuf,
    },
    #[error("{key} {}: unusable private key: {source}", path.display())]
    UnusableKey {
        key: &'static str,
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{key}: {reason}")]
    Setup { key: &'static str, reason: String },
}

/// A certificate file and its key, named by their config keys for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyPairFiles<'a> {
    pub cert_key: &'static str,
    pub cert: &'a Path,
    pub key_key: &'static str,
    pub key: &'a Path,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in file order.
pub(crate) fn load_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A trust store of every certificate in a PEM file.
pub(crate) fn load_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(key, path)? {
        roots.add(cert).map_err(|e| TlsError::BadPem {
            key,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The system's trust store, for `[kafka.tls]` without `ca`.
pub(crate) fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "skipping part of the system certificate store");
    }
    let mut roots = RootCertStore::empty();
    let (_, unparsable) = roots.add_parsable_certificates(found.certs);
    if unparsable > 0 {
        tracing::warn!(unparsable, "skipped unparsable system CA certificates");
    }
    if roots.is_empty() {
        return Err(TlsError::Setup {
            key: "kafka.tls.ca",
            reason: "no system CA certificates found; set kafka.tls.ca to the brokers' CA".into(),
        });
    }
    Ok(roots)
}

/// A certificate chain with its key, checked to belong together.
pub(crate) fn load_key_pair(
    files: KeyPairFiles<'_>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certificates(files.cert_key, files.cert)?;
    let pem = read(files.key_key, files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadPem {
        key: files.key_key,
        path: files.key.to_owned(),
        reason: format!("no usable PEM private key: {e}"),
    })?;
    let unusable = |source| TlsError::UnusableKey {
        key: files.key_key,
        path: files.key.to_owned(),
        source,
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(unusable)?;
    let pair = CertifiedKey::new(chain, signing_key);
    match pair.keys_match() {
        Ok(()) => Ok(Arc::new(pair)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                key: files.key_key,
                path: files.key.to_owned(),
                cert: files.cert.to_owned(),
            })
        }
        Err(e) => Err(unusable(e)),
    }
}

/// What an operator checks about a certificate: whose it is, which one, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    pub subject: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_after: String,
    pub expired: bool,
}

impl CertificateSummary {
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Result<CertificateSummary, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let end = parsed.validity().not_after.to_datetime();
        Ok(CertificateSummary {
            subject: parsed.subject().to_string(),
            serial: parsed
                .raw_serial_as_string()
                .replace(':', "")
                .to_uppercase(),
            not_after: format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                end.year(),
                u8::from(end.month()),
                end.day(),
                end.hour(),
                end.minute(),
                end.second()
            ),
            expired: !parsed.validity().is_valid(),
        })
    }
}

impl fmt::Display for CertificateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject {}, serial {}, expires {}{}",
            self.subject,
            self.serial,
            self.not_after,
            if self.expired { " (EXPIRED)" } else { "" }
        )
    }
}

/// Describes the leaf of a checked pair.
pub(crate) fn summarize(
    pair: &CertifiedKey,
    files: KeyPairFiles<'_>,
) -> Result<CertificateSummary, TlsError> {
    let leaf = pair.cert.first().ok_or_else(|| TlsError::NoCertificate {
        key: files.cert_key,
        path: files.cert.to_owned(),
    })?;
    CertificateSummary::of(leaf).map_err(|reason| TlsError::BadPem {
        key: files.cert_key,
        path: files.cert.to_owned(),
        reason,
    })
}
