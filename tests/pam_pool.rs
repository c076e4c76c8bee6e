//! The PAM pool against real libpam, with pam_wrapper standing in for
//! `/etc/pam.d`.
//!
//! pam_wrapper only works when preloaded into the process that calls PAM, and
//! reads its configuration when it loads. So each test re-runs this test
//! binary for itself alone (`<name> --exact`) with the pam_wrapper
//! environment, and the child runs the real body. The parent renders the test
//! services from `pam.d/test/` into a temporary directory first.

use std::fs;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ldap_pam_proxy::pam_pool::{PamOutcome, PamPool, PamRequest, PoolError, TicketResult};
use ldap_pam_proxy::secret::Password;

mod common;

use common::PamSetup;
use PamOutcome::*;
use TicketResult::{Completed, DeadlinePassed};

/// Set in the child: the PAM setup directory of its test.
const CHILD_MARKER: &str = "PAM_POOL_TEST_STATE";
/// Every test password contains this, so the logs can be checked for it.
const PW: &str = "s3cr3t-pw";

/// `user:password:service` — pam_matrix's account check passes only for the
/// service named in the third field.
const PASSDB: &str = "\
alice:s3cr3t-pw:csu
bob:s3cr3t-pw:elsewhere
carol:s3cr3t-pw:duo
dave:s3cr3t-pw:acct-expired
eve:eve:echo-on
frank:s3cr3t-pw:echo-on
grace:s3cr3t-pw:passcode
ivan:s3cr3t-pw,x:passcode
";
/// Second factor for the `passcode` services.
const PASSCODES: &str = "\
grace:123456:passcode
ivan:42:passcode
";

/// Declares a test whose body runs in a child process under pam_wrapper.
macro_rules! pam_test {
    ($name:ident, |$t:ident| $body:block) => {
        #[test]
        fn $name() {
            under_pam_wrapper(stringify!($name), |$t: &PamSetup| $body);
        }
    };
}

fn under_pam_wrapper(name: &str, body: impl FnOnce(&PamSetup)) {
    if let Some(root) = std::env::var_os(CHILD_MARKER) {
        let setup = PamSetup::existing(root.into());
        fs::write(setup.state().join("started"), "").expect("started marker");
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .try_init();
        return body(&setup);
    }
    let setup = PamSetup::new(PASSDB);
    setup.write_state("passcodes", PASSCODES);
    let state = setup.state();

    let child = {
        // pam_wrapper picks its private copy of the services, /tmp/pam.<c>,
        // at process start with an unlocked check-then-create: two processes
        // starting together can share (and overwrite) one copy. So children
        // start one at a time; they may then run in parallel.
        let _one_at_a_time = SPAWN_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_MARKER, setup.root())
            .envs(setup.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run child");
        wait_until("the child to start", || {
            state.join("started").exists() || matches!(child.try_wait(), Ok(Some(_)))
        });
        child
    };
    let out = child.wait_with_output().expect("child output");
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown on failure or with --nocapture: the child's PAM conversation log.
    println!("{output}");
    assert!(
        out.status.success() && output.contains("1 passed"),
        "child run of {name} failed; its output is above"
    );
    assert!(!output.contains(PW), "a password reached the output above");
}

static SPAWN_LOCK: Mutex<()> = Mutex::new(());

