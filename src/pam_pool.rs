//! A bounded pool of OS threads that runs PAM transactions (DESIGN §2 steps
//! 8–9, §3).
//!
//! libpam calls block, sometimes for minutes (an MFA push waits for a phone),
//! and cannot be cancelled. They therefore never run on the tokio runtime:
//! [`PamPool::submit`] hands a [`PamRequest`] to a fixed set of worker
//! threads and returns a [`PamTicket`] at once. The ticket resolves with the
//! outcome or when the caller's deadline passes, whichever comes first; the
//! transaction itself always runs to its end.
//!
//! **Fairness.** Every job belongs to a class (the gate uses the route; plain
//! [`PamPool::submit`] the PAM service). Classes share the workers and the
//! queue so that none can starve another, whatever the settings:
//!
//! - a class may hold at most all workers but one for each other class
//!   (and at most its own `max_concurrent`); the same holds for queue slots.
//!   So when 100 pushes of a slow route are pending, a worker is still free
//!   for a fast route, and its binds never wait behind a push;
//! - jobs that wait are kept per class and served in turn, one class after
//!   another, each class in the order its jobs came.
//!
//! With more classes than workers nobody can keep a worker for every class;
//! each still gets its turn.
//!
//! **Starting late.** A job waiting for a worker is dropped without starting
//! when its deadline has passed, or when the check its submitter gave says it
//! is no longer worth starting (see [`StartCheck`]: the gate drops
//! transactions nobody waits for, or with too little time left).

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use pam_client::{Context, ConversationHandler, ErrorCode, Flag};
use tokio::sync::oneshot;

use crate::logsafe::Untrusted;
use crate::secret::{Password, SecretCString};

/// Deadlines longer than this are clamped, so that `Instant + deadline`
/// cannot overflow on a configuration typo.
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// One PAM authentication to run: `pam_start(service, identity)`,
/// `pam_authenticate`, then `pam_acct_mgmt`.
///
/// `Debug` is safe to log: the password prints as `********`.
#[derive(Debug)]
pub struct PamRequest {
    /// PAM service name (a file in `/etc/pam.d`).
    pub service: String,
    /// PAM user name, as produced by the route's `id_map`.
    pub identity: String,
    /// The bind password; wiped when the request is dropped.
    pub password: Password,
    /// Client address for `PAM_RHOST` (Duo and pam_access use it).
    pub rhost: Option<String>,
    /// When set and present in the password, the password is split at its
    /// last occurrence into password and passcode (e.g. `secret,123456`).
    pub passcode_delimiter: Option<String>,
}

/// What a PAM transaction decided, in the categories the bind layer maps to
/// LDAP result codes (DESIGN §2 step 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PamOutcome {
    /// Authentication and account check passed.
    Success,
    /// `pam_authenticate`: PAM_AUTH_ERR (wrong password, MFA denied, and with
    /// pam_matrix also an unknown user).
    AuthFailed,
    /// `pam_authenticate`: PAM_USER_UNKNOWN. The only failure after which
    /// the next `id_map` method may be tried (DESIGN §2 step 6). Also used
    /// when the identity contains a NUL byte and so cannot name any PAM user.
    UserUnknown,
    /// `pam_authenticate`: PAM_CRED_ERR or PAM_CRED_INSUFFICIENT. Also used
    /// when the password contains a NUL byte (PAM is then never called).
    CredentialsError,
    /// `pam_authenticate`: PAM_MAXTRIES.
    MaxTries,
    /// `pam_acct_mgmt`: PAM_PERM_DENIED (also PAM_AUTH_ERR and
    /// PAM_USER_UNKNOWN there: the password was already accepted, so this is
    /// an access decision, and it must not trigger a second identity try).
    /// Also PAM_PERM_DENIED from `pam_authenticate`: a deliberate denial must
    /// not look like an outage, or clients fail over and ask again.
    PermissionDenied,
    /// `pam_acct_mgmt`: PAM_ACCT_EXPIRED.
    AccountExpired,
    /// `pam_acct_mgmt`: PAM_NEW_AUTHTOK_REQD (password expired).
    NewAuthtokRequired,
    /// The service could not decide: PAM_SYSTEM_ERR, PAM_ABORT,
    /// PAM_AUTHINFO_UNAVAIL, a missing service file, any other code, or an
    /// internal error. `reason` names the service, the phase and the PAM
    /// error text; it never contains the password.
    Unavailable {
        /// Human-readable diagnostic for logs and the LDAP error message.
        reason: String,
    },
}

/// What a [`PamTicket`] resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketResult {
    /// The transaction ended before the deadline.
    Completed(PamOutcome),
    /// The deadline passed first, either while the job was queued (PAM was
    /// then never called) or while libpam was still running it.
    DeadlinePassed,
}

/// Why [`PamPool::submit`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every worker is busy and the queue is full.
    #[error("PAM queue is full")]
    QueueFull,
    /// [`PamPool::shutdown`] was called.
    #[error("PAM pool is shut down")]
    ShutDown,
}

/// Why a job was dropped without starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// Its deadline passed while it waited for a worker.
    Expired,
    /// No client waits for its result any more (its [`StartCheck`] said so).
    Abandoned,
    /// Too little of its deadline is left for the service to answer (its
    /// [`StartCheck`] said so).
    TooLate,
}

impl NotStarted {
    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            NotStarted::Expired => "expired",
            NotStarted::Abandoned => "abandoned",
            NotStarted::TooLate => "too_late",
        }
    }
}

/// Asked once, by the worker about to start a job, with the time left before
/// the job's deadline: `Err` drops the job unstarted. It runs on the worker
/// thread, with no lock of the pool held.
pub type StartCheck = Box<dyn FnOnce(Duration) -> Result<(), NotStarted> + Send>;

