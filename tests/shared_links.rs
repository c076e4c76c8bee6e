//! Shared service connections (docs/DESIGN.md §10, src/service_links): PAM-bound sessions relay
//! through a few connections bound as the service account, against the real 389.
//! Each session gets its own answers under its own messageIDs however many sessions use
//! the same ones, may not touch another session's requests or paged searches, and a
//! client that does not read is cut off without holding up the others.

mod common;

use common::*;
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode, LdapSearchScope};
use std::time::Duration;

const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// A proxy under pam_wrapper where every user goes to the `csu` service (a pam_matrix
/// password check), with `backend` keys and more tables after them. (Field order: the
/// proxy stops first.)
struct Bench {
    proxy: Proxy,
    _pam: PamSetup,
}

impl Bench {
    fn new(backend: &str, more: &str) -> Bench {
        let passdb: String = USERS
            .iter()
            .map(|u| format!("{u}:{u}-pampw:csu\n"))
            .collect();
        let pam = PamSetup::new(&passdb);
        let config = format!(
            "{backend}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{more}\n\n[[route]]\nname = \"all\"\npam_service = \"csu\"\nsecure = false\n"
        );
        Bench {
            proxy: Proxy::with_pam(&pam, &config),
            _pam: pam,
        }
    }

    /// A new connection bound through PAM as `uid`.
    fn bound(&self, uid: &str) -> RawClient {
        let mut c = RawClient::connect(self.proxy.addr);
        assert_eq!(
            c.simple_bind(1, &user(uid), &format!("{uid}-pampw")),
            LdapResultCode::Success
        );
        c
    }

    fn metric(&self, series: &str) -> f64 {
        self.proxy.metric(series).unwrap_or(0.0)
    }
}

fn entry_dns(msgs: &[LdapMsg]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match &m.op {
            LdapOp::SearchResultEntry(e) => Some(e.dn.to_lowercase()),
            _ => None,
        })
        .collect()
}

fn own_entry(msgid: i32, uid: &str) -> LdapMsg {
    search(
        msgid,
        &user(uid),
        LdapSearchScope::Base,
        "(objectClass=*)",
        &["uid"],
    )
}

/// Twelve PAM-bound clients with the same messageIDs, their requests pipelined and
/// interleaved, on two shared connections: each reads exactly its own answers, and the
/// directory sees two connections, not twelve.
#[test]
fn pam_bound_sessions_share_a_few_backend_connections() {
    let b = Bench::new("shared_connections = 2", "");
    let uids: Vec<&str> = (0..12).map(|i| USERS[i % USERS.len()]).collect();
    let mut clients: Vec<RawClient> = uids.iter().map(|u| b.bound(u)).collect();
    for (c, uid) in clients.iter_mut().zip(&uids) {
        c.send(own_entry(2, uid));
        // A search for someone else, so two answers of one client cannot be swapped.
        let other = USERS[(USERS.iter().position(|u| u == uid).unwrap() + 1) % USERS.len()];
        c.send(search(
            3,
            &people(),
            LdapSearchScope::OneLevel,
            &format!("(uid={other})"),
            &["uid"],
        ));
    }
    for (c, uid) in clients.iter_mut().zip(&uids) {
        let (entries, done) = c.answer(2);
        assert_eq!(entry_dns(&entries), vec![user(uid).to_lowercase()]);
        assert!(
            matches!(done.op, LdapOp::SearchResultDone(ref r) if r.code == LdapResultCode::Success)
        );
        let other = USERS[(USERS.iter().position(|u| u == uid).unwrap() + 1) % USERS.len()];
        let (entries, _) = c.answer(3);
        assert_eq!(entry_dns(&entries), vec![user(other).to_lowercase()]);
    }
    assert_eq!(b.metric("ldap_pam_proxy_shared_sessions"), 12.0);
    assert_eq!(b.metric("ldap_pam_proxy_shared_connections"), 2.0);
    // The connections each client had before its bind are gone: only the shared two.
    assert!(
        eventually(Duration::from_secs(10), || b
            .metric("ldap_pam_proxy_backend_connections")
            == 2.0),
        "{}",
        b.metric("ldap_pam_proxy_backend_connections")
    );
    drop(clients);
    assert!(eventually(Duration::from_secs(10), || b
        .metric("ldap_pam_proxy_shared_sessions")
        == 0.0));
    // The next PAM-bound client reuses them.
    let mut c = b.bound("alice");
    let (entries, _) = c.exchange(own_entry(2, "alice"));
    assert_eq!(entry_dns(&entries), vec![user("alice").to_lowercase()]);
    assert_eq!(b.metric("ldap_pam_proxy_shared_connections"), 2.0);
}

