//! Connections to the directory servers behind the proxy: plain `ldap://`, `ldaps://`
//! (TLS from the first byte) or `ldap://` upgraded with StartTLS (`backend.starttls`).
//! TLS connections verify the server's certificate against `backend.ca` and the URI's
//! host.

use crate::config::{BackendConfig, BackendUri};
use crate::logsafe::Untrusted;
use crate::tls::{self, Stream};
use crate::{message, proto};
use bytes::BytesMut;
use ldap3_proto::proto::{
    LdapDerefAliases, LdapExtendedRequest, LdapFilter, LdapMsg, LdapOp, LdapResultCode,
    LdapSearchRequest, LdapSearchScope,
};
use ldap3_proto::LdapCodec;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

/// A connection to a backend, in the clear or inside TLS; reads and writes the same.
pub type BackendStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

/// No backend in the list could be reached; the message names each one and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no backend reachable: {0}")]
pub struct Unreachable(String);

/// A backend that failed is tried after the others for this long: with a dead first
/// server, only one connection in this window pays its connect timeout, not every one.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// What connecting to the backends remembers from one connection to the next: which
/// backends failed lately, and the TLS client configurations already built. A running
/// proxy has one, in its context ([`crate::context::Shared`]); a one-shot command
/// (`check-config --live`, `explain`) makes its own.
#[derive(Default)]
pub struct Backends {
    /// When each backend (by URI) last failed to connect.
    failed: Mutex<HashMap<String, Instant>>,
    /// TLS client configurations by CA file, built once: every session's connection
    /// would otherwise read and parse the CA file again.
    tls: Mutex<HashMap<PathBuf, Arc<ClientConfig>>>,
}

impl Backends {
    /// Connects to the first backend that answers, in configured order (recently failed
    /// ones last). The connect timeout covers the TCP connect, StartTLS and the TLS
    /// handshake.
    pub async fn connect(&self, cfg: &BackendConfig) -> Result<BackendStream, Unreachable> {
        let mut why = String::new();
        for uri in self.in_trial_order(cfg) {
            let attempt = tokio::time::timeout(cfg.connect_timeout, self.open(cfg, uri)).await;
            let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            let err = match attempt {
                Ok(Ok(stream)) => {
                    failed.remove(&uri.uri);
                    return Ok(stream);
                }
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {:?}", cfg.connect_timeout),
            };
            failed.insert(uri.uri.clone(), Instant::now());
            drop(failed);
            tracing::warn!(backend = %uri.uri, "backend connect failed: {err}");
            if !why.is_empty() {
                why.push_str("; ");
            }
            let _ = write!(why, "{}: {err}", uri.uri);
        }
        crate::metrics::backend_connect_failed();
        Err(Unreachable(why))
    }