/// A snapshot of the pool's gauges and counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Most worker threads the pool runs (`pam.workers`).
    pub capacity: usize,
    /// Worker threads started so far (they start as work needs them).
    pub threads: usize,
    /// Workers currently running a job (stuck ones included).
    pub busy: usize,
    /// Busy workers whose job's deadline has passed: their caller has been
    /// answered, but libpam has not returned yet.
    pub stuck: usize,
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Size of the queue.
    pub queue_capacity: usize,
    /// PAM transactions started (`pam_start` called).
    pub started: u64,
    /// Jobs that ran to their end (whatever the outcome).
    pub completed: u64,
    /// Jobs dropped by a worker because their deadline passed in the queue.
    pub expired_in_queue: u64,
    /// Jobs dropped by a worker because their [`StartCheck`] said so.
    pub not_wanted: u64,
    /// Submissions refused with [`PoolError::QueueFull`].
    pub rejected_full: u64,
    /// Jobs that finished after their deadline (each was stuck for a while).
    pub overran: u64,
    /// Jobs that panicked (answered with [`PamOutcome::Unavailable`]).
    pub panicked: u64,
}

/// The pending result of a submitted request.
///
/// Dropping it does not cancel the transaction: libpam cannot be
/// interrupted, and the push may already be on the user's phone.
#[derive(Debug)]
pub struct PamTicket {
    rx: oneshot::Receiver<Reply>,
    deadline: Instant,
}

impl PamTicket {
    /// The deadline, measured from [`PamPool::submit`].
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Waits for the outcome, or until the deadline passes. A job that never
    /// started resolves as [`TicketResult::DeadlinePassed`].
    ///
    /// Needs a tokio runtime with the time driver enabled.
    pub async fn wait(self) -> TicketResult {
        match tokio::time::timeout_at(self.deadline.into(), self.rx).await {
            Ok(reply) => match reply_to_end(reply) {
                Ok(outcome) => TicketResult::Completed(outcome),
                Err(_) => TicketResult::DeadlinePassed,
            },
            Err(_elapsed) => TicketResult::DeadlinePassed,
        }
    }

    /// Waits for the worker however long it takes, ignoring the deadline:
    /// the outcome of the transaction, or why it was never started. For
    /// callers that multiplex several waiters with their own deadlines onto
    /// one transaction (coalescing).
    pub async fn finished(self) -> Result<PamOutcome, NotStarted> {
        reply_to_end(self.rx.await)
    }
}

fn reply_to_end(reply: Result<Reply, oneshot::error::RecvError>) -> Result<PamOutcome, NotStarted> {
    match reply {
        Ok(Reply::Done(outcome)) => Ok(outcome),
        Ok(Reply::NotStarted(why)) => Err(why),
        // Only reachable if a worker died outside `catch_unwind`.
        Err(_) => Ok(PamOutcome::Unavailable {
            reason: "PAM worker dropped the request".to_owned(),
        }),
    }
}

/// The pool's share of `total` (workers or queue slots) that one of `classes`
/// classes may hold: all but one for each other class, so every other class
/// keeps one within reach. With fewer than that, one (classes take turns).
fn share(total: usize, classes: usize) -> usize {
    let others = classes.saturating_sub(1);
    if total > others {
        total - others
    } else {
        total.min(1)
    }
}

