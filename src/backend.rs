//! Connections to the directory servers behind the proxy.

use crate::config::BackendConfig;
use std::fmt::Write as _;
use tokio::net::TcpStream;

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
