//! The listeners: accept clients (plain LDAP, and LDAPS when configured), read the PROXY
//! protocol header of trusted balancers, give each connection a slot ([`crate::slots`])
//! and a session, reload on SIGHUP, and shut down gracefully.

use crate::config::Config;
use crate::context::{config_id, Shared};
use crate::dircheck::{self, DirCheckError};
use crate::proto::{self, LdapError};
use crate::session::Session;
use crate::slots::{Refused, Slot, Slots};
use crate::tls::ServerTls;
use crate::{bind, duo, metrics, proxy_protocol, tls};
use ldap3_proto::proto::LdapResultCode;
use socket2::SockRef;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a [`dircheck::run`] result means for a configuration about to go into force (at
/// start or on reload): `Ok(None)` ready, `Ok(Some(why))` in force but not ready (the
/// directory could not be asked), `Err` refused (the directory answered with a problem).
/// Warnings are logged.
pub fn directory_outcome(
    result: Result<Vec<String>, DirCheckError>,
) -> Result<Option<String>, String> {
    match result {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(None)
        }
        Err(DirCheckError::Unreachable(why)) => {
            tracing::warn!(
                "directory checks could not run: {why}; not ready (/readyz) until they pass"
            );
            Ok(Some(why))
        }
        Err(DirCheckError::Failed(why)) => Err(why),
    }
}

/// The listening sockets.
pub struct Listeners {
    pub plain: TcpListener,
    pub ldaps: Option<TcpListener>,
}

impl Listeners {
    /// The plain listener's address (useful when configured with port 0).
    pub fn plain_addr(&self) -> std::io::Result<SocketAddr> {
        self.plain.local_addr()
    }

    /// The LDAPS listener's address, when there is one.
    pub fn ldaps_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.ldaps.as_ref().map(TcpListener::local_addr)
    }
}

/// The accept queue of each listener. A flood connects faster than any accept loop
/// takes connections; with the usual 128, the kernel drops the handshakes of clients
/// that arrive meanwhile, and they retry after 1, 3, 7 s. The kernel caps it at
/// `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening sockets; separate from [`serve`] so startup errors surface before
/// the process reports itself ready. Errors name the address.
pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
    let listen = |addr: SocketAddr| async move {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        socket
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(addr)?;
                s.listen(LISTEN_BACKLOG)
            })
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    };
    let plain = listen(config.listen.address).await?;
    let ldaps = match config.listen.ldaps_address {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    Ok(Listeners { plain, ldaps })
}

/// SIGHUP: reads the configuration file again and, if it is valid, puts its routes, bind
/// rules, PAM guard settings and TLS certificate in force at once; sessions take the new
/// routes from their next bind. A file that does not load (or a certificate that does
/// not, or a route whose pam_duo would fail open, or service account rights the
/// directory says are missing) is refused whole, logged and counted, and the running
/// configuration stays. When the directory cannot be asked, the new configuration goes
/// into force and the proxy reports not ready until its directory checks pass.
/// Returns whether the new configuration is in force.
pub async fn reload(shared: &Shared) -> bool {
    let refuse = |why: String| {
        tracing::error!("reload refused, the running configuration stays: {why}");
        metrics::reload("refused");
        false
    };
    let new = match Config::load(shared.path()) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    if let Err(e) = bind::check_suffixes(&new, &shared.backends).await {
        return refuse(e);
    }
    if let Err(e) = duo::apply(&new) {
        return refuse(e);
    }
    let pending = match directory_outcome(dircheck::run(&new, &shared.backends).await) {
        Ok(pending) => pending,
        Err(e) => return refuse(e),
    };
    let tls = match (&shared.tls, &new.tls) {
        (Some(_), Some(t)) => match tls::server_config(t) {
            Ok(c) => Some(c),
            Err(e) => return refuse(format!("TLS certificate: {e}")),
        },
        _ => None,
    };
    let old = shared.config();
    for what in restart_only_changes(&old, &new) {
        tracing::warn!("{what} changed: takes effect only after a restart");
    }
    shared.backends.forget_tls_configs();
    if let (Some(server), Some(fresh)) = (&shared.tls, tls) {
        server.install(fresh);
    }
    shared.pam.reconfigure(&new.pam, &new.routes);
    let routes = new.routes.len();
    let new = Arc::new(new);
    shared.health.set_directory(config_id(&new), pending);
    shared.put_in_force(new);
    metrics::reload("ok");
    tracing::info!(routes, "configuration reloaded");
    true
}

