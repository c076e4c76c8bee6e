//! The gate in front of the PAM pool (DESIGN §3): one push per login however the client
//! retries, never a flood of pushes for one user, and nothing an attacker holding a
//! password (or guessing one) can use.
//!
//! - **Coalescing, per client.** A bind shares a transaction only with binds identical in
//!   route, PAM service, entry, identity, password *and client address*: a retry joins the
//!   transaction in flight, or one that reached a decision less than `pam.coalesce_grace`
//!   ago, instead of starting another. This is what turns sssd's abandon-and-retry every
//!   8 s into a single Duo push. The address is part of the key because MFA exists to stop
//!   the holder of a stolen password: a bind from elsewhere must never ride on the push the
//!   user approved, nor on its grace window.
//! - **One transaction per entry.** Everything per user is keyed by the entry the
//!   directory resolved (its normalised DN, from the caller), not by the client's spelling
//!   of the DN nor by the PAM identity, so `uid=Bob` and `uid=bob` are one user. While a
//!   transaction for an entry runs, any other bind for it (another password, identity,
//!   route or address) is refused without reaching PAM; it still costs an attempt and is
//!   answered only when the running transaction ends (or its own deadline passes), so the
//!   refusal is neither free guessing nor a timing oracle.
//! - **Attempt budget per (entry, client address).** At most `pam.max_attempts_per_minute`
//!   attempts (transactions started and in-flight refusals) in any 60 s. Charging the
//!   address that asks, not the user, means a guesser is limited without being able to
//!   lock the user out of the addresses the user logs in from. IPv6 addresses are charged
//!   per /64, which one host normally holds whole. Joining an identical transaction and a
//!   success-cache hit cost nothing: they start no push.
//! - **Fair shares.** Transactions are submitted to the pool as their route's: no route
//!   can take every worker or every queue slot from another, and routes waiting for a
//!   worker are served in turn (see [`crate::pam_pool`]); `max_concurrent` caps a route
//!   further.
//! - **No push for nobody.** A transaction that is waiting for a worker is not started
//!   once no client has waited on it for `pam.coalesce_grace` (a retry within that time
//!   joins it, so sssd's retry every 8 s still finds it), nor when less of its deadline
//!   is left than the service's fastest recent success took: its client would get
//!   unavailable anyway, after a push nobody can answer in time. Both are counted in
//!   `ldap_pam_proxy_pam_transactions_skipped_total`.
//! - **Success cache** (opt-in per route), per client address like coalescing.
//!
//! Transactions are driven by their own task, not by the bind that started them: a client
//! that leaves does not cancel PAM (libpam cannot be cancelled), and its result still
//! serves every waiter. Binds are identified by a keyed hash (HMAC-SHA-256 with a key made
//! at start) of their parts; the password is never a key. Memory stays bounded: attempt
//! records older than a minute are swept, the records kept are capped (never dropping
//! those of an entry whose transaction is in flight), and the in-flight and grace tables
//! hold one record per transaction started, until its grace window ends.

use crate::config::{PamConfig, Route};
use crate::metrics;
use crate::pam_pool::{
    NotStarted, PamOutcome, PamPool, PamRequest, PamTicket, PoolError, StartCheck, TicketResult,
};
use crate::secret::Password;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The window of the attempt budget.
const WINDOW: Duration = Duration::from_secs(60);

/// Successes remembered per PAM service for "too little time left": the fastest of the
/// last this many.
const SPEED_SAMPLES: usize = 16;

/// Most (entry, client address) attempt records kept. A record is made only by an attempt
/// that started a transaction or was refused behind one, so filling this within a minute
/// takes that many attempts; past it the records idle longest are dropped.
const MAX_TRACKED: usize = 16_384;

/// Why a bind got no PAM transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The pool's queue is full.
    QueueFull,
    /// The pool no longer takes work.
    ShutDown,
    /// Another transaction for this entry is in flight; this bind waited for it to end
    /// (or for its own deadline) without reaching PAM, and was counted as an attempt.
    InFlight,
    /// `max_attempts_per_minute` reached for this entry from this client address.
    RateLimited,
}

/// The result of asking the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A transaction (this bind's, or an identical one it joined) ended, or the bind's
    /// deadline passed while it ran.
    Done(TicketResult),
    /// No transaction answered this bind.
    Rejected(Rejection),
}

/// One transaction for the pool.
pub struct Submission {
    /// The route it is for: the pool's fair shares and caps are per route.
    pub route: String,
    pub request: PamRequest,
    /// Counts from the submission; the pool drops a transaction that has not started by
    /// then.
    pub deadline: Duration,
    /// Asked when a worker is about to start it, with the time left before `deadline`.
    pub check: StartCheck,
}

/// What the gate needs from the PAM pool. [`PamPool`] is the one implementation outside
/// tests; the gate's own unit tests script one, so the gate's rules are tested without
/// libpam.
pub trait Submit: Send + Sync + 'static {
    /// Queues a transaction. The returned future resolves when it ends, however long
    /// that takes (callers apply their own deadlines), or with the reason it was dropped
    /// without starting.
    ///
    /// # Errors
    /// The pool could not take it; it is dropped with its password.
    fn submit(
        &self,
        job: Submission,
    ) -> Result<impl Future<Output = Result<PamOutcome, NotStarted>> + Send + 'static, PoolError>;

    /// The routes of the configuration in force, in order (fair shares, `max_concurrent`).
    fn set_routes(&self, routes: &[Route]);
}

impl Submit for PamPool {
    fn submit(
        &self,
        job: Submission,
    ) -> Result<impl Future<Output = Result<PamOutcome, NotStarted>> + Send + 'static, PoolError>
    {
        self.submit_to(&job.route, job.request, job.deadline, Some(job.check))
            .map(PamTicket::finished)
    }

    fn set_routes(&self, routes: &[Route]) {
        self.set_classes(routes.iter().map(|r| (r.name.as_str(), r.max_concurrent)));
    }
}