/// A set of `pam-worker-N` threads, started as work needs them, fed by
/// per-class queues (see the module documentation).
///
/// Dropping the pool (or [`PamPool::shutdown`]) lets the workers finish the
/// queued jobs and exit; it does not wait for them.
pub struct PamPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for PamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PamPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for PamPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl PamPool {
    /// A pool of up to `workers` threads, started as work needs them, and a
    /// queue of `queue` jobs waiting for one.
    ///
    /// `queue = 0` means no waiting room: a request is accepted only when a
    /// worker can take it at once.
    ///
    /// # Errors
    /// `InvalidInput` for zero workers, or the OS error if the first thread
    /// cannot be spawned.
    pub fn new(workers: usize, queue: usize) -> io::Result<Self> {
        if workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the PAM pool needs at least one worker",
            ));
        }
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            slots: (0..workers).map(|_| AtomicU64::new(IDLE)).collect(),
            sched: Mutex::new(Sched::default()),
            wake: Condvar::new(),
            spawned: AtomicUsize::new(0),
            queue_capacity: queue,
            queued: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            expired_in_queue: AtomicU64::new(0),
            not_wanted: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            overran: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        // One thread now, so that a failure to start threads shows at start;
        // the others start when work needs them (see `Shared::reserve_worker`): every
        // thread's stack is a mapping that a forking PAM module (pam_exec)
        // copies on each fork, and an idle one still holds memory.
        {
            let mut s = lock(&shared.sched);
            shared.spawn(&mut s)?;
        }
        Ok(PamPool { shared })
    }

    /// The classes the configuration knows, in order, with their own cap
    /// (`route.max_concurrent`). Jobs of other classes are still accepted, as
    /// classes of their own while they have work. Jobs already accepted keep
    /// their place; a cap that grows lets waiting jobs start.
    pub fn set_classes<'a>(&self, classes: impl IntoIterator<Item = (&'a str, Option<usize>)>) {
        let mut s = lock(&self.shared.sched);
        for class in &mut s.classes {
            class.configured = false;
        }
        let mut order = Vec::new();
        for (name, max) in classes {
            let i = s.class(name);
            let class = &mut s.classes[i];
            class.configured = true;
            class.max = max;
            order.push(name.to_owned());
        }
        // Configured classes first, in configuration order (the order turns go round).
        s.classes.sort_by_key(|c| {
            order
                .iter()
                .position(|n| *n == c.name)
                .unwrap_or(usize::MAX)
        });
        s.turn = 0;
        s.forget_idle();
        self.shared.dispatch(&mut s);
    }

    /// Queues a PAM transaction of the class named by its service, and
    /// returns at once.
    ///
    /// `deadline` counts from now, so time spent in the queue counts too.
    ///
    /// # Errors
    /// [`PoolError::QueueFull`] when the queue (or this class's share of it)
    /// is full, [`PoolError::ShutDown`] after [`PamPool::shutdown`]. The
    /// request (and its password) is dropped.
    pub fn submit(&self, request: PamRequest, deadline: Duration) -> Result<PamTicket, PoolError> {
        let class = request.service.clone();
        self.submit_to(&class, request, deadline, None)
    }

    /// As [`PamPool::submit`], for `class`; `check`, if any, is asked by the
    /// worker about to start the job whether it still should.
    ///
    /// # Errors
    /// As [`PamPool::submit`].
    pub fn submit_to(
        &self,
        class: &str,
        request: PamRequest,
        deadline: Duration,
        check: Option<StartCheck>,
    ) -> Result<PamTicket, PoolError> {
        let service = request.service.clone();
        self.submit_work(
            class,
            service,
            deadline,
            check,
            Box::new(move |shared: &Shared| run_transaction(&request, shared)),
        )
    }

    /// Stops accepting requests. Queued jobs still run.
    pub fn shutdown(&self) {
        lock(&self.shared.sched).closed = true;
        self.shared.wake.notify_all();
    }

    /// A snapshot of gauges and counters. Cheap: a few atomic loads per
    /// worker, no locks.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        let now = s.millis(Instant::now());
        let (mut busy, mut stuck) = (0, 0);
        for slot in s.slots.iter() {
            let value = slot.load(Relaxed);
            if value != IDLE {
                busy += 1;
                if now >= value - 1 {
                    stuck += 1;
                }
            }
        }
        PoolStats {
            capacity: s.slots.len(),
            threads: s.spawned.load(Relaxed),
            busy,
            stuck,
            queued: s.queued.load(Relaxed),
            queue_capacity: s.queue_capacity,
            started: s.started.load(Relaxed),
            completed: s.completed.load(Relaxed),
            expired_in_queue: s.expired_in_queue.load(Relaxed),
            not_wanted: s.not_wanted.load(Relaxed),
            rejected_full: s.rejected_full.load(Relaxed),
            overran: s.overran.load(Relaxed),
            panicked: s.panicked.load(Relaxed),
        }
    }

    /// Number of PAM transactions started so far (`pam_start` calls).
    pub fn transactions_started(&self) -> u64 {
        self.shared.started.load(Relaxed)
    }

    fn submit_work(
        &self,
        class: &str,
        service: String,
        deadline: Duration,
        check: Option<StartCheck>,
        work: Work,
    ) -> Result<PamTicket, PoolError> {
        let now = Instant::now();
        let deadline = now.checked_add(deadline.min(MAX_DEADLINE)).unwrap_or(now);
        let (reply, rx) = oneshot::channel();
        let job = Job {
            class: class.to_owned(),
            service,
            deadline,
            reply,
            check,
            work,
        };
        let shared = &self.shared;
        let mut s = lock(&shared.sched);
        if s.closed {
            return Err(PoolError::ShutDown);
        }
        let i = s.class(class);
        let workers = shared.slots.len();
        let k = s.counted_classes();
        let c = &s.classes[i];
        let cap = c.max.unwrap_or(workers).min(share(workers, k));
        // Behind jobs of its own class that wait, a job waits too.
        let may_run = c.running < cap && c.waiting.is_empty();
        let may_wait =
            s.waiting < shared.queue_capacity && c.waiting.len() < share(shared.queue_capacity, k);
        if may_run && shared.reserve_worker(&mut s) {
            s.hand_over(i, job);
            drop(s);
            shared.wake.notify_one();
        } else if may_wait {
            s.classes[i].waiting.push_back(job);
            s.waiting += 1;
            shared.queued.store(s.waiting, Relaxed);
        } else {
            s.forget_idle();
            shared.rejected_full.fetch_add(1, Relaxed);
            return Err(PoolError::QueueFull);
        }
        Ok(PamTicket { rx, deadline })
    }
}

/// Slot value of a worker that runs nothing; otherwise a slot holds the
/// running job's deadline in ms since `Shared::epoch`, plus one.
const IDLE: u64 = 0;

type Work = Box<dyn FnOnce(&Shared) -> PamOutcome + Send>;

struct Job {
    /// The class it is counted in.
    class: String,
    /// For logs and the panic diagnostic.
    service: String,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
    check: Option<StartCheck>,
    work: Work,
}

#[derive(Debug)]
enum Reply {
    Done(PamOutcome),
    NotStarted(NotStarted),
}

/// The jobs of one class.
#[derive(Default)]
struct Class {
    name: String,
    /// Named by the configuration ([`PamPool::set_classes`]); other classes
    /// are forgotten once they have no work.
    configured: bool,
    /// Its own cap (`route.max_concurrent`).
    max: Option<usize>,
    /// Jobs handed to a worker (running, or about to start).
    running: usize,
    /// Jobs waiting for a worker, oldest first.
    waiting: VecDeque<Job>,
}

/// Who runs what; behind one mutex, held only for bookkeeping (never while a
/// job or a start check runs).
#[derive(Default)]
struct Sched {
    classes: Vec<Class>,
    /// The class served last: the next turn goes to the next class after it.
    turn: usize,
    /// Jobs handed over to a worker that has not taken them yet.
    ready: VecDeque<Job>,
    /// Workers alive and neither running a job nor spoken for by one in `ready`.
    free: usize,
    /// Jobs waiting in all classes (the queue).
    waiting: usize,
    closed: bool,
}

impl Sched {
    /// The index of the class `name`, made if it is new.
    fn class(&mut self, name: &str) -> usize {
        if let Some(i) = self.classes.iter().position(|c| c.name == name) {
            return i;
        }
        self.classes.push(Class {
            name: name.to_owned(),
            ..Class::default()
        });
        self.classes.len() - 1
    }

    /// The classes shares are counted for: configured ones, and others while
    /// they have work.
    fn counted_classes(&self) -> usize {
        self.classes
            .iter()
            .filter(|c| c.configured || c.running > 0 || !c.waiting.is_empty())
            .count()
    }

    /// Forgets classes that are neither configured nor busy.
    fn forget_idle(&mut self) {
        self.classes
            .retain(|c| c.configured || c.running > 0 || !c.waiting.is_empty());
        if self.turn >= self.classes.len() {
            self.turn = 0;
        }
    }

