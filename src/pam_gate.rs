//! The gate in front of the PAM pool (DESIGN §3): one push per login, however the
//! client retries, and never a flood of pushes for one user.
//!
//! - **Coalescing.** Identical binds (same route, identity and password) share one PAM
//!   transaction: a retry joins the transaction in flight, or one that finished less than
//!   `pam.coalesce_grace` ago, instead of starting another. This is what turns sssd's
//!   abandon-and-retry every 8 s into a single Duo push.
//! - **Push-fatigue guard.** Per identity, one transaction in flight at a time (a bind with
//!   a different password gets busy at once rather than queueing a second push), and at
//!   most `pam.max_attempts_per_minute` started per minute.
//! - **Per-route concurrency.** `max_concurrent` workers at most per route, so a slow
//!   service cannot take every worker from a fast one; binds beyond it wait their turn.
//! - **Success cache** (opt-in per route).
//!
//! Transactions are driven by their own task, not by the bind that started them: a client
//! that leaves does not cancel PAM (libpam cannot be cancelled), and its result still
//! serves every waiter. Binds are identified by a keyed hash (HMAC-SHA-256 with a key
//! made at start) of the route, identity and password; the password is never a key.

use crate::config::{PamConfig, Route};
use crate::metrics;
use crate::pam_pool::{PamOutcome, PamPool, PamRequest, PamTicket, PoolError, TicketResult};
use crate::secret::Password;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Why a bind got no PAM transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The pool's queue is full.
    QueueFull,
    ShutDown,
    /// Another transaction for this identity (with another password) is in flight.
    InFlight,
    /// `max_attempts_per_minute` reached for this identity.
    RateLimited,
}

/// The result of asking the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Done(TicketResult),
    Rejected(Rejection),
}

type Key = [u8; 32];

/// A transaction others may join: its result, once known.
type Joinable = watch::Receiver<Option<TicketResult>>;

#[derive(Default)]
struct State {
    inflight: HashMap<Key, Joinable>,
    /// Per identity: the transaction in flight (if any) and recent start times.
    identities: HashMap<String, Recent>,
    cache: HashMap<Key, Instant>,
}

#[derive(Default)]
struct Recent {
    running: Option<Key>,
    starts: VecDeque<Instant>,
}

/// See the module documentation.
pub struct PamGate {
    pool: Arc<PamPool>,
    secret: Key,
    settings: Mutex<Settings>,
    state: Arc<Mutex<State>>,
}

/// What a configuration reload may change.
struct Settings {
    max_per_minute: usize,
    grace: Duration,
    /// Per capped route: (its cap, the slots). Kept across reloads while the cap stays,
    /// so transactions in flight keep counting against it.
    route_slots: HashMap<String, (usize, Arc<Semaphore>)>,
}

impl Settings {
    fn new(pam: &PamConfig, routes: &[Route], old: Option<&Settings>) -> Settings {
        let route_slots = routes
            .iter()
            .filter_map(|r| {
                let cap = r.max_concurrent?;
                let kept = old
                    .and_then(|o| o.route_slots.get(&r.name))
                    .filter(|(n, _)| *n == cap)
                    .map(|(_, s)| Arc::clone(s));
                Some((
                    r.name.clone(),
                    (cap, kept.unwrap_or_else(|| Arc::new(Semaphore::new(cap)))),
                ))
            })
            .collect();
        Settings {
            max_per_minute: pam.max_attempts_per_minute,
            grace: pam.coalesce_grace,
            route_slots,
        }
    }
}

impl PamGate {
    /// A gate over `pool` for these routes.
    pub fn new(pool: Arc<PamPool>, pam: &PamConfig, routes: &[Route]) -> std::io::Result<Self> {
        let mut secret = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
        Ok(PamGate {
            pool,
            secret,
            settings: Mutex::new(Settings::new(pam, routes, None)),
            state: Arc::default(),
        })
    }

