//! A bounded pool of OS threads that runs PAM transactions (DESIGN §2 steps
//! 8–9, §3).
//!
//! libpam calls block, sometimes for minutes (an MFA push waits for a phone),
//! and cannot be cancelled. They therefore never run on the tokio runtime:
//! [`PamPool::submit`] hands a [`PamRequest`] to a fixed set of worker
//! threads through a bounded queue and returns a [`PamTicket`] at once. The
//! ticket resolves with the outcome or when the caller's deadline passes,
//! whichever comes first; the transaction itself always runs to its end.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
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

    /// Waits for the outcome, or until the deadline passes.
    ///
    /// Needs a tokio runtime with the time driver enabled.
    pub async fn wait(self) -> TicketResult {
        match tokio::time::timeout_at(self.deadline.into(), self.rx).await {
            Ok(reply) => reply_to_result(reply),
            Err(_elapsed) => TicketResult::DeadlinePassed,
        }
    }

    /// Waits for the worker however long it takes, ignoring the deadline
    /// except that a job which expired in the queue still reports
    /// [`TicketResult::DeadlinePassed`]. For callers that multiplex several
    /// waiters with their own deadlines onto one transaction (coalescing).
    pub async fn wait_for_worker(self) -> TicketResult {
        reply_to_result(self.rx.await)
    }
}

fn reply_to_result(reply: Result<Reply, oneshot::error::RecvError>) -> TicketResult {
    match reply {
        Ok(Reply::Done(outcome)) => TicketResult::Completed(outcome),
        Ok(Reply::Expired) => TicketResult::DeadlinePassed,
        // Only reachable if a worker died outside `catch_unwind`.
        Err(_) => TicketResult::Completed(PamOutcome::Unavailable {
            reason: "PAM worker dropped the request".to_owned(),
        }),
    }
}

/// A fixed set of `pam-worker-N` threads fed by a bounded queue.
///
/// Dropping the pool (or [`PamPool::shutdown`]) lets the workers finish the
/// queued jobs and exit; it does not wait for them.
pub struct PamPool {
    // Behind a mutex only so that `shutdown(&self)` can close the queue while
    // the pool is shared; `try_send` never blocks, so the lock is brief.
    sender: Mutex<Option<SyncSender<Job>>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for PamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PamPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PamPool {
    /// A pool of up to `workers` threads, started as work needs them, and a
    /// queue of `queue` jobs.
    ///
    /// `queue = 0` means no waiting room: a request is accepted only when a
    /// worker is idle and waiting at that moment (all workers start at once).
    ///
    /// # Errors
    /// `InvalidInput` for zero workers, or the OS error if the first thread
    /// cannot be spawned (the threads already started then exit).
    pub fn new(workers: usize, queue: usize) -> io::Result<Self> {
        if workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the PAM pool needs at least one worker",
            ));
        }
        let (sender, receiver) = sync_channel::<Job>(queue);
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            slots: (0..workers).map(|_| AtomicU64::new(IDLE)).collect(),
            receiver: Mutex::new(receiver),
            spawned: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            queue_capacity: queue,
            queued: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            expired_in_queue: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            overran: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        // Threads start when work needs them (see `spawn_if_needed`): every thread's
        // stack is a mapping that a forking PAM module (pam_exec) copies on each fork,
        // and an idle one still holds memory. Without a queue a request is accepted
        // only by a worker already waiting, so then all start now.
        let first = if queue == 0 { workers } else { 1 };
        for _ in 0..first {
            spawn_worker(&shared)?;
        }
        Ok(PamPool {
            sender: Mutex::new(Some(sender)),
            shared,
        })
    }

    /// Queues a PAM transaction and returns at once.
    ///
    /// `deadline` counts from now, so time spent in the queue counts too.
    ///
    /// # Errors
    /// [`PoolError::QueueFull`] when the queue is full, [`PoolError::ShutDown`]
    /// after [`PamPool::shutdown`]. The request (and its password) is dropped.
    pub fn submit(&self, request: PamRequest, deadline: Duration) -> Result<PamTicket, PoolError> {
        let service = request.service.clone();
        self.submit_work(
            service,
            deadline,
            Box::new(move |shared: &Shared| run_transaction(&request, shared)),
        )
    }

    /// Stops accepting requests. Queued jobs still run.
    pub fn shutdown(&self) {
        drop(lock(&self.sender).take());
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
        service: String,
        deadline: Duration,
        work: Work,
    ) -> Result<PamTicket, PoolError> {
        let now = Instant::now();
        let deadline = now.checked_add(deadline.min(MAX_DEADLINE)).unwrap_or(now);
        let (reply, rx) = oneshot::channel();
        let job = Job {
            service,
            deadline,
            reply,
            work,
        };
        let sender = lock(&self.sender);
        let Some(sender) = sender.as_ref() else {
            return Err(PoolError::ShutDown);
        };
        // Counted before sending so that a worker's decrement can never run
        // first and wrap the gauge below zero.
        self.shared.queued.fetch_add(1, SeqCst);
        match sender.try_send(job) {
            Ok(()) => {
                spawn_if_needed(&self.shared);
                Ok(PamTicket { rx, deadline })
            }
            Err(TrySendError::Full(_)) => {
                self.shared.queued.fetch_sub(1, SeqCst);
                self.shared.rejected_full.fetch_add(1, Relaxed);
                Err(PoolError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, SeqCst);
                Err(PoolError::ShutDown)
            }
        }
    }
}