/// With the default setting, 200 PAM-bound clients at once hold 8 backend connections:
/// the count follows `backend.shared_connections`, not the clients.
#[test]
fn backend_connections_follow_the_setting_not_the_clients() {
    let b = Bench::new("", "");
    let mut clients: Vec<RawClient> = (0..200).map(|i| b.bound(USERS[i % USERS.len()])).collect();
    let (entries, _) = clients[199].exchange(own_entry(2, USERS[199 % USERS.len()]));
    assert_eq!(entries.len(), 1);
    assert_eq!(b.metric("ldap_pam_proxy_shared_sessions"), 200.0);
    assert!(
        eventually(Duration::from_secs(10), || b
            .metric("ldap_pam_proxy_backend_connections")
            == 8.0),
        "{} backend connections for 200 PAM-bound clients",
        b.metric("ldap_pam_proxy_backend_connections")
    );
}

/// One session cannot abandon another's request by naming its messageID, nor continue
/// another's paged search with its cookie; its own work goes on.
#[test]
fn sessions_cannot_reach_each_others_requests() {
    let b = Bench::new("shared_connections = 1", "");
    let mut alice = b.bound("alice");
    let mut bob = b.bound("bob");

    // alice's persistent search on her own entry, messageID 5.
    alice.send(persistent_search(
        5,
        &user("alice"),
        LdapSearchScope::Base,
        "(objectClass=*)",
        &["description"],
    ));
    // bob abandons "5" (not his) and then works under messageID 5 himself.
    bob.send(LdapMsg::new(4, LdapOp::AbandonRequest(5)));
    let (entries, _) = bob.exchange(own_entry(5, "bob"));
    assert_eq!(entry_dns(&entries), vec![user("bob").to_lowercase()]);
    // Give 389 a moment to register the persistent search before the change.
    std::thread::sleep(Duration::from_millis(500));
    let marker = unique("shared");
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let modify = format!(
        "dn: {}\nchangetype: modify\nreplace: description\ndescription: {marker}\n",
        user("alice")
    );
    let changed = ldap_tool_input("ldapmodify", &directory().uri, &root, Some(&modify));
    assert_eq!(changed.code, 0, "{changed:?}");
    let notice = alice.recv().expect("alice's persistent search still runs");
    assert_eq!(notice.msgid, 5, "{notice:?}");
    assert!(
        matches!(notice.op, LdapOp::SearchResultEntry(_)),
        "{notice:?}"
    );
    alice.send(LdapMsg::new(6, LdapOp::AbandonRequest(5)));

    // Paged results: alice's first page and its cookie.
    let paged = |msgid: i32, cookie: Vec<u8>| {
        let mut s = search(
            msgid,
            &people(),
            LdapSearchScope::OneLevel,
            "(objectClass=person)",
            &["uid"],
        );
        s.ctrl
            .push(LdapControl::SimplePagedResults { size: 2, cookie });
        s
    };
    let cookie_of = |done: &LdapMsg| {
        done.ctrl
            .iter()
            .find_map(|c| match c {
                LdapControl::SimplePagedResults { cookie, .. } => Some(cookie.clone()),
                _ => None,
            })
            .expect("paged results control in the answer")
    };
    let (page, done) = alice.exchange(paged(7, Vec::new()));
    assert_eq!(page.len(), 2);
    let cookie = cookie_of(&done);
    assert!(!cookie.is_empty(), "more pages: {done:?}");
    // bob, on the same connection, names alice's cookie: refused, nothing of hers shown.
    let (page, done) = bob.exchange(paged(8, cookie.clone()));
    assert!(page.is_empty(), "{page:?}");
    let LdapOp::SearchResultDone(r) = &done.op else {
        panic!("{done:?}")
    };
    assert_eq!(r.code, LdapResultCode::UnwillingToPerform, "{r:?}");
    // alice goes on with it.
    let (page, done) = alice.exchange(paged(9, cookie));
    assert_eq!(page.len(), 2, "{done:?}");
    assert!(
        matches!(done.op, LdapOp::SearchResultDone(ref r) if r.code == LdapResultCode::Success),
        "{done:?}"
    );
}

