//! `[listener.tls]` and `[kafka.tls]`: which PEM files the proxy's TLS uses on each hop.
//!
//! Only the shape is checked here (keys present, paths not empty, a valid server name). Whether
//! the files are readable and the key matches its certificate is checked where they are loaded
//! (`proxy::tls`), at startup and by `check-config`, because the files change while the proxy
//! runs and the config does not.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{invalid, positive, Invalid};

/// TLS toward clients: the proxy terminates it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTlsConfig {
    /// PEM certificate chain served to clients, leaf first. Re-read when it changes.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

/// TLS toward Kafka: the proxy is the TLS client of every broker.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTlsConfig {
    /// PEM CA certificates that sign the brokers' certificates; the system roots when `None`.
    pub ca: Option<PathBuf>,
    /// The proxy's own certificate, for brokers that require mTLS.
    pub client_certificate: Option<ClientCertificate>,
    /// The name every broker's certificate is checked against (and sent as SNI), instead of
    /// the host the broker advertises.
    pub server_name: Option<String>,
    pub verify_hostname: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(10_000);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    handshake_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafkaTls {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    verify_hostname: Option<bool>,
}

pub(super) fn validate_listener_tls(raw: RawListenerTls) -> Result<ListenerTlsConfig, Invalid> {
    let handshake_timeout_ms = positive(
        raw.handshake_timeout_ms.as_ref(),
        DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64,
        "listener.tls.handshake_timeout_ms",
    )?;
    Ok(ListenerTlsConfig {
        cert: path(raw.cert, "listener.tls.cert")?,
        key: path(raw.key, "listener.tls.key")?,
        client_ca: raw
            .client_ca
            .map(|p| path(p, "listener.tls.client_ca"))
            .transpose()?,
        handshake_timeout: Duration::from_millis(handshake_timeout_ms),
    })
}

pub(super) fn validate_kafka_tls(raw: RawKafkaTls) -> Result<KafkaTlsConfig, Invalid> {
    let client_certificate = match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => Some(ClientCertificate {
            cert: path(cert, "kafka.tls.cert")?,
            key: path(key, "kafka.tls.key")?,
        }),
        (None, None) => None,
        (Some(cert), None) => {
            return invalid(
                cert.span(),
                "kafka.tls.key: required with kafka.tls.cert (the proxy's mTLS key)",
            )
        }
        (None, Some(key)) => {
            return invalid(
                key.span(),
                "kafka.tls.cert: required with kafka.tls.key (the proxy's mTLS certificate)",
            )
        }
    };
    let server_name = match raw.server_name {
        None => None,
        Some(name) => {
            let text = name.get_ref().trim();
            if rustls_pki_types::ServerName::try_from(text).is_err() {
                return invalid(
                    name.span(),
                    format!(
                        "kafka.tls.server_name: `{}` is not a DNS name or IP address",
                        name.get_ref()
                    ),
                );
            }
            Some(text.to_owned())
        }
    };
    Ok(KafkaTlsConfig {
        ca: raw.ca.map(|p| path(p, "kafka.tls.ca")).transpose()?,
        client_certificate,
        server_name,
        verify_hostname: raw.verify_hostname.unwrap_or(true),
    })
}

/// `check-config`'s lines for `[listener.tls]`.
impl fmt::Display for ListenerTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  tls cert          {}", self.cert.display())?;
        writeln!(f, "  tls key           {}", self.key.display())?;
        match &self.client_ca {
            Some(ca) => writeln!(
                f,
                "  tls client_ca     {} (client certificates required)",
                ca.display()
            )?,
            None => writeln!(f, "  tls client_ca     (none: no client certificates)")?,
        }
        writeln!(
            f,
            "  tls handshake     {}ms",
            self.handshake_timeout.as_millis()
        )
    }
}

/// `check-config`'s lines for `[kafka.tls]`.
impl fmt::Display for KafkaTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca {
            Some(ca) => writeln!(f, "  tls ca            {}", ca.display())?,
            None => writeln!(f, "  tls ca            (system roots)")?,
        }
        if let Some(client) = &self.client_certificate {
            writeln!(f, "  tls cert          {}", client.cert.display())?;
            writeln!(f, "  tls key           {}", client.key.display())?;
        }
        let name = match (&self.server_name, self.verify_hostname) {
            (_, false) => "NOT VERIFIED (verify_hostname = false)",
            (Some(name), true) => name.as_str(),
            (None, true) => "each broker's advertised host",
        };
        writeln!(f, "  tls hostname      {name}")
    }
}

fn path(value: Spanned<String>, key: &str) -> Result<PathBuf, Invalid> {
    if value.get_ref().trim().is_empty() {
        return invalid(value.span(), format!("{key}: must not be empty"));
    }
    Ok(PathBuf::from(value.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{parse, BASE};

    #[test]
    fn listener_tls_gets_default_handshake_timeout_and_no_client_ca() {
        let c = parse(&format!(
            "{BASE}[listener.tls]\ncert = \"/etc/kkp/cert.pem\"\nkey = \"/etc/kkp/key.pem\"\n"
        ))
        .unwrap();
        let tls = c.listener.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/kkp/cert.pem"));
        assert_eq!(tls.client_ca, None);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert!(
            c.kafka.as_ref().unwrap().tls.is_none(),
            "TLS toward Kafka must stay off"
        );
    }

    #[test]
    fn listener_tls_errors_name_line_and_key() {
        let err = parse(&format!("{BASE}[listener.tls]\ncert = \"c.pem\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4: ") && err.contains("key"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}[listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nhandshake_timeout_ms = 0\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:7: listener.tls.handshake_timeout_ms"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}[listener.tls]\ncert = \"c.pem\"\nkey = \"\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:6: listener.tls.key: must not be empty"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}[listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_cert = \"x\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:7: ") && err.contains("client_cert"),
            "{err}"
        );
    }

    #[test]
    fn kafka_tls_defaults_verify_hostnames_with_system_roots() {
        let c = parse(&format!("{BASE}[kafka.tls]\n")).unwrap();
        assert_eq!(
            c.kafka.as_ref().unwrap().tls,
            Some(KafkaTlsConfig {
                ca: None,
                client_certificate: None,
                server_name: None,
                verify_hostname: true,
            })
        );
        assert!(c.listener.tls.is_none(), "TLS toward clients must stay off");
        let c = parse(&format!(
            "{BASE}[kafka.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nserver_name = \"kafka.internal\"\nverify_hostname = false\n"
        ))
        .unwrap();
        let tls = c.kafka.unwrap().tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(
            tls.client_certificate,
            Some(ClientCertificate {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(tls.server_name.as_deref(), Some("kafka.internal"));
        assert!(!tls.verify_hostname);
    }

    #[test]
    fn kafka_tls_errors_name_line_and_key() {
        let err = parse(&format!(
            "{BASE}[kafka.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:6: kafka.tls.key: required"),
            "{err}"
        );
        let err = parse(&format!("{BASE}[kafka.tls]\nkey = \"k.pem\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5: kafka.tls.cert: required"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}[kafka.tls]\nserver_name = \"not a name\"\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5: kafka.tls.server_name: `not a name`"),
            "{err}"
        );
        let err = parse(&format!("{BASE}[kafka.tls]\nverify_hostnames = false\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5: ") && err.contains("verify_hostnames"),
            "{err}"
        );
    }
}