/// Settings a running proxy cannot change: its sockets, thread pools and TLS on/off.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen.address != new.listen.address
        || old.listen.ldaps_address != new.listen.ldaps_address
    {
        changed.push("listen address");
    }
    if old.limits.max_connections != new.limits.max_connections {
        changed.push("limits.max_connections");
    }
    if old.pam.workers != new.pam.workers || old.pam.queue != new.pam.queue {
        changed.push("pam.workers or pam.queue");
    }
    if old.runtime.worker_threads != new.runtime.worker_threads {
        changed.push("runtime.worker_threads");
    }
    if old.metrics_listen != new.metrics_listen {
        changed.push("metrics.listen");
    }
    if old.tls.is_some() != new.tls.is_some() {
        changed.push("[tls] presence");
    }
    changed
}

/// How much of `limits.shutdown_grace` is left when binds still waiting for PAM are cut
/// short (they answer unavailable): at most a second, and a tenth of the grace.
fn cut_margin(grace: Duration) -> Duration {
    (grace / 10).min(Duration::from_secs(1))
}

/// Accepts clients until `shutdown` is cancelled, then lets sessions finish their
/// outstanding operations for up to the configured grace period: binds still waiting for
/// PAM near its end answer unavailable, and at its end every connection still open is
/// shut down.
///
/// `after_spike` runs (on the runtime's thread, rarely) once a spike of connections has
/// come and gone ([`Slots::spike_passed`], looked at every second): the binary gives the
/// memory their sessions used back to the system there.
pub async fn serve(
    listeners: Listeners,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    after_spike: fn(),
) {
    let config = shared.config();
    let slots = Slots::new(config.limits.max_connections);
    let _spikes = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch_spikes(
        Arc::clone(&slots),
        after_spike,
    )));
    metrics::connection_counters_at_zero();
    let sessions = TaskTracker::new();
    let mut refusals = Throttle::default();
    let Listeners { plain, ldaps } = listeners;
    loop {
        let (stream, peer, over_tls) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = plain.accept() => match accepted {
                Ok((s, p)) => (s, p, false),
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            accepted = accept_opt(ldaps.as_ref()) => match accepted {
                Ok((s, p)) => (s, p, true),
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let slot = match admit(&slots, &shutdown).await {
            Ok(slot) => slot,
            Err(why) => {
                metrics::connection_refused(why.reason());
                refusals.note(why.reason(), peer, why.message());
                if !over_tls {
                    sessions.spawn(refuse(stream, why.message()));
                }
                // An LDAPS client would need a handshake to read the notice: just close.
                continue;
            }
        };
        sessions.spawn(connection(
            stream,
            peer,
            over_tls,
            slot,
            Arc::clone(&shared),
            Arc::clone(&slots),
        ));
    }
    drop(plain);
    drop(ldaps);
    shared.health.set_draining();
    sessions.close();
    let grace = config.limits.shutdown_grace;
    tracing::info!(
        "shutting down: {} client connections finishing, grace {grace:?}",
        sessions.len()
    );
    let margin = cut_margin(grace);
    if tokio::time::timeout(grace - margin, sessions.wait())
        .await
        .is_ok()
    {
        return;
    }
    // Binds still waiting for PAM answer unavailable now (their transactions run on:
    // libpam cannot be cancelled), so their sessions can end within the grace.
    shared.grace_over.cancel();
    if tokio::time::timeout(margin, sessions.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(
        "grace period over: closing {} client connections",
        sessions.len()
    );
    slots.force_all();
    sessions.wait().await;
}

async fn watch_spikes(slots: Arc<Slots>, after_spike: fn()) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if slots.spike_passed() {
            after_spike();
        }
    }
}