    /// A backend connection bound as the proxy's service account, ready for requests.
    /// Uses messageID 1 for its bind, right after the connection is made (and secured).
    pub async fn connect_as_service(
        &self,
        cfg: &BackendConfig,
    ) -> Result<BackendStream, ServiceBindError> {
        let account = cfg
            .service
            .as_ref()
            .ok_or(ServiceBindError::NotConfigured)?;
        let mut stream = self.connect(cfg).await?;
        let request = message::simple_bind_request(1, &account.dn, account.password.as_bytes());
        stream
            .write_all(&request)
            .await
            .map_err(|e| ServiceBindError::Io(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(512);
        let reply = read_message(&mut stream, &mut buf)
            .await
            .map_err(|e| ServiceBindError::Io(e.to_string()))?;
        match reply.op {
            LdapOp::BindResponse(r) if r.res.code == LdapResultCode::Success => Ok(stream),
            // The directory's diagnostic text ends up in log lines: as data.
            LdapOp::BindResponse(r) => Err(ServiceBindError::Refused(format!(
                "{}: {}",
                proto::code_text(&r.res.code),
                Untrusted::new(&r.res.message)
            ))),
            other => Err(ServiceBindError::Io(format!(
                "unexpected answer to bind: {}",
                op_name(&other)
            ))),
        }
    }

    /// Asks every backend, one after the other, whether it answers LDAP (a root DSE
    /// read, within `connect_timeout`), and remembers the answer for the next
    /// connections: one that does not is tried last, one that does goes back to its
    /// configured place. `links` keeps one connection per backend from one call to the
    /// next (the health watcher's), so probing opens no connection while backends stay
    /// up. Returns (URI, answered) in configured order.
    pub async fn probe(&self, cfg: &BackendConfig, links: &mut ProbeLinks) -> Vec<(String, bool)> {
        links.retain(|uri, _| cfg.uris.iter().any(|u| u.uri == *uri));
        let mut probes = Vec::with_capacity(cfg.uris.len());
        for uri in &cfg.uris {
            let attempt =
                tokio::time::timeout(cfg.connect_timeout, self.probe_one(cfg, uri, links)).await;
            let result = attempt
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", cfg.connect_timeout)));
            let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            match &result {
                Ok(()) => {
                    if failed.remove(&uri.uri).is_some() {
                        tracing::info!(backend = %uri.uri, "backend answers again");
                    }
                }
                Err(e) => {
                    links.remove(&uri.uri);
                    if failed.insert(uri.uri.clone(), Instant::now()).is_none() {
                        tracing::warn!(backend = %uri.uri, "backend does not answer: {e}");
                    }
                }
            }
            probes.push((uri.uri.clone(), result.is_ok()));
        }
        probes
    }

    /// A root DSE read on the link kept for `uri`, or on a new one when there is none or
    /// it failed (the backend restarted since).
    async fn probe_one(
        &self,
        cfg: &BackendConfig,
        uri: &BackendUri,
        links: &mut ProbeLinks,
    ) -> Result<(), String> {
        if let Some(mut kept) = links.remove(&uri.uri) {
            if read_root_dse(&mut kept).await.is_ok() {
                links.insert(uri.uri.clone(), kept);
                return Ok(());
            }
        }
        let mut fresh = self.open(cfg, uri).await?;
        read_root_dse(&mut fresh).await?;
        links.insert(uri.uri.clone(), fresh);
        Ok(())
    }

    /// Makes the next backend connections read `backend.ca` again (SIGHUP).
    pub fn forget_tls_configs(&self) {
        self.tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The backends in configured order, those that failed within [`DOWN_FOR`] last.
    fn in_trial_order<'c>(&self, cfg: &'c BackendConfig) -> Vec<&'c BackendUri> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let down = |u: &BackendUri| failed.get(&u.uri).is_some_and(|t| t.elapsed() < DOWN_FOR);
        let (up, down): (Vec<&BackendUri>, Vec<&BackendUri>) =
            cfg.uris.iter().partition(|u| !down(u));
        up.into_iter().chain(down).collect()
    }

    /// One connection attempt to `uri`, with TLS when the URI or `backend.starttls` says so.
    async fn open(&self, cfg: &BackendConfig, uri: &BackendUri) -> Result<BackendStream, String> {
        let mut stream = TcpStream::connect((uri.host.as_str(), uri.port))
            .await
            .map_err(|e| e.to_string())?;
        // Small request/response messages: waiting to coalesce them only adds latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(backend = %uri.uri, "set_nodelay: {e}");
        }
        if !uri.ldaps && !cfg.starttls {
            return Ok(Stream::Plain(stream));
        }
        let ca = cfg
            .ca
            .as_deref()
            .ok_or("backend.ca is not set: TLS backends are always verified")?;
        let config = self.client_config(ca)?;
        let name = tls::server_name(&uri.host)?;
        if !uri.ldaps {
            start_tls(&mut stream).await?;
        }
        let stream = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, conn) = stream.get_ref();
        tracing::debug!(
            backend = %uri.uri,
            version = ?conn.protocol_version(),
            suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
            "backend TLS established"
        );
        Ok(Stream::Tls(Box::new(stream)))
    }

    /// The TLS client configuration for backends signed by `ca`, built on first use.
    fn client_config(&self, ca: &Path) -> Result<Arc<ClientConfig>, String> {
        let cached = self
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ca)
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let config = tls::client_config(ca).map_err(|e| format!("backend.ca {e}"))?;
        self.tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ca.to_owned(), Arc::clone(&config));
        Ok(config)
    }
}

