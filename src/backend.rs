//! Connections to the directory servers behind the proxy.

use crate::config::BackendConfig;
use crate::message;
use bytes::BytesMut;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode};
use ldap3_proto::LdapCodec;
use std::fmt::Write as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// No backend in the list could be reached; the message names each one and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no backend reachable: {0}")]
pub struct Unreachable(String);

/// Connects to the first backend that answers, in configured order.
pub async fn connect(cfg: &BackendConfig) -> Result<TcpStream, Unreachable> {
    let mut why = String::new();
    for uri in &cfg.uris {
        let attempt = tokio::time::timeout(
            cfg.connect_timeout,
            TcpStream::connect((uri.host.as_str(), uri.port)),
        )
        .await;
        let err = match attempt {
            Ok(Ok(stream)) => {
                // Small request/response messages: waiting to coalesce them only adds latency.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(backend = %uri.uri, "set_nodelay: {e}");
                }
                return Ok(stream);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", cfg.connect_timeout),
        };
        tracing::warn!(backend = %uri.uri, "backend connect failed: {err}");
        if !why.is_empty() {
            why.push_str("; ");
        }
        let _ = write!(why, "{}: {err}", uri.uri);
    }
    Err(Unreachable(why))
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

/// A backend connection bound as the proxy's service account, ready for requests.
/// Uses messageID 1 for its bind, before the connection carries anything else.
pub async fn connect_as_service(cfg: &BackendConfig) -> Result<TcpStream, ServiceBindError> {
    let account = cfg
        .service
        .as_ref()
        .ok_or(ServiceBindError::NotConfigured)?;
    let mut stream = connect(cfg).await?;
    let request = message::simple_bind_request(1, &account.dn, account.password.as_bytes());
    let io = |e: std::io::Error| ServiceBindError::Io(e.to_string());
    stream.write_all(&request).await.map_err(io)?;
    let mut buf = BytesMut::with_capacity(512);
    let reply = loop {
        if let Some(m) = decode_one(&mut buf).map_err(ServiceBindError::Io)? {
            break m;
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(ServiceBindError::Io("backend closed the connection".into()));
        }
    };
    match reply.op {
        LdapOp::BindResponse(r) if r.res.code == LdapResultCode::Success => Ok(stream),
        LdapOp::BindResponse(r) => Err(ServiceBindError::Refused(format!(
            "{:?}: {}",
            r.res.code, r.res.message
        ))),
        other => Err(ServiceBindError::Io(format!(
            "unexpected answer to bind: {other:?}"
        ))),
    }
}

/// Decodes one complete message from the front of `buf`, if there is one.
pub fn decode_one(buf: &mut BytesMut) -> Result<Option<LdapMsg>, String> {
    // Backend answers to the proxy's own requests are small, but entries may carry
    // large attributes: allow what a client may send.
    LdapCodec::new(Some(crate::config::DEFAULT_MAX_MESSAGE_SIZE * 8), None)
        .decode(buf)
        .map_err(|e| format!("undecodable message from backend: {e}"))
}
