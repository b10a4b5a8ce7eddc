//! TLS on both hops, behind two small types: a `ClientTls` acceptor for connections from
//! clients and an `UpstreamTls` connector for connections to brokers. Both produce a `Stream`,
//! so connection code neither knows nor cares which hop is encrypted.
//!
//! The proxy terminates TLS on each hop; whatever runs inside (SASL included) is forwarded as
//! the bytes the client sent.

mod files;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::config::{KafkaTlsConfig, ListenerTlsConfig};
use files::{load_key_pair, load_roots, summarize, system_roots, KeyPairFiles};
pub use files::{CertificateSummary, TlsError};

type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// A connection on either hop, plain or encrypted.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Plain TCP keeps tokio's lock-free halves; TLS halves share one session.
    pub(crate) fn into_split(self) -> (StreamReader, StreamWriter) {
        match self {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (StreamReader::Plain(rd), StreamWriter::Plain(wr))
            }
            Stream::Tls(tls) => {
                let (rd, wr) = tokio::io::split(*tls);
                (StreamReader::Tls(rd), StreamWriter::Tls(wr))
            }
        }
    }
}

pub(crate) enum StreamReader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream>),
}

pub(crate) enum StreamWriter {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream>),
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamReader::Plain(rd) => Pin::new(rd).poll_read(cx, buf),
            StreamReader::Tls(rd) => Pin::new(rd).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWriter::Plain(wr) => Pin::new(wr).poll_write(cx, buf),
            StreamWriter::Tls(wr) => Pin::new(wr).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWriter::Plain(wr) => Pin::new(wr).poll_flush(cx),
            StreamWriter::Tls(wr) => Pin::new(wr).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWriter::Plain(wr) => Pin::new(wr).poll_shutdown(cx),
            StreamWriter::Tls(wr) => Pin::new(wr).poll_shutdown(cx),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn setup_error(key: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |e| TlsError::Setup {
        key,
        reason: e.to_string(),
    }
}

/// What `check-config` reports about the TLS files: each certificate the proxy presents.
pub fn check_tls_files(
    listener: Option<&ListenerTlsConfig>,
    kafka: Option<&KafkaTlsConfig>,
) -> Result<Vec<(&'static str, CertificateSummary)>, TlsError> {
    let provider = provider();
    let mut presented = Vec::new();
    if let Some(tls) = listener {
        let files = listener_files(tls);
        let pair = load_key_pair(files, &provider)?;
        presented.push(("listener.tls.cert", summarize(&pair, files)?));
        if let Some(ca) = &tls.client_ca {
            load_roots("listener.tls.client_ca", ca)?;
        }
    }
    if let Some(tls) = kafka {
        if let Some(ca) = &tls.ca {
            load_roots("kafka.tls.ca", ca)?;
        }
        if let Some(files) = kafka_client_files(tls) {
            let pair = load_key_pair(files, &provider)?;
            presented.push(("kafka.tls.cert", summarize(&pair, files)?));
        }
    }
    Ok(presented)
}

fn listener_files(tls: &ListenerTlsConfig) -> KeyPairFiles<'_> {
    KeyPairFiles {
        cert_key: "listener.tls.cert",
        cert: &tls.cert,
        key_key: "listener.tls.key",
        key: &tls.key,
    }
}

fn kafka_client_files(tls: &KafkaTlsConfig) -> Option<KeyPairFiles<'_>> {
    tls.client_certificate.as_ref().map(|c| KeyPairFiles {
        cert_key: "kafka.tls.cert",
        cert: &c.cert,
        key_key: "kafka.tls.key",
        key: &c.key,
    })
}

/// Accepts TLS from clients, serving the certificate files, and trusting the client CA file,
/// as they are at accept time.
pub(crate) struct ClientTls {
    config: ArcSwap<ServerConfig>,
    certificate: Arc<ReloadingCertificate>,
    /// `listener.tls.client_ca` and its state when last loaded.
    client_ca: Option<(PathBuf, Mutex<Option<FileStamp>>)>,
    provider: Arc<CryptoProvider>,
    handshake_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

impl HandshakeError {
    /// The client left before finishing, as TCP health checks and port scanners do: not
    /// worth a warning.
    pub(crate) fn is_hang_up(&self) -> bool {
        matches!(self, HandshakeError::Failed(e) if e.kind() == io::ErrorKind::UnexpectedEof)
    }
}

impl ClientTls {
    pub(crate) fn new(tls: &ListenerTlsConfig) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let certificate = Arc::new(ReloadingCertificate::load(tls, provider.clone())?);
        let client_ca = tls
            .client_ca
            .as_ref()
            .map(|ca| (ca.clone(), Mutex::new(stamp(ca))));
        let config = server_config(&provider, tls.client_ca.as_deref(), certificate.clone())?;
        Ok(ClientTls {
            config: ArcSwap::from_pointee(config),
            certificate,
            client_ca,
            provider,
            handshake_timeout: tls.handshake_timeout,
        })
    }

    /// The client's TLS session, once its handshake is done.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Result<Stream, HandshakeError> {
        self.certificate.reload_if_changed();
        self.reload_client_ca_if_changed();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Err(_) => Err(HandshakeError::TimedOut(self.handshake_timeout)),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls.into()))),
        }
    }

    /// A replaced client CA file (a CA rotation adds the new CA before clients move to it)
    /// applies to the next handshake, as the certificate does.
    fn reload_client_ca_if_changed(&self) {
        let Some((path, seen)) = &self.client_ca else {
            return;
        };
        let now = stamp(path);
        let mut seen = seen.lock().expect("client CA stamp lock");
        if now.is_none() || *seen == now {
            return;
        }
        *seen = now;
        match server_config(&self.provider, Some(path), self.certificate.clone()) {
            Ok(config) => {
                tracing::info!(client_ca = %path.display(), "listener TLS client CA reloaded; new connections are checked against it");
                self.config.store(Arc::new(config));
            }
            Err(e) => {
                tracing::warn!(error = %e, "listener TLS client CA changed but cannot be used; still trusting the previous one")
            }
        }
    }
}

