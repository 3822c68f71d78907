//! TLS to the broker with rustls and the ring provider: the broker is
//! always verified (against `mqtt.tls.ca_file` or the system's roots), and
//! a client certificate is offered for mutual TLS when configured. There is
//! deliberately no way to turn verification off.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {detail}")]
    Read {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: String },
    #[error("no usable trust roots on this system: set mqtt.tls.ca_file")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client configuration used for every connection.
pub fn client_config(tls: Option<&TlsConfig>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(tls.and_then(|t| t.ca_file.as_deref()))?);
    let config = match tls.and_then(|t| t.cert_file.as_deref().zip(t.key_file.as_deref())) {
        Some((cert, key)) => {
            builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!("skipping a system certificate: {error}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsSetupError::NoRoots);
            }
        }
    }
    Ok(roots)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let read_error = |detail: String| TlsSetupError::Read {
        what: "certificates",
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            what: "PEM certificate",
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// PKCS#8, PKCS#1 (RSA) or SEC1 (EC), whichever the PEM file holds.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsSetupError::Empty {
            what: "PEM private key",
            path: path.display().to_string(),
        },
        other => TlsSetupError::Read {
            what: "private key",
            path: path.display().to_string(),
            detail: other.to_string(),
        },
    })
}

/// A TLS failure in words an operator can act on, when the error chain
/// holds one.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        // tokio-rustls wraps the handshake error in an io::Error, whose
        // `source()` skips it: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(tls) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(explain(tls));
        }
        current = e.source();
    }
    None
}

fn explain(error: &rustls::Error) -> String {
    use CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "the broker's certificate is not signed by a trusted CA (unknown CA): check mqtt.tls.ca_file".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the broker's certificate is not valid for the host name in the URL (name mismatch)".into()
            }
            C::Expired | C::ExpiredContext { .. } => "the broker's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the broker's certificate is not valid yet: is this gateway's clock right?".into()
            }
            C::Revoked => "the broker's certificate is revoked".into(),
            other => format!("the broker's certificate was rejected: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "the broker requires a client certificate: set mqtt.tls.cert_file and key_file".into()
            }
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::DecryptError => {
                format!("the broker refused our client certificate ({alert:?})")
            }
            other => format!("the broker ended the TLS handshake ({other:?})"),
        },
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_named() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown CA",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "name mismatch",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "requires a client certificate",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::BadCertificate),
                "refused our client certificate",
            ),
        ];
        for (error, words) in cases {
            // As tokio-rustls hands it over: inside an io::Error.
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
            let text = describe(&io).expect("a TLS cause");
            assert!(text.contains(words), "{text}");
        }
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&plain), None);
    }

    #[test]
    fn missing_or_empty_files_are_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let tls = TlsConfig {
            ca_file: Some(empty.clone()),
            cert_file: None,
            key_file: None,
        };
        let err = client_config(Some(&tls)).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let tls = TlsConfig {
            ca_file: Some(dir.path().join("nope.pem")),
            cert_file: None,
            key_file: None,
        };
        let err = client_config(Some(&tls)).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
