//! Backends failing: two real 389 DS instances in multi-supplier replication as
//! `backend.uris`. Stop the first in the middle of traffic, restart it, stop the second,
//! then both. Clients see unavailable (52) or a Notice of Disconnection, never a hang;
//! new connections go to the live one; a bind never succeeds without PAM; binds pending
//! in PAM when their backend dies still get an answer; `/readyz` follows.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::{LdapOp, LdapResultCode, LdapSearchScope};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

const PASSDB: &str = "alice:alice-pampw:duo\nbob:bob-pampw:duo\ncarol:carol-pampw:duo\ndave:dave-pampw:duo\nerin:erin-pampw:csu\n";

/// What the traffic saw: operations that worked, those cut by a backend going away with
/// unavailable or a Notice of Disconnection (expected while a backend dies), and
/// anything else (a hang, a close without a word, a wrong answer).
#[derive(Default)]
struct Seen {
    ok: Tally,
    cut: usize,
    wrong: Vec<String>,
}

impl Seen {
    fn record(&mut self, took: Duration, result: Result<(), String>) {
        match result {
            Err(e) if e.contains("Unavailable") => self.cut += 1,
            Err(e) => self.wrong.push(e),
            Ok(()) => self.ok.record(took, Ok(())),
        }
    }
}

/// The phases of the test, for the figures: what the traffic saw in each.
const PHASES: [&str; 5] = [
    "both up",
    "first stopped",
    "first back, second stopped",
    "both stopped",
    "second back (from its restart's end)",
];

/// What one kind of traffic saw, per phase.
struct Traffic {
    phase: AtomicUsize,
    seen: [Mutex<Seen>; 5],
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            phase: AtomicUsize::new(0),
            seen: Default::default(),
        }
    }

    fn observe(&self, op: impl FnOnce() -> Result<(), String>) {
        let start = std::time::Instant::now();
        let phase = self.phase.load(Relaxed);
        let result = op();
        self.seen[phase]
            .lock()
            .unwrap()
            .record(start.elapsed(), result);
    }

    fn successes(&self) -> usize {
        self.seen.iter().map(|s| s.lock().unwrap().ok.ok).sum()
    }

    /// Waits until `more` operations beyond those so far have succeeded.
    fn more_successes(&self, more: usize) -> bool {
        let target = self.successes() + more;
        eventually(Duration::from_secs(60), || self.successes() >= target)
    }
}

fn backend_up(proxy: &Proxy, uri: &str) -> Option<f64> {
    proxy.metric(&format!(
        "ldap_pam_proxy_backend_server_up{{uri=\"{uri}\"}}"
    ))
}

