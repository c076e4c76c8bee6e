//! MFA-grade resilience (DESIGN §3) against real 389 and real libpam: retries join the
//! pending push instead of sending another, the PAM pool's limits answer busy or
//! unavailable instead of hanging, and a slow service cannot starve a fast one.

mod common;

use common::*;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode};
use std::time::{Duration, Instant};

const PASSDB: &str = "alice:alice-pampw:duo\nbob:bob-pampw:duo\ncarol:carol-pampw:duo\ndave:dave-pampw:duo\nerin:erin-pampw:csu\n";

fn routes(duo_extra: &str, pam: &str) -> String {
    format!(
        r#"
[pam]
{pam}

[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false
{duo_extra}

[[route]]
name = "csu"
filter = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))"
pam_service = "csu"
secure = false
"#
    )
}

/// What sssd does on its bind timeout: Abandon, close, and the same bind again on a new
/// connection. Every retry must join the one pending push, and the login succeed.
#[test]
fn retries_on_new_connections_share_one_push() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(5);
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    for _ in 0..5 {
        let mut c = start_bind(&proxy, "alice", "alice-pampw");
        std::thread::sleep(Duration::from_secs(2));
        c.send(LdapMsg::new(2, LdapOp::AbandonRequest(1)));
        drop(c);
    }
    // The push was approved at about 5 s; this retry, at about 10 s, joins its result.
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
    let (_, who) = c.exchange(whoami_request(3));
    let LdapOp::ExtendedResponse(r) = who.op else {
        panic!("{who:?}")
    };
    assert_eq!(
        r.value.as_deref(),
        Some(format!("dn:{}", user("alice")).as_bytes())
    );
    assert_eq!(
        pam.pushes().len(),
        1,
        "one login, one push: {:?}",
        pam.pushes()
    );
}

/// A different password is never served by another bind's transaction: while one is in
/// flight it is refused (busy) without a push, and not before the transaction ends (an
/// instant refusal would be free guessing with a timing oracle); afterwards it gets its
/// own transaction.
#[test]
fn a_different_password_is_not_coalesced() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(3);
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let mut right = start_bind(&proxy, "bob", "bob-pampw");
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 1));
    let asked = Instant::now();
    let mut wrong = start_bind(&proxy, "bob", "not-bobs");
    assert_eq!(bind_result(&mut wrong), LdapResultCode::Busy);
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "refused after {:?}, before the pending push ended",
        asked.elapsed()
    );
    assert_eq!(bind_result(&mut right), LdapResultCode::Success);
    pam.set_duo_delay(0);
    // The grace window keeps only identical binds joinable.
    let mut wrong = start_bind(&proxy, "bob", "not-bobs");
    assert_eq!(bind_result(&mut wrong), LdapResultCode::InvalidCredentials);
    assert_eq!(pam.pushes().len(), 2, "{:?}", pam.pushes());
}

/// The right password from another address neither joins the user's pending push nor
/// reuses its approval in the grace window: MFA is there to stop whoever else holds the
/// password. That bind gets a push of its own, with its own address as PAM_RHOST.
#[test]
fn another_address_never_joins_a_pending_push() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(3);
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let mut user = start_bind(&proxy, "alice", "alice-pampw");
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 1));
    let mut thief = start_bind_from(&proxy, "127.0.0.2", "alice", "alice-pampw");
    assert_eq!(bind_result(&mut thief), LdapResultCode::Busy);
    assert_eq!(bind_result(&mut user), LdapResultCode::Success);
    pam.set_duo_delay(0);
    let mut thief = start_bind_from(&proxy, "127.0.0.2", "alice", "alice-pampw");
    assert_eq!(bind_result(&mut thief), LdapResultCode::Success);
    let pushes = pam.pushes();
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert!(
        pushes[0].ends_with(" 127.0.0.1") && pushes[1].ends_with(" 127.0.0.2"),
        "{pushes:?}"
    );
}

