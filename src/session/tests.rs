//! The session core driven by byte fixtures: no sockets, no PAM, no directory.

use super::state::{Action, Decision, SessionState};
use crate::bind::{Refusal, Trail};
use crate::config::Config;
use crate::message;
use crate::proto::{encode, LdapError};
use ldap3_proto::proto::*;
use ldap3_proto::LdapCodec;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::codec::Decoder;

const ALICE: &str = "uid=alice,ou=People,dc=example,dc=com";
const STARTTLS: &str = "1.3.6.1.4.1.1466.20037";
const WHOAMI: &str = "1.3.6.1.4.1.4203.1.11.3";

/// A configuration with one route that is not secure (binds are decided on clear
/// connections), plus `extra` TOML.
fn config(extra: &str) -> Arc<Config> {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("svc.pw");
    std::fs::write(&pw, "x").unwrap();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:1\"\n{extra}\n[backend]\nuris = [\"ldap://127.0.0.1:2\"]\nservice_dn = \"cn=svc,dc=example,dc=com\"\nservice_password_file = \"{}\"\n[[route]]\nname = \"duo\"\npam_service = \"duo\"\nsecure = false\n",
        pw.display()
    );
    Arc::new(Config::parse(&text, "t.toml").unwrap())
}

/// A new session: its backend connection is being opened while the client sends its
/// first request.
fn core_with(config: Arc<Config>, tls_available: bool, tls: bool) -> SessionState {
    let mut c = SessionState::new(
        "127.0.0.1:40000".parse().unwrap(),
        Box::new(move || Arc::clone(&config)),
        tls_available,
        tls,
    );
    assert!(matches!(actions(&mut c)[..], [Action::Connect]));
    c
}

fn core() -> SessionState {
    core_with(config(""), true, false)
}

fn bytes(msg: LdapMsg) -> Vec<u8> {
    encode(msg).to_vec()
}

fn bind(msgid: i32, dn: &str, pw: &str) -> Vec<u8> {
    bytes(LdapMsg::new(
        msgid,
        LdapOp::BindRequest(LdapBindRequest {
            version: 3,
            dn: dn.into(),
            cred: LdapBindCred::Simple(pw.into()),
        }),
    ))
}

fn search(msgid: i32) -> Vec<u8> {
    search_with(msgid, "ou=People,dc=example,dc=com", "x")
}

fn search_with(msgid: i32, base: &str, value: &str) -> Vec<u8> {
    bytes(LdapMsg::new(
        msgid,
        LdapOp::SearchRequest(LdapSearchRequest {
            base: base.into(),
            scope: LdapSearchScope::Subtree,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter: LdapFilter::Equality("cn".into(), value.into()),
            attrs: vec![],
        }),
    ))
}

fn extended(msgid: i32, oid: &str) -> Vec<u8> {
    bytes(LdapMsg::new(
        msgid,
        LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: oid.into(),
            value: None,
        }),
    ))
}

fn abandon(msgid: i32, target: i32) -> Vec<u8> {
    bytes(LdapMsg::new(msgid, LdapOp::AbandonRequest(target)))
}

fn unbind(msgid: i32) -> Vec<u8> {
    bytes(LdapMsg::new(msgid, LdapOp::UnbindRequest))
}

fn entry(msgid: i32, dn: &str, size: usize) -> Vec<u8> {
    bytes(LdapMsg::new(
        msgid,
        LdapOp::SearchResultEntry(LdapSearchResultEntry {
            dn: dn.into(),
            attributes: vec![LdapPartialAttribute {
                atype: "description".into(),
                vals: vec![vec![b'x'; size]],
            }],
        }),
    ))
}

fn done(msgid: i32) -> Vec<u8> {
    bytes(LdapMsg::new(
        msgid,
        LdapOp::SearchResultDone(LdapResult {
            code: LdapResultCode::Success,
            matcheddn: String::new(),
            message: String::new(),
            referral: vec![],
        }),
    ))
}