    /// Gives `job` of class `i` to a worker already reserved for it.
    fn hand_over(&mut self, i: usize, job: Job) {
        self.classes[i].running += 1;
        self.free -= 1;
        self.ready.push_back(job);
    }

    /// The next class, in turn, with a job waiting and room under its cap.
    fn next_turn(&self, workers: usize) -> Option<usize> {
        let n = self.classes.len();
        let k = self.counted_classes();
        (1..=n).map(|d| (self.turn + d) % n).find(|&i| {
            let c = &self.classes[i];
            !c.waiting.is_empty() && c.running < c.max.unwrap_or(workers).min(share(workers, k))
        })
    }
}

struct Shared {
    epoch: Instant,
    /// One per worker the pool may run (`pam.workers`), started or not.
    slots: Box<[AtomicU64]>,
    sched: Mutex<Sched>,
    /// Wakes free workers when a job is handed over (or at shutdown).
    wake: Condvar,
    /// Workers started so far.
    spawned: AtomicUsize,
    queue_capacity: usize,
    /// Mirrors `Sched::waiting`, for lock-free stats.
    queued: AtomicUsize,
    started: AtomicU64,
    completed: AtomicU64,
    expired_in_queue: AtomicU64,
    not_wanted: AtomicU64,
    rejected_full: AtomicU64,
    overran: AtomicU64,
    panicked: AtomicU64,
}

impl Shared {
    /// Rounds down, so that once a ticket's deadline has passed its worker is
    /// already counted as stuck (never the other way round).
    fn millis(&self, t: Instant) -> u64 {
        let ms = t.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1)
    }

    /// Starts one more worker thread; it counts as free.
    fn spawn(self: &Arc<Self>, s: &mut Sched) -> io::Result<()> {
        let index = self.spawned.load(SeqCst);
        if index >= self.slots.len() {
            return Err(io::Error::other("every PAM worker runs already"));
        }
        let worker = Arc::clone(self);
        thread::Builder::new()
            .name(format!("pam-worker-{index}"))
            .spawn(move || worker.worker_loop(index))?;
        self.spawned.store(index + 1, SeqCst);
        s.free += 1;
        Ok(())
    }

    /// Whether a worker can take a job now: a free one, or a new one.
    fn reserve_worker(self: &Arc<Self>, s: &mut Sched) -> bool {
        if s.free > 0 {
            return true;
        }
        match self.spawn(s) {
            Ok(()) => true,
            Err(e) => {
                if self.spawned.load(SeqCst) < self.slots.len() {
                    tracing::error!("cannot start a PAM worker thread: {e}");
                }
                false
            }
        }
    }

    /// Hands waiting jobs to workers, class after class in turn, while workers
    /// and caps allow.
    fn dispatch(self: &Arc<Self>, s: &mut Sched) {
        let mut handed = 0;
        while let Some(i) = s.next_turn(self.slots.len()) {
            if !self.reserve_worker(s) {
                break;
            }
            let Some(job) = s.classes[i].waiting.pop_front() else {
                break;
            };
            s.waiting -= 1;
            s.turn = i;
            s.hand_over(i, job);
            handed += 1;
        }
        self.queued.store(s.waiting, Relaxed);
        for _ in 0..handed {
            self.wake.notify_one();
        }
    }

    fn worker_loop(self: Arc<Self>, index: usize) {
        let mut s = lock(&self.sched);
        loop {
            if let Some(job) = s.ready.pop_front() {
                drop(s);
                let class = job.class.clone();
                let (reply, answer) = self.run(index, job);
                s = lock(&self.sched);
                // Free again, and its class has one job less, before the caller
                // hears of it: whoever submits next finds this worker free.
                if let Some(c) = s.classes.iter_mut().find(|c| c.name == class) {
                    c.running -= 1;
                }
                s.free += 1;
                s.forget_idle();
                self.dispatch(&mut s);
                if s.closed && s.waiting == 0 {
                    // Workers waiting for more can go.
                    self.wake.notify_all();
                }
                drop(s);
                // The caller may be gone; that is fine.
                let _ = reply.send(answer);
                s = lock(&self.sched);
                continue;
            }
            if s.closed && s.waiting == 0 {
                s.free -= 1;
                return;
            }
            s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Starts `job` unless it is no longer wanted, and runs it to its end.
    fn run(&self, index: usize, job: Job) -> (oneshot::Sender<Reply>, Reply) {
        let Job {
            service,
            deadline,
            reply,
            check,
            work,
            ..
        } = job;
        let now = Instant::now();
        if now >= deadline {
            self.expired_in_queue.fetch_add(1, Relaxed);
            tracing::debug!(service, "PAM job expired in the queue; not started");
            return (reply, Reply::NotStarted(NotStarted::Expired));
        }
        if let Some(check) = check {
            if let Err(why) = check(deadline - now) {
                self.not_wanted.fetch_add(1, Relaxed);
                tracing::debug!(service, ?why, "PAM job not started");
                return (reply, Reply::NotStarted(why));
            }
        }
        let Some(slot) = self.slots.get(index) else {
            return (
                reply,
                Reply::Done(PamOutcome::Unavailable {
                    reason: format!("PAM service \"{service}\": no such PAM worker"),
                }),
            );
        };
        slot.store(self.millis(deadline).saturating_add(1), Relaxed);
        let outcome = match catch_unwind(AssertUnwindSafe(|| work(self))) {
            Ok(outcome) => outcome,
            Err(_) => {
                self.panicked.fetch_add(1, Relaxed);
                tracing::error!(service, "PAM job panicked");
                PamOutcome::Unavailable {
                    reason: format!("PAM service \"{service}\": internal error in the PAM worker"),
                }
            }
        };
        slot.store(IDLE, Relaxed);
        if Instant::now() > deadline {
            self.overran.fetch_add(1, Relaxed);
            tracing::info!(
                service,
                ?outcome,
                "PAM transaction ended after its deadline"
            );
        }
        self.completed.fetch_add(1, Relaxed);
        (reply, Reply::Done(outcome))
    }
}

/// Nothing guarded here can be left inconsistent by a panic, so a poisoned
/// lock is simply taken over.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Start,
    Authenticate,
    Account,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Start => "pam_start",
            Phase::Authenticate => "authentication (pam_authenticate)",
            Phase::Account => "account check (pam_acct_mgmt)",
        })
    }
}

