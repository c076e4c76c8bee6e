//! Metrics in Prometheus text format, and the health endpoints, on `[metrics] listen`:
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (the proxy can serve: a
//! backend answers, the directory checks of the configuration in force have passed, and
//! it is not shutting down). Readiness never depends on what clients can fill: a full
//! PAM queue, busy or stuck PAM workers, or many connections are reported in the body
//! and the metrics, not as 503 — a flood of wrong-password binds must not take every
//! proxy out of a balancer's rotation at once.
//!
//! Labels have bounded cardinality: route and service names from the configuration,
//! result codes, operation types; never a DN or user name.

use crate::frame::op;
use crate::pam_pool::PoolStats;
use crate::proto;
use ldap3_proto::proto::LdapResultCode;
use metrics::{counter, gauge, histogram, Counter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// PAM transactions: sub-second password checks to minute-long pushes.
const PAM_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
const BIND_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the global recorder; call once, before any metric is touched.
pub fn install() -> Result<PrometheusHandle, String> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ldap_pam_proxy_pam_duration_seconds".into()),
            PAM_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("ldap_pam_proxy_bind_duration_seconds".into()),
                BIND_BUCKETS,
            )
        })
        .map_err(|e| e.to_string())?;
    builder.install_recorder().map_err(|e| e.to_string())
}

/// One relayed request of type `tag`. Handles are made once: the relay path only
/// increments an atomic.
pub fn relayed(tag: u8) {
    static COUNTERS: OnceLock<Vec<(u8, Counter)>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        [
            op::BIND_REQUEST,
            op::UNBIND_REQUEST,
            op::SEARCH_REQUEST,
            op::MODIFY_REQUEST,
            op::ADD_REQUEST,
            op::DEL_REQUEST,
            op::MODDN_REQUEST,
            op::COMPARE_REQUEST,
            op::ABANDON_REQUEST,
            op::EXTENDED_REQUEST,
            0,
        ]
        .iter()
        .map(|t| {
            let c = counter!("ldap_pam_proxy_relayed_operations_total", "op" => op::name(*t));
            (*t, c)
        })
        .collect()
    });
    let c = counters
        .iter()
        .find(|(t, _)| *t == tag)
        .or_else(|| counters.last())
        .map(|(_, c)| c);
    if let Some(c) = c {
        c.increment(1);
    }
}

/// A bind the proxy decided: by route and LDAP result (its RFC 4511 name,
/// [`proto::code_name`]).
pub fn bind_decided(route: &str, result: &LdapResultCode, seconds: f64) {
    counter!("ldap_pam_proxy_binds_total", "route" => route.to_owned(), "result" => proto::code_name(result))
        .increment(1);
    histogram!("ldap_pam_proxy_bind_duration_seconds", "route" => route.to_owned()).record(seconds);
}

/// A bind relayed to the directory for it to decide, and why.
pub fn bind_forwarded(reason: &'static str) {
    counter!("ldap_pam_proxy_binds_forwarded_total", "reason" => reason).increment(1);
}

/// A bind whose client left (disconnect or Abandon) before its PAM answer.
pub fn bind_abandoned() {
    counter!("ldap_pam_proxy_binds_abandoned_total").increment(1);
}