fn bind_success(msgid: i32) -> Vec<u8> {
    crate::proto::bind_response(msgid, &LdapError::success(), vec![]).to_vec()
}

/// The client sends `b`.
fn send(c: &mut SessionState, b: &[u8]) {
    c.client_in().extend_from_slice(b);
    c.client_data(Instant::now());
}

/// The backend sends `b`.
fn answer(c: &mut SessionState, b: &[u8]) {
    c.backend_in().extend_from_slice(b);
    c.backend_data();
}

fn actions(c: &mut SessionState) -> Vec<Action> {
    std::iter::from_fn(|| c.next_action()).collect()
}

/// What the client has been sent, decoded, and taken from the buffer.
fn to_client(c: &mut SessionState) -> Vec<LdapMsg> {
    let mut buf = c.client_out().split();
    let mut codec = LdapCodec::new(Some(8 << 20), None);
    std::iter::from_fn(|| codec.decode(&mut buf).unwrap()).collect()
}

/// What the backend has been sent, taken from the buffer.
fn to_backend(c: &mut SessionState) -> Vec<u8> {
    c.backend_out().split().to_vec()
}

fn code(m: &LdapMsg) -> LdapResultCode {
    match &m.op {
        LdapOp::BindResponse(r) => r.res.code.clone(),
        LdapOp::SearchResultDone(r) => r.code.clone(),
        LdapOp::ExtendedResponse(r) => r.res.code.clone(),
        other => panic!("no result code in {other:?}"),
    }
}

/// A session whose backend connection is up, with nothing in flight.
fn connected() -> SessionState {
    let mut c = core();
    send(&mut c, &search(1));
    c.connected(Ok(()));
    to_backend(&mut c);
    answer(&mut c, &done(1));
    to_client(&mut c);
    c
}

/// The client sends bind `msgid` as alice, and the proxy decides to forward it (with the
/// attempt budget `budget`).
fn forward_bind(c: &mut SessionState, msgid: i32, budget: Option<&str>) {
    send(c, &bind(msgid, ALICE, "pw"));
    actions(c);
    c.bind_decided(
        Decision::Forward {
            reason: "no route matches",
            budget: budget.map(str::to_owned),
        },
        Trail::default(),
    );
}

/// A session bound through PAM as alice, relaying as the service account.
fn pam_bound() -> SessionState {
    let mut c = core();
    send(&mut c, &bind(1, ALICE, "pw"));
    assert!(matches!(actions(&mut c)[..], [Action::Decide { .. }]));
    c.bind_decided(Decision::Bound { dn: ALICE.into() }, Trail::default());
    // The connection opened for the session at the start gives way to the service link.
    assert!(matches!(
        actions(&mut c)[..],
        [Action::RetireLink, Action::InstallServiceLink]
    ));
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::Success);
    c
}

#[test]
fn relayed_requests_and_responses_pass_byte_for_byte() {
    let mut c = core();
    let req = search(7);
    send(&mut c, &req);
    assert!(
        actions(&mut c).is_empty(),
        "the connection is already being opened"
    );
    assert!(c.busy());
    c.connected(Ok(()));
    assert_eq!(to_backend(&mut c), req);
    let reply = [entry(7, ALICE, 10), done(7)].concat();
    answer(&mut c, &reply);
    assert_eq!(&c.client_out()[..], &reply[..]);
    assert!(!c.busy(), "the final response ends the operation");
}

#[test]
fn requests_behind_a_pending_bind_wait_for_it_in_order() {
    let mut c = connected();
    send(
        &mut c,
        &[bind(2, ALICE, "pw"), search(3), search(4)].concat(),
    );
    assert!(matches!(actions(&mut c)[..], [Action::Decide { .. }]));
    assert!(
        to_backend(&mut c).is_empty(),
        "nothing passes a pending bind"
    );
    c.bind_decided(
        Decision::Forward {
            reason: "no route matches",
            budget: None,
        },
        Trail::default(),
    );
    let sent = to_backend(&mut c);
    let bind_len = bind(2, ALICE, "pw").len();
    assert_eq!(
        &sent[..bind_len],
        &bind(2, ALICE, "pw")[..],
        "the proxy's encoding"
    );
    assert_eq!(&sent[bind_len..], &[search(3), search(4)].concat()[..]);
}

