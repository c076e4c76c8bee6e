//! The listener: accepts clients, starts a session for each, and shuts down gracefully.

use crate::config::Config;
use crate::lookup::LookupPool;
use crate::pam_gate::PamGate;
use crate::pam_pool::PamPool;
use crate::proto::{self, LdapError};
use crate::session::Session;
use ldap3_proto::proto::LdapResultCode;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every session shares: the configuration, the route lookup connections and the
/// PAM worker pool.
pub struct Shared {
    pub config: Config,
    pub lookup: LookupPool,
    pub pam: PamGate,
}

impl Shared {
    /// Starts the PAM workers for `config`.
    pub fn new(config: Config) -> std::io::Result<Shared> {
        let pool = Arc::new(PamPool::new(config.pam.workers, config.pam.queue)?);
        let pam = PamGate::new(pool, &config.pam, &config.routes)?;
        Ok(Shared {
            config,
            lookup: LookupPool::default(),
            pam,
        })
    }
}

/// Binds the listening socket; separate from [`serve`] so startup errors surface before
/// the process reports itself ready.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen.address).await
}

/// Accepts clients until `shutdown` is cancelled, then lets sessions finish their
/// outstanding operations for up to the configured grace period.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let config = &shared.config;
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let sessions = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "refusing client: {} connections open", config.limits.max_connections);
            sessions.spawn(refuse(stream));
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "set_nodelay: {e}");
        }
        let session = Session::new(stream, peer, Arc::clone(&shared), shutdown.clone());
        sessions.spawn(async move {
            session.run().await;
            drop(slot);
        });
    }
    drop(listener);
    sessions.close();
    let open = sessions.len();
    tracing::info!(
        "shutting down: {open} client connections finishing, grace {:?}",
        config.limits.shutdown_grace
    );
    if tokio::time::timeout(config.limits.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over: closing {} client connections",
            sessions.len()
        );
    }
}

/// Tells a client over the connection limit why it is turned away.
async fn refuse(mut stream: TcpStream) {
    let notice = proto::notice_of_disconnection(&LdapError::new(
        LdapResultCode::Busy,
        "too many client connections",
    ));
    let _ = stream.write_all(&notice).await;
    let _ = stream.shutdown().await;
}
