//! The relay against a real 389 DS: every operation through the proxy must give what
//! the same operation gives straight from the directory (differential tests), and
//! every failure must end in a clear LDAP answer, never a hang.

mod common;

use common::*;
use ldap3_proto::proto::{LdapExtendedRequest, LdapMsg, LdapOp, LdapResultCode, LdapSearchScope};
use std::time::Duration;

/// The tests of this file that write to the directory hold this shared; a comparison of
/// the whole tree holds it alone, so the tree does not change between its two reads.
static TREE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn tree_writer() -> std::sync::RwLockReadGuard<'static, ()> {
    TREE.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `tool args` straight against 389 and through `proxy`; both must agree exactly.
fn same_both_ways(proxy: &Proxy, tool: &str, args: &[&str]) -> Outcome {
    let direct = ldap_tool(tool, &directory().uri, args);
    let relayed = ldap_tool(tool, &proxy.uri(), args);
    assert_eq!(direct, relayed, "{tool} {args:?}: proxy differs from 389");
    relayed
}

#[test]
fn searches_in_every_scope_match_direct() {
    let proxy = Proxy::in_front_of_389();
    let ds = directory();
    let people = format!("ou=People,{}", ds.suffix);
    for scope in ["base", "one", "sub"] {
        let out = same_both_ways(
            &proxy,
            "ldapsearch",
            &[
                "-x",
                "-LLL",
                "-b",
                &people,
                "-s",
                scope,
                "(objectClass=*)",
                "uid",
                "cn",
                "homeDirectory",
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
    }
    // The whole tree with all attributes, as the Directory Manager sees it; the other
    // tests of this file do not write meanwhile.
    let _alone = TREE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut args = as_root();
    args.extend([
        "-b".into(),
        ds.suffix.clone(),
        "(objectClass=*)".into(),
        "*".into(),
        "+".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = same_both_ways(&proxy, "ldapsearch", &args);
    assert!(
        out.stdout.contains("uid=user040,ou=People"),
        "{}",
        out.stdout
    );
    // The root DSE, anonymously.
    same_both_ways(&proxy, "ldapsearch", &["-x", "-b", "", "-s", "base", "+"]);
}

#[test]
fn size_limit_exceeded_matches_direct() {
    let proxy = Proxy::in_front_of_389();
    let people = format!("ou=People,{}", directory().suffix);
    let out = same_both_ways(
        &proxy,
        "ldapsearch",
        &["-x", "-z", "5", "-b", &people, "(uid=user*)", "uid"],
    );
    assert_eq!(out.code, 4, "sizeLimitExceeded expected: {out:?}");
    assert_eq!(out.stdout.matches("\ndn: ").count(), 5, "{}", out.stdout);
}

#[test]
fn paged_results_and_server_side_sort_match_direct() {
    let proxy = Proxy::in_front_of_389();
    let people = format!("ou=People,{}", directory().suffix);
    let out = same_both_ways(
        &proxy,
        "ldapsearch",
        &[
            "-x",
            "-E",
            "pr=7/noprompt",
            "-b",
            &people,
            "(uid=user*)",
            "uid",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.matches("\ndn: ").count(), 40);
    assert!(
        out.stdout.contains("pagedresults: cookie="),
        "{}",
        out.stdout
    );

    let out = same_both_ways(
        &proxy,
        "ldapsearch",
        &[
            "-x",
            "-LLL",
            "-E",
            "!sss=-uid",
            "-b",
            &people,
            "(uid=user0*)",
            "uid",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let uids: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("uid: "))
        .collect();
    let mut sorted = uids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(uids, sorted, "descending sort by uid");
}

#[test]
fn compare_matches_direct() {
    let proxy = Proxy::in_front_of_389();
    let alice = format!("uid=alice,ou=People,{}", directory().suffix);
    let t = same_both_ways(
        &proxy,
        "ldapcompare",
        &["-x", &alice, "homeDirectory:/home/alice"],
    );
    assert_eq!(t.code, 6, "compareTrue: {t:?}");
    let f = same_both_ways(
        &proxy,
        "ldapcompare",
        &["-x", &alice, "homeDirectory:/home/bob"],
    );
    assert_eq!(f.code, 5, "compareFalse: {f:?}");
}

#[test]
fn missing_base_gives_no_such_object_with_matched_dn() {
    let proxy = Proxy::in_front_of_389();
    let base = format!("uid=nobody,ou=Nowhere,{}", directory().suffix);
    let out = same_both_ways(
        &proxy,
        "ldapsearch",
        &["-x", "-b", &base, "(objectClass=*)"],
    );
    assert_eq!(out.code, 32, "{out:?}");
    assert!(
        out.stdout.contains("matchedDN: dc=example,dc=com"),
        "{}",
        out.stdout
    );
}

#[test]
fn unknown_extended_operation_matches_direct() {
    let proxy = Proxy::in_front_of_389();
    let out = same_both_ways(&proxy, "ldapexop", &["-x", "1.3.6.1.4.1.99999.1"]);
    assert_ne!(
        out.code, 0,
        "389 refuses an unknown extended operation: {out:?}"
    );
    // WhoAmI is relayed (no PAM bind here): anonymous and Directory Manager.
    let out = same_both_ways(&proxy, "ldapwhoami", &["-x"]);
    assert_eq!(out.stdout.trim(), "anonymous");
    let args = as_root();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = same_both_ways(&proxy, "ldapwhoami", &args);
    assert_eq!(out.stdout.trim(), "dn: cn=directory manager");
}

/// Add, modify, modrdn and delete as the Directory Manager (the bind is forwarded):
/// each done through the proxy is visible straight in 389, with the same results as
/// doing it directly.
#[test]
fn writes_as_directory_manager_go_through() {
    let _writing = tree_writer();
    let proxy = Proxy::in_front_of_389();
    let ds = directory();
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    for (uri, who) in [(proxy.uri(), "proxy"), (ds.uri.clone(), "direct")] {
        let cn = unique(&format!("write-{who}"));
        let dn = format!("cn={cn},ou=Groups,{}", ds.suffix);
        let add = format!(
            "dn: {dn}\nobjectClass: top\nobjectClass: groupOfNames\ncn: {cn}\ndescription: v1\n"
        );
        let out = ldap_tool_input("ldapadd", &uri, &root, Some(&add));
        assert_eq!(out.code, 0, "{who} add: {out:?}");
        let again = ldap_tool_input("ldapadd", &uri, &root, Some(&add));
        assert_eq!(
            again.code, 68,
            "{who} second add: entryAlreadyExists: {again:?}"
        );

        let modify =
            format!("dn: {dn}\nchangetype: modify\nreplace: description\ndescription: v2\n");
        let out = ldap_tool_input("ldapmodify", &uri, &root, Some(&modify));
        assert_eq!(out.code, 0, "{who} modify: {out:?}");
        let seen = ldap_tool(
            "ldapsearch",
            &ds.uri,
            &["-x", "-LLL", "-b", &dn, "-s", "base", "description"],
        );
        assert!(seen.stdout.contains("description: v2"), "{who}: {seen:?}");

        let new_rdn = format!("cn={cn}-renamed");
        let mut args = root.clone();
        args.extend(["-r", &dn, &new_rdn]);
        let out = ldap_tool("ldapmodrdn", &uri, &args);
        assert_eq!(out.code, 0, "{who} modrdn: {out:?}");
        let renamed = format!("{new_rdn},ou=Groups,{}", ds.suffix);

        let mut args = root.clone();
        args.push(&renamed);
        let out = ldap_tool("ldapdelete", &uri, &args);
        assert_eq!(out.code, 0, "{who} delete: {out:?}");
        let gone = ldap_tool("ldapsearch", &ds.uri, &["-x", "-b", &renamed, "-s", "base"]);
        assert_eq!(gone.code, 32, "{who}: deleted entry still there: {gone:?}");
    }
    // Wrong credentials are the directory's answer, relayed.
    let out = same_both_ways(
        &proxy,
        "ldapwhoami",
        &["-x", "-D", &ds.root_dn, "-w", "wrong"],
    );
    assert_eq!(out.code, 49, "{out:?}");
}

/// Several requests written at once, before any answer, are all answered.
#[test]
fn pipelined_requests_are_all_answered() {
    let proxy = Proxy::in_front_of_389();
    let ds = directory();
    let mut c = RawClient::connect(proxy.addr);
    for id in 1..=20 {
        let uid = format!("user{id:03}");
        c.send(search(
            id,
            &format!("ou=People,{}", ds.suffix),
            LdapSearchScope::Subtree,
            &format!("(uid={uid})"),
            &["uid"],
        ));
    }
    let mut done = std::collections::BTreeSet::new();
    let mut entries = 0;
    while done.len() < 20 {
        let m = c.recv().expect("response");
        match m.op {
            LdapOp::SearchResultEntry(e) => {
                assert_eq!(
                    e.dn,
                    format!("uid=user{:03},ou=People,{}", m.msgid, ds.suffix)
                );
                entries += 1;
            }
            LdapOp::SearchResultDone(r) => {
                assert_eq!(r.code, LdapResultCode::Success);
                done.insert(m.msgid);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(entries, 20);
}

/// A persistent search streams changes and never ends by itself; Abandon stops it and
/// the connection stays usable.
#[test]
fn persistent_search_and_abandon() {
    let _writing = tree_writer();
    let proxy = Proxy::in_front_of_389();
    let ds = directory();
    let mut c = RawClient::connect(proxy.addr);
    assert_eq!(
        c.simple_bind(1, &ds.root_dn, &ds.root_pw),
        LdapResultCode::Success
    );
    let ps = persistent_search(
        2,
        &format!("ou=Groups,{}", ds.suffix),
        LdapSearchScope::Subtree,
        "(objectClass=groupOfNames)",
        &["cn"],
    );
    c.send(ps);
    // Nothing tells when 389 has registered the persistent search, and a change made
    // before that is never notified. So add entries, one after another, until the
    // notice of one of them arrives: every add after the registration is notified.
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let mut added: Vec<String> = Vec::new();
    let start = std::time::Instant::now();
    'notified: loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no change notification for any of {added:?}"
        );
        let cn = unique("psearch");
        let dn = format!("cn={cn},ou=Groups,{}", ds.suffix);
        let add = format!("dn: {dn}\nobjectClass: top\nobjectClass: groupOfNames\ncn: {cn}\n");
        assert_eq!(
            ldap_tool_input("ldapadd", &ds.uri, &root, Some(&add)).code,
            0
        );
        added.push(dn);
        // Other tests write under ou=Groups at the same time: only ours count.
        loop {
            match c.recv_within(Duration::from_secs(1)) {
                Received::Msg(m) => match m.op {
                    LdapOp::SearchResultEntry(e)
                        if added.iter().any(|d| e.dn.eq_ignore_ascii_case(d)) =>
                    {
                        break 'notified
                    }
                    LdapOp::SearchResultEntry(_) => continue,
                    other => panic!("expected change notifications, got {other:?}"),
                },
                Received::TimedOut => continue 'notified,
                other => panic!("expected change notifications, got {other:?}"),
            }
        }
    }
    c.send(LdapMsg::new(3, LdapOp::AbandonRequest(2)));
    c.send(LdapMsg::new(
        4,
        LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: "1.3.6.1.4.1.4203.1.11.3".into(),
            value: None,
        }),
    ));
    let m = c.recv().expect("whoami answer after abandon");
    assert_eq!(
        m.msgid, 4,
        "no SearchResultDone for an abandoned search: {m:?}"
    );
    let mut args = root.clone();
    args.extend(added.iter().map(String::as_str));
    assert_eq!(ldap_tool("ldapdelete", &ds.uri, &args).code, 0);
}

#[test]
fn fifty_concurrent_clients() {
    let proxy = Proxy::in_front_of_389();
    let people = format!("ou=People,{}", directory().suffix);
    let expected = ldap_tool(
        "ldapsearch",
        &directory().uri,
        &["-x", "-LLL", "-b", &people, "(uid=user0*)", "uid"],
    );
    let uri = proxy.uri();
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (uri, people) = (uri.clone(), people.clone());
            std::thread::spawn(move || {
                ldap_tool(
                    "ldapsearch",
                    &uri,
                    &["-x", "-LLL", "-b", &people, "(uid=user0*)", "uid"],
                )
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn malformed_envelope_gets_protocol_error_notice() {
    let proxy = Proxy::in_front_of_389();
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x30, 0x80, 0, 0],
        &[0x30, 0x03, 0x02, 0x01, 0x81],
    ] {
        let mut c = RawClient::connect(proxy.addr);
        c.send_raw(garbage);
        let m = c.recv().expect("notice of disconnection");
        assert_eq!(
            notice_code(&m),
            Some(LdapResultCode::ProtocolError),
            "{garbage:02x?}"
        );
        assert!(c.closed(), "connection closed after the notice");
    }
    // The proxy is still serving.
    let out = ldap_tool("ldapwhoami", &proxy.uri(), &["-x"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn oversized_message_gets_protocol_error_notice() {
    let proxy = Proxy::start(&directory().uri, "[limits]\nmax_message_size = 4096\n");
    let mut c = RawClient::connect(proxy.addr);
    let big = "x".repeat(5000);
    c.send(search(
        1,
        &format!("ou=People,{}", directory().suffix),
        LdapSearchScope::Base,
        &format!("(description={big})"),
        &[],
    ));
    let m = c.recv().expect("notice");
    assert_eq!(notice_code(&m), Some(LdapResultCode::ProtocolError));
    assert!(c.closed());
    // Just under the limit still works.
    let mut c = RawClient::connect(proxy.addr);
    let fits = "x".repeat(3000);
    c.send(search(
        1,
        &format!("ou=People,{}", directory().suffix),
        LdapSearchScope::Base,
        &format!("(description={fits})"),
        &[],
    ));
    assert!(matches!(c.recv().unwrap().op, LdapOp::SearchResultDone(_)));
}

#[test]
fn unreachable_backend_answers_unavailable_naming_it() {
    // A port nobody listens on: bind it, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let backend = format!("ldap://{dead}");
    let proxy = Proxy::start(&backend, "");
    let out = ldap_tool("ldapsearch", &proxy.uri(), &["-x", "-b", "", "-s", "base"]);
    assert_eq!(out.code, 52, "{out:?}");
    assert!(
        out.stderr.contains(&backend),
        "diagnostic names the backend: {out:?}"
    );
    // Every request gets its own answer; the connection stays usable for a retry.
    let mut c = RawClient::connect(proxy.addr);
    c.send(search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    c.send(search(2, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    for id in [1, 2] {
        let m = c.recv().expect("answer");
        assert_eq!(m.msgid, id);
        let LdapOp::SearchResultDone(r) = m.op else {
            panic!("{m:?}")
        };
        assert_eq!(r.code, LdapResultCode::Unavailable);
    }
    c.send(search(3, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    assert_eq!(c.recv().expect("retry answered").msgid, 3);
}

/// A backend that accepts, reads one request and closes: the client must get a Notice
/// of Disconnection, not silence.
#[test]
fn backend_dropping_the_connection_sends_notice() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = format!("ldap://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            drop(s);
        }
    });
    let proxy = Proxy::start(&backend, "");
    let mut c = RawClient::connect(proxy.addr);
    c.send(search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    let m = c.recv().expect("notice");
    assert_eq!(notice_code(&m), Some(LdapResultCode::Unavailable), "{m:?}");
    assert!(c.closed());
}

/// Each client has its own backend connection; when clients leave, theirs close too.
#[test]
fn client_disconnect_closes_its_backend_connection() {
    let proxy = Proxy::in_front_of_389();
    let baseline = proxy.open_sockets();
    let mut clients: Vec<RawClient> = (0..10).map(|_| RawClient::connect(proxy.addr)).collect();
    for c in &mut clients {
        c.send(search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
        while !matches!(c.recv().unwrap().op, LdapOp::SearchResultDone(_)) {}
    }
    // The proxy's own sockets (listener, the health watcher's kept backend connection)
    // may still be coming up when the baseline is taken: count from the moment the 20
    // are there, and require exactly those 20 to go.
    assert!(
        eventually(Duration::from_secs(10), || proxy.open_sockets()
            >= baseline + 20),
        "10 clients and their 10 backend connections: {} sockets, baseline {baseline}",
        proxy.open_sockets()
    );
    let with_clients = proxy.open_sockets();
    drop(clients);
    assert!(
        eventually(Duration::from_secs(10), || proxy.open_sockets()
            == with_clients - 20),
        "sockets leaked: {} open, {with_clients} with the clients",
        proxy.open_sockets()
    );
}

/// SIGTERM: no new clients, an operation in flight still gets its answer, then a notice.
#[test]
fn sigterm_lets_in_flight_operations_finish() {
    // A scripted backend: tells the test when the client's search (messageID 5) has
    // reached it, and answers it (an empty success) only when the test says so; the
    // proxy's own questions at start get that answer at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = format!("ldap://{}", listener.local_addr().unwrap());
    let (arrived, searches) = std::sync::mpsc::channel::<()>();
    let (answer, answers) = std::sync::mpsc::channel::<()>();
    let answers = std::sync::Arc::new(std::sync::Mutex::new(answers));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let mut s = s.unwrap();
            let (arrived, answers) = (arrived.clone(), std::sync::Arc::clone(&answers));
            // A thread per connection: the proxy also connects to check the backend.
            std::thread::spawn(move || {
                let mut c = RawClientEnd::new(&mut s);
                while let Some(m) = c.recv() {
                    if m.msgid == 5 {
                        let _ = arrived.send(());
                        if answers.lock().unwrap().recv().is_err() {
                            return;
                        }
                    }
                    c.send(LdapMsg::new(m.msgid, LdapOp::SearchResultDone(ok())));
                }
            });
        }
    });
    let mut proxy = Proxy::start(&backend, "[limits]\nshutdown_grace = \"20s\"\n");
    let mut c = RawClient::connect(proxy.addr);
    c.send(search(5, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    searches
        .recv_timeout(Duration::from_secs(20))
        .expect("the search reached the backend");
    proxy.signal("TERM");
    // The proxy is shutting down with the search in flight; only now does it get its
    // answer.
    assert!(
        eventually(Duration::from_secs(20), || proxy
            .log()
            .contains("shutting down: 1 client connections finishing")),
        "{}",
        proxy.log()
    );
    assert!(!c.has_data_now(), "answered before its operation finished");
    answer.send(()).expect("backend waits");
    let m = c
        .recv()
        .unwrap_or_else(|| panic!("no answer to the in-flight search:\n{}", proxy.log()));
    assert_eq!(m.msgid, 5, "{m:?}");
    let m = c.recv().expect("notice");
    assert_eq!(notice_code(&m), Some(LdapResultCode::Unavailable));
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(15)),
        Some(true),
        "{}",
        proxy.log()
    );
}

fn ok() -> ldap3_proto::proto::LdapResult {
    ldap3_proto::proto::LdapResult {
        code: LdapResultCode::Success,
        matcheddn: String::new(),
        message: String::new(),
        referral: vec![],
    }
}

/// The server end of a raw LDAP connection for the scripted backends above.
struct RawClientEnd<'a> {
    s: &'a mut std::net::TcpStream,
    buf: bytes::BytesMut,
}

impl<'a> RawClientEnd<'a> {
    fn new(s: &'a mut std::net::TcpStream) -> Self {
        RawClientEnd {
            s,
            buf: bytes::BytesMut::new(),
        }
    }
    fn recv(&mut self) -> Option<LdapMsg> {
        use tokio_util::codec::Decoder;
        loop {
            if let Some(m) = ldap3_proto::LdapCodec::default()
                .decode(&mut self.buf)
                .ok()?
            {
                return Some(m);
            }
            let mut chunk = [0u8; 4096];
            match std::io::Read::read(self.s, &mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    fn send(&mut self, m: LdapMsg) {
        let _ = std::io::Write::write_all(self.s, &ldap_pam_proxy::proto::encode(m));
    }
}

/// A Rust LDAP client (the `ldap3` crate) sees the same entries through the proxy.
#[test]
fn rust_client_search_matches_direct() {
    let proxy = Proxy::in_front_of_389();
    let ds = directory();
    let people = format!("ou=People,{}", ds.suffix);
    let read = |uri: &str| {
        let mut conn = ldap3::LdapConn::new(uri).expect("connect");
        conn.simple_bind(&ds.root_dn, &ds.root_pw)
            .unwrap()
            .success()
            .unwrap();
        let v = ldap3_entries(
            &mut conn,
            &people,
            "(homeDirectory=/home/*@*)",
            vec!["uid", "mail"],
        );
        conn.unbind().unwrap();
        v
    };
    let direct = read(&ds.uri);
    assert_eq!(direct.len(), 3, "erin, frank, grace: {direct:?}");
    assert_eq!(read(&proxy.uri()), direct);
}

/// `limits.idle_timeout` closes a connection that has nothing in progress, and only that.
#[test]
fn idle_connections_are_closed() {
    let proxy = Proxy::start(&directory().uri, "[limits]\nidle_timeout = \"1s\"\n");
    let mut idle = RawClient::connect(proxy.addr);
    let (_, done) = idle.exchange(search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    assert!(matches!(done.op, LdapOp::SearchResultDone(_)));
    // A persistent search keeps its connection busy, however long it waits. (On an entry
    // no test changes, so it stays silent.)
    let mut busy = RawClient::connect(proxy.addr);
    let ps = persistent_search(
        1,
        &format!("ou=Services,{}", directory().suffix),
        LdapSearchScope::Base,
        "(objectClass=*)",
        &["ou"],
    );
    busy.send(ps);
    assert!(idle.closed(), "the idle connection stayed open");
    std::thread::sleep(Duration::from_secs(2));
    busy.send(LdapMsg::new(2, LdapOp::AbandonRequest(1)));
    let (_, who) = busy.exchange(whoami_request(3));
    assert!(matches!(who.op, LdapOp::ExtendedResponse(_)), "{who:?}");
}

/// Backends are tried in order; one that failed is tried last for a while, so a dead
/// first server does not cost every new connection a failed attempt.
#[test]
fn a_failed_backend_is_tried_last() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start_config(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[backend]\nuris = [\"ldap://{dead}\", \"{}\"]\n",
        directory().uri
    ));
    let expected = ldap_tool(
        "ldapsearch",
        &directory().uri,
        &["-x", "-LLL", "-b", "", "-s", "base", "namingContexts"],
    );
    for _ in 0..5 {
        let out = ldap_tool(
            "ldapsearch",
            &proxy.uri(),
            &["-x", "-LLL", "-b", "", "-s", "base", "namingContexts"],
        );
        assert_eq!(out, expected);
    }
    let failures = proxy.log().matches("backend connect failed").count();
    assert_eq!(failures, 1, "{}", proxy.log());
}