#[test]
fn held_requests_are_bounded_by_count_and_bytes() {
    let mut c = connected();
    send(&mut c, &bind(2, ALICE, "pw"));
    actions(&mut c);
    // 64 requests: the session stops reading; more stay unread in the client buffer.
    let many: Vec<u8> = (3..80).flat_map(search).collect();
    send(&mut c, &many);
    assert!(!c.may_read_client());
    assert!(
        !c.client_in().is_empty(),
        "requests past the limit stay unread"
    );
    c.bind_decided(
        Decision::Fail(LdapError::new(LdapResultCode::InvalidCredentials, "no").into()),
        Trail::default(),
    );
    assert_eq!(
        to_backend(&mut c),
        many,
        "all of them go, in order, once decided"
    );
    assert!(c.may_read_client());

    // Bytes: three requests of 100 KiB fill the 256 KiB.
    let mut c = connected();
    send(&mut c, &bind(2, ALICE, "pw"));
    actions(&mut c);
    let big = "y".repeat(100 * 1024);
    let three: Vec<u8> = (3..6).flat_map(|i| search_with(i, "dc=x", &big)).collect();
    send(&mut c, &three);
    assert!(!c.may_read_client());
}

#[test]
fn abandon_of_a_pending_bind_drops_its_answer_and_of_a_held_request_drops_it() {
    let mut c = connected();
    send(
        &mut c,
        &[
            bind(2, ALICE, "pw"),
            search(3),
            abandon(4, 3),
            abandon(5, 2),
        ]
        .concat(),
    );
    actions(&mut c);
    c.bind_decided(
        Decision::Fail(LdapError::new(LdapResultCode::InvalidCredentials, "no").into()),
        Trail::default(),
    );
    assert!(
        to_client(&mut c).is_empty(),
        "the abandoned bind gets no answer"
    );
    assert!(
        to_backend(&mut c).is_empty(),
        "the abandoned search never goes"
    );
    assert!(!c.busy());
}

#[test]
fn every_starttls_refusal() {
    // No certificate: protocolError.
    let mut c = core_with(config(""), false, false);
    send(&mut c, &extended(1, STARTTLS));
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::ProtocolError);
    // Already TLS: operationsError.
    let mut c = core_with(config(""), true, true);
    send(&mut c, &extended(1, STARTTLS));
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::OperationsError);
    // A search outstanding: operationsError.
    let mut c = core();
    send(&mut c, &[search(1), extended(2, STARTTLS)].concat());
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::OperationsError);
    // A bind pending: operationsError, and the bind goes on.
    let mut c = core();
    send(
        &mut c,
        &[bind(1, ALICE, "pw"), extended(2, STARTTLS)].concat(),
    );
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::OperationsError);
    assert!(c.busy());
    // Bytes after the request: the connection closes with a notice.
    let mut c = core();
    send(&mut c, &[extended(1, STARTTLS), search(2)].concat());
    let sent = to_client(&mut c);
    assert_eq!(sent[0].msgid, 0, "a Notice of Disconnection");
    assert!(c.closing());
}

#[test]
fn starttls_success_stops_reading_until_the_handshake() {
    let mut c = core();
    send(&mut c, &extended(1, STARTTLS));
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::Success);
    assert!(c.ready_for_handshake());
    assert!(!c.may_read_client());
    c.handshake_started();
    assert!(!c.ready_for_handshake() && !c.may_read_client());
    c.tls_established(Instant::now());
    assert!(c.may_read_client());
    send(&mut c, &extended(2, STARTTLS));
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::OperationsError);
}