/// The acceptor's configuration: mTLS against `client_ca` when set.
fn server_config(
    provider: &Arc<CryptoProvider>,
    client_ca: Option<&std::path::Path>,
    certificate: Arc<ReloadingCertificate>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(setup_error("listener.tls"))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots("listener.tls.client_ca", ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Setup {
                    key: "listener.tls.client_ca",
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(certificate))
}

/// The listener's certificate and key, re-read when either file changes. Checked at each
/// accept, not by a file watcher: a stat of two files is cheap next to a handshake, and the
/// rotated certificate is then in use for the very next connection, with no race against a
/// watcher thread. Connections already open keep the session they have.
#[derive(Debug)]
struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files' state when last loaded (or last found unusable, so a broken pair is
    /// reported once rather than at every accept).
    seen: Mutex<Option<FileStamps>>,
}

/// Modification time, size and inode: any replacement of the file changes one of them.
type FileStamp = (SystemTime, u64, u64);
type FileStamps = [FileStamp; 2];

impl ReloadingCertificate {
    fn load(tls: &ListenerTlsConfig, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamps = stamps(&tls.cert, &tls.key);
        let files = listener_files(tls);
        let pair = load_key_pair(files, &provider)?;
        if let Ok(summary) = summarize(&pair, files) {
            tracing::info!(cert = %tls.cert.display(), %summary, "listener TLS certificate loaded");
        }
        Ok(ReloadingCertificate {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            provider,
            current: ArcSwap::new(pair),
            seen: Mutex::new(stamps),
        })
    }

    fn reload_if_changed(&self) {
        let stamps = stamps(&self.cert, &self.key);
        let mut seen = self.seen.lock().expect("certificate stamps lock");
        if stamps.is_none() || *seen == stamps {
            return;
        }
        *seen = stamps;
        let files = KeyPairFiles {
            cert_key: "listener.tls.cert",
            cert: &self.cert,
            key_key: "listener.tls.key",
            key: &self.key,
        };
        match load_key_pair(files, &self.provider) {
            Ok(pair) => {
                if let Ok(summary) = summarize(&pair, files) {
                    tracing::info!(cert = %self.cert.display(), %summary, "listener TLS certificate reloaded; new connections get it");
                }
                self.current.store(pair);
            }
            // Typically the certificate has been replaced and its key not yet: the next
            // change of either file tries again.
            Err(e) => {
                tracing::warn!(error = %e, "listener TLS files changed but cannot be used; still serving the previous certificate")
            }
        }
    }
}

/// The stamps of both files; `None` while either is missing.
fn stamps(cert: &std::path::Path, key: &std::path::Path) -> Option<FileStamps> {
    Some([stamp(cert)?, stamp(key)?])
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Connects to brokers over TLS, checking each broker's certificate against the host it
/// advertises unless `server_name` names another.
pub(crate) struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    pub(crate) fn new(tls: &KafkaTlsConfig) -> Result<UpstreamTls, TlsError> {
        let provider = provider();
        let roots = Arc::new(match &tls.ca {
            Some(ca) => load_roots("kafka.tls.ca", ca)?,
            None => system_roots()?,
        });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(setup_error("kafka.tls"))?;
        let builder = if tls.verify_hostname {
            builder.with_root_certificates(roots)
        } else {
            tracing::warn!("kafka.tls.verify_hostname = false: brokers' certificates are checked against the CA but not against their host names; anyone with a certificate from that CA can pose as a broker");
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Setup {
                    key: "kafka.tls.ca",
                    reason: e.to_string(),
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(chain)))
        };
        let config = match kafka_client_files(tls) {
            Some(files) => {
                let pair = load_key_pair(files, &provider)?;
                builder
                    .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(pair)))
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = tls
            .server_name
            .as_deref()
            .map(|name| ServerName::try_from(name.to_owned()))
            .transpose()
            .map_err(|e| TlsError::Setup {
                key: "kafka.tls.server_name",
                reason: e.to_string(),
            })?;
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// TLS over `tcp`, connected to `address` (`HOST:PORT`, as the broker advertises it).
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        address: &str,
        timeout: Duration,
    ) -> io::Result<Stream> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => advertised_name(address)?,
        };
        match tokio::time::timeout(timeout, self.connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls.into()))),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("{address}: TLS handshake with the broker failed: {e}"),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{address}: TLS handshake with the broker timed out"),
            )),
        }
    }
}

/// The host part of `HOST:PORT` (or `[IPv6]:PORT`) as a name to verify.
fn advertised_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{address}: `{host}` is not a name TLS can verify; set kafka.tls.server_name"),
        )
    })
}

/// `kafka.tls.verify_hostname = false`: the chain must still lead to a trusted CA; only a
/// certificate that is valid except for its name is accepted.
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_name_is_the_host_part() {
        assert_eq!(
            advertised_name("broker-1.kafka.internal:9093").unwrap(),
            ServerName::try_from("broker-1.kafka.internal").unwrap()
        );
        assert_eq!(
            advertised_name("127.0.0.1:9093").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            advertised_name("[::1]:9093").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert!(advertised_name("bad host:9093").is_err());
    }
}