/// Slot value of a worker that runs nothing; otherwise a slot holds the
/// running job's deadline in ms since `Shared::epoch`, plus one.
const IDLE: u64 = 0;

type Work = Box<dyn FnOnce(&Shared) -> PamOutcome + Send>;

struct Job {
    /// For logs and the panic diagnostic.
    service: String,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
    work: Work,
}

#[derive(Debug)]
enum Reply {
    Done(PamOutcome),
    Expired,
}

struct Shared {
    epoch: Instant,
    /// One per worker the pool may run (`pam.workers`), started or not.
    slots: Box<[AtomicU64]>,
    /// Idle workers queue up on the mutex; the one holding it waits in `recv`.
    receiver: Mutex<Receiver<Job>>,
    /// Workers started so far.
    spawned: AtomicUsize,
    /// Workers waiting for a job.
    idle: AtomicUsize,
    queue_capacity: usize,
    queued: AtomicUsize,
    started: AtomicU64,
    completed: AtomicU64,
    expired_in_queue: AtomicU64,
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

    fn run(&self, index: usize, job: Job) {
        let Job {
            service,
            deadline,
            reply,
            work,
        } = job;
        if Instant::now() >= deadline {
            self.expired_in_queue.fetch_add(1, Relaxed);
            tracing::debug!(service, "PAM job expired in the queue; not started");
            // The caller may be gone; that is fine.
            let _ = reply.send(Reply::Expired);
            return;
        }
        let Some(slot) = self.slots.get(index) else {
            return;
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
        let _ = reply.send(Reply::Done(outcome));
    }
}

/// Starts one more worker, unless all `pam.workers` run already.
fn spawn_worker(shared: &Arc<Shared>) -> io::Result<bool> {
    let index = shared.spawned.load(SeqCst);
    if index >= shared.slots.len()
        || shared
            .spawned
            .compare_exchange(index, index + 1, SeqCst, SeqCst)
            .is_err()
    {
        return Ok(false);
    }
    // Counted idle before it exists, so a submit racing with the start does not start
    // another for the same job.
    shared.idle.fetch_add(1, SeqCst);
    let worker = Arc::clone(shared);
    match thread::Builder::new()
        .name(format!("pam-worker-{index}"))
        .spawn(move || worker_loop(index, &worker))
    {
        Ok(_) => Ok(true),
        Err(e) => {
            shared.idle.fetch_sub(1, SeqCst);
            shared.spawned.fetch_sub(1, SeqCst);
            Err(e)
        }
    }
}

/// Starts workers while queued jobs outnumber idle workers.
///
/// A worker taking a job lowers `idle` before `queued`, so the difference this compares
/// never looks smaller than it is: at worst one worker too many starts, never one too few.
fn spawn_if_needed(shared: &Arc<Shared>) {
    while shared.queued.load(SeqCst) > shared.idle.load(SeqCst) {
        match spawn_worker(shared) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!("cannot start a PAM worker thread: {e}");
                return;
            }
        }
    }
}

fn worker_loop(index: usize, shared: &Arc<Shared>) {
    loop {
        // The guard is released before the job runs.
        let next = lock(&shared.receiver).recv();
        shared.idle.fetch_sub(1, SeqCst);
        match next {
            Ok(job) => {
                shared.queued.fetch_sub(1, SeqCst);
                shared.run(index, job);
                shared.idle.fetch_add(1, SeqCst);
            }
            Err(_) => return,
        }
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
        pool.submit_work("test".into(), deadline, Box::new(move |_: &Shared| f()))
    }

    /// A job that runs until `release` is signalled.
    fn blocked_job(pool: &PamPool, deadline: Duration) -> (PamTicket, mpsc::Sender<()>) {
        let (release, wait) = mpsc::channel::<()>();
        let ticket = submit(pool, deadline, move || {
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
        let (ticket, release) = blocked_job(&pool, Duration::from_millis(100));
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