#[test]
fn require_tls_refuses_everything_but_unbind_in_the_clear() {
    let mut c = core_with(
        config("require_tls = true\n[tls]\ncertificate = \"/dev/null\"\nkey = \"/dev/null\""),
        true,
        false,
    );
    send(&mut c, &search(1));
    assert_eq!(
        code(&to_client(&mut c)[0]),
        LdapResultCode::ConfidentialityRequired
    );
    send(&mut c, &abandon(2, 1));
    assert!(to_client(&mut c).is_empty());
    assert!(to_backend(&mut c).is_empty(), "nothing reaches the backend");
    send(&mut c, &unbind(3));
    assert!(c.closing());
}

#[test]
fn unbind_while_a_bind_is_pending_closes() {
    let mut c = core();
    send(&mut c, &[bind(1, ALICE, "pw"), unbind(2)].concat());
    assert!(c.closing());
}

#[test]
fn idle_and_drain_wait_for_a_pending_bind() {
    let later = Instant::now() + Duration::from_secs(60);
    let idle = || core_with(config("[limits]\nidle_timeout = \"5s\""), true, false);
    let mut c = idle();
    send(&mut c, &bind(1, ALICE, "pw"));
    assert!(c.tick(later).is_some(), "waiting for a push is not idle");
    c.shutdown("the proxy is shutting down");
    assert!(!c.closing(), "shutdown waits for the pending bind");
    c.bind_decided(
        Decision::Fail(LdapError::new(LdapResultCode::InvalidCredentials, "no").into()),
        Trail::default(),
    );
    let sent = to_client(&mut c);
    assert_eq!(code(&sent[0]), LdapResultCode::InvalidCredentials);
    assert_eq!(sent[1].msgid, 0, "then the Notice of Disconnection");
    assert!(c.closing());

    let mut c = idle();
    assert_eq!(c.tick(later), None);
    assert!(c.closing(), "idle and nothing in progress");
}

