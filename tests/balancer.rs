//! Behind a balancer: the PROXY protocol (v1 and v2) from trusted peers only, and the
//! real client address everywhere (PAM_RHOST, logs, per-address limits and coalescing);
//! then a real HAProxy (`send-proxy-v2`, `balance source`) in front of two proxies:
//! source affinity keeps an sssd-style retry on one proxy (one push), and losing a proxy
//! mid-traffic moves new connections to the other.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode, LdapSearchScope};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

const PASSDB: &str = "alice:alice-pampw:duo\nbob:bob-pampw:duo\nerin:erin-pampw:csu\n";

/// Hosts behind the balancer in the second test, each with a user of its own (binds for
/// one entry from several addresses at once are refused busy: one transaction per entry).
const HOSTS: usize = 16;

/// Metrics and the site's routes.
fn routes() -> String {
    format!("[metrics]\nlisten = \"127.0.0.1:0\"\n\n{SITE_ROUTES}")
}

/// A PROXY protocol v2 header for a TCP/IPv4 client `client` (to 10.0.0.1:389).
fn v2_header(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(c) = client else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&389u16.to_be_bytes());
    h
}

/// A v2 LOCAL header (what a balancer's own health check sends).
fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// Whether the connection is closed without an LDAP answer to `msg` (a notice of
/// disconnection before the close counts as closed too).
fn refused(c: &mut RawClient, msg: LdapMsg) -> bool {
    if !c.try_send_raw(&{
        let mut out = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut ldap3_proto::LdapCodec::default(), msg, &mut out)
            .unwrap();
        out
    }) {
        return true;
    }
    loop {
        match c.recv_within(Duration::from_secs(10)) {
            Received::Closed => return true,
            Received::Msg(m) if notice_code(&m).is_some() => continue,
            Received::Msg(_) => return false,
            Received::TimedOut => return false,
            Received::Undecodable(_) => return false,
        }
    }
}

fn root_dse() -> LdapMsg {
    search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[])
}

