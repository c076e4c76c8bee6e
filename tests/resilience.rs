//! MFA-grade resilience (DESIGN §3) against real 389 and real libpam: retries join the
//! pending push instead of sending another, the PAM pool's limits answer busy or
//! unavailable instead of hanging, a slow route cannot starve a fast one (with the
//! default settings), and a transaction nobody waits for is not started.
//!
//! Pushes are held (`PamSetup::hold`) rather than timed: a push recorded while the hold
//! is taken is provably pending, and ends when the test lets it go.

mod common;

use common::*;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode};
use std::time::Duration;

const PASSDB: &str = "alice:alice-pampw:duo\nbob:bob-pampw:duo\ncarol:carol-pampw:duo\ndave:dave-pampw:duo\nerin:erin-pampw:csu\n";

/// The duo route (with `duo_extra`) and the csu route, `[pam]` settings `pam`, and
/// metrics.
fn routes(duo_extra: &str, pam: &str) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[pam]\n{pam}\n{}{}",
        route("duo", Some(INTERNAL), "duo", duo_extra),
        route("csu", Some(EXTERNAL), "csu", "")
    )
}

/// A counter or gauge of the proxy; 0 while it has not appeared.
fn metric(proxy: &Proxy, series: &str) -> f64 {
    proxy.metric(series).unwrap_or(0.0)
}

const SHARED_SESSIONS: &str = "ldap_pam_proxy_shared_sessions";
const SHARED_CONNECTIONS: &str = "ldap_pam_proxy_shared_connections";
const COALESCED: &str = "ldap_pam_proxy_binds_coalesced_total";
const IN_FLIGHT: &str = "ldap_pam_proxy_binds_rate_limited_total{reason=\"in_flight\"}";

/// Waits until `series` reaches `value`.
fn wait_metric(proxy: &Proxy, series: &str, value: f64) {
    assert!(
        eventually(Duration::from_secs(15), || metric(proxy, series) == value),
        "{series} is {}, not {value}\n{}",
        metric(proxy, series),
        proxy.log()
    );
}

/// What sssd does on its bind timeout: Abandon, close, and the same bind again on a new
/// connection. Every retry joins the one pending push, and the login succeeds.
#[test]
fn retries_on_new_connections_share_one_push() {
    let pam = PamSetup::new(PASSDB);
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    for retry in 1..=5 {
        c.send(LdapMsg::new(2, LdapOp::AbandonRequest(1)));
        drop(c);
        c = start_bind(&proxy, "alice", "alice-pampw");
        // It joined the pending push before its client gives up in turn.
        wait_metric(&proxy, COALESCED, f64::from(retry));
    }
    hold.release();
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
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let mut right = start_bind(&proxy, "bob", "bob-pampw");
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    let mut wrong = start_bind(&proxy, "bob", "not-bobs");
    // The gate has refused it (and counted the attempt) ...
    wait_metric(&proxy, IN_FLIGHT, 1.0);
    // ... but does not answer while the push is pending.
    assert!(
        !wrong.has_data_now(),
        "refused before the pending push ended"
    );
    assert!(!right.has_data_now());
    hold.release();
    assert_eq!(bind_result(&mut wrong), LdapResultCode::Busy);
    assert_eq!(bind_result(&mut right), LdapResultCode::Success);
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
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let mut user = start_bind(&proxy, "alice", "alice-pampw");
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    let mut thief = start_bind_from(&proxy, "127.0.0.2", "alice", "alice-pampw");
    wait_metric(&proxy, IN_FLIGHT, 1.0);
    hold.release();
    assert_eq!(bind_result(&mut thief), LdapResultCode::Busy);
    assert_eq!(bind_result(&mut user), LdapResultCode::Success);
    let mut thief = start_bind_from(&proxy, "127.0.0.2", "alice", "alice-pampw");
    assert_eq!(bind_result(&mut thief), LdapResultCode::Success);
    let pushes = pam.pushes();
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert!(
        pushes[0].ends_with(" 127.0.0.1") && pushes[1].ends_with(" 127.0.0.2"),
        "{pushes:?}"
    );
    assert_eq!(metric(&proxy, COALESCED), 0.0);
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
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", "workers = 1\nqueue = 1"));
    let mut running = start_bind(&proxy, "alice", "alice-pampw");
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    let mut queued = start_bind(&proxy, "bob", "bob-pampw");
    wait_metric(&proxy, "ldap_pam_proxy_pam_queue_depth", 1.0);
    // Answered while the push it would wait behind is still held.
    let mut refused = start_bind(&proxy, "carol", "carol-pampw");
    assert_eq!(bind_result(&mut refused), LdapResultCode::Busy);
    assert_eq!(pam.pushes().len(), 1);
    hold.release();
    assert_eq!(bind_result(&mut running), LdapResultCode::Success);
    assert_eq!(bind_result(&mut queued), LdapResultCode::Success);
    assert_eq!(pam.pushes().len(), 2);
}