/// One finished PAM transaction.
pub fn pam_transaction(service: &str, outcome: &str, seconds: f64) {
    counter!("ldap_pam_proxy_pam_transactions_total", "service" => service.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
    histogram!("ldap_pam_proxy_pam_duration_seconds", "service" => service.to_owned())
        .record(seconds);
}

/// A PAM transaction dropped before it started (`reason`: expired, abandoned, too_late).
pub fn pam_transaction_skipped(reason: &'static str) {
    counter!("ldap_pam_proxy_pam_transactions_skipped_total", "reason" => reason).increment(1);
}

/// A bind served by another bind's transaction.
pub fn bind_coalesced() {
    counter!("ldap_pam_proxy_binds_coalesced_total").increment(1);
}

/// A bind refused by the push-fatigue guard (`reason`: in_flight, another transaction
/// for the entry was running; rate, the entry's attempt budget for the address was spent).
pub fn bind_rate_limited(reason: &'static str) {
    counter!("ldap_pam_proxy_binds_rate_limited_total", "reason" => reason).increment(1);
}

/// A bind answered from the success cache.
pub fn success_cache_hit() {
    counter!("ldap_pam_proxy_success_cache_hits_total").increment(1);
}

/// Client connections: opened (`+1`) and closed (`-1`).
pub fn client_connection(delta: f64) {
    gauge!("ldap_pam_proxy_client_connections").increment(delta);
    if delta > 0.0 {
        counter!("ldap_pam_proxy_client_connections_total").increment(1);
    }
}

/// Counts one client connection for as long as it lives, however its session ends (a
/// session the connection table closes is dropped, not run to its end).
pub struct ClientConnection(());

impl ClientConnection {
    pub fn open() -> Self {
        client_connection(1.0);
        ClientConnection(())
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        client_connection(-1.0);
    }
}

/// Counts one backend connection of a client session for as long as it lives.
pub struct BackendConnection(());

impl BackendConnection {
    pub fn open() -> Self {
        gauge!("ldap_pam_proxy_backend_connections").increment(1.0);
        BackendConnection(())
    }
}

impl Drop for BackendConnection {
    fn drop(&mut self) {
        gauge!("ldap_pam_proxy_backend_connections").decrement(1.0);
    }
}

/// Counts one shared service connection (crate::service_links) while it is open, in the
/// backend connections too.
pub struct SharedConnection(BackendConnection);

impl SharedConnection {
    pub fn open() -> Self {
        gauge!("ldap_pam_proxy_shared_connections").increment(1.0);
        SharedConnection(BackendConnection::open())
    }
}

impl Drop for SharedConnection {
    fn drop(&mut self) {
        gauge!("ldap_pam_proxy_shared_connections").decrement(1.0);
    }
}

/// Counts one PAM-bound session on a shared service connection.
pub struct SharedSession(());

impl SharedSession {
    pub fn open() -> Self {
        gauge!("ldap_pam_proxy_shared_sessions").increment(1.0);
        SharedSession(())
    }
}

impl Drop for SharedSession {
    fn drop(&mut self) {
        gauge!("ldap_pam_proxy_shared_sessions").decrement(1.0);
    }
}

/// A PAM-bound session cut off its shared connection for not reading its responses.
pub fn shared_session_cut() {
    counter!("ldap_pam_proxy_shared_sessions_cut_total").increment(1);
}

/// A backend connection attempt that found no backend.
pub fn backend_connect_failed() {
    counter!("ldap_pam_proxy_backend_connect_failures_total").increment(1);
}

/// The connection table ([`crate::slots`]): connections counted against the cap, and
/// those asked to leave that have not closed yet.
pub fn connection_slots(open: usize, leaving: usize) {
    gauge!("ldap_pam_proxy_connection_slots", "state" => "open").set(open as f64);
    gauge!("ldap_pam_proxy_connection_slots", "state" => "leaving").set(leaving as f64);
}

/// Exports the connection counters at zero, so that a rate or an alert on them works
/// before the first refusal.
pub fn connection_counters_at_zero() {
    for reason in ["max_connections", "per_address", "proxy_header"] {
        counter!("ldap_pam_proxy_connections_refused_total", "reason" => reason).increment(0);
    }
    counter!("ldap_pam_proxy_connections_evicted_total").increment(0);
    counter!("ldap_pam_proxy_connections_forced_total").increment(0);
    connection_slots(0, 0);
}

/// A client connection refused (`reason`: max_connections, per_address, proxy_header).
pub fn connection_refused(reason: &'static str) {
    counter!("ldap_pam_proxy_connections_refused_total", "reason" => reason).increment(1);
}

/// An idle connection asked to leave because the connection table was nearly full.
pub fn connection_evicted() {
    counter!("ldap_pam_proxy_connections_evicted_total").increment(1);
}

/// A connection the proxy closed without waiting for its session: asked to leave and
/// still there after the grace, with nothing in progress (typically a client that reads
/// nothing).
pub fn connection_forced() {
    counter!("ldap_pam_proxy_connections_forced_total").increment(1);
}

/// A connection to the metrics endpoint refused: [`METRICS_MAX_CONNECTIONS`] were open.
pub fn metrics_connection_refused() {
    counter!("ldap_pam_proxy_metrics_connections_refused_total").increment(1);
}

/// A configuration reload (`result`: ok, refused).
pub fn reload(result: &'static str) {
    counter!("ldap_pam_proxy_config_reloads_total", "result" => result).increment(1);
}

/// What `/readyz` and the backend gauges report.
#[derive(Default)]
pub struct Health {
    backend_up: AtomicBool,
    /// Each backend's last probe: (URI, answered).
    backends: Mutex<Vec<(String, bool)>>,
    directory: Mutex<DirectoryChecks>,
    /// SIGTERM came: connections drain and new ones are not accepted.
    draining: AtomicBool,
}

/// The directory checks ([`crate::dircheck`]) of one configuration.
#[derive(Default)]
struct DirectoryChecks {
    /// Which configuration they are about (see [`Health::set_directory`]).
    config: usize,
    /// Why they have not passed; `None` once they have.
    problem: Option<String>,
}

impl Health {
    /// Records whether a backend accepts connections.
    pub fn set_backend_up(&self, up: bool) {
        self.backend_up.store(up, Relaxed);
        gauge!("ldap_pam_proxy_backend_up").set(if up { 1.0 } else { 0.0 });
    }

    /// Whether a backend accepted the last connection attempt.
    pub fn backend_up(&self) -> bool {
        self.backend_up.load(Relaxed)
    }

    /// Records the probe of each backend (URI, answered), in configured order; the
    /// proxy is up when one answered.
    pub fn set_backends(&self, probes: Vec<(String, bool)>) {
        for (uri, up) in &probes {
            gauge!("ldap_pam_proxy_backend_server_up", "uri" => uri.clone()).set(if *up {
                1.0
            } else {
                0.0
            });
        }
        self.set_backend_up(probes.iter().any(|(_, up)| *up));
        *self.backends.lock().unwrap_or_else(PoisonError::into_inner) = probes;
    }

    /// The last probe of each backend.
    pub fn backends(&self) -> Vec<(String, bool)> {
        self.backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The proxy stopped accepting connections (SIGTERM): not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Why the proxy cannot serve, one reason per line; empty when it can.
    pub fn unready_reasons(&self) -> String {
        // Every reason: the first may hide the next.
        let mut reasons = String::new();
        if self.draining() {
            reasons.push_str("shutting down\n");
        }
        if !self.backend_up() {
            reasons.push_str("no backend answers\n");
        }
        if let Some(problem) = self.directory_problem() {
            reasons.push_str(&format!("directory checks have not passed: {problem}\n"));
        }
        reasons
    }

    /// Puts in force the directory checks' outcome for the configuration identified by
    /// `config` (any value unique to it while it is in force, e.g. its address):
    /// `problem` is why they have not passed, `None` when they have.
    pub fn set_directory(&self, config: usize, problem: Option<String>) {
        let mut d = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *d = DirectoryChecks { config, problem };
    }

    /// As [`Health::set_directory`], unless another configuration came into force since
    /// the check began (a reload ran its own). Returns whether the outcome changed.
    pub fn update_directory(&self, config: usize, problem: Option<String>) -> bool {
        let mut d = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if d.config != config || d.problem == problem {
            return false;
        }
        d.problem = problem;
        true
    }

    /// Why the directory checks of the configuration in force have not passed.
    pub fn directory_problem(&self) -> Option<String> {
        self.directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .problem
            .clone()
    }
}

/// Publishes the pool's state as gauges (done at scrape time: the pool keeps atomics).
fn pool_gauges(s: &PoolStats) {
    gauge!("ldap_pam_proxy_pam_workers", "state" => "busy").set(s.busy as f64);
    gauge!("ldap_pam_proxy_pam_workers", "state" => "stuck").set(s.stuck as f64);
    gauge!("ldap_pam_proxy_pam_workers_capacity").set(s.capacity as f64);
    gauge!("ldap_pam_proxy_pam_worker_threads").set(s.threads as f64);
    gauge!("ldap_pam_proxy_pam_queue_depth").set(s.queued as f64);
    gauge!("ldap_pam_proxy_pam_queue_capacity").set(s.queue_capacity as f64);
}

/// Most connections the metrics endpoint serves at once; more are closed at once and
/// counted. Scrapers and balancer checks need a few; each gets [`METRICS_READ_TIMEOUT`]
/// to send its request and [`METRICS_ANSWER_TIMEOUT`] in all.
pub const METRICS_MAX_CONNECTIONS: usize = 32;
pub const METRICS_READ_TIMEOUT: Duration = Duration::from_secs(2);
pub const METRICS_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    stats: impl Fn() -> PoolStats + Send + Sync + 'static,
    health: std::sync::Arc<Health>,
) {
    let stats = std::sync::Arc::new(stats);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            metrics_connection_refused();
            drop(stream);
            continue;
        };
        let (handle, stats, health) = (handle.clone(), stats.clone(), health.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                METRICS_ANSWER_TIMEOUT,
                answer(stream, &handle, &*stats, &health),
            )
            .await;
            drop(slot);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    stats: &(dyn Fn() -> PoolStats + Send + Sync),
    health: &Health,
) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let read = async {
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            if stream.read_buf(&mut req).await? == 0 {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(METRICS_READ_TIMEOUT, read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/metrics" => {
            let s = stats();
            pool_gauges(&s);
            ("200 OK", handle.render())
        }
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/readyz" => {
            let reasons = health.unready_reasons();
            let ready = reasons.is_empty();
            let mut body = if ready { "ready\n".to_owned() } else { reasons };
            // What clients can fill is said, never a reason to leave the rotation.
            let s = stats();
            body.push_str(&format!(
                "pam: {} of {} workers busy ({} stuck), {} of {} queued\n",
                s.busy, s.capacity, s.stuck, s.queued, s.queue_capacity
            ));
            for (uri, up) in health.backends() {
                body.push_str(&format!(
                    "backend {uri}: {}\n",
                    if up { "answers" } else { "does not answer" }
                ));
            }
            if ready {
                ("200 OK", body)
            } else {
                ("503 Service Unavailable", body)
            }
        }
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