fn run_transaction(req: &PamRequest, shared: &Shared) -> PamOutcome {
    let started = Instant::now();
    let outcome = transaction(req, shared);
    tracing::debug!(
        service = req.service,
        identity = %Untrusted::new(&req.identity),
        ?outcome,
        elapsed_ms = started.elapsed().as_millis(),
        "PAM transaction ended"
    );
    outcome
}

fn transaction(req: &PamRequest, shared: &Shared) -> PamOutcome {
    let service = req.service.as_str();
    let Ok(identity) = CString::new(req.identity.as_str()) else {
        tracing::debug!(service, "PAM identity contains a NUL byte; PAM not called");
        return PamOutcome::UserUnknown;
    };
    let answers = match Answers::new(&req.password, req.passcode_delimiter.as_deref()) {
        Ok(answers) => answers,
        Err(_) => {
            tracing::debug!(
                service,
                identity = %Untrusted::new(&req.identity),
                "password contains a NUL byte; PAM not called"
            );
            return PamOutcome::CredentialsError;
        }
    };
    let conversation = BindConversation {
        service: req.service.clone(),
        identity_text: req.identity.clone(),
        identity,
        answers,
    };

    shared.started.fetch_add(1, Relaxed);
    // Dropping `ctx` calls pam_end on every path below.
    let mut ctx = match Context::new(service, Some(&req.identity), conversation) {
        Ok(ctx) => ctx,
        Err(err) => return unavailable(service, Phase::Start, err.code(), err.message()),
    };
    if let Some(rhost) = &req.rhost {
        if let Err(err) = ctx.set_rhost(Some(rhost)) {
            return unavailable(service, Phase::Start, err.code(), err.message());
        }
    }
    if let Err(err) = ctx.authenticate(Flag::NONE) {
        return failure(req, Phase::Authenticate, err.code(), err.message());
    }
    if let Err(err) = ctx.acct_mgmt(Flag::NONE) {
        return failure(req, Phase::Account, err.code(), err.message());
    }
    PamOutcome::Success
}

/// Maps a PAM error to an outcome per DESIGN §2 step 9 and logs the truth
/// (code and phase), which the LDAP answer deliberately blurs.
fn failure(req: &PamRequest, phase: Phase, code: ErrorCode, message: Option<&str>) -> PamOutcome {
    use ErrorCode as E;
    let outcome = match (phase, code) {
        (Phase::Authenticate, E::AUTH_ERR) => PamOutcome::AuthFailed,
        (Phase::Authenticate, E::USER_UNKNOWN) => PamOutcome::UserUnknown,
        (Phase::Authenticate, E::CRED_ERR | E::CRED_INSUFFICIENT) => PamOutcome::CredentialsError,
        (Phase::Authenticate, E::MAXTRIES) => PamOutcome::MaxTries,
        (Phase::Authenticate | Phase::Account, E::PERM_DENIED) => PamOutcome::PermissionDenied,
        (Phase::Account, E::AUTH_ERR | E::USER_UNKNOWN) => PamOutcome::PermissionDenied,
        (Phase::Account, E::ACCT_EXPIRED) => PamOutcome::AccountExpired,
        (Phase::Account, E::NEW_AUTHTOK_REQD) => PamOutcome::NewAuthtokRequired,
        _ => return unavailable(&req.service, phase, code, message),
    };
    tracing::debug!(
        service = req.service,
        identity = %Untrusted::new(&req.identity),
        %phase,
        ?code,
        pam_error = %Untrusted::new(message.unwrap_or("")),
        "PAM refused"
    );
    outcome
}

fn unavailable(service: &str, phase: Phase, code: ErrorCode, message: Option<&str>) -> PamOutcome {
    // The module's text goes to the log and the client's diagnostic message: as data.
    let reason = match message {
        Some(text) => format!(
            "PAM service \"{service}\": {phase} failed: {} ({code:?})",
            Untrusted::new(text)
        ),
        None => format!("PAM service \"{service}\": {phase} failed ({code:?})"),
    };
    tracing::warn!(%reason, "PAM unavailable");
    PamOutcome::Unavailable { reason }
}

/// What the conversation answers to secret prompts.
enum Answers {
    /// 389 semantics: every echo-off prompt gets the whole password.
    Whole(SecretCString),
    /// Password and passcode split at the last delimiter: the first echo-off
    /// prompt gets `first`, the next prompt of either kind gets `second`.
    Split {
        first: SecretCString,
        second: SecretCString,
        given: u8,
    },
}

impl Answers {
    fn new(
        password: &Password,
        delimiter: Option<&str>,
    ) -> Result<Self, crate::secret::NulByteError> {
        let bytes = password.as_bytes();
        let split = delimiter
            .map(str::as_bytes)
            .filter(|d| !d.is_empty())
            .and_then(|d| rfind(bytes, d).map(|at| (at, d.len())));
        match split {
            Some((at, len)) => {
                let (first, rest) = bytes.split_at(at);
                let second = rest.get(len..).unwrap_or_default();
                Ok(Answers::Split {
                    first: SecretCString::from_bytes(first)?,
                    second: SecretCString::from_bytes(second)?,
                    given: 0,
                })
            }
            None => Ok(Answers::Whole(password.to_c_string()?)),
        }
    }
}

/// Start of the last occurrence of `needle` in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&i| haystack.get(i..i + needle.len()) == Some(needle))
}

/// The conversation of a bind.
///
/// These methods are called from C through an `extern "C"` callback, where a
/// panic aborts the whole process: nothing in here may panic.
struct BindConversation {
    service: String,
    identity_text: String,
    identity: CString,
    answers: Answers,
}