/// The connections the health watcher keeps to each backend (by URI) between probes.
pub type ProbeLinks = HashMap<String, BackendStream>;

/// Reads the root DSE (no attributes) on `stream`: whether the directory answers LDAP.
async fn read_root_dse(stream: &mut BackendStream) -> Result<(), String> {
    let request = proto::encode(LdapMsg::new(
        1,
        LdapOp::SearchRequest(LdapSearchRequest {
            base: String::new(),
            scope: LdapSearchScope::Base,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter: LdapFilter::Present("objectClass".into()),
            attrs: vec!["1.1".into()],
        }),
    ));
    stream
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(512);
    loop {
        let m = read_message(stream, &mut buf)
            .await
            .map_err(|e| e.to_string())?;
        match m.op {
            LdapOp::SearchResultDone(r) if r.code == LdapResultCode::Success => return Ok(()),
            LdapOp::SearchResultDone(r) => {
                return Err(format!("root DSE read: {}", proto::code_text(&r.code)))
            }
            _ => {}
        }
    }
}

/// StartTLS (RFC 4511 §4.14) as the first operation on a fresh connection, messageID 1.
/// The directory sends nothing after its response until the handshake, so any further
/// byte is refused rather than fed to TLS.
async fn start_tls(stream: &mut TcpStream) -> Result<(), String> {
    let request = proto::encode(LdapMsg::new(
        1,
        LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: tls::OID_STARTTLS.to_owned(),
            value: None,
        }),
    ));
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("StartTLS: {e}"))?;
    let mut buf = BytesMut::with_capacity(256);
    let reply = read_message(stream, &mut buf)
        .await
        .map_err(|e| format!("StartTLS: {e}"))?;
    if !buf.is_empty() {
        return Err("StartTLS: the directory sent data after its response".into());
    }
    match reply.op {
        LdapOp::ExtendedResponse(r)
            if reply.msgid == 1 && r.res.code == LdapResultCode::Success =>
        {
            Ok(())
        }
        // The directory's diagnostic text ends up in a log line: as data.
        LdapOp::ExtendedResponse(r) => Err(format!(
            "StartTLS refused: {}: {}",
            proto::code_text(&r.res.code),
            Untrusted::new(&r.res.message)
        )),
        other => Err(format!(
            "unexpected answer to StartTLS: {}",
            op_name(&other)
        )),
    }
}

/// The kind of an unexpected message, for diagnostics that must not echo its content.
fn op_name(op: &LdapOp) -> &'static str {
    match op {
        LdapOp::BindResponse(_) => "BindResponse",
        LdapOp::ExtendedResponse(_) => "ExtendedResponse",
        LdapOp::SearchResultDone(_) => "SearchResultDone",
        _ => "another message",
    }
}

/// Why the proxy could not get a connection bound as its service account.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceBindError {
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("no service account configured (backend.service_dn)")]
    NotConfigured,
    #[error("service account bind failed: {0}")]
    Refused(String),
    #[error("service account bind: {0}")]
    Io(String),
}

/// Why no whole message could be read from the directory.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the directory closed the connection")]
    Closed,
    #[error("undecodable message from backend: {0}")]
    Undecodable(String),
}

/// Reads from `stream` into `buf` until one whole message is decoded from the front of
/// `buf`; the bytes after it stay in `buf` for the next call. For the proxy's own
/// exchanges with the directory (service bind, StartTLS, lookups, checks), never for
/// relayed traffic, which is not decoded.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<LdapMsg, ReadError> {
    // Backend answers to the proxy's own requests are small, but entries may carry
    // large attributes: allow what a client may send.
    let mut codec = LdapCodec::new(Some(crate::config::DEFAULT_MAX_MESSAGE_SIZE * 8), None);
    loop {
        if let Some(m) = codec
            .decode(buf)
            .map_err(|e| ReadError::Undecodable(e.to_string()))?
        {
            return Ok(m);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}
