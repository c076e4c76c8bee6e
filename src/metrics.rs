//! Metrics in Prometheus text format, and the health endpoints, on `[metrics] listen`:
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (a backend answers, the
//! directory checks of the configuration in force have passed, and the PAM queue has room).
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

/// A backend connection attempt that found no backend.
pub fn backend_connect_failed() {
    counter!("ldap_pam_proxy_backend_connect_failures_total").increment(1);
}

/// A configuration reload (`result`: ok, refused).
pub fn reload(result: &'static str) {
    counter!("ldap_pam_proxy_config_reloads_total", "result" => result).increment(1);
}

/// What `/readyz` and the backend gauge report.
#[derive(Default)]
pub struct Health {
    backend_up: AtomicBool,
    directory: Mutex<DirectoryChecks>,
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

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    stats: impl Fn() -> PoolStats + Send + Sync + 'static,
    health: std::sync::Arc<Health>,
) {
    let stats = std::sync::Arc::new(stats);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (handle, stats, health) = (handle.clone(), stats.clone(), health.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                answer(stream, &handle, &*stats, &health),
            )
            .await;
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
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        if stream.read_buf(&mut req).await? == 0 {
            break;
        }
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
            let s = stats();
            // Every reason, one per line: the first may hide the next.
            let mut reasons = String::new();
            if !health.backend_up() {
                reasons.push_str("no backend answers\n");
            }
            if let Some(problem) = health.directory_problem() {
                reasons.push_str(&format!("directory checks have not passed: {problem}\n"));
            }
            if s.queued >= s.queue_capacity {
                reasons.push_str("PAM queue full\n");
            }
            if reasons.is_empty() {
                ("200 OK", "ready\n".to_owned())
            } else {
                ("503 Service Unavailable", reasons)
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