#[test]
fn backends_die_and_come_back_under_traffic() {
    let pair = ReplicatedPair::create();
    let (a, b) = (&pair.a, &pair.b);
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(4);
    let config = format!(
        r#"
[listen]
address = "127.0.0.1:0"

[backend]
uris = ["{}", "{}"]
connect_timeout = "2s"
service_dn = "{}"
service_password_file = "{}"

[metrics]
listen = "127.0.0.1:0"

{SITE_ROUTES}
"#,
        a.uri,
        b.uri,
        a.env("DS_SERVICE_DN"),
        a.env("DS_SERVICE_PW_FILE"),
    );
    let proxy = Proxy::try_start(&config, &pam.env()).unwrap_or_else(|log| panic!("proxy:\n{log}"));
    assert!(
        eventually(Duration::from_secs(20), || {
            let (status, body) = proxy.http_get("/readyz");
            status == "HTTP/1.1 200 OK" && body.matches("answers").count() == 2
        }),
        "{:?}",
        proxy.http_get("/readyz")
    );
    let sampler = Sampler::start(proxy.pid());
    let root = (a.env("DS_ROOT_DN"), a.env("DS_ROOT_PW"));
    let people = people();

    // A write through the proxy lands on the first backend and replicates.
    let group = format!("cn={},ou=Groups,{}", unique("failover"), directory().suffix);
    let add = format!(
        "dn: {group}\nobjectClass: top\nobjectClass: groupOfNames\ncn: {}\n",
        group[3..].split(',').next().unwrap()
    );
    let out = ldap_tool_input(
        "ldapadd",
        &proxy.uri(),
        &["-x", "-D", &root.0, "-w", &root.1],
        Some(&add),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(a.has(&group));
    assert!(
        eventually(Duration::from_secs(30), || b.has(&group)),
        "not replicated"
    );

    let stop = AtomicBool::new(false);
    let searches = Traffic::new();
    let binds = Traffic::new();
    let phase = |n: usize| {
        searches.phase.store(n, Relaxed);
        binds.phase.store(n, Relaxed);
    };
    let directory_password_successes = AtomicUsize::new(0);
    let directory_password_tries = AtomicUsize::new(0);
    let mut outcomes = Vec::new();
    std::thread::scope(|scope| {
        // A long-lived connection searching, reconnecting when cut.
        scope.spawn(|| {
            let mut conn: Option<Wire> = None;
            while !stop.load(Relaxed) {
                searches.observe(|| {
                    if conn.is_none() {
                        conn = Some(Wire::connect(None, proxy.addr)?);
                    }
                    let r = conn.as_mut().unwrap().search(
                        &people,
                        LdapSearchScope::OneLevel,
                        "(uid=erin)",
                    );
                    match r {
                        Ok(1) => Ok(()),
                        Ok(n) => Err(format!("{n} entries")),
                        Err(e) => {
                            conn = None;
                            Err(e)
                        }
                    }
                });
            }
        });
        // csu binds on new connections, then a search as the user.
        scope.spawn(|| {
            while !stop.load(Relaxed) {
                binds.observe(|| {
                    let mut c = Wire::connect(None, proxy.addr)?;
                    c.bind(&user("erin"), "erin-pampw")?;
                    c.search(&people, LdapSearchScope::OneLevel, "(uid=erin)")?;
                    c.unbind();
                    Ok(())
                });
            }
        });
        // Fail closed: the directory password of a routed user never binds, whatever
        // the backends do (PAM says no: 49; a lookup that cannot be made: 52).
        scope.spawn(|| {
            while !stop.load(Relaxed) {
                if let Ok(mut c) = Wire::connect(None, proxy.addr) {
                    directory_password_tries.fetch_add(1, Relaxed);
                    if let Ok(LdapResultCode::Success) = c.bind_code(&user("dave"), "dave-dirpw") {
                        directory_password_successes.fetch_add(1, Relaxed);
                    }
                }
            }
        });
        let _stop = StopOnDrop(&stop);
        assert!(searches.more_successes(20) && binds.more_successes(5));

        // Binds pending in PAM (a 4 s push) when the first backend dies.
        let mut pending: Vec<RawClient> = ["alice", "bob", "carol"]
            .iter()
            .map(|u| start_bind(&proxy, u, &format!("{u}-pampw")))
            .collect();
        assert!(eventually(Duration::from_secs(20), || pam
            .pushes()
            .iter()
            .filter(|p| !p.starts_with("dave "))
            .count()
            >= 3));
        phase(1);
        a.stop();
        for c in &mut pending {
            match c.recv_within(Duration::from_secs(60)) {
                Received::Msg(m) => match (&m.op, notice_code(&m)) {
                    (LdapOp::BindResponse(r), _) => {
                        assert!(
                            matches!(
                                r.res.code,
                                LdapResultCode::Success | LdapResultCode::Unavailable
                            ),
                            "{m:?}"
                        );
                        outcomes.push(format!("bind response {:?}", r.res.code));
                    }
                    (_, Some(LdapResultCode::Unavailable)) => {
                        outcomes.push("notice of disconnection, unavailable".to_owned())
                    }
                    _ => panic!("pending bind answered with {m:?}"),
                },
                other => panic!("pending bind: {other:?}"),
            }
        }
        // The client that was told unavailable retries, as sssd does: the retry joins the
        // transaction that went on, and succeeds with no second push.
        for u in ["alice", "bob", "carol"] {
            let mut c = start_bind(&proxy, u, &format!("{u}-pampw"));
            assert_eq!(bind_result(&mut c), LdapResultCode::Success, "{u}'s retry");
            let pushes = pam.pushes();
            assert_eq!(
                pushes
                    .iter()
                    .filter(|p| p.starts_with(&format!("{u} ")))
                    .count(),
                1,
                "{pushes:?}"
            );
        }
        // The proxy sees it, stays ready on the second, and serves from it: the write
        // made on the first is there.
        assert!(eventually(Duration::from_secs(20), || backend_up(
            &proxy, &a.uri
        ) == Some(0.0)));
        let (status, body) = proxy.http_get("/readyz");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(
            body.contains(&format!("backend {}: does not answer", a.uri)),
            "{body}"
        );
        assert!(searches.more_successes(20) && binds.more_successes(5));
        let mut c = Wire::connect(None, proxy.addr).expect("connect");
        assert_eq!(
            c.search(&group, LdapSearchScope::Base, "(objectClass=*)"),
            Ok(1)
        );

        // The first comes back: the proxy sees it. Then the second dies.
        a.start();
        assert!(eventually(Duration::from_secs(20), || backend_up(
            &proxy, &a.uri
        ) == Some(1.0)));
        phase(2);
        b.stop();
        assert!(eventually(Duration::from_secs(20), || backend_up(
            &proxy, &b.uri
        ) == Some(0.0)));
        assert!(searches.more_successes(20) && binds.more_successes(5));
        assert_eq!(proxy.http_get("/readyz").0, "HTTP/1.1 200 OK");

        // Both gone: not ready, and binds fail closed.
        phase(3);
        a.stop();
        assert!(
            eventually(Duration::from_secs(20), || proxy.http_get("/readyz").0
                == "HTTP/1.1 503 Service Unavailable"),
            "{:?}",
            proxy.http_get("/readyz")
        );
        assert!(proxy.http_get("/readyz").1.contains("no backend answers"));
        let mut c = Wire::connect(None, proxy.addr).expect("connect");
        match c.bind_code(&user("erin"), "erin-pampw") {
            Ok(LdapResultCode::Unavailable) => {}
            Err(e) if e.contains("Unavailable") => {}
            other => panic!("a bind with no directory: {other:?}"),
        }
        b.start();
        phase(4);
        assert!(eventually(Duration::from_secs(30), || proxy
            .http_get("/readyz")
            .0
            == "HTTP/1.1 200 OK"));
        assert!(searches.more_successes(20) && binds.more_successes(5));
    });
    let peaks = sampler.stop();
    let mut wrong = Vec::new();
    let mut lines = Vec::new();
    for (n, name) in PHASES.iter().enumerate() {
        let s = searches.seen[n].lock().unwrap();
        let b = binds.seen[n].lock().unwrap();
        wrong.extend(s.wrong.iter().chain(&b.wrong).cloned());
        lines.push(format!(
            "{name}: searches {} ok (p99 {:?}), {} cut with 52; csu bind+search {} ok (p99 {:?}), {} cut with 52",
            s.ok.ok,
            s.ok.p99(),
            s.cut,
            b.ok.ok,
            b.ok.p99(),
            b.cut
        ));
    }
    let summary = format!(
        "{}\nhung or wrong: {wrong:?}; pending binds: {outcomes:?}; directory password: {} tries, {} successes",
        lines.join("\n"),
        directory_password_tries.load(Relaxed),
        directory_password_successes.load(Relaxed),
    );
    eprintln!("{summary}");
    for line in &lines {
        figures(
            &format!(
                "backends (two 389s replicating), {}",
                line.split(':').next().unwrap()
            ),
            line.split_once(": ").unwrap().1,
            peaks,
            &format!(
                "{} hung or wrong; directory password bound {} times",
                wrong.len(),
                directory_password_successes.load(Relaxed)
            ),
        );
    }
    assert!(wrong.is_empty(), "{summary}");
    assert_eq!(directory_password_successes.load(Relaxed), 0, "{summary}");
    assert!(directory_password_tries.load(Relaxed) > 0, "{summary}");
}

/// A backend that accepts connections and answers nothing (a wedged server: the TCP
/// handshake alone says nothing). The health watcher finds it out, with or without
/// `[metrics]`, and new connections go to the next backend.
#[test]
fn a_backend_that_answers_nothing_is_passed_over_without_metrics() {
    let wedged = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wedged_uri = format!("ldap://{}", wedged.local_addr().unwrap());
    let held = std::sync::Arc::new(Mutex::new(Vec::new()));
    {
        let held = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            for s in wedged.incoming().flatten() {
                held.lock().unwrap().push(s);
            }
        });
    }
    let ds = directory();
    let proxy = Proxy::start_config(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[backend]\nuris = [\"{wedged_uri}\", \"{}\"]\nconnect_timeout = \"1s\"\n",
        ds.uri
    ));
    // Fresh connections are answered once the watcher has passed the wedged one over.
    assert!(
        eventually(Duration::from_secs(30), || {
            let mut c = RawClient::connect(proxy.addr);
            c.send(search(1, "", LdapSearchScope::Base, "(objectClass=*)", &[]));
            matches!(c.recv_within(Duration::from_secs(2)), Received::Msg(_))
        }),
        "{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("backend does not answer"),
        "{}",
        proxy.log()
    );
}