/// Past the route's deadline the client gets unavailable; the worker still inside libpam
/// is reused once the push ends.
#[test]
fn deadline_answers_unavailable_and_the_worker_comes_back() {
    let pam = PamSetup::new(PASSDB);
    let hold = pam.hold();
    // Long enough for a loaded machine to start the push; it is held past the deadline.
    let proxy = Proxy::with_pam(&pam, &routes("timeout = \"3s\"", "workers = 1"));
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
    // The one worker is still inside libpam, held: stuck past its deadline.
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    wait_metric(&proxy, "ldap_pam_proxy_pam_workers{state=\"stuck\"}", 1.0);
    hold.release();
    wait_metric(&proxy, "ldap_pam_proxy_pam_workers{state=\"busy\"}", 0.0);
    let mut c = start_bind(&proxy, "dave", "dave-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
}

/// With duo capped at one worker, csu binds still find a free worker while duo binds
/// queue for theirs.
#[test]
fn a_capped_route_leaves_the_other_workers() {
    let pam = PamSetup::new(PASSDB);
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("max_concurrent = 1", "workers = 3"));
    let mut duo: Vec<RawClient> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| start_bind(&proxy, u, &format!("{u}-pampw")))
        .collect();
    wait_metric(&proxy, "ldap_pam_proxy_pam_queue_depth", 2.0);
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    let mut csu = start_bind(&proxy, "erin", "erin-pampw");
    assert_eq!(bind_result(&mut csu), LdapResultCode::Success);
    // Answered while the first push is still held and the others wait for it.
    assert_eq!(pam.pushes().len(), 1, "{:?}", pam.pushes());
    hold.release();
    for c in &mut duo {
        assert_eq!(bind_result(c), LdapResultCode::Success);
    }
    assert_eq!(pam.pushes().len(), 3);
}

/// Fairness with the default settings (64 workers, a queue of 1024, no max_concurrent):
/// 100 pending pushes of the duo route do not make a csu bind wait. It is answered while
/// every one of them is still pending, 63 of them held inside libpam and 37 waiting for a
/// worker; then all 100 succeed.
#[test]
fn a_hundred_pending_pushes_do_not_hold_up_a_fast_route() {
    let uids: Vec<String> = {
        let prefix = unique("fair");
        (0..100).map(|i| format!("{prefix}u{i:03}")).collect()
    };
    let people = Subtree::create(&unique("Fairness"), None, &uids);
    let passdb: String = uids
        .iter()
        .map(|u| format!("{u}:{u}-pw:duo\n"))
        .chain(["erin:erin-pampw:csu\n".to_owned()])
        .collect();
    let pam = PamSetup::new(&passdb);
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    assert_eq!(
        metric(&proxy, "ldap_pam_proxy_pam_workers_capacity"),
        64.0,
        "the default pam.workers"
    );
    let mut slow: Vec<RawClient> = uids
        .iter()
        .map(|u| start_bind_dn(&proxy, &people.user(u), &format!("{u}-pw")))
        .collect();
    // Every worker the duo route may take is inside a held push; the rest wait.
    wait_metric(&proxy, "ldap_pam_proxy_pam_queue_depth", 37.0);
    assert!(
        eventually(Duration::from_secs(30), || pam.pushes().len() == 63),
        "{} pushes",
        pam.pushes().len()
    );
    let mut fast = start_bind(&proxy, "erin", "erin-pampw");
    assert_eq!(bind_result(&mut fast), LdapResultCode::Success);
    // Still all pending: none has an answer, none ended.
    assert_eq!(pam.pushes().len(), 63);
    assert_eq!(metric(&proxy, "ldap_pam_proxy_pam_queue_depth"), 37.0);
    assert_eq!(
        metric(
            &proxy,
            "ldap_pam_proxy_pam_transactions_total{service=\"duo\",outcome=\"success\"}"
        ),
        0.0
    );
    assert!(slow.iter().all(|c| !c.has_data_now()));
    hold.release();
    for c in &mut slow {
        assert_eq!(bind_result(c), LdapResultCode::Success);
    }
    assert_eq!(pam.pushes().len(), 100);
}