/// The push-fatigue guard: at most max_attempts_per_minute attempts per entry from one
/// client address. Another address is not locked out by them.
#[test]
fn attempts_per_minute_are_limited_per_entry_and_address() {
    let pam = PamSetup::new(PASSDB);
    let proxy = Proxy::with_pam(&pam, &routes("", "max_attempts_per_minute = 2"));
    for pw in ["wrong-1", "wrong-2"] {
        let mut c = start_bind(&proxy, "carol", pw);
        assert_eq!(bind_result(&mut c), LdapResultCode::InvalidCredentials);
    }
    let mut c = start_bind(&proxy, "carol", "carol-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Busy);
    // Carol, from another address, still logs in.
    let mut c = start_bind_from(&proxy, "127.0.0.2", "carol", "carol-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
    // Another user is not affected.
    let mut c = start_bind(&proxy, "dave", "dave-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
    assert_eq!(pam.pushes().len(), 4, "{:?}", pam.pushes());
}

#[test]
fn full_queue_answers_busy_at_once() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(3);
    let proxy = Proxy::with_pam(&pam, &routes("", "workers = 1\nqueue = 1"));
    let mut running = start_bind(&proxy, "alice", "alice-pampw");
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 1));
    let mut queued = start_bind(&proxy, "bob", "bob-pampw");
    // Give the queued bind time to reach the queue before the third arrives.
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = start_bind(&proxy, "carol", "carol-pampw");
    assert_eq!(bind_result(&mut refused), LdapResultCode::Busy);
    assert_eq!(bind_result(&mut running), LdapResultCode::Success);
    assert_eq!(bind_result(&mut queued), LdapResultCode::Success);
    assert_eq!(pam.pushes().len(), 2);
}

/// Past the route's deadline the client gets unavailable; the worker still inside libpam
/// is reused once the script ends.
#[test]
fn deadline_answers_unavailable_and_the_worker_comes_back() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(3);
    let proxy = Proxy::with_pam(&pam, &routes("timeout = \"1s\"", "workers = 1"));
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    let LdapOp::BindResponse(r) = c.recv().expect("answer").op else {
        panic!()
    };
    assert_eq!(r.res.code, LdapResultCode::Unavailable);
    assert!(
        r.res.message.contains("duo"),
        "names the service: {}",
        r.res.message
    );
    pam.set_duo_delay(0);
    // The one worker is busy until the 3 s script ends; then it serves the next bind.
    assert!(
        eventually(Duration::from_secs(15), || {
            let mut c = start_bind(&proxy, "dave", "dave-pampw");
            bind_result(&mut c) == LdapResultCode::Success
        }),
        "the worker never came back:\n{}",
        proxy.log()
    );
}

/// With duo capped at one worker, csu binds still find a free worker while duo binds
/// queue for theirs.
#[test]
fn a_slow_route_cannot_take_every_worker() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(4);
    let proxy = Proxy::with_pam(&pam, &routes("max_concurrent = 1", "workers = 2"));
    let mut duo: Vec<RawClient> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| start_bind(&proxy, u, &format!("{u}-pampw")))
        .collect();
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 1));
    let mut csu = start_bind(&proxy, "erin", "erin-pampw");
    assert_eq!(bind_result(&mut csu), LdapResultCode::Success);
    // Answered while the first push was still pending and the others not yet started.
    assert_eq!(pam.pushes().len(), 1, "{:?}", pam.pushes());
    for c in &mut duo {
        assert_eq!(bind_result(c), LdapResultCode::Success);
    }
    assert_eq!(pam.pushes().len(), 3);
}

/// A client that leaves during its PAM bind leaks nothing: its sockets close, and the
/// transaction's result still serves a retry.
#[test]
fn leaving_during_a_pending_bind_leaks_nothing() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(2);
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let baseline = proxy.open_sockets();
    for _ in 0..5 {
        drop(start_bind(&proxy, "dave", "dave-pampw"));
    }
    let mut c = start_bind(&proxy, "dave", "dave-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
    drop(c);
    assert_eq!(pam.pushes().len(), 1);
    // The lookup pool keeps its service connections; client sockets all close.
    let pool = 4;
    assert!(
        eventually(Duration::from_secs(10), || proxy.open_sockets()
            <= baseline + pool),
        "{} sockets open, baseline {baseline}",
        proxy.open_sockets()
    );
}