    /// Takes the guard settings and route caps of a reloaded configuration; transactions
    /// in flight, and the grace windows of finished ones, carry on.
    pub fn reconfigure(&self, pam: &PamConfig, routes: &[Route]) {
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        *settings = Settings::new(pam, routes, Some(&settings));
    }

    /// The pool behind the gate.
    pub fn pool(&self) -> &PamPool {
        &self.pool
    }

    /// The PAM service is part of the key along with the route: a reload may point a
    /// route elsewhere, and a result from the old service must not answer for the new.
    fn key(&self, route: &Route, identity: &str, password: &Password) -> Key {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        let parts = [
            route.name.as_bytes(),
            route.pam_service.as_bytes(),
            identity.as_bytes(),
            password.as_bytes(),
        ];
        for part in parts {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Authenticates `identity` with `password` through `route`'s PAM service, joining an
    /// identical transaction when there is one. Waits at most `route.timeout`.
    pub async fn authenticate(
        &self,
        route: &Route,
        identity: &str,
        password: Password,
        rhost: Option<String>,
    ) -> Attempt {
        let deadline = tokio::time::Instant::now() + route.timeout;
        let key = self.key(route, identity, &password);
        let max_per_minute = self
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max_per_minute;
        let joined = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if let Some(expiry) = st.cache.get(&key) {
                if *expiry > now {
                    metrics::success_cache_hit();
                    return Attempt::Done(TicketResult::Completed(PamOutcome::Success));
                }
                st.cache.remove(&key);
            }
            if let Some(rx) = st.inflight.get(&key) {
                metrics::bind_coalesced();
                rx.clone()
            } else {
                let recent = st.identities.entry(identity.to_owned()).or_default();
                while recent
                    .starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
                {
                    recent.starts.pop_front();
                }
                let refusal = if recent.running.is_some() {
                    Some(Rejection::InFlight)
                } else if recent.starts.len() >= max_per_minute {
                    Some(Rejection::RateLimited)
                } else {
                    None
                };
                if let Some(r) = refusal {
                    metrics::bind_rate_limited(match r {
                        Rejection::InFlight => "in_flight",
                        _ => "rate",
                    });
                    return Attempt::Rejected(r);
                }
                recent.running = Some(key);
                recent.starts.push_back(now);
                if st.identities.len() > 4096 {
                    // Identities that have not come back within the minute.
                    st.identities.retain(|_, r| {
                        r.running.is_some()
                            || r.starts
                                .back()
                                .is_some_and(|t| now.duration_since(*t) <= Duration::from_secs(60))
                    });
                }
                let (tx, rx) = watch::channel(None);
                st.inflight.insert(key, rx.clone());
                drop(st);
                let request = PamRequest {
                    service: route.pam_service.clone(),
                    identity: identity.to_owned(),
                    password,
                    rhost,
                    passcode_delimiter: route.passcode_delimiter.clone(),
                };
                if let Some(rejection) = self.start(route, key, request, tx) {
                    return Attempt::Rejected(rejection);
                }
                rx
            }
        };
        wait(joined, deadline).await
    }

    /// Starts the task that drives one transaction to its end; `Some` when it could not
    /// even be queued (then nothing is left behind in the state).
    fn start(
        &self,
        route: &Route,
        key: Key,
        request: PamRequest,
        tx: watch::Sender<Option<TicketResult>>,
    ) -> Option<Rejection> {
        let identity = request.identity.clone();
        let service = request.service.clone();
        let timeout = route.timeout;
        let cache_for = route.success_cache;
        let (grace, slot) = {
            let settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = settings
                .route_slots
                .get(&route.name)
                .map(|(_, s)| Arc::clone(s));
            (settings.grace, slot)
        };
        let (state, pool) = (Arc::clone(&self.state), Arc::clone(&self.pool));
        // An uncapped route submits now, so a full queue is reported to the bind at once;
        // a capped route submits when one of its slots frees.
        let queued = match slot {
            Some(slot) => Queued::ForSlot(slot, request),
            None => match pool.submit(request, timeout) {
                Ok(ticket) => Queued::InPool(ticket),
                Err(e) => {
                    forget(&state, &identity, &key, false);
                    return Some(match e {
                        PoolError::QueueFull => Rejection::QueueFull,
                        PoolError::ShutDown => Rejection::ShutDown,
                    });
                }
            },
        };
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match queued {
                Queued::InPool(ticket) => ticket.wait_for_worker().await,
                Queued::ForSlot(slot, request) => {
                    match tokio::time::timeout(timeout, slot.acquire_owned()).await {
                        Ok(Ok(_permit)) => {
                            match pool.submit(request, timeout.saturating_sub(started.elapsed())) {
                                // The permit lives until libpam returns, deadline or not.
                                Ok(ticket) => ticket.wait_for_worker().await,
                                Err(e) => TicketResult::Completed(PamOutcome::Unavailable {
                                    reason: e.to_string(),
                                }),
                            }
                        }
                        _ => TicketResult::DeadlinePassed,
                    }
                }
            };
            metrics::pam_transaction(
                &service,
                outcome_label(&result),
                started.elapsed().as_secs_f64(),
            );
            // Only a decision is worth repeating to a retry; a transient failure is not.
            let decisive = matches!(
                result,
                TicketResult::Completed(ref o) if !matches!(o, PamOutcome::Unavailable { .. })
            );
            if let (Some(ttl), TicketResult::Completed(PamOutcome::Success)) = (cache_for, &result)
            {
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                st.cache.retain(|_, expiry| *expiry > now);
                st.cache.insert(key, now + ttl);
            }
            let _ = tx.send(Some(result));
            forget(&state, &identity, &key, decisive);
            if decisive {
                tokio::time::sleep(grace).await;
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                st.inflight.remove(&key);
            }
        });
        None
    }
}

