//! Connection slots, one rule at a time (the flood test shows them together): the cap per
//! address, idle connections asked to leave first when the table is nearly full and
//! never a busy one, busy answers when it is full of busy ones; and the metrics
//! endpoint's own cap.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::{LdapResultCode, LdapSearchScope};
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

const ROUTE: &str = r#"
[metrics]
listen = "127.0.0.1:0"

[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The Notice of Disconnection the proxy sends on `c`, with its message, if any comes
/// before the close.
fn notice(c: &mut RawClient) -> Option<(LdapResultCode, String)> {
    match c.recv_within(Duration::from_secs(20)) {
        Received::Msg(m) => match (notice_code(&m), m.op) {
            (Some(code), ldap3_proto::proto::LdapOp::ExtendedResponse(r)) => {
                Some((code, r.res.message))
            }
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn the_table_keeps_room_for_clients_that_do_something() {
    let users = Users::create("slotuser", 10, false);
    let passdb: String = users
        .uids
        .iter()
        .map(|u| format!("{u}:{u}-pw:duo\n"))
        .collect();
    let pam = PamSetup::new(&passdb);
    let phone = pam.hold();
    let proxy = proxy_with(
        &pam,
        "",
        &format!("[limits]\nmax_connections = 10\nmax_connections_per_address = 4\n{ROUTE}"),
        &[],
    );
    let slots = || {
        proxy
            .metric("ldap_pam_proxy_connection_slots{state=\"open\"}")
            .unwrap_or(0.0)
    };

    // Per address: four from 127.0.3.1, the fifth refused busy.
    let mut same: Vec<RawClient> = (0..4)
        .map(|_| RawClient::connect_from(ip("127.0.3.1"), proxy.addr))
        .collect();
    assert!(eventually(Duration::from_secs(10), || slots() == 4.0));
    let mut fifth = RawClient::connect_from(ip("127.0.3.1"), proxy.addr);
    let (code, message) = notice(&mut fifth).expect("a notice");
    assert_eq!(code, LdapResultCode::Busy);
    assert!(message.contains("from this address"), "{message}");
    assert!(fifth.closed());

    // One connection that has done something (a search) and now waits; one with a bind
    // pending in PAM (held).
    let mut worked = RawClient::connect_from(ip("127.0.3.2"), proxy.addr);
    worked.exchange(search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    let mut pending = RawClient::connect_from(ip("127.0.3.3"), proxy.addr);
    pending.send(bind_request(
        1,
        &users.dn(&users.uids[0]),
        &format!("{}-pw", users.uids[0]),
    ));
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 1));
    // Fill to the high water mark (9 of 10) with silent connections.
    let mut silent: Vec<RawClient> = (0..3)
        .map(|n| RawClient::connect_from(ip(&format!("127.0.3.{}", 10 + n)), proxy.addr))
        .collect();
    assert!(eventually(Duration::from_secs(10), || slots() == 9.0));
    // A connection that never did anything counts as idle once older than
    // slots::NEW_GRACE (its first request may still be on its way): let that pass. The
    // one that searched has been idle for less than slots::MIN_IDLE, and stays.
    std::thread::sleep(ldap_pam_proxy::slots::NEW_GRACE + Duration::from_millis(100));

    // A newcomer: the oldest connection that never did anything is asked to leave (the
    // first from 127.0.3.1), not the one between two operations, not the pending bind.
    let mut newcomer = RawClient::connect_from(ip("127.0.3.20"), proxy.addr);
    let (code, message) = notice(&mut same[0]).expect("the idlest is asked to leave");
    assert_eq!(code, LdapResultCode::Unavailable);
    // It is told why, not that the proxy is shutting down.
    assert!(message.contains("too many connections"), "{message}");
    assert!(same[0].closed());
    let (_, done) = newcomer.exchange(search(2, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    assert!(matches!(
        done.op,
        ldap3_proto::proto::LdapOp::SearchResultDone(_)
    ));
    let (_, done) = worked.exchange(search(2, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
    assert!(matches!(
        done.op,
        ldap3_proto::proto::LdapOp::SearchResultDone(_)
    ));
    assert_eq!(
        proxy.metric("ldap_pam_proxy_connections_evicted_total"),
        Some(1.0)
    );

    // Every connection busy (binds pending in PAM): the next is refused, busy.
    drop(same);
    drop(silent.drain(..));
    drop(newcomer);
    drop(worked);
    assert!(eventually(Duration::from_secs(10), || slots() == 1.0));
    // One after the other: each bind is in PAM (so its session is busy) before the next
    // connection comes.
    let mut binding: Vec<RawClient> = users.uids[1..]
        .iter()
        .enumerate()
        .map(|(n, u)| {
            let mut c = RawClient::connect_from(ip(&format!("127.0.4.{}", 1 + n)), proxy.addr);
            c.send(bind_request(1, &users.dn(u), &format!("{u}-pw")));
            assert!(eventually(Duration::from_secs(20), || pam.pushes().len() == n + 2));
            c
        })
        .collect();
    let mut refused = RawClient::connect_from(ip("127.0.4.99"), proxy.addr);
    let (code, message) = notice(&mut refused).expect("a notice");
    assert_eq!(code, LdapResultCode::Busy);
    assert!(message.contains("too many client connections"), "{message}");
    assert_eq!(
        proxy.metric("ldap_pam_proxy_connections_refused_total{reason=\"max_connections\"}"),
        Some(1.0)
    );
    // The pending binds were never asked to leave: they all succeed.
    phone.release();
    assert_eq!(bind_result(&mut pending), LdapResultCode::Success);
    for c in &mut binding {
        assert_eq!(bind_result(c), LdapResultCode::Success);
    }
}

#[test]
fn the_metrics_endpoint_has_a_connection_cap() {
    let pam = PamSetup::new("");
    let proxy = proxy_with(&pam, "", ROUTE, &[]);
    assert_eq!(proxy.http_get("/healthz").0, "HTTP/1.1 200 OK");
    // 40 connections that send nothing: 32 are served (each waits at most 2 s for its
    // request), the others closed at once; every one ends without an answer.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(proxy.metrics_addr()).unwrap())
        .collect();
    let mut closed = 0;
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 40);
    assert!(
        proxy
            .metric("ldap_pam_proxy_metrics_connections_refused_total")
            .unwrap_or(0.0)
            >= 8.0
    );
    assert_eq!(proxy.http_get("/readyz").0, "HTTP/1.1 200 OK");
}