#[test]
fn a_request_left_unfinished_past_the_request_timeout_ends_the_connection() {
    let mut c = core_with(config("[limits]\nrequest_timeout = \"10s\""), true, false);
    let t0 = Instant::now();
    let req = search(1);
    c.client_in().extend_from_slice(&req[..5]);
    c.client_data(t0);
    let deadline = c
        .next_deadline()
        .expect("a deadline for the unfinished request");
    assert_eq!(deadline, t0 + Duration::from_secs(10));
    // More bytes do not move the deadline: a trickle cannot hold the connection.
    c.client_in().extend_from_slice(&req[5..8]);
    c.client_data(t0 + Duration::from_secs(9));
    assert_eq!(c.next_deadline(), Some(deadline));
    assert!(c.tick(t0 + Duration::from_secs(9)).is_some());
    assert_eq!(c.tick(deadline), None);
    assert_eq!(to_client(&mut c)[0].msgid, 0, "a Notice of Disconnection");
    assert!(c.closing());

    // A request finished in time clears the deadline (no idle timeout here: it would be
    // the next one).
    let mut c = core_with(
        config("[limits]\nrequest_timeout = \"10s\"\nidle_timeout = \"0s\""),
        true,
        false,
    );
    c.client_in().extend_from_slice(&req[..5]);
    c.client_data(t0);
    c.client_in().extend_from_slice(&req[5..]);
    c.client_data(t0 + Duration::from_secs(1));
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn relayed_operations_in_flight_are_bounded() {
    let mut c = core_with(config("[limits]\nmax_outstanding = 2"), true, false);
    send(&mut c, &[search(1), search(2), search(3)].concat());
    assert!(!c.may_read_client());
    c.connected(Ok(()));
    assert_eq!(to_backend(&mut c), [search(1), search(2)].concat());
    answer(&mut c, &done(1));
    assert_eq!(to_backend(&mut c), search(3), "room again: the third goes");
}

#[test]
fn a_refused_bind_drops_a_connection_a_directory_bind_authenticated() {
    let mut c = connected();
    forward_bind(&mut c, 2, None);
    answer(&mut c, &bind_success(2));
    to_client(&mut c);
    to_backend(&mut c);
    // The session is now bound by the directory; a bind the proxy refuses resets it.
    send(&mut c, &bind(3, ALICE, "wrong"));
    actions(&mut c);
    c.bind_decided(
        Decision::Fail(Refusal::from(LdapError::new(
            LdapResultCode::ConfidentialityRequired,
            "tls",
        ))),
        Trail::default(),
    );
    assert!(matches!(actions(&mut c)[..], [Action::RetireLink]));
    assert_eq!(
        code(&to_client(&mut c)[0]),
        LdapResultCode::ConfidentialityRequired
    );
    // The next request opens a fresh, anonymous connection.
    send(&mut c, &search(4));
    assert!(matches!(actions(&mut c)[..], [Action::Connect]));
}

#[test]
fn a_bind_sent_before_a_forwarded_binds_answer_waits_for_it() {
    let mut c = connected();
    forward_bind(&mut c, 2, None);
    to_backend(&mut c);
    // Pipelined against RFC 4511: another bind and a search before the first answer.
    send(&mut c, &bind(3, ALICE, "pw"));
    send(&mut c, &search(4));
    assert!(
        actions(&mut c).is_empty(),
        "nothing decided before the answer"
    );
    assert!(
        to_backend(&mut c).is_empty(),
        "nothing relayed before the answer"
    );
    answer(&mut c, &bind_success(2));
    assert!(matches!(actions(&mut c)[..], [Action::Decide { .. }]));
    c.bind_decided(Decision::Bound { dn: ALICE.into() }, Trail::default());
    assert!(matches!(
        actions(&mut c)[..],
        [Action::RetireLink, Action::InstallServiceLink]
    ));
    // Both answers, in order, and the search goes on the new connection.
    let answers: Vec<i32> = to_client(&mut c).iter().map(|m| m.msgid).collect();
    assert_eq!(answers, vec![2, 3]);
    assert!(!to_backend(&mut c).is_empty());
}

#[test]
fn a_forwarded_refusal_is_charged_to_its_budget() {
    let mut c = connected();
    forward_bind(&mut c, 2, Some("uid=alice"));
    let refusal = crate::proto::bind_response(
        2,
        &LdapError::new(LdapResultCode::InvalidCredentials, "no"),
        vec![],
    );
    answer(&mut c, &refusal);
    assert!(matches!(&actions(&mut c)[..], [Action::ChargeFailure(k)] if k == "uid=alice"));
}

#[test]
fn a_pam_bound_session_relays_with_the_proxys_control_first() {
    let mut c = pam_bound();
    send(&mut c, &search(2));
    // The service-bound connection is the session's backend connection now.
    assert!(actions(&mut c).is_empty());
    let sent = to_backend(&mut c);
    let controls = message::controls(&sent).unwrap();
    assert_eq!(controls[0].oid, "2.16.840.1.113730.3.4.18");
    assert_eq!(controls[0].value, Some(format!("dn:{ALICE}").as_bytes()));
    assert!(controls[0].critical);
    // WhoAmI is answered by the proxy.
    send(&mut c, &extended(3, WHOAMI));
    let reply = &to_client(&mut c)[0];
    let LdapOp::ExtendedResponse(r) = &reply.op else {
        panic!("{reply:?}")
    };
    assert_eq!(r.value.as_deref(), Some(format!("dn:{ALICE}").as_bytes()));
    assert!(to_backend(&mut c).is_empty());
}

#[test]
fn a_rebind_on_a_pam_bound_session_waits_for_the_message_being_passed() {
    let mut c = pam_bound();
    send(&mut c, &search(2));
    to_backend(&mut c);
    let big = entry(2, ALICE, 10_000);
    answer(&mut c, &big[..5_000]);
    // Half an entry is on its way: the bind waits, and so does its connection swap.
    send(&mut c, &bind(3, ALICE, "pw"));
    assert!(actions(&mut c).is_empty());
    answer(&mut c, &big[5_000..]);
    assert_eq!(&c.client_out()[..], &big[..], "the entry arrives whole");
    let acts = actions(&mut c);
    assert!(
        matches!(acts[..], [Action::RetireLink, Action::Decide { .. }]),
        "{acts:?}"
    );
}

#[test]
fn a_proxy_answer_never_lands_inside_a_relayed_message() {
    let mut c = pam_bound();
    send(&mut c, &search(2));
    to_backend(&mut c);
    let big = entry(2, ALICE, 10_000);
    answer(&mut c, &big[..5_000]);
    send(&mut c, &extended(3, WHOAMI));
    assert_eq!(c.client_out().len(), 5_000, "the WhoAmI answer waits");
    answer(&mut c, &big[5_000..]);
    let sent = to_client(&mut c);
    assert!(matches!(sent[0].op, LdapOp::SearchResultEntry(_)));
    assert!(matches!(sent[1].op, LdapOp::ExtendedResponse(_)));
}

#[test]
fn a_pam_bound_request_reusing_a_message_id_in_progress_ends_the_connection() {
    let mut c = pam_bound();
    send(&mut c, &search(5));
    assert!(!to_backend(&mut c).is_empty());
    // On a shared connection the two could not be told apart (RFC 4511 §4.1.1.1).
    send(&mut c, &search(5));
    assert!(to_backend(&mut c).is_empty(), "the second is not relayed");
    let sent = to_client(&mut c);
    assert_eq!(
        (sent[0].msgid, code(&sent[0])),
        (0, LdapResultCode::ProtocolError)
    );
    assert!(c.closing());
}

#[test]
fn unreadable_requests_end_the_connection_with_a_notice() {
    let mut c = core();
    // A control whose OID ends in a NUL byte (389 would read it as the OID before it).
    let mut m = search(1);
    let ctl = [&[0xa0, 0x08, 0x30, 0x06, 0x04, 0x04][..], b"1.2\0"].concat();
    m.extend_from_slice(&ctl);
    m[1] += ctl.len() as u8;
    send(&mut c, &m);
    let sent = to_client(&mut c);
    assert_eq!(sent[0].msgid, 0);
    assert!(c.closing());
    assert!(to_backend(&mut c).is_empty(), "nothing reached the backend");
}

#[test]
fn a_lost_backend_answers_waiting_requests_and_a_refused_connect_answers_52() {
    let mut c = core();
    send(&mut c, &search(1));
    c.connected(Err("no backend answers".into()));
    assert_eq!(code(&to_client(&mut c)[0]), LdapResultCode::Unavailable);
    assert!(!c.closing(), "the next request tries again");
    send(&mut c, &search(2));
    assert!(matches!(actions(&mut c)[..], [Action::Connect]));
    c.connected(Ok(()));
    c.backend_lost(None);
    assert_eq!(to_client(&mut c)[0].msgid, 0);
    assert!(c.closing());
}

#[test]
fn an_idle_session_gives_its_buffers_back() {
    let mut c = connected();
    send(&mut c, &search(2));
    answer(&mut c, &[entry(2, ALICE, 100_000), done(2)].concat());
    to_client(&mut c);
    to_backend(&mut c);
    c.release_idle_buffers();
    assert_eq!(c.client_in().capacity(), 0);
    assert_eq!(c.client_out().capacity(), 0);
    assert_eq!(c.backend_in().capacity(), 0);
    assert_eq!(c.backend_out().capacity(), 0);
    // A buffer still holding bytes keeps them.
    c.client_in().extend_from_slice(&search(3)[..4]);
    c.release_idle_buffers();
    assert_eq!(c.client_in().len(), 4);
}