/// A PAM-bound client that asks for much and reads nothing fills only its own queue: it
/// is cut off at `limits.shared_queue` (a notice, then the close), while another session
/// on the same shared connection keeps getting its answers.
#[test]
fn a_client_that_does_not_read_is_cut_off_alone() {
    let b = Bench::new("shared_connections = 1", "[limits]\nshared_queue = 65536");
    // An entry of about 1.9 MB, searched again and again without reading.
    let ds = directory();
    let cn = unique("shared-big");
    let dn = format!("cn={cn},ou=Groups,{}", ds.suffix);
    let ldif = format!(
        "dn: {dn}\nobjectClass: top\nobjectClass: groupOfNames\ncn: {cn}\ndescription: {}\n",
        "x".repeat(1_900_000)
    );
    let _remove = Entries::add(&ldif, vec![dn.clone()]);

    let mut bob = b.bound("bob");
    let mut hog = RawClient::connect_with_rcvbuf(b.proxy.addr, 4096);
    assert_eq!(
        hog.simple_bind(1, &user("alice"), "alice-pampw"),
        LdapResultCode::Success
    );
    // More than every buffer between the directory and the client holds (the client's
    // receive buffer, the proxy's send buffer, its own buffers): the queue must fill.
    for msgid in 2..12 {
        hog.send(search(
            msgid,
            &dn,
            LdapSearchScope::Base,
            "(objectClass=*)",
            &["description"],
        ));
    }
    assert!(
        eventually(Duration::from_secs(20), || b
            .metric("ldap_pam_proxy_shared_sessions_cut_total")
            == 1.0),
        "{}",
        b.proxy.log()
    );
    // bob is served meanwhile and after, on the same connection.
    let (entries, _) = bob.exchange(own_entry(2, "bob"));
    assert_eq!(entry_dns(&entries), vec![user("bob").to_lowercase()]);
    // The hog reads whole messages, then a notice of disconnection, then the close.
    let mut last = None;
    while let Some(m) = hog.recv() {
        last = Some(m);
    }
    let last = last.unwrap_or_else(|| panic!("no answer before the close\n{}", b.proxy.log()));
    assert_eq!(
        notice_code(&last),
        Some(LdapResultCode::Unavailable),
        "{last:?}"
    );
    assert_eq!(b.metric("ldap_pam_proxy_shared_connections"), 1.0);
    let (entries, _) = bob.exchange(own_entry(3, "bob"));
    assert_eq!(entry_dns(&entries), vec![user("bob").to_lowercase()]);
}