#[test]
fn proxy_protocol_only_from_trusted_peers_and_the_real_address_everywhere() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(0);
    let proxy = proxy_with(
        &pam,
        "proxy_protocol_from = [\"127.0.0.1\"]",
        &format!("[limits]\nmax_connections_per_address = 2\n{}", routes()),
        &[],
    );
    // v2 from the trusted balancer: PAM_RHOST and the log name the client.
    let mut c = RawClient::connect(proxy.addr);
    c.send_raw(&v2_header("192.0.2.7:40001".parse().unwrap()));
    assert_eq!(
        c.simple_bind(1, &user("alice"), "alice-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(pam.pushes(), ["alice 192.0.2.7"]);
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .log()
            .contains("client=192.0.2.7:40001")),
        "{}",
        proxy.log()
    );
    // v1 too.
    let mut c = RawClient::connect(proxy.addr);
    c.send_raw(b"PROXY TCP4 198.51.100.9 10.0.0.1 50000 389\r\n");
    assert_eq!(
        c.simple_bind(1, &user("bob"), "bob-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(pam.pushes()[1], "bob 198.51.100.9");
    // A balancer's health check (LOCAL) is served as the balancer.
    let mut c = RawClient::connect(proxy.addr);
    c.send_raw(&v2_local());
    assert!(!refused(&mut c, root_dse()));

    // A trusted peer without a header: closed.
    let mut c = RawClient::connect(proxy.addr);
    assert!(refused(&mut c, root_dse()));
    // A header from an untrusted peer: closed. Without one, it is an ordinary client.
    let mut c = RawClient::connect_from("127.0.0.2".parse().unwrap(), proxy.addr);
    c.send_raw(&v2_header("192.0.2.8:1".parse().unwrap()));
    assert!(refused(&mut c, root_dse()));
    let mut c = RawClient::connect_from("127.0.0.2".parse().unwrap(), proxy.addr);
    c.send_raw(b"PROXY TCP4 192.0.2.8 10.0.0.1 1 389\r\n");
    assert!(refused(&mut c, root_dse()));
    let mut c = RawClient::connect_from("127.0.0.2".parse().unwrap(), proxy.addr);
    assert!(!refused(&mut c, root_dse()));

    // Per-address limits count the real client: two from 192.0.2.50, the third refused;
    // another client behind the same balancer is not affected.
    let via = |client: &str| {
        let mut c = RawClient::connect(proxy.addr);
        c.send_raw(&v2_header(client.parse().unwrap()));
        c
    };
    let mut held: Vec<RawClient> = ["192.0.2.50:1", "192.0.2.50:2"]
        .iter()
        .map(|a| via(a))
        .collect();
    for c in &mut held {
        assert!(!refused(c, root_dse()));
    }
    let mut third = via("192.0.2.50:3");
    match third.recv_within(Duration::from_secs(10)) {
        Received::Msg(m) => assert_eq!(notice_code(&m), Some(LdapResultCode::Busy), "{m:?}"),
        other => panic!("third connection from one address: {other:?}"),
    }
    let mut other = via("192.0.2.51:1");
    assert!(!refused(&mut other, root_dse()));
    assert_eq!(
        proxy.metric("ldap_pam_proxy_connections_refused_total{reason=\"per_address\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("ldap_pam_proxy_connections_refused_total{reason=\"proxy_header\"}"),
        Some(1.0),
        "the trusted peer without a header"
    );

    // Coalescing is per real client: the same bind from two clients behind the balancer
    // does not share a push.
    pam.set_duo_delay(2);
    let mut first = via("192.0.2.60:1");
    first.send(bind_request(1, &user("alice"), "alice-pampw"));
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 3));
    let mut second = via("192.0.2.61:1");
    second.send(bind_request(1, &user("alice"), "alice-pampw"));
    assert_eq!(bind_result(&mut second), LdapResultCode::Busy);
    assert_eq!(bind_result(&mut first), LdapResultCode::Success);
    let mut retry = via("192.0.2.60:2");
    assert_eq!(
        retry.simple_bind(1, &user("alice"), "alice-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(pam.pushes().len(), 3, "{:?}", pam.pushes());
}

/// HAProxy in TCP mode with the PROXY protocol v2 to two proxies, `balance source`,
/// health checks on `/readyz`; stopped when dropped.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(proxies: &[&Proxy]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut servers = String::new();
        for (n, p) in proxies.iter().enumerate() {
            servers.push_str(&format!(
                "    server p{n} {} check port {}\n",
                p.addr,
                p.metrics_addr().port()
            ));
        }
        let cfg = format!(
            "global\n    maxconn 4096\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n    timeout check 2s\n    retries 3\n    option redispatch 1\n\n\
             frontend ldap\n    bind 127.0.0.1:{port}\n    default_backend proxies\n\n\
             backend proxies\n    balance source\n    hash-type consistent\n    option httpchk GET /readyz\n    default-server inter 200ms fall 1 rise 1 send-proxy-v2\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (tests/run.sh installs it)");
        let h = Haproxy {
            child,
            port,
            _dir: dir,
        };
        assert!(
            eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                h.port
            ))
            .is_ok()),
            "haproxy did not listen"
        );
        h
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which of the proxies saw the client address `client` in a bind log line.
fn served_by(proxies: &[&Proxy], client: &str) -> Vec<usize> {
    proxies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.log().contains(&format!("client={client}:")))
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn haproxy_in_front_of_two_proxies() {
    let users = Users::create("lbuser", HOSTS, true);
    let passdb: String = users
        .uids
        .iter()
        .map(|u| format!("{u}:{u}-pw:csu\n"))
        .collect();
    let pam = PamSetup::new(&format!("{PASSDB}{passdb}"));
    pam.set_duo_delay(3);
    let listen = "proxy_protocol_from = [\"127.0.0.1\"]";
    let p1 = proxy_with(&pam, listen, &routes(), &[("RUST_LOG", "info")]);
    let p2 = proxy_with(&pam, listen, &routes(), &[("RUST_LOG", "info")]);
    let mut p1 = Some(p1);
    let haproxy = Haproxy::start(&[p1.as_ref().unwrap(), &p2]);
    // Wait until HAProxy's checks have seen both ready.
    for p in [p1.as_ref().unwrap(), &p2] {
        assert!(eventually(Duration::from_secs(20), || p
            .http_get("/readyz")
            .0
            == "HTTP/1.1 200 OK"));
    }

    // sssd's retry: bind, give up after a second (abandon, close), the same bind again
    // on a new connection from the same host. Source affinity sends both to one proxy,
    // where the retry joins the pending push.
    let host: IpAddr = "127.0.0.5".parse().unwrap();
    let mut first = RawClient::connect_from(host, haproxy.addr());
    first.send(bind_request(1, &user("alice"), "alice-pampw"));
    assert!(eventually(Duration::from_secs(10), || pam.pushes().len() == 1));
    first.send(LdapMsg::new(2, LdapOp::AbandonRequest(1)));
    drop(first);
    let mut retry = RawClient::connect_from(host, haproxy.addr());
    assert_eq!(
        retry.simple_bind(1, &user("alice"), "alice-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(
        pam.pushes(),
        ["alice 127.0.0.5"],
        "one push, with the real client address"
    );
    let both = [p1.as_ref().unwrap(), &p2];
    assert_eq!(
        served_by(&both, "127.0.0.5").len(),
        1,
        "one proxy served the host"
    );

    // Traffic from 16 hosts, on new connections; then one proxy dies mid-traffic.
    pam.set_duo_delay(0);
    let hosts: Vec<IpAddr> = (10..26)
        .map(|n| format!("127.0.0.{n}").parse().unwrap())
        .collect();
    let stop = AtomicBool::new(false);
    let before = Mutex::new(Tally::default());
    let after = Mutex::new(Tally::default());
    let killed = AtomicBool::new(false);
    let killing = AtomicBool::new(false);
    let mut cut = 0;
    std::thread::scope(|scope| {
        let workers: Vec<_> = hosts
            .iter()
            .zip(&users.uids)
            .map(|(host, uid)| {
                let (stop, killed, killing) = (&stop, &killed, &killing);
                let (before, after) = (&before, &after);
                let (addr, dn, people) = (haproxy.addr(), users.dn(uid), users.base.clone());
                scope.spawn(move || {
                    let mut cut = 0;
                    while !stop.load(Relaxed) {
                        let was_killed = killed.load(Relaxed);
                        let tally = if was_killed { after } else { before };
                        let start = std::time::Instant::now();
                        let result = (|| {
                            let mut c = Wire::connect(Some(*host), addr)?;
                            c.bind(&dn, &format!("{uid}-pw"))?;
                            c.search(&people, LdapSearchScope::OneLevel, &format!("(uid={uid})"))?;
                            c.unbind();
                            Ok(())
                        })();
                        match result {
                            // The operation in flight on the proxy when it died.
                            Err(_) if !was_killed && killing.load(Relaxed) => cut += 1,
                            r => tally.lock().unwrap().record(start.elapsed(), r),
                        }
                    }
                    cut
                })
            })
            .collect();
        assert!(eventually(Duration::from_secs(60), || before
            .lock()
            .unwrap()
            .ok
            >= 100));
        let spread: Vec<Vec<usize>> = hosts
            .iter()
            .map(|h| served_by(&[p1.as_ref().unwrap(), &p2], &h.to_string()))
            .collect();
        assert!(
            spread.iter().any(|s| s == &[0]) && spread.iter().any(|s| s == &[1]),
            "source hashing spreads hosts over both proxies: {spread:?}"
        );
        // The first proxy dies (SIGKILL). Operations that began before are cut if it
        // served them; every one begun after must succeed.
        killing.store(true, Relaxed);
        drop(p1.take());
        killed.store(true, Relaxed);
        assert!(eventually(Duration::from_secs(60), || after
            .lock()
            .unwrap()
            .ok
            >= 200));
        stop.store(true, Relaxed);
        for w in workers {
            cut += w.join().unwrap();
        }
    });
    let (before, after) = (before.into_inner().unwrap(), after.into_inner().unwrap());
    let summary = format!(
        "{}; {}; cut when the proxy died: {cut}",
        before.summary("before"),
        after.summary("after one proxy died")
    );
    eprintln!("{summary}");
    figures(
        "balancer: HAProxy send-proxy-v2 to two proxies, one killed mid-traffic",
        &format!(
            "before {} ok p99 {:?}; after {} ok p99 {:?}; {cut} cut at the kill",
            before.ok,
            before.p99(),
            after.ok,
            after.p99()
        ),
        rss_and_threads(p2.pid()).unwrap_or_default(),
        &format!("{} failed", before.failed.len() + after.failed.len()),
    );
    assert!(
        before.failed.is_empty() && after.failed.is_empty(),
        "{summary}"
    );
    // Every host, including those the dead proxy served, now goes to the live one.
    for h in &hosts {
        assert!(
            p2.log().contains(&format!("client={h}:")),
            "{h} never reached the live proxy"
        );
    }
}