/// No push for nobody: a bind waiting for a worker whose client leaves is not started
/// once nobody has waited on it for `pam.coalesce_grace` (here 0 s); it is counted.
#[test]
fn a_waiting_transaction_whose_client_left_is_not_started() {
    let pam = PamSetup::new(PASSDB);
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", "workers = 1\ncoalesce_grace = \"0s\""));
    let mut alice = start_bind(&proxy, "alice", "alice-pampw");
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    let bob = start_bind(&proxy, "bob", "bob-pampw");
    wait_metric(&proxy, "ldap_pam_proxy_pam_queue_depth", 1.0);
    drop(bob);
    assert!(
        eventually(Duration::from_secs(15), || proxy
            .log()
            .contains("bind left pending: client disconnected")),
        "{}",
        proxy.log()
    );
    hold.release();
    assert_eq!(bind_result(&mut alice), LdapResultCode::Success);
    wait_metric(
        &proxy,
        "ldap_pam_proxy_pam_transactions_skipped_total{reason=\"abandoned\"}",
        1.0,
    );
    assert_eq!(pam.pushes(), ["alice 127.0.0.1"]);
    // Bob, back, gets a push of his own.
    let mut bob = start_bind(&proxy, "bob", "bob-pampw");
    assert_eq!(bind_result(&mut bob), LdapResultCode::Success);
    assert_eq!(pam.pushes().len(), 2);
}

/// A client that leaves during its PAM bind leaks nothing: its connections close (the
/// gauges go back to exactly 0), and the transaction's result still serves a retry.
#[test]
fn leaving_during_a_pending_bind_leaks_nothing() {
    let pam = PamSetup::new(PASSDB);
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &routes("", ""));
    let first = start_bind(&proxy, "dave", "dave-pampw");
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    drop(first);
    for joined in 1..=4 {
        let c = start_bind(&proxy, "dave", "dave-pampw");
        wait_metric(&proxy, COALESCED, f64::from(joined));
        drop(c);
    }
    let mut c = start_bind(&proxy, "dave", "dave-pampw");
    wait_metric(&proxy, COALESCED, 5.0);
    hold.release();
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
    assert_eq!(pam.pushes().len(), 1);
    // The last client is bound, on the shared service connection; the others are gone,
    // and so are their own backend connections.
    wait_metric(&proxy, "ldap_pam_proxy_client_connections", 1.0);
    assert_eq!(proxy.metric(SHARED_SESSIONS), Some(1.0));
    assert_eq!(proxy.metric(SHARED_CONNECTIONS), Some(1.0));
    assert_eq!(
        proxy.metric("ldap_pam_proxy_backend_connections"),
        Some(1.0)
    );
    drop(c);
    wait_metric(&proxy, "ldap_pam_proxy_client_connections", 0.0);
    wait_metric(&proxy, SHARED_SESSIONS, 0.0);
    // The shared connection stays for the next PAM-bound client.
    assert_eq!(
        proxy.metric("ldap_pam_proxy_backend_connections"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("ldap_pam_proxy_client_connections_total"),
        Some(6.0)
    );
}