/// Where a new transaction waits before a worker runs it.
enum Queued {
    InPool(PamTicket),
    /// For one of its route's `max_concurrent` slots.
    ForSlot(Arc<Semaphore>, PamRequest),
}

/// The transaction for `key` has ended: the identity may start another. Unless `keep`,
/// retries can no longer join it either.
fn forget(state: &Mutex<State>, identity: &str, key: &Key, keep: bool) {
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(recent) = st.identities.get_mut(identity) {
        if recent.running == Some(*key) {
            recent.running = None;
        }
        if recent.running.is_none() && recent.starts.is_empty() {
            st.identities.remove(identity);
        }
    }
    if !keep {
        st.inflight.remove(key);
    }
}

/// A metrics label for a transaction's result.
fn outcome_label(r: &TicketResult) -> &'static str {
    match r {
        TicketResult::DeadlinePassed => "deadline",
        TicketResult::Completed(o) => match o {
            PamOutcome::Success => "success",
            PamOutcome::AuthFailed => "auth_err",
            PamOutcome::UserUnknown => "user_unknown",
            PamOutcome::CredentialsError => "cred_err",
            PamOutcome::MaxTries => "maxtries",
            PamOutcome::PermissionDenied => "perm_denied",
            PamOutcome::AccountExpired => "acct_expired",
            PamOutcome::NewAuthtokRequired => "new_authtok_reqd",
            PamOutcome::Unavailable { .. } => "unavailable",
        },
    }
}

async fn wait(mut rx: Joinable, deadline: tokio::time::Instant) -> Attempt {
    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => Attempt::Done(v.clone().unwrap_or(TicketResult::DeadlinePassed)),
        // The driver ended without a result: only possible if its task was cancelled at
        // runtime shutdown.
        Ok(Err(_)) => Attempt::Rejected(Rejection::ShutDown),
        Err(_) => Attempt::Done(TicketResult::DeadlinePassed),
    }
}