/// A slot for a new connection. When the table is full, waits a little before refusing,
/// for connections asked to leave that are still closing (a burst admits faster than
/// their sessions get to run), or for a connection with nothing in progress to become
/// idle enough to be asked (a burst of new connections fills the table faster than they
/// age past `slots::NEW_GRACE`): at most that grace and 200 ms. The accept queue holds
/// the others meanwhile; nobody could be admitted anyway.
async fn admit(slots: &Arc<Slots>, shutdown: &CancellationToken) -> Result<Slot, Refused> {
    let deadline =
        tokio::time::Instant::now() + crate::slots::NEW_GRACE + Duration::from_millis(200);
    loop {
        match slots.admit(shutdown) {
            Err(Refused::Full) => {
                let wait = match (slots.next_idle(), slots.leaving() > 0) {
                    // The next eligible one (a release may come sooner and wakes it too).
                    (Some(wait), _) => wait,
                    (None, true) => Duration::from_millis(200),
                    // Every connection busy, none leaving: nothing to wait for.
                    (None, false) => return Err(Refused::Full),
                };
                // Not a spin: even an eligible one may have to wait for room to leave.
                let wait = wait.max(Duration::from_millis(10));
                let until = (tokio::time::Instant::now() + wait).min(deadline);
                if tokio::time::Instant::now() >= deadline {
                    return Err(Refused::Full);
                }
                tokio::select! {
                    () = slots.released() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            other => return other,
        }
    }
}

/// One client connection: its PROXY protocol header when its peer is a trusted balancer,
/// its place in the table for its real address, then its session.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    over_tls: bool,
    slot: Slot,
    shared: Arc<Shared>,
    slots: Arc<Slots>,
) {
    let config = shared.config();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "set_nodelay: {e}");
    }
    if let Some(t) = config.limits.send_timeout {
        // The kernel ends a connection whose client takes nothing for this long: it
        // stopped reading (its window stays shut), or its host is gone.
        if let Err(e) = SockRef::from(&stream).set_tcp_user_timeout(Some(t)) {
            tracing::debug!(%peer, "TCP_USER_TIMEOUT: {e}");
        }
    }
    let client = if config
        .listen
        .proxy_protocol_from
        .iter()
        .any(|n| n.contains(peer.ip()))
    {
        let header = tokio::select! {
            h = proxy_protocol::read_header(&mut stream) => h,
            () = slot.stop.cancelled() => return,
        };
        match header {
            Ok(proxy_protocol::Header::Proxied(client)) => client,
            Ok(proxy_protocol::Header::Local) => peer,
            Err(e) => {
                metrics::connection_refused("proxy_header");
                tracing::info!(%peer, "closing connection from a PROXY protocol peer: {e}");
                return;
            }
        }
    } else {
        peer
    };
    if let Err(why) = slots.attribute(
        &slot,
        client.ip(),
        config.limits.max_connections_per_address,
    ) {
        metrics::connection_refused(why.reason());
        tracing::debug!(client = %client, %peer, "refusing client: {}", why.message());
        if !over_tls {
            refuse(stream, why.message()).await;
        }
        return;
    }
    if client != peer {
        tracing::debug!(client = %client, balancer = %peer, "PROXY protocol: relayed client");
    }
    let session = if over_tls {
        let Some(acceptor) = shared.tls.as_ref().map(ServerTls::acceptor) else {
            // The configuration requires [tls] for an LDAPS listener.
            return;
        };
        Session::new_ldaps(
            stream,
            &acceptor,
            client,
            Arc::clone(&shared),
            slot.stop.clone(),
        )
    } else {
        Session::new(stream, client, Arc::clone(&shared), slot.stop.clone())
    }
    .in_slot(&slot);
    // A session the table must close is dropped: its connections close with it.
    tokio::select! {
        () = session.run() => {}
        () = slot.watch() => {}
    }
}

/// Logs refused connections without letting a flood flood the log: the first of each
/// kind, then at most one line per [`Throttle::EVERY`] with the count since.
#[derive(Default)]
struct Throttle {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, reason: &'static str, peer: SocketAddr, message: &str) {
        let now = Instant::now();
        let entry = self.last.entry(reason).or_insert((now - Self::EVERY, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= Self::EVERY {
            tracing::warn!(%peer, refused = entry.1, "refusing clients: {message}");
            *entry = (now, 0);
        }
    }
}

/// Accepts on `listener`, or waits forever when there is none.
async fn accept_opt(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Typically EMFILE: back off instead of spinning.
async fn accept_failed(e: &std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Tells a client over a connection limit why it is turned away.
async fn refuse(mut stream: TcpStream, why: &str) {
    let notice = proto::notice_of_disconnection(&LdapError::new(LdapResultCode::Busy, why));
    let _ = stream.write_all(&notice).await;
    let _ = stream.shutdown().await;
}
