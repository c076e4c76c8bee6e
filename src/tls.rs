//! TLS on both sides of the proxy (DESIGN §4), with rustls and the `ring` provider.
//!
//! - Clients: the proxy's certificate for the LDAPS listener and for StartTLS on the
//!   plain listener, kept in a [`ServerTls`] whose configuration SIGHUP swaps without
//!   touching established connections.
//! - Backends: `ldaps://` URIs and StartTLS, verified against `backend.ca` and the URI's
//!   host ([`client_config`], [`server_name`]).
//!
//! [`Stream`] is a TCP connection with or without TLS: sessions read and write it the
//! same way either way. Nothing here logs connection bytes.

use crate::config::{TlsConfig, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
pub use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// The StartTLS extended operation (RFC 4511 §4.14).
pub const OID_STARTTLS: &str = "1.3.6.1.4.1.1466.20037";

/// A client that opened a TLS connection (LDAPS) or asked for one (StartTLS) must finish
/// the handshake within this time, so it cannot hold a connection slot forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate, key or CA file that cannot be used; names the file and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

impl TlsError {
    fn new(path: &Path, message: impl Into<String>) -> TlsError {
        TlsError {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

/// The crypto provider every TLS configuration of the proxy uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file that cannot be read: the I/O error as such, anything else as `what`.
fn pem_error(path: &Path, what: &str, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(e) => TlsError::new(path, e.to_string()),
        e => TlsError::new(path, format!("not a PEM {what} file: {e}")),
    }
}

/// Reads every certificate of a PEM file; an empty result is an error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::new(path, "no PEM private key in the file"),
        e => pem_error(path, "key", e),
    })
}

/// A trust store holding every certificate of a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The proxy's server configuration from its `[tls]` section: certificate chain and key
/// (they must match), the lowest TLS version, and client certificates when `client_ca`
/// is set.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(&cfg.certificate)?;
    let key = read_key(&cfg.key)?;
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::new(&cfg.certificate, e.to_string()))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                    .build()
                    .map_err(|e| TlsError::new(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(
            &cfg.certificate,
            format!(
                "certificate and key {} do not go together: {e}",
                cfg.key.display()
            ),
        )
    })?;
    Ok(Arc::new(config))
}

/// The configuration for backend connections: certificates must chain to a CA in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(ca, e.to_string()))?
        .with_root_certificates(read_roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a backend certificate must carry: the URI's host, as an IP address when it
/// is one (checked against the certificate's IP SANs), as a DNS name otherwise.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("'{host}' cannot be checked against a certificate: {e}"))
}

/// The proxy's current server configuration, replaceable while connections run: each
/// handshake takes the configuration current when it starts, and established
/// connections keep theirs.
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate and key named in `source`.
    pub fn load(source: &TlsConfig) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: RwLock::new(server_config(source)?),
        })
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => Arc::clone(&c),
            // A writer never panics while holding the lock (it only swaps an Arc), but a
            // poisoned lock still holds a valid configuration.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        TlsAcceptor::from(config)
    }

    /// Uses `fresh` (see [`server_config`]) for new handshakes; established connections
    /// keep theirs.
    pub fn install(&self, fresh: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }
}

/// A TCP connection, in the clear or inside TLS.
pub enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// A client connection: plain, or TLS with the proxy as server.
pub type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;

impl<T> Stream<T> {
    /// Whether the connection is protected by TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

/// Names the kind of connection and its addresses; never its content.
impl<T> std::fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            Stream::Tls(_) => f.write_str("Tls"),
        }
    }
}

impl<T> From<TcpStream> for Stream<T> {
    fn from(stream: TcpStream) -> Self {
        Stream::Plain(stream)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_hosts_become_ip_server_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("ldap.example.org").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cfg = TlsConfig {
            certificate: empty.clone(),
            key: dir.path().join("missing.key"),
            client_ca: None,
            min_version: TlsVersion::Tls12,
        };
        let e = server_config(&cfg).expect_err("refused");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = client_config(&dir.path().join("nope.pem")).expect_err("refused");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        // A key file without a key, and one whose PEM is broken.
        let cert = dir.path().join("cert-only.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_key(&cert).expect_err("refused");
        assert!(e.to_string().contains("no PEM private key"), "{e}");
        let broken = dir.path().join("broken.key");
        std::fs::write(&broken, "-----BEGIN PRIVATE KEY-----\nMAA=\n").unwrap();
        let e = read_key(&broken).expect_err("refused");
        assert!(e.to_string().contains("not a PEM key file"), "{e}");
    }
}