/// The clients waiting on one transaction, for "no push for nobody".
#[derive(Default)]
struct Waiters(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    /// Binds waiting for its result now.
    count: usize,
    /// When the last of them stopped waiting (its client left, or its deadline passed).
    last_left: Option<Instant>,
    /// The latest deadline of the binds that waited on it.
    deadline: Option<Instant>,
    /// When a worker started it.
    started: Option<Instant>,
}

/// One bind waiting on a transaction, for as long as it lives.
struct WaitGuard(Arc<Waiters>);

impl WaitGuard {
    /// A bind that waits until `deadline`.
    fn new(waiters: &Arc<Waiters>, deadline: Instant) -> WaitGuard {
        let mut w = lock(&waiters.0);
        w.count += 1;
        w.deadline = w.deadline.max(Some(deadline));
        drop(w);
        WaitGuard(Arc::clone(waiters))
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut w = lock(&self.0 .0);
        w.count -= 1;
        if w.count == 0 {
            w.last_left = Some(Instant::now());
        }
    }
}

/// Per PAM service, how long its last successes took, newest last.
type Speeds = Arc<Mutex<HashMap<String, VecDeque<Duration>>>>;

type Key = [u8; 32];

/// A transaction others may join, or wait for the end of: its result, once known.
type Joinable = watch::Receiver<Option<TicketResult>>;

/// Whose attempt budget an attempt is charged to: the entry and the client's source
/// (see [`source`]).
type Who = (String, IpAddr);

struct State {
    /// Transactions identical binds may join: in flight, or decided less than the grace
    /// window ago; with the binds waiting on them.
    joinable: HashMap<Key, (Joinable, Arc<Waiters>)>,
    /// Per entry, the transaction in flight.
    running: HashMap<String, Running>,
    /// Per (entry, source), the attempts of the last minute, oldest first.
    budgets: HashMap<Who, VecDeque<Instant>>,
    /// Keys of successful binds, until their expiry.
    cache: HashMap<Key, Instant>,
    /// When the next full sweep of expired records is due.
    next_sweep: Instant,
    /// Most budget records kept ([`MAX_TRACKED`]; a field so tests can make it small).
    cap: usize,
}

/// The transaction in flight for an entry.
struct Running {
    key: Key,
    /// Refused binds wait on it, so that a refusal takes as long as an attempt.
    done: Joinable,
}

impl State {
    fn new(now: Instant) -> State {
        State {
            joinable: HashMap::new(),
            running: HashMap::new(),
            budgets: HashMap::new(),
            cache: HashMap::new(),
            next_sweep: now + WINDOW,
            cap: MAX_TRACKED,
        }
    }

    /// Once a minute, drops what has expired, so that records of users and addresses that
    /// never come back do not stay.
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + WINDOW;
        self.budgets.retain(|_, attempts| {
            forget_old(attempts, now);
            !attempts.is_empty()
        });
        self.cache.retain(|_, expiry| *expiry > now);
    }

    fn cached(&mut self, key: &Key, now: Instant) -> bool {
        match self.cache.get(key) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                self.cache.remove(key);
                false
            }
            None => false,
        }
    }

    /// Attempts `who` made in the last minute.
    fn attempts(&mut self, who: &Who, now: Instant) -> usize {
        self.budgets.get_mut(who).map_or(0, |attempts| {
            forget_old(attempts, now);
            attempts.len()
        })
    }

    fn charge(&mut self, who: Who, now: Instant) {
        if !self.budgets.contains_key(&who) && self.budgets.len() >= self.cap {
            self.make_room(now);
        }
        self.budgets.entry(who).or_default().push_back(now);
    }

    /// Drops expired records and, if that is not enough, the records idle longest, down
    /// to three quarters of the cap so that this runs rarely. Records of an entry with a
    /// transaction in flight stay: its refusals must keep counting.
    fn make_room(&mut self, now: Instant) {
        self.budgets.retain(|_, attempts| {
            forget_old(attempts, now);
            !attempts.is_empty()
        });
        let excess = self.budgets.len().saturating_sub(self.cap - self.cap / 4);
        if excess == 0 {
            return;
        }
        let mut idle: Vec<(Instant, &Who)> = self
            .budgets
            .iter()
            .filter(|((entry, _), _)| !self.running.contains_key(entry))
            .filter_map(|(who, attempts)| attempts.back().map(|last| (*last, who)))
            .collect();
        idle.sort_unstable_by_key(|(last, _)| *last);
        let evicted: Vec<Who> = idle
            .into_iter()
            .take(excess)
            .map(|(_, who)| who.clone())
            .collect();
        for who in evicted {
            self.budgets.remove(&who);
        }
    }
}

/// Drops attempts older than the window.
fn forget_old(attempts: &mut VecDeque<Instant>, now: Instant) {
    while attempts
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        attempts.pop_front();
    }
}