impl BindConversation {
    fn log_prompt(&self, kind: &str, prompt: &CStr, answer: &str) {
        tracing::debug!(
            service = self.service,
            identity = %Untrusted::new(&self.identity_text),
            prompt = %Untrusted::new(prompt.to_bytes()),
            "PAM {kind} prompt answered with the {answer}"
        );
    }
}

impl ConversationHandler for BindConversation {
    fn prompt_echo_on(&mut self, prompt: &CStr) -> Result<CString, ErrorCode> {
        // 389 answers echo-on prompts with the identity (a "login:" prompt),
        // except that with a split password the prompt after the password is
        // the second factor (Duo asks for its passcode echoing).
        if let Answers::Split { second, given, .. } = &mut self.answers {
            if *given == 1 {
                *given = 2;
                let answer = second.as_c_str().to_owned();
                self.log_prompt("echo-on", prompt, "passcode");
                return Ok(answer);
            }
        }
        self.log_prompt("echo-on", prompt, "identity");
        Ok(self.identity.clone())
    }

    fn prompt_echo_off(&mut self, prompt: &CStr) -> Result<CString, ErrorCode> {
        // The returned CString is copied by pam-client with strdup and then
        // dropped without being wiped; pam-client 0.5 offers no way around
        // that short of a hand-written conversation callback.
        let (answer, what) = match &mut self.answers {
            Answers::Whole(password) => (password.as_c_str().to_owned(), "password"),
            Answers::Split {
                first,
                second,
                given,
            } => match *given {
                0 => {
                    *given = 1;
                    (first.as_c_str().to_owned(), "password")
                }
                1 => {
                    *given = 2;
                    (second.as_c_str().to_owned(), "passcode")
                }
                _ => {
                    // A module asking again (e.g. after a wrong passcode) would
                    // only get a wrong answer from us, costing an attempt or
                    // another push: one bind, one try.
                    self.log_prompt("echo-off", prompt, "conversation error (no third secret)");
                    return Err(ErrorCode::CONV_ERR);
                }
            },
        };
        self.log_prompt("echo-off", prompt, what);
        Ok(answer)
    }

    fn text_info(&mut self, msg: &CStr) {
        tracing::debug!(
            service = self.service,
            identity = %Untrusted::new(&self.identity_text),
            text = %Untrusted::new(msg.to_bytes()),
            "PAM info"
        );
    }