fn request(service: &str, identity: &str, password: &str) -> PamRequest {
    PamRequest {
        service: service.into(),
        identity: identity.into(),
        password: Password::from_vec(password.as_bytes().to_vec()),
        rhost: Some("192.0.2.7".into()),
        passcode_delimiter: None,
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(future)
}

const LONG: Duration = Duration::from_secs(30);

/// One transaction on a fresh pool.
fn authenticate(req: PamRequest) -> PamOutcome {
    let pool = PamPool::new(1, 1).expect("pool");
    let ticket = pool.submit(req, LONG).expect("accepted");
    match block_on(ticket.wait()) {
        Completed(outcome) => outcome,
        DeadlinePassed => panic!("deadline passed"),
    }
}

fn check(service: &str, identity: &str, password: &str) -> PamOutcome {
    authenticate(request(service, identity, password))
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

pam_test!(success, |_t| {
    assert_eq!(check("csu", "alice", PW), Success);
});

pam_test!(wrong_password, |_t| {
    assert_eq!(check("csu", "alice", "wrong"), AuthFailed);
});

// pam_matrix answers PAM_AUTH_ERR, not PAM_USER_UNKNOWN, for a user missing
// from its passdb.
pam_test!(unknown_user_is_auth_error_with_pam_matrix, |_t| {
    assert_eq!(check("csu", "nobody", PW), AuthFailed);
});

pam_test!(user_of_another_service_denied_at_account, |_t| {
    assert_eq!(check("csu", "bob", PW), PermissionDenied);
});

pam_test!(pam_debug_codes, |_t| {
    assert_eq!(check("acct-expired", "dave", PW), AccountExpired);
    assert_eq!(check("acct-newtok", "dave", PW), NewAuthtokRequired);
    assert_eq!(check("acct-denied", "dave", PW), PermissionDenied);
    assert_eq!(check("maxtries", "dave", PW), MaxTries);
    // The account check runs only after a successful authentication.
    assert_eq!(check("acct-expired", "dave", "wrong"), AuthFailed);
    match check("syserr", "dave", PW) {
        Unavailable { reason } => {
            assert!(reason.contains("\"syserr\""), "{reason}");
            assert!(reason.contains("authentication"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
});

pam_test!(missing_service_is_unavailable, |_t| {
    match check("no-such-service", "alice", PW) {
        Unavailable { reason } => assert!(reason.contains("\"no-such-service\""), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
});

// Like 389, echo-on prompts get the identity: pam_matrix's `echo` mode then
// compares the user name with the stored password.
pam_test!(echo_on_prompt_gets_identity, |_t| {
    assert_eq!(check("echo-on", "frank", PW), AuthFailed);
    assert_eq!(check("echo-on", "eve", "anything"), Success);
});

pam_test!(passcode_split_at_last_delimiter, |_t| {
    let with_delimiter = |service: &str, user: &str, password: &str| {
        let mut req = request(service, user, password);
        req.passcode_delimiter = Some(",".into());
        authenticate(req)
    };
    assert_eq!(
        with_delimiter("passcode", "grace", "s3cr3t-pw,123456"),
        Success
    );
    assert_eq!(
        with_delimiter("passcode", "ivan", "s3cr3t-pw,x,42"),
        Success
    );
    assert_eq!(
        with_delimiter("passcode", "grace", "s3cr3t-pw,999"),
        AuthFailed
    );
    assert_eq!(
        with_delimiter("passcode-echo", "grace", "s3cr3t-pw,123456"),
        Success
    );
    // Without the delimiter both prompts get the whole password.
    assert_eq!(with_delimiter("passcode", "grace", PW), AuthFailed);
    assert_eq!(check("passcode", "grace", "s3cr3t-pw,123456"), AuthFailed);
});

pam_test!(duo_one_push_per_transaction, |t| {
    assert_eq!(check("duo", "carol", PW), Success);
    assert_eq!(check("duo", "carol", "wrong"), AuthFailed);
    assert_eq!(t.pushes(), ["carol 192.0.2.7", "carol 192.0.2.7"]);
});

// Held pushes keep the worker busy for as long as the test needs: no window of
// wall-clock time decides what is running, waiting or refused.
pam_test!(queue_full, |t| {
    let hold = t.hold();
    let pool = PamPool::new(1, 1).expect("pool");
    let first = pool
        .submit(request("duo", "carol", PW), LONG)
        .expect("runs");
    wait_until("the first push", || t.pushes().len() == 1);
    let second = pool
        .submit(request("duo", "carol", PW), LONG)
        .expect("queued");
    assert_eq!(pool.stats().queued, 1);
    let third = pool.submit(request("duo", "carol", PW), LONG);
    assert_eq!(third.err(), Some(PoolError::QueueFull));
    // A client that went away does not cancel its transaction.
    drop(first);
    hold.release();
    assert_eq!(block_on(second.wait()), Completed(Success));
    assert_eq!(pool.stats().rejected_full, 1);
    assert_eq!(pool.transactions_started(), 2);
    assert_eq!(t.pushes().len(), 2);
});

pam_test!(deadline_passes_worker_stuck_then_reused, |t| {
    let hold = t.hold();
    let pool = PamPool::new(1, 4).expect("pool");
    // The deadline leaves a loaded machine time to start the transaction; once its push
    // is recorded it is inside libpam, held there until the test lets go.
    let slow = pool
        .submit(request("duo", "carol", PW), Duration::from_secs(5))
        .expect("accepted");
    wait_until("the push", || t.pushes().len() == 1);
    assert_eq!(block_on(slow.wait()), DeadlinePassed);
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.stuck), (1, 1), "{stats:?}");

    hold.release();
    wait_until("libpam to return", || pool.stats().busy == 0);
    assert_eq!(pool.stats().stuck, 0);
    assert_eq!(pool.stats().overran, 1);

    let next = pool
        .submit(request("duo", "carol", PW), LONG)
        .expect("accepted");
    assert_eq!(block_on(next.wait()), Completed(Success));
    assert_eq!(pool.transactions_started(), 2);
    assert_eq!(t.pushes().len(), 2);
});

pam_test!(job_expired_in_queue_never_reaches_pam, |t| {
    let hold = t.hold();
    let pool = PamPool::new(1, 4).expect("pool");
    let first = pool
        .submit(request("duo", "carol", PW), LONG)
        .expect("runs");
    wait_until("the first push", || t.pushes().len() == 1);
    let late = pool.submit(request("duo", "carol", PW), Duration::from_millis(300));
    // Its deadline passes while the worker is held by the first.
    assert_eq!(block_on(late.expect("queued").wait()), DeadlinePassed);
    hold.release();
    assert_eq!(block_on(first.wait()), Completed(Success));
    wait_until("the expired job to be dropped", || {
        pool.stats().expired_in_queue == 1
    });
    assert_eq!(pool.transactions_started(), 1);
    assert_eq!(t.pushes().len(), 1);
});

// Overlap is shown by all four transactions being inside libpam at once, held there,
// not by wall time.
pam_test!(concurrent_transactions_overlap, |t| {
    let hold = t.hold();
    let pool = PamPool::new(4, 4).expect("pool");
    let tickets: Vec<_> = (0..4)
        .map(|_| {
            pool.submit(request("duo", "carol", PW), LONG)
                .expect("accepted")
        })
        .collect();
    wait_until("four pushes", || t.pushes().len() == 4);
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.completed), (4, 0), "{stats:?}");
    hold.release();
    for ticket in tickets {
        assert_eq!(block_on(ticket.wait()), Completed(Success));
    }
    assert_eq!(pool.transactions_started(), 4);
    assert_eq!(t.pushes().len(), 4);
});

// Fairness between the pool's classes (here: the PAM services, as the gate names its
// routes): duo pushes that would take every worker leave one to csu, whose transaction
// ends while all of them are held.
pam_test!(a_slow_service_leaves_a_worker_to_a_fast_one, |t| {
    let hold = t.hold();
    let pool = PamPool::new(3, 8).expect("pool");
    pool.set_classes([("duo", None), ("csu", None)]);
    let duo: Vec<_> = (0..5)
        .map(|_| {
            pool.submit(request("duo", "carol", PW), LONG)
                .expect("accepted")
        })
        .collect();
    wait_until("two pushes", || t.pushes().len() == 2);
    let csu = pool
        .submit(request("csu", "alice", PW), LONG)
        .expect("accepted");
    assert_eq!(block_on(csu.wait()), Completed(Success));
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.queued), (2, 3), "{stats:?}");
    assert_eq!(t.pushes().len(), 2, "every duo push still held");
    hold.release();
    for ticket in duo {
        assert_eq!(block_on(ticket.wait()), Completed(Success));
    }
    assert_eq!(t.pushes().len(), 5);
});