/// An Abandon whose messageID is spelled with a leading zero octet (valid BER, not DER)
/// reaches the same request through the proxy as 389 reads it directly: the session's
/// persistent search stops. The proxy reads the number, maps it, and sends its own
/// encoding; a spelling it cannot read (a sign bit) ends the connection instead.
#[test]
fn an_abandon_in_any_valid_spelling_stops_the_sessions_own_search() {
    let b = Bench::new("shared_connections = 1", "");
    let mut alice = b.bound("alice");
    alice.send(persistent_search(
        5,
        &user("alice"),
        LdapSearchScope::Base,
        "(objectClass=*)",
        &["description"],
    ));
    std::thread::sleep(Duration::from_millis(500));
    // [APPLICATION 16] 00 05: messageID 5 in two octets.
    alice.send_raw(&ber::message(6, &ber::tlv(0x50, &[0x00, 0x05]), None));
    let (_, who) = alice.exchange(whoami_request(7));
    assert!(matches!(who.op, LdapOp::ExtendedResponse(_)), "{who:?}");
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let modify = format!(
        "dn: {}\nchangetype: modify\nreplace: description\ndescription: {}\n",
        user("alice"),
        unique("abandoned")
    );
    let changed = ldap_tool_input("ldapmodify", &directory().uri, &root, Some(&modify));
    assert_eq!(changed.code, 0, "{changed:?}");
    match alice.recv_within(Duration::from_secs(2)) {
        Received::TimedOut => {}
        other => panic!("the abandoned search still answered: {other:?}"),
    }
    // A messageID with the sign bit set is no messageID: protocolError, connection ends.
    alice.send_raw(&ber::message(8, &ber::tlv(0x50, &[0x80, 0, 0, 5]), None));
    let notice = alice.recv().expect("a notice");
    assert_eq!(notice_code(&notice), Some(LdapResultCode::ProtocolError));
}

/// A ModifyRequest (replace `description` of `dn`) of exactly `total` bytes.
fn modify_of_size(msgid: i32, dn: &str, total: usize) -> Vec<u8> {
    let build = |value_len: usize| {
        let vals = ber::tlv(0x31, &ber::tlv(0x04, &vec![b'x'; value_len]));
        let attr = ber::tlv(0x30, &[ber::tlv(0x04, b"description"), vals].concat());
        let change = ber::tlv(0x30, &[ber::tlv(0x0a, &[2]), attr].concat());
        let op = ber::tlv(
            0x66,
            &[ber::tlv(0x04, dn.as_bytes()), ber::tlv(0x30, &change)].concat(),
        );
        ber::message(msgid, &op, None)
    };
    let guess = build(total - 200).len();
    let msg = build(total - 200 + total - guess);
    assert_eq!(msg.len(), total);
    msg
}

/// A PAM-bound client's request that fits the proxy's limit but not once the proxy's
/// control is added is refused (adminLimitExceeded): 389 would close the shared
/// connection on it, as this shows straight to 389, and with it every other session's.
#[test]
fn a_request_too_large_with_the_control_is_refused() {
    let limit = 2_097_152; // limits.max_message_size, and 389's nsslapd-maxbersize
                           // Straight to 389, a message a little over its limit closes the connection.
    let ds = directory();
    let mut direct = RawClient::connect(("127.0.0.1", ds.port));
    direct.send_raw(&modify_of_size(2, &user("alice"), limit + 64));
    assert!(direct.closed(), "389 kept the connection");

    let b = Bench::new("shared_connections = 1", "");
    let mut alice = b.bound("alice");
    let mut bob = b.bound("bob");
    alice.send_raw(&modify_of_size(2, &user("alice"), limit - 4));
    let (_, done) = alice.answer(2);
    let LdapOp::ModifyResponse(r) = &done.op else {
        panic!("{done:?}")
    };
    assert_eq!(r.code, LdapResultCode::AdminLimitExceeded, "{r:?}");
    // The shared connection is still there for both.
    let (entries, _) = bob.exchange(own_entry(2, "bob"));
    assert_eq!(entry_dns(&entries), vec![user("bob").to_lowercase()]);
    let (entries, _) = alice.exchange(own_entry(3, "alice"));
    assert_eq!(entry_dns(&entries), vec![user("alice").to_lowercase()]);
    assert_eq!(b.metric("ldap_pam_proxy_shared_connections"), 1.0);
}