    fn error_msg(&mut self, msg: &CStr) {
        tracing::debug!(
            service = self.service,
            identity = %Untrusted::new(&self.identity_text),
            text = %Untrusted::new(msg.to_bytes()),
            "PAM error message"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    fn conversation(password: &[u8], delimiter: Option<&str>) -> BindConversation {
        let password = Password::from_vec(password.to_vec());
        BindConversation {
            service: "svc".into(),
            identity_text: "alice".into(),
            identity: CString::new("alice").expect("no NUL"),
            answers: Answers::new(&password, delimiter).expect("no NUL"),
        }
    }

    fn prompt() -> &'static CStr {
        c"Password: "
    }

    #[test]
    fn whole_password_for_every_echo_off_identity_for_echo_on() {
        let mut c = conversation(b"pw,123", None);
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"pw,123");
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"pw,123");
        assert_eq!(c.prompt_echo_on(prompt()).unwrap().as_bytes(), b"alice");
    }

    #[test]
    fn split_at_last_delimiter_second_prompt_echo_off() {
        let mut c = conversation(b"a,b,123", Some(","));
        assert_eq!(c.prompt_echo_on(prompt()).unwrap().as_bytes(), b"alice");
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"a,b");
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"123");
        assert_eq!(c.prompt_echo_off(prompt()), Err(ErrorCode::CONV_ERR));
        assert_eq!(c.prompt_echo_on(prompt()).unwrap().as_bytes(), b"alice");
    }

    #[test]
    fn split_second_prompt_echo_on_gets_passcode() {
        let mut c = conversation(b"pw::42", Some("::"));
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"pw");
        assert_eq!(c.prompt_echo_on(prompt()).unwrap().as_bytes(), b"42");
    }

    #[test]
    fn delimiter_absent_means_whole_password() {
        let mut c = conversation(b"pw", Some(","));
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"pw");
        assert_eq!(c.prompt_echo_off(prompt()).unwrap().as_bytes(), b"pw");
    }

    #[test]
    fn rfind_finds_last() {
        assert_eq!(rfind(b"a,b,c", b","), Some(3));
        assert_eq!(rfind(b"abc", b"abcd"), None);
        assert_eq!(rfind(b"abc", b""), None);
        assert_eq!(rfind(b",", b","), Some(0));
    }

    /// Submits a closure instead of a PAM transaction.
    fn submit(
        pool: &PamPool,
        deadline: Duration,
        f: impl FnOnce() -> PamOutcome + Send + 'static,
    ) -> Result<PamTicket, PoolError> {
        submit_as(pool, "test", deadline, None, f)
    }

    /// [`submit`] in `class`, with a start check.
    fn submit_as(
        pool: &PamPool,
        class: &str,
        deadline: Duration,
        check: Option<StartCheck>,
        f: impl FnOnce() -> PamOutcome + Send + 'static,
    ) -> Result<PamTicket, PoolError> {
        pool.submit_work(
            class,
            "test".into(),
            deadline,
            check,
            Box::new(move |_: &Shared| f()),
        )
    }

    /// A job that runs until `release` is signalled.
    fn blocked_job(pool: &PamPool, deadline: Duration) -> (PamTicket, mpsc::Sender<()>) {
        blocked_job_as(pool, "test", deadline)
    }

    /// [`blocked_job`] in `class`.
    fn blocked_job_as(
        pool: &PamPool,
        class: &str,
        deadline: Duration,
    ) -> (PamTicket, mpsc::Sender<()>) {
        let (release, wait) = mpsc::channel::<()>();
        let ticket = submit_as(pool, class, deadline, None, move || {
            let _ = wait.recv();
            PamOutcome::Success
        })
        .expect("accepted");
        (ticket, release)
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn workers_start_as_work_needs_them() {
        let pool = PamPool::new(4, 8).expect("pool");
        assert_eq!(pool.stats().threads, 1);
        // Jobs one after another reuse the one thread.
        let rt = runtime();
        for _ in 0..5 {
            let t = submit(&pool, LONG, || PamOutcome::Success).expect("accepted");
            assert_eq!(
                rt.block_on(t.wait()),
                TicketResult::Completed(PamOutcome::Success)
            );
        }
        assert_eq!(pool.stats().threads, 1);
        // Six jobs that all wait: four run (the most the pool may start), two queue.
        let held: Vec<_> = (0..6).map(|_| blocked_job(&pool, LONG)).collect();
        wait_until("four busy", || pool.stats().busy == 4);
        let stats = pool.stats();
        assert_eq!((stats.threads, stats.queued), (4, 2));
        for (ticket, release) in held {
            release.send(()).expect("worker waits");
            assert_eq!(
                rt.block_on(ticket.wait()),
                TicketResult::Completed(PamOutcome::Success)
            );
        }
        assert_eq!(pool.stats().threads, 4);
    }

    #[test]
    fn queue_full_and_stats() {
        let pool = PamPool::new(1, 1).expect("pool");
        let (first, release) = blocked_job(&pool, LONG);
        wait_until("busy", || pool.stats().busy == 1);
        let second = submit(&pool, LONG, || PamOutcome::AuthFailed).expect("queued");
        assert_eq!(pool.stats().queued, 1);
        assert_eq!(
            submit(&pool, LONG, || PamOutcome::Success).err(),
            Some(PoolError::QueueFull)
        );
        release.send(()).expect("worker waits");
        let rt = runtime();
        assert_eq!(
            rt.block_on(first.wait()),
            TicketResult::Completed(PamOutcome::Success)
        );
        assert_eq!(
            rt.block_on(second.wait()),
            TicketResult::Completed(PamOutcome::AuthFailed)
        );
        let stats = pool.stats();
        assert_eq!(
            (stats.rejected_full, stats.completed, stats.queued),
            (1, 2, 0)
        );
    }

    #[test]
    fn deadline_stuck_then_reused() {
        let pool = PamPool::new(1, 4).expect("pool");
        // Long enough for a loaded machine to start the job; it is seen running before
        // the deadline matters.
        let (ticket, release) = blocked_job(&pool, Duration::from_secs(2));
        wait_until("running", || pool.stats().busy == 1);
        let rt = runtime();
        assert_eq!(rt.block_on(ticket.wait()), TicketResult::DeadlinePassed);
        assert_eq!((pool.stats().busy, pool.stats().stuck), (1, 1));
        release.send(()).expect("worker waits");
        wait_until("not stuck", || pool.stats().busy == 0);
        assert_eq!(pool.stats().stuck, 0);
        assert_eq!(pool.stats().overran, 1);
        let next = submit(&pool, LONG, || PamOutcome::Success).expect("accepted");
        assert_eq!(
            rt.block_on(next.wait()),
            TicketResult::Completed(PamOutcome::Success)
        );
    }

    #[test]
    fn job_expired_in_queue_is_not_run() {
        let pool = PamPool::new(1, 4).expect("pool");
        let (first, release) = blocked_job(&pool, LONG);
        let ran = Arc::new(AtomicU64::new(0));
        let ran2 = Arc::clone(&ran);
        let late = submit(&pool, Duration::from_millis(50), move || {
            ran2.fetch_add(1, Relaxed);
            PamOutcome::Success
        })
        .expect("queued");
        let rt = runtime();
        assert_eq!(rt.block_on(late.wait()), TicketResult::DeadlinePassed);
        release.send(()).expect("worker waits");
        assert_eq!(
            rt.block_on(first.wait()),
            TicketResult::Completed(PamOutcome::Success)
        );
        wait_until("skipped", || pool.stats().expired_in_queue == 1);
        assert_eq!(ran.load(Relaxed), 0);
    }

    #[test]
    fn panic_answers_unavailable_and_worker_survives() {
        let pool = PamPool::new(1, 4).expect("pool");
        let rt = runtime();
        let boom = submit(&pool, LONG, || panic!("boom")).expect("accepted");
        match rt.block_on(boom.wait()) {
            TicketResult::Completed(PamOutcome::Unavailable { reason }) => {
                assert!(reason.contains("\"test\""), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let next = submit(&pool, LONG, || PamOutcome::Success).expect("accepted");
        assert_eq!(
            rt.block_on(next.wait()),
            TicketResult::Completed(PamOutcome::Success)
        );
        assert_eq!(pool.stats().panicked, 1);
    }

    #[test]
    fn dropped_ticket_does_not_cancel() {
        let pool = PamPool::new(1, 4).expect("pool");
        let (ticket, release) = blocked_job(&pool, LONG);
        drop(ticket);
        release.send(()).expect("job still running");
        wait_until("completed", || pool.stats().completed == 1);
        let rt = runtime();
        let next = submit(&pool, LONG, || PamOutcome::Success).expect("accepted");
        assert_eq!(
            rt.block_on(next.wait()),
            TicketResult::Completed(PamOutcome::Success)
        );
    }

    /// With the default settings nothing caps a class, yet a slow class that has work for
    /// every worker leaves one to each other class, and a fast job never waits behind it.
    #[test]
    fn a_slow_class_leaves_a_worker_to_the_others() {
        let pool = PamPool::new(4, 8).expect("pool");
        pool.set_classes([("slow", None), ("fast", None)]);
        let slow: Vec<_> = (0..6)
            .map(|_| blocked_job_as(&pool, "slow", LONG))
            .collect();
        wait_until("three slow jobs running", || pool.stats().busy == 3);
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.queued), (3, 3), "{stats:?}");
        // The fast job runs at once, and ends while every slow job still waits.
        let rt = runtime();
        let fast = submit_as(&pool, "fast", LONG, None, || PamOutcome::AuthFailed).expect("runs");
        assert_eq!(
            rt.block_on(fast.wait()),
            TicketResult::Completed(PamOutcome::AuthFailed)
        );
        let stats = pool.stats();
        assert_eq!(
            (stats.busy, stats.queued, stats.completed),
            (3, 3, 1),
            "{stats:?}"
        );
        // Queue slots are shared the same way: slow may fill all but one.
        let more: Vec<_> = (0..4)
            .map(|_| blocked_job_as(&pool, "slow", LONG))
            .collect();
        assert_eq!(
            submit_as(&pool, "slow", LONG, None, || PamOutcome::Success).err(),
            Some(PoolError::QueueFull)
        );
        let (fast, release_fast) = blocked_job_as(&pool, "fast", LONG);
        wait_until("the fast job running", || pool.stats().busy == 4);
        let (fast_queued, release_queued) = blocked_job_as(&pool, "fast", LONG);
        assert_eq!(pool.stats().queued, 8);
        for (_, release) in slow.iter().chain(&more) {
            release.send(()).expect("job waits");
        }
        release_fast.send(()).expect("job waits");
        release_queued.send(()).expect("job waits");
        for (ticket, _) in slow.into_iter().chain(more) {
            assert_eq!(
                rt.block_on(ticket.wait()),
                TicketResult::Completed(PamOutcome::Success)
            );
        }
        for ticket in [fast, fast_queued] {
            assert_eq!(
                rt.block_on(ticket.wait()),
                TicketResult::Completed(PamOutcome::Success)
            );
        }
    }

    /// Classes with waiting jobs are served in turn, each in the order its jobs came.
    #[test]
    fn waiting_classes_are_served_in_turn() {
        let pool = PamPool::new(1, 8).expect("pool");
        pool.set_classes([("a", None), ("b", None)]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (first, release) = blocked_job_as(&pool, "a", LONG);
        wait_until("a1 running", || pool.stats().busy == 1);
        let tickets: Vec<_> = [("a", "a2"), ("a", "a3"), ("b", "b1"), ("b", "b2")]
            .into_iter()
            .map(|(class, name)| {
                let order = Arc::clone(&order);
                submit_as(&pool, class, LONG, None, move || {
                    lock(&order).push(name);
                    PamOutcome::Success
                })
                .expect("queued")
            })
            .collect();
        release.send(()).expect("a1 waits");
        let rt = runtime();
        for ticket in std::iter::once(first).chain(tickets) {
            assert_eq!(
                rt.block_on(ticket.wait()),
                TicketResult::Completed(PamOutcome::Success)
            );
        }
        assert_eq!(*lock(&order), ["b1", "a2", "b2", "a3"]);
    }

    /// `max_concurrent`: a capped class waits for its own jobs; a cap raised by a reload
    /// lets the waiting job start.
    #[test]
    fn a_capped_class_waits_until_a_reload_raises_its_cap() {
        let pool = PamPool::new(4, 8).expect("pool");
        pool.set_classes([("capped", Some(1))]);
        let (first, release_first) = blocked_job_as(&pool, "capped", LONG);
        let (second, release_second) = blocked_job_as(&pool, "capped", LONG);
        wait_until("one running", || pool.stats().busy == 1);
        assert_eq!(pool.stats().queued, 1);
        pool.set_classes([("capped", Some(2))]);
        wait_until("both running", || pool.stats().busy == 2);
        assert_eq!(pool.stats().queued, 0);
        release_first.send(()).expect("waits");
        release_second.send(()).expect("waits");
        let rt = runtime();
        for ticket in [first, second] {
            assert_eq!(
                rt.block_on(ticket.wait()),
                TicketResult::Completed(PamOutcome::Success)
            );
        }
    }

    /// The start check is asked when a worker is about to start the job, with the time
    /// left; a job it refuses never runs, and its worker goes on to the next.
    #[test]
    fn a_job_its_check_refuses_is_not_started() {
        let pool = PamPool::new(1, 4).expect("pool");
        let (first, release) = blocked_job(&pool, LONG);
        wait_until("running", || pool.stats().busy == 1);
        let asked = Arc::new(Mutex::new(None));
        let ran = Arc::new(AtomicU64::new(0));
        let check: StartCheck = {
            let asked = Arc::clone(&asked);
            Box::new(move |left| {
                *lock(&asked) = Some(left);
                Err(NotStarted::Abandoned)
            })
        };
        let refused = {
            let ran = Arc::clone(&ran);
            submit_as(&pool, "test", LONG, Some(check), move || {
                ran.fetch_add(1, Relaxed);
                PamOutcome::Success
            })
            .expect("queued")
        };
        let next = submit(&pool, LONG, || PamOutcome::AuthFailed).expect("queued");
        assert_eq!(*lock(&asked), None, "not asked while it waits");
        release.send(()).expect("waits");
        let rt = runtime();
        assert_eq!(
            rt.block_on(first.wait()),
            TicketResult::Completed(PamOutcome::Success)
        );
        assert_eq!(rt.block_on(refused.finished()), Err(NotStarted::Abandoned));
        assert_eq!(
            rt.block_on(next.wait()),
            TicketResult::Completed(PamOutcome::AuthFailed)
        );
        assert_eq!(ran.load(Relaxed), 0);
        let left = lock(&asked).expect("asked");
        assert!(left > Duration::ZERO && left <= LONG, "{left:?}");
        assert_eq!(pool.stats().not_wanted, 1);
    }

    #[test]
    fn pool_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PamPool>();
        send_sync::<PamTicket>();
    }

    #[test]
    fn shutdown_refuses_new_work() {
        let pool = PamPool::new(2, 4).expect("pool");
        pool.shutdown();
        assert_eq!(
            submit(&pool, LONG, || PamOutcome::Success).err(),
            Some(PoolError::ShutDown)
        );
        assert!(PamPool::new(0, 1).is_err());
    }

    #[test]
    fn request_debug_hides_password() {
        let req = PamRequest {
            service: "svc".into(),
            identity: "alice".into(),
            password: Password::from_vec(b"hunter2".to_vec()),
            rhost: None,
            passcode_delimiter: None,
        };
        let text = format!("{req:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("********"));
    }
}