/// The source an attempt is charged to: the client's address, with IPv4-mapped IPv6
/// read as IPv4, and IPv6 cut to its /64 — a host normally gets a whole /64, so per
/// address an IPv6 attacker could multiply its budget at will.
fn source(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// See the module documentation.
pub struct PamGate<P = PamPool> {
    pool: Arc<P>,
    secret: [u8; 64],
    settings: Mutex<Settings>,
    state: Arc<Mutex<State>>,
    speeds: Speeds,
}

/// What a configuration reload may change.
struct Settings {
    max_per_minute: usize,
    grace: Duration,
}

impl Settings {
    fn new(pam: &PamConfig) -> Settings {
        Settings {
            max_per_minute: pam.max_attempts_per_minute,
            grace: pam.coalesce_grace,
        }
    }
}

/// What the gate decided for a bind, before any waiting.
enum Decision {
    /// The success cache answered.
    Cached,
    /// Wait for this transaction's result (one this bind started or joined), counted
    /// among its waiters while it has not started.
    Wait(Joinable, WaitGuard),
    /// Refused behind the entry's transaction in flight: wait for its end, then refuse.
    Refuse(Joinable),
    Rejected(Rejection),
}

impl<P: Submit> PamGate<P> {
    /// A gate over `pool` for these routes.
    ///
    /// # Errors
    /// The hashing key could not be read from `/dev/urandom`.
    pub fn new(pool: Arc<P>, pam: &PamConfig, routes: &[Route]) -> std::io::Result<Self> {
        let mut secret = [0u8; 64];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
        pool.set_routes(routes);
        Ok(PamGate {
            pool,
            secret,
            settings: Mutex::new(Settings::new(pam)),
            state: Arc::new(Mutex::new(State::new(Instant::now()))),
            speeds: Speeds::default(),
        })
    }

    /// Takes the guard settings and routes of a reloaded configuration; transactions in
    /// flight, the grace windows of finished ones and the attempt records carry on.
    pub fn reconfigure(&self, pam: &PamConfig, routes: &[Route]) {
        *lock(&self.settings) = Settings::new(pam);
        self.pool.set_routes(routes);
    }

    /// The pool behind the gate.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The PAM service is part of the key along with the route: a reload may point a
    /// route elsewhere, and a result from the old service must not answer for the new.
    /// The client address is part of it so that no bind reuses another client's push.
    fn key(
        &self,
        route: &Route,
        entry: &str,
        identity: &str,
        password: &Password,
        client: IpAddr,
    ) -> Key {
        // A 64-byte key is exactly HMAC-SHA-256's block, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.secret.into());
        let client = client.to_canonical().to_string();
        let parts = [
            route.name.as_bytes(),
            route.pam_service.as_bytes(),
            entry.as_bytes(),
            identity.as_bytes(),
            password.as_bytes(),
            client.as_bytes(),
        ];
        for part in parts {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Authenticates `identity` with `password` through `route`'s PAM service for the
    /// directory entry `entry` (its normalised DN: the per-user guard and budget are
    /// keyed on it), on behalf of `client` (PAM_RHOST). Joins an identical transaction
    /// of the same client when there is one. Waits at most `route.timeout`.
    pub async fn authenticate(
        &self,
        route: &Route,
        entry: &str,
        identity: &str,
        password: Password,
        client: IpAddr,
    ) -> Attempt {
        let deadline = Instant::now() + route.timeout;
        match self.decide(route, entry, identity, password, client, deadline) {
            Decision::Cached => Attempt::Done(TicketResult::Completed(PamOutcome::Success)),
            Decision::Wait(rx, _waiting) => wait(rx, deadline).await,
            Decision::Refuse(mut running) => {
                // Whatever ends the wait (result, deadline, shutdown), the answer is the
                // same refusal.
                let _ = tokio::time::timeout_at(deadline, running.wait_for(Option::is_some)).await;
                Attempt::Rejected(Rejection::InFlight)
            }
            Decision::Rejected(r) => Attempt::Rejected(r),
        }
    }

    /// Whether `client` has spent its attempt budget for `entry`. The directory decides
    /// some binds in the proxy's scope (an entry no route takes, a DN with no entry): they
    /// are refused busy then too, so that a busy answer tells nothing about whether PAM
    /// would have been asked, and directory passwords are no easier to guess.
    pub fn budget_spent(&self, entry: &str, client: IpAddr) -> bool {
        let max_per_minute = lock(&self.settings).max_per_minute;
        let spent = lock(&self.state).attempts(&(entry.to_owned(), source(client)), Instant::now())
            >= max_per_minute;
        if spent {
            metrics::bind_rate_limited("rate");
        }
        spent
    }

    /// Charges a failed bind the directory decided (see [`PamGate::budget_spent`]).
    /// Successes are not charged: an application account binding often is not guessing.
    pub fn charge_failure(&self, entry: &str, client: IpAddr) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        st.sweep(now);
        st.charge((entry.to_owned(), source(client)), now);
    }

    /// Applies the rules under one lock, so that two binds never both see an entry
    /// free; starts the transaction when the bind gets one.
    fn decide(
        &self,
        route: &Route,
        entry: &str,
        identity: &str,
        password: Password,
        client: IpAddr,
        deadline: Instant,
    ) -> Decision {
        let key = self.key(route, entry, identity, &password, client);
        let (max_per_minute, grace) = {
            let settings = lock(&self.settings);
            (settings.max_per_minute, settings.grace)
        };
        let now = Instant::now();
        let who = (entry.to_owned(), source(client));
        let mut st = lock(&self.state);
        st.sweep(now);
        if st.cached(&key, now) {
            metrics::success_cache_hit();
            return Decision::Cached;
        }
        if let Some((rx, waiters)) = st.joinable.get(&key) {
            metrics::bind_coalesced();
            return Decision::Wait(rx.clone(), WaitGuard::new(waiters, deadline));
        }
        if st.attempts(&who, now) >= max_per_minute {
            metrics::bind_rate_limited("rate");
            return Decision::Rejected(Rejection::RateLimited);
        }
        if let Some(running) = st.running.get(entry) {
            let done = running.done.clone();
            st.charge(who, now);
            metrics::bind_rate_limited("in_flight");
            return Decision::Refuse(done);
        }
        let request = PamRequest {
            service: route.pam_service.clone(),
            identity: identity.to_owned(),
            password,
            rhost: Some(client.to_string()),
            passcode_delimiter: route.passcode_delimiter.clone(),
        };
        let (tx, rx) = watch::channel(None);
        let waiters = Arc::new(Waiters::default());
        // Counted before the pool can ask about it.
        let waiting = WaitGuard::new(&waiters, deadline);
        let driver = Driver {
            state: Arc::clone(&self.state),
            tx,
            entry: entry.to_owned(),
            key,
            service: route.pam_service.clone(),
            grace,
            cache_for: route.success_cache,
            waiters: Arc::clone(&waiters),
            speeds: Arc::clone(&self.speeds),
        };
        let job = Submission {
            route: route.name.clone(),
            request,
            deadline: route.timeout,
            check: start_check(Arc::clone(&waiters), Arc::clone(&self.speeds), route, grace),
        };
        // Submitted now, so a full queue is reported to the bind at once and costs it
        // nothing.
        match self.pool.submit(job) {
            Ok(transaction) => {
                tokio::spawn(driver.run(transaction));
            }
            Err(e) => {
                return Decision::Rejected(match e {
                    PoolError::QueueFull => Rejection::QueueFull,
                    PoolError::ShutDown => Rejection::ShutDown,
                })
            }
        }
        // The driver needs this lock to finish, so it cannot end before these are in.
        st.charge(who, now);
        st.running.insert(
            entry.to_owned(),
            Running {
                key,
                done: rx.clone(),
            },
        );
        st.joinable.insert(key, (rx.clone(), waiters));
        Decision::Wait(rx, waiting)
    }
}

/// Whether a worker may start a transaction of `route` now:
///
/// - not when no client has waited on it for `grace`: an identical retry within that time
///   joins it (sssd retries within 8 s), so until then it stays wanted;
/// - not when its waiters' latest deadline is nearer than the service's fastest recent
///   success took: they would get unavailable anyway, after a push nobody can answer in
///   time. Only when that success was within the route's timeout, so that a slow service
///   is never kept from running at all (and from showing it got faster).
///
/// The pool's own deadline (the first bind's) is not what counts here: retries that
/// joined wait longer.
fn start_check(
    waiters: Arc<Waiters>,
    speeds: Speeds,
    route: &Route,
    grace: Duration,
) -> StartCheck {
    let (service, timeout) = (route.pam_service.clone(), route.timeout);
    Box::new(move |_pool_left| {
        let now = Instant::now();
        let mut w = lock(&waiters.0);
        if w.count == 0 {
            if w.last_left
                .is_some_and(|t| now.saturating_duration_since(t) >= grace)
            {
                return Err(NotStarted::Abandoned);
            }
        } else {
            let left = w
                .deadline
                .map_or(timeout, |d| d.saturating_duration_since(now));
            let fastest = lock(&speeds)
                .get(&service)
                .and_then(|d| d.iter().min().copied());
            if fastest.is_some_and(|fastest| fastest <= timeout && left < fastest) {
                return Err(NotStarted::TooLate);
            }
        }
        w.started = Some(now);
        Ok(())
    })
}

/// Drives one transaction to its end, then hands its result to every waiter and frees
/// the entry.
struct Driver {
    state: Arc<Mutex<State>>,
    tx: watch::Sender<Option<TicketResult>>,
    entry: String,
    key: Key,
    service: String,
    grace: Duration,
    cache_for: Option<Duration>,
    waiters: Arc<Waiters>,
    speeds: Speeds,
}

impl Driver {
    async fn run(self, transaction: impl Future<Output = Result<PamOutcome, NotStarted>>) {
        let submitted = Instant::now();
        let end = transaction.await;
        let result = match end {
            Ok(outcome) => {
                let now = Instant::now();
                let started = lock(&self.waiters.0).started.unwrap_or(submitted);
                let took = now.saturating_duration_since(started);
                if outcome == PamOutcome::Success {
                    let mut speeds = lock(&self.speeds);
                    let recent = speeds.entry(self.service.clone()).or_default();
                    if recent.len() == SPEED_SAMPLES {
                        recent.pop_front();
                    }
                    recent.push_back(took);
                }
                let result = TicketResult::Completed(outcome);
                metrics::pam_transaction(&self.service, outcome_label(&result), took.as_secs_f64());
                result
            }
            // Its waiters, if any, get unavailable, as when a deadline passes.
            Err(why) => {
                metrics::pam_transaction_skipped(why.label());
                TicketResult::DeadlinePassed
            }
        };
        // Only a decision is worth repeating to a retry; a transient failure is not.
        let decisive = matches!(
            result,
            TicketResult::Completed(ref o) if !matches!(o, PamOutcome::Unavailable { .. })
        );
        {
            let mut st = lock(&self.state);
            let now = Instant::now();
            if let (Some(ttl), TicketResult::Completed(PamOutcome::Success)) =
                (self.cache_for, &result)
            {
                st.cache.retain(|_, expiry| *expiry > now);
                st.cache.insert(self.key, now + ttl);
            }
            // Under the lock, so that a bind arriving now finds the entry either busy or
            // free with this result in place, never busy with the result already known.
            self.tx.send_replace(Some(result));
            if st
                .running
                .get(&self.entry)
                .is_some_and(|r| r.key == self.key)
            {
                st.running.remove(&self.entry);
            }
            if !decisive {
                st.joinable.remove(&self.key);
            }
        }
        if decisive {
            tokio::time::sleep(self.grace).await;
            lock(&self.state).joinable.remove(&self.key);
        }
    }
}

/// Locks, carrying on after a panic elsewhere: every update of the guarded maps is
/// complete before anything that could panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

async fn wait(mut rx: Joinable, deadline: Instant) -> Attempt {
    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => Attempt::Done(v.clone().unwrap_or(TicketResult::DeadlinePassed)),
        // The driver ended without a result: only possible if its task was cancelled at
        // runtime shutdown.
        Ok(Err(_)) => Attempt::Rejected(Rejection::ShutDown),
        Err(_) => Attempt::Done(TicketResult::DeadlinePassed),
    }
}

#[cfg(test)]
mod tests {
    //! The gate's rules against a scripted pool, under tokio's paused clock: a minute of
    //! binds runs in milliseconds, and durations are exact.

    use super::*;
    use crate::config::IdMap;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;
    use tokio::time::sleep;

    /// (identity, PAM_RHOST) of a transaction.
    type Started = (String, Option<String>);

    /// A pool whose transactions each take `delay`; the password says how one ends. Its
    /// workers take waiting transactions in the order they came, asking each one's start
    /// check first, as the real pool does.
    struct Fake {
        delay: Mutex<Duration>,
        full: AtomicBool,
        /// (identity, PAM_RHOST) of every transaction started.
        started: Arc<Mutex<Vec<Started>>>,
        workers: Arc<Semaphore>,
    }

    impl Default for Fake {
        fn default() -> Fake {
            Fake {
                delay: Mutex::default(),
                full: AtomicBool::default(),
                started: Arc::default(),
                workers: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            }
        }
    }

    impl Fake {
        fn count(&self) -> usize {
            lock(&self.started).len()
        }
    }

    impl Submit for Fake {
        fn submit(
            &self,
            job: Submission,
        ) -> Result<impl Future<Output = Result<PamOutcome, NotStarted>> + Send + 'static, PoolError>
        {
            if self.full.load(Relaxed) {
                return Err(PoolError::QueueFull);
            }
            let Submission {
                request,
                deadline,
                check,
                ..
            } = job;
            let who = (request.identity.clone(), request.rhost.clone());
            let outcome = match request.password.as_bytes() {
                b"right" => PamOutcome::Success,
                b"down" => PamOutcome::Unavailable {
                    reason: "scripted".into(),
                },
                _ => PamOutcome::AuthFailed,
            };
            drop(request);
            let delay = *lock(&self.delay);
            let deadline = Instant::now() + deadline;
            let (started, workers) = (Arc::clone(&self.started), Arc::clone(&self.workers));
            Ok(async move {
                let _worker = workers.acquire_owned().await.expect("workers");
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(NotStarted::Expired);
                }
                check(left)?;
                lock(&started).push(who);
                sleep(delay).await;
                Ok(outcome)
            })
        }

        fn set_routes(&self, _routes: &[Route]) {}
    }

    /// Counts the counters the gate increments. Installed for the test's thread, which
    /// runs every task of a `#[tokio::test]`.
    #[derive(Default)]
    struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

    impl Counters {
        fn get(&self, name: &str) -> u64 {
            lock(&self.0).get(name).map_or(0, |c| c.load(Relaxed))
        }
    }

    impl ::metrics::Recorder for Counters {
        fn describe_counter(
            &self,
            _: ::metrics::KeyName,
            _: Option<::metrics::Unit>,
            _: ::metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: ::metrics::KeyName,
            _: Option<::metrics::Unit>,
            _: ::metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: ::metrics::KeyName,
            _: Option<::metrics::Unit>,
            _: ::metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &::metrics::Key,
            _: &::metrics::Metadata<'_>,
        ) -> ::metrics::Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            ::metrics::Counter::from_arc(Arc::clone(lock(&self.0).entry(name).or_default()))
        }
        fn register_gauge(
            &self,
            _: &::metrics::Key,
            _: &::metrics::Metadata<'_>,
        ) -> ::metrics::Gauge {
            ::metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &::metrics::Key,
            _: &::metrics::Metadata<'_>,
        ) -> ::metrics::Histogram {
            ::metrics::Histogram::noop()
        }
    }

    const IN_FLIGHT: &str = "ldap_pam_proxy_binds_rate_limited_total{reason=\"in_flight\"}";
    const RATE: &str = "ldap_pam_proxy_binds_rate_limited_total{reason=\"rate\"}";

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    const C: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    const ALICE: &str = "uid=alice,ou=people,dc=example,dc=com";
    const BOB: &str = "uid=bob,ou=people,dc=example,dc=com";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn success() -> Attempt {
        Attempt::Done(TicketResult::Completed(PamOutcome::Success))
    }

    fn auth_failed() -> Attempt {
        Attempt::Done(TicketResult::Completed(PamOutcome::AuthFailed))
    }

    fn refused(r: Rejection) -> Attempt {
        Attempt::Rejected(r)
    }

    fn pam(max_attempts_per_minute: usize, grace: Duration) -> PamConfig {
        PamConfig {
            workers: 4,
            queue: 4,
            max_attempts_per_minute,
            coalesce_grace: grace,
            duo_config_check: crate::config::DuoConfigCheck::Enforce,
        }
    }

    fn route(tweak: impl FnOnce(&mut Route)) -> Route {
        let mut r = Route {
            name: "duo".into(),
            filter: None,
            pam_service: "duo".into(),
            id_map: vec![IdMap::Rdn],
            id_attr: "uid".into(),
            rdn_attr: "uid".into(),
            fallback: false,
            secure: false,
            timeout: secs(120),
            include_suffixes: Vec::new(),
            exclude_suffixes: Vec::new(),
            passcode_delimiter: None,
            max_concurrent: None,
            success_cache: None,
        };
        tweak(&mut r);
        r
    }

    struct Setup {
        gate: Arc<PamGate<Fake>>,
        route: Arc<Route>,
    }

    impl Setup {
        /// Transactions take `delay`.
        fn new(pam: PamConfig, route: Route, delay: Duration) -> Setup {
            Setup::with_workers(pam, route, delay, Semaphore::MAX_PERMITS)
        }

        /// As [`Setup::new`], with at most `workers` transactions running at once.
        fn with_workers(pam: PamConfig, route: Route, delay: Duration, workers: usize) -> Setup {
            let fake = Fake {
                delay: Mutex::new(delay),
                workers: Arc::new(Semaphore::new(workers)),
                ..Fake::default()
            };
            let gate =
                PamGate::new(Arc::new(fake), &pam, std::slice::from_ref(&route)).expect("urandom");
            Setup {
                gate: Arc::new(gate),
                route: Arc::new(route),
            }
        }

        fn pool(&self) -> &Fake {
            self.gate.pool()
        }

        /// Starts a bind in its own task, which answers with the result and how long the
        /// bind took.
        fn bind(
            &self,
            entry: &str,
            identity: &str,
            password: &str,
            client: IpAddr,
        ) -> JoinHandle<(Attempt, Duration)> {
            let (gate, route) = (Arc::clone(&self.gate), Arc::clone(&self.route));
            let (entry, identity) = (entry.to_owned(), identity.to_owned());
            let password = Password::from_vec(password.as_bytes().to_vec());
            tokio::spawn(async move {
                let started = Instant::now();
                let attempt = gate
                    .authenticate(&route, &entry, &identity, password, client)
                    .await;
                (attempt, started.elapsed())
            })
        }

        /// A bind, run to its answer.
        async fn run(
            &self,
            entry: &str,
            identity: &str,
            password: &str,
            client: IpAddr,
        ) -> (Attempt, Duration) {
            answer(self.bind(entry, identity, password, client)).await
        }

        fn state(&self) -> MutexGuard<'_, State> {
            lock(&self.gate.state)
        }
    }

    async fn answer(bind: JoinHandle<(Attempt, Duration)>) -> (Attempt, Duration) {
        bind.await.expect("the bind task ends")
    }

    /// `took` is `expected`, give or take the timer's millisecond.
    fn assert_took(took: Duration, expected: Duration) {
        assert!(
            took >= expected && took <= expected + Duration::from_millis(5),
            "took {took:?}, expected {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn identical_binds_from_one_address_share_one_transaction() {
        let s = Setup::new(pam(10, secs(10)), route(|_| {}), secs(5));
        let first = s.bind(ALICE, "alice", "right", A);
        sleep(secs(2)).await;
        let retry = s.bind(ALICE, "alice", "right", A);
        let (attempt, took) = answer(first).await;
        assert_eq!(attempt, success());
        assert_took(took, secs(5));
        let (attempt, took) = answer(retry).await;
        assert_eq!(attempt, success());
        assert_took(took, secs(3));
        // Within the grace window the decision is repeated without PAM.
        sleep(secs(9)).await;
        let (attempt, took) = s.run(ALICE, "alice", "right", A).await;
        assert_eq!((attempt, took), (success(), Duration::ZERO));
        assert_eq!(s.pool().count(), 1);
        // After it, the same bind is a new login.
        sleep(secs(2)).await;
        assert_eq!(s.run(ALICE, "alice", "right", A).await.0, success());
        assert_eq!(s.pool().count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn another_address_never_joins_a_transaction_or_its_grace() {
        let s = Setup::new(pam(10, secs(10)), route(|_| {}), secs(5));
        let user = s.bind(ALICE, "alice", "right", A);
        sleep(secs(1)).await;
        // The same password from elsewhere does not ride on the user's push.
        let thief = s.bind(ALICE, "alice", "right", B);
        assert_eq!(answer(user).await.0, success());
        let (attempt, took) = answer(thief).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_took(took, secs(4));
        assert_eq!(s.pool().count(), 1);
        // Nor on its grace window: it needs a push of its own.
        let (attempt, took) = s.run(ALICE, "alice", "right", B).await;
        assert_eq!(attempt, success());
        assert_took(took, secs(5));
        let started = lock(&s.pool().started).clone();
        assert_eq!(
            started,
            [
                ("alice".to_owned(), Some("192.0.2.1".to_owned())),
                ("alice".to_owned(), Some("192.0.2.2".to_owned())),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_waits_for_the_running_transaction_and_is_counted() {
        let counters = Counters::default();
        let _recorder = ::metrics::set_default_local_recorder(&counters);
        let s = Setup::new(pam(2, secs(10)), route(|_| {}), secs(5));
        let user = s.bind(ALICE, "alice", "right", A);
        sleep(secs(1)).await;
        // A guess while the push is pending is answered when the push is, not at once.
        let (attempt, took) = s.run(ALICE, "alice", "guess-1", B).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_took(took, secs(4));
        assert_eq!(answer(user).await.0, success());
        let user = s.bind(ALICE, "alice", "typo", A);
        sleep(secs(1)).await;
        let (attempt, took) = s.run(ALICE, "alice", "guess-2", B).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_took(took, secs(4));
        assert_eq!(answer(user).await.0, auth_failed());
        // Both refusals were charged to the guesser: its budget of 2 is spent.
        let (attempt, took) = s.run(ALICE, "alice", "guess-3", B).await;
        assert_eq!(
            (attempt, took),
            (refused(Rejection::RateLimited), Duration::ZERO)
        );
        assert_eq!(s.pool().count(), 2, "no guess reached PAM");
        assert_eq!((counters.get(IN_FLIGHT), counters.get(RATE)), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_at_its_own_deadline_and_the_guard_outlives_the_first_client() {
        let s = Setup::new(pam(10, secs(10)), route(|r| r.timeout = secs(2)), secs(10));
        let user = s.bind(ALICE, "alice", "right", A);
        sleep(secs(1)).await;
        let guess = s.bind(ALICE, "alice", "guess", B);
        assert_eq!(
            answer(user).await.0,
            Attempt::Done(TicketResult::DeadlinePassed)
        );
        let (attempt, took) = answer(guess).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_took(took, secs(2));
        // libpam is still running the first transaction: the entry stays taken.
        let (attempt, took) = s.run(ALICE, "alice", "other", C).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_took(took, secs(2));
        assert_eq!(s.pool().count(), 1);
        *lock(&s.pool().delay) = secs(1);
        sleep(secs(10)).await;
        assert_eq!(s.run(ALICE, "alice", "other", C).await.0, auth_failed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_per_address() {
        let counters = Counters::default();
        let _recorder = ::metrics::set_default_local_recorder(&counters);
        let s = Setup::new(pam(3, secs(10)), route(|_| {}), secs(1));
        for guess in ["guess-1", "guess-2", "guess-3"] {
            assert_eq!(s.run(ALICE, "alice", guess, A).await.0, auth_failed());
        }
        let (attempt, took) = s.run(ALICE, "alice", "right", A).await;
        assert_eq!(
            (attempt, took),
            (refused(Rejection::RateLimited), Duration::ZERO)
        );
        assert_eq!(counters.get(RATE), 1);
        // The user, elsewhere, is not locked out.
        assert_eq!(s.run(ALICE, "alice", "right", B).await.0, success());
        assert_eq!(s.pool().count(), 4);
        // The window slides: a minute after its first attempt (and before the minute
        // of its second), A may try once more.
        sleep(Duration::from_millis(56_500)).await;
        let again = s.bind(ALICE, "alice", "guess-4", A);
        let (attempt, took) = s.run(ALICE, "alice", "guess-5", A).await;
        assert_eq!(
            (attempt, took),
            (refused(Rejection::RateLimited), Duration::ZERO)
        );
        assert_eq!(answer(again).await.0, auth_failed());
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_is_charged_per_64_and_mapped_ipv4_as_ipv4() {
        let s = Setup::new(pam(1, secs(10)), route(|_| {}), secs(1));
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        assert_eq!(
            s.run(ALICE, "alice", "g1", ip("2001:db8::1")).await.0,
            auth_failed()
        );
        assert_eq!(
            s.run(ALICE, "alice", "g2", ip("2001:db8::ffff:2")).await.0,
            refused(Rejection::RateLimited)
        );
        assert_eq!(
            s.run(ALICE, "alice", "g3", ip("2001:db8:0:1::1")).await.0,
            auth_failed()
        );
        assert_eq!(s.run(ALICE, "alice", "g4", A).await.0, auth_failed());
        assert_eq!(
            s.run(ALICE, "alice", "g5", ip("::ffff:192.0.2.1")).await.0,
            refused(Rejection::RateLimited)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_transaction_per_entry_whatever_the_identity() {
        let s = Setup::new(pam(10, secs(10)), route(|_| {}), secs(5));
        let user = s.bind(ALICE, "alice", "right", A);
        sleep(secs(1)).await;
        // Another id_map method for the same entry, even with the same password.
        let other_identity = s.bind(ALICE, "alice@example.com", "right", A);
        // Another entry that maps to the same PAM identity is another user.
        let other_entry = s.bind(BOB, "alice", "right", A);
        assert_eq!(answer(user).await.0, success());
        let (attempt, took) = answer(other_identity).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_took(took, secs(4));
        let (attempt, took) = answer(other_entry).await;
        assert_eq!(attempt, success());
        assert_took(took, secs(5));
        assert_eq!(s.pool().count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_success_cache_is_per_address() {
        let s = Setup::new(
            pam(10, Duration::ZERO),
            route(|r| r.success_cache = Some(secs(300))),
            secs(5),
        );
        assert_eq!(s.run(ALICE, "alice", "right", A).await.0, success());
        sleep(secs(1)).await;
        assert_eq!(
            s.run(ALICE, "alice", "right", A).await,
            (success(), Duration::ZERO)
        );
        assert_eq!(s.pool().count(), 1);
        let (attempt, took) = s.run(ALICE, "alice", "right", B).await;
        assert_eq!(attempt, success());
        assert_took(took, secs(5));
        assert_eq!(s.pool().count(), 2);
        // A failure is never cached.
        assert_eq!(s.run(ALICE, "alice", "wrong", A).await.0, auth_failed());
        assert_eq!(s.run(ALICE, "alice", "wrong", A).await.0, auth_failed());
        assert_eq!(s.pool().count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_leaving_does_not_cancel_the_transaction() {
        let s = Setup::new(pam(10, secs(10)), route(|_| {}), secs(5));
        let first = s.bind(ALICE, "alice", "right", A);
        sleep(secs(2)).await;
        first.abort();
        sleep(secs(6)).await;
        // The transaction ended at 5 s; the retry at 8 s gets its result.
        assert_eq!(
            s.run(ALICE, "alice", "right", A).await,
            (success(), Duration::ZERO)
        );
        assert_eq!(s.pool().count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_result_is_not_reused_and_a_full_queue_costs_nothing() {
        let s = Setup::new(pam(2, secs(10)), route(|_| {}), secs(1));
        s.pool().full.store(true, Relaxed);
        for _ in 0..3 {
            assert_eq!(
                s.run(ALICE, "alice", "right", A).await.0,
                refused(Rejection::QueueFull)
            );
        }
        s.pool().full.store(false, Relaxed);
        let down = Attempt::Done(TicketResult::Completed(PamOutcome::Unavailable {
            reason: "scripted".into(),
        }));
        assert_eq!(s.run(ALICE, "alice", "down", A).await.0, down);
        assert_eq!(s.run(ALICE, "alice", "down", A).await.0, down);
        assert_eq!(s.pool().count(), 2, "each undecided bind got its own try");
    }

    const ABANDONED: &str = "ldap_pam_proxy_pam_transactions_skipped_total{reason=\"abandoned\"}";
    const TOO_LATE: &str = "ldap_pam_proxy_pam_transactions_skipped_total{reason=\"too_late\"}";
    const CAROL: &str = "uid=carol,ou=people,dc=example,dc=com";
    const DAVE: &str = "uid=dave,ou=people,dc=example,dc=com";

    /// No push for nobody: a transaction waiting for a worker is dropped when it gets
    /// one if no client has waited on it for the grace window, and started if its client
    /// left less than that ago (a retry may still come for it).
    #[tokio::test(start_paused = true)]
    async fn a_transaction_nobody_waits_for_is_not_started() {
        let counters = Counters::default();
        let _recorder = ::metrics::set_default_local_recorder(&counters);
        let s = Setup::with_workers(pam(10, secs(10)), route(|_| {}), secs(60), 1);
        // Alice's push takes the one worker for a minute.
        let alice = s.bind(ALICE, "alice", "right", A);
        sleep(secs(1)).await;
        let bob = s.bind(BOB, "bob", "right", A);
        let carol = s.bind(CAROL, "carol", "right", A);
        sleep(secs(4)).await;
        // Bob's client gives up at 5 s, carol's at 55 s: at 60 s, when the worker frees,
        // nobody has waited on bob's for 55 s, on carol's for 5 s.
        bob.abort();
        sleep(secs(50)).await;
        carol.abort();
        assert_eq!(answer(alice).await.0, success());
        sleep(secs(1)).await;
        let started: Vec<String> = lock(&s.pool().started)
            .iter()
            .map(|(who, _)| who.clone())
            .collect();
        assert_eq!(started, ["alice", "carol"]);
        assert_eq!((counters.get(ABANDONED), counters.get(TOO_LATE)), (1, 0));
        // Bob's retry after that is a new login, with a push of its own.
        sleep(secs(60)).await;
        assert_eq!(s.run(BOB, "bob", "right", A).await.0, success());
        assert_eq!(s.pool().count(), 3);
    }

    /// sssd's retries (abandon and the same bind again every 8 s) keep joining a
    /// transaction that waits for a worker, so it starts, and the last retry gets the
    /// answer of one push.
    #[tokio::test(start_paused = true)]
    async fn retries_keep_a_waiting_transaction_wanted() {
        let counters = Counters::default();
        let _recorder = ::metrics::set_default_local_recorder(&counters);
        let s = Setup::with_workers(pam(10, secs(10)), route(|_| {}), secs(60), 1);
        let alice = s.bind(ALICE, "alice", "right", A);
        sleep(secs(1)).await;
        let mut bob = s.bind(BOB, "bob", "right", A);
        for _ in 0..7 {
            sleep(secs(8)).await;
            bob.abort();
            sleep(Duration::from_millis(3)).await;
            bob = s.bind(BOB, "bob", "right", A);
        }
        assert_eq!(answer(alice).await.0, success());
        let (attempt, took) = answer(bob).await;
        assert_eq!(attempt, success());
        // Its retry came at 57 s; the transaction started at 60 s and took a minute.
        assert_took(took, Duration::from_millis(120_000 - 57_021));
        assert_eq!(s.pool().count(), 2);
        assert_eq!(counters.get(ABANDONED), 0);
        assert_eq!(
            counters.get("ldap_pam_proxy_binds_coalesced_total{}"),
            7,
            "every retry joined"
        );
    }

    /// A transaction that gets a worker with less of its deadline left than the service's
    /// fastest recent success took is not started: its client gets unavailable at once,
    /// instead of after a push nobody could answer in time.
    #[tokio::test(start_paused = true)]
    async fn too_little_time_left_is_not_started() {
        let counters = Counters::default();
        let _recorder = ::metrics::set_default_local_recorder(&counters);
        let s = Setup::with_workers(pam(10, secs(10)), route(|_| {}), secs(30), 1);
        // The service's fastest success so far: 30 s.
        assert_eq!(s.run(ALICE, "alice", "right", A).await.0, success());
        *lock(&s.pool().delay) = secs(100);
        let bob = s.bind(BOB, "bob", "right", A);
        sleep(secs(1)).await;
        // Carol's transaction would get the worker at 100 s with 19 s of its 120 left.
        let carol = s.bind(CAROL, "carol", "right", A);
        sleep(secs(69)).await;
        // Dave's, at 100 s too, with 50 s left: that is enough.
        *lock(&s.pool().delay) = secs(1);
        let dave = s.bind(DAVE, "dave", "right", A);
        assert_eq!(answer(bob).await.0, success());
        let (attempt, took) = answer(carol).await;
        assert_eq!(attempt, Attempt::Done(TicketResult::DeadlinePassed));
        assert_took(took, secs(99));
        let (attempt, took) = answer(dave).await;
        assert_eq!(attempt, success());
        assert_took(took, secs(31));
        assert_eq!(s.pool().count(), 3, "alice, bob and dave");
        assert_eq!((counters.get(TOO_LATE), counters.get(ABANDONED)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_pruned_and_capped_without_dropping_a_pending_entry() {
        let s = Setup::new(pam(10, secs(1)), route(|_| {}), secs(1));
        let binds: Vec<_> = (0..20)
            .map(|i| s.bind(&format!("uid=u{i},dc=example"), "u", "wrong", A))
            .collect();
        for b in binds {
            assert_eq!(answer(b).await.0, auth_failed());
        }
        assert_eq!(s.state().budgets.len(), 20);
        sleep(secs(2)).await;
        assert!(s.state().joinable.is_empty() && s.state().running.is_empty());
        // A minute on, the next bind sweeps the records nobody came back for.
        sleep(secs(60)).await;
        assert_eq!(s.run(ALICE, "alice", "right", A).await.0, success());
        assert_eq!(s.state().budgets.len(), 1);

        s.state().cap = 8;
        *lock(&s.pool().delay) = secs(100);
        let pending = s.bind(BOB, "bob", "right", A);
        sleep(secs(1)).await;
        *lock(&s.pool().delay) = secs(1);
        let refusal = s.bind(BOB, "bob", "guess", C);
        sleep(secs(1)).await;
        // One after another: records of entries with a transaction in flight stay.
        for i in 0..20 {
            let entry = format!("uid=v{i},dc=example");
            assert_eq!(s.run(&entry, "v", "wrong", B).await.0, auth_failed());
        }
        {
            let st = s.state();
            assert!(st.budgets.len() <= 8, "{} records", st.budgets.len());
            assert!(st.budgets.contains_key(&(BOB.to_owned(), A)));
            assert!(st.budgets.contains_key(&(BOB.to_owned(), C)));
        }
        // Bob's transaction is still the only one for bob.
        let (attempt, _) = s.run(BOB, "bob", "guess", B).await;
        assert_eq!(attempt, refused(Rejection::InFlight));
        assert_eq!(answer(pending).await.0, success());
        assert_eq!(answer(refusal).await.0, refused(Rejection::InFlight));
    }
}
