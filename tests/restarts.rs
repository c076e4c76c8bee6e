//! Restarts: SIGTERM during 100 pending binds and active searches (searches finish,
//! pending binds get their answer or unavailable within `shutdown_grace`, the process
//! ends on its own), and SIGHUP under load (no connection dropped, no operation failed).

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::{LdapOp, LdapResultCode, LdapSearchScope};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const GRACE: Duration = Duration::from_secs(8);

/// Reads a search's answer to the end: `Ok(entries)` for a whole answer, `Err` for a
/// Notice of Disconnection (unavailable) before it began; panics on anything else (an
/// answer cut in the middle, a close without a word, a hang).
fn whole_answer(c: &mut RawClient) -> Result<usize, LdapResultCode> {
    let mut entries = 0;
    loop {
        match c.recv_within(Duration::from_secs(60)) {
            Received::Msg(m) => {
                if let Some(code) = notice_code(&m) {
                    assert_eq!(entries, 0, "notice in the middle of an answer");
                    return Err(code);
                }
                match m.op {
                    LdapOp::SearchResultEntry(_) => entries += 1,
                    LdapOp::SearchResultDone(r) => {
                        assert_eq!(r.code, LdapResultCode::Success);
                        return Ok(entries);
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("search answer: {other:?} after {entries} entries"),
        }
    }
}

#[test]
fn sigterm_with_100_pending_binds_and_searches_ends_in_time() {
    let slow = Users::create("rstduo", 50, false);
    let stuck = Users::create("rsthang", 50, false);
    let passdb: String = slow
        .uids
        .iter()
        .map(|u| format!("{u}:{u}-pw:duo\n"))
        .collect();
    let pam = PamSetup::new(&passdb);
    let hangs = Hangs::new(&pam);
    // Pushes held until the test lets them go, after SIGTERM: answered within the grace.
    let phone = pam.hold();
    let mut proxy = proxy_with(
        &pam,
        "",
        &format!(
            r#"
[limits]
shutdown_grace = "{}s"

[pam]
workers = 128

[[route]]
name = "hang"
filter = "(uid=rsthang*)"
pam_service = "hang"
secure = false
timeout = "120s"

[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false
timeout = "120s"
"#,
            GRACE.as_secs()
        ),
        &[("RUST_LOG", "info")],
    );
    let sampler = Sampler::start(proxy.pid());
    // 50 binds whose push is answered after SIGTERM, 50 whose module never returns.
    let mut answered: Vec<RawClient> = slow
        .uids
        .iter()
        .map(|u| {
            let mut c = RawClient::connect(proxy.addr);
            c.send(bind_request(1, &slow.dn(u), &format!("{u}-pw")));
            c
        })
        .collect();
    let mut cut: Vec<RawClient> = stuck
        .uids
        .iter()
        .map(|u| {
            let mut c = RawClient::connect(proxy.addr);
            c.send(bind_request(1, &stuck.dn(u), "any"));
            c
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || hangs.count() == 50
            && pam.pushes().len() == 50),
        "{} hangs, {} pushes",
        hangs.count(),
        pam.pushes().len()
    );
    // Searches in flight: each sends a subtree search of the people and reads it whole,
    // over and over.
    let stop = AtomicBool::new(false);
    let searches = AtomicUsize::new(0);
    let notices = AtomicUsize::new(0);
    let signalled = Mutex::new(None::<Instant>);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let mut c = RawClient::connect(proxy.addr);
                let mut id = 1;
                while !stop.load(Relaxed) {
                    c.send(search(
                        id,
                        &people(),
                        LdapSearchScope::OneLevel,
                        "(objectClass=*)",
                        &[],
                    ));
                    id += 1;
                    match whole_answer(&mut c) {
                        Ok(_) => {
                            searches.fetch_add(1, Relaxed);
                        }
                        Err(code) => {
                            // Draining: no new request is read; the client is told.
                            assert_eq!(code, LdapResultCode::Unavailable);
                            assert!(signalled.lock().unwrap().is_some(), "notice before SIGTERM");
                            notices.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                }
            });
        }
        let stop_if_failed = StopOnDrop(&stop);
        assert!(eventually(Duration::from_secs(30), || searches
            .load(Relaxed)
            >= 50));
        *signalled.lock().unwrap() = Some(Instant::now());
        proxy.signal("TERM");
        phone.release();
        // From here the searching clients go on until the proxy tells them it stops.
        std::mem::forget(stop_if_failed);
    });
    let signalled = signalled.into_inner().unwrap().unwrap();
    // The binds whose push is answered in time succeed; those stuck in PAM are answered
    // unavailable near the end of the grace. Every answer comes before the process ends.
    let mut latest = Duration::ZERO;
    for c in &mut answered {
        assert_eq!(bind_result(c), LdapResultCode::Success);
        latest = latest.max(signalled.elapsed());
    }
    for c in &mut cut {
        match c.recv_within(Duration::from_secs(60)) {
            Received::Msg(m) => match &m.op {
                LdapOp::BindResponse(r) => {
                    assert_eq!(r.res.code, LdapResultCode::Unavailable, "{m:?}");
                    assert!(r.res.message.contains("shutting down"), "{m:?}");
                }
                _ => panic!("{m:?}"),
            },
            other => panic!("pending bind at the end of the grace: {other:?}"),
        }
        latest = latest.max(signalled.elapsed());
        assert!(c.closed(), "the connection ends after the answer");
    }
    let exited = proxy.wait_exit(GRACE + Duration::from_secs(30));
    let took = signalled.elapsed();
    let peaks = sampler.stop();
    assert_eq!(exited, Some(true), "the proxy did not end on its own");
    // Lower bound only: the stuck binds were not cut before the grace was nearly over.
    assert!(latest >= GRACE - Duration::from_secs(1), "{latest:?}");
    eprintln!(
        "SIGTERM: 50 binds answered success, 50 cut with unavailable, last answer {latest:?} after the signal, exit after {took:?}; {} searches whole, {} connections told unavailable",
        searches.load(Relaxed),
        notices.load(Relaxed)
    );
    figures(
        &format!(
            "SIGTERM (grace {GRACE:?}) with 100 pending binds (50 pushes answered after the signal, 50 stuck in PAM) and 8 searching connections"
        ),
        &format!(
            "50 binds success, 50 unavailable at the grace's end (last answer {latest:?}); {} searches whole, {} connections told unavailable between operations",
            searches.load(Relaxed),
            notices.load(Relaxed)
        ),
        peaks,
        &format!("exit {took:?} after SIGTERM; no search cut mid-answer"),
    );
    drop(hangs);
}

#[test]
fn sighup_under_load_drops_nothing() {
    let pam = PamSetup::new("erin:erin-pampw:csu\nalice:alice-pampw:duo\n");
    pam.set_duo_delay(0);
    let routes = |level: &str| {
        format!(
            r#"
[metrics]
listen = "127.0.0.1:0"

[log]
level = "{level}"

{SITE_ROUTES}
"#
        )
    };
    let proxy = proxy_with(&pam, "", &routes("info"), &[("RUST_LOG", "info")]);
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let sampler = Sampler::start(proxy.pid());
    let stop = AtomicBool::new(false);
    let ops = Mutex::new(Tally::default());
    let people = people();
    std::thread::scope(|scope| {
        // Long-lived connections: each binds once, then searches and binds again and
        // again on the same connection; none may be dropped.
        for (uid, pw) in [("erin", "erin-pampw"), ("alice", "alice-pampw")]
            .iter()
            .cycle()
            .take(8)
        {
            let (stop, ops, people) = (&stop, &ops, &people);
            scope.spawn(move || {
                let mut c = Wire::connect(None, proxy.addr).expect("connect");
                while !stop.load(Relaxed) {
                    timed(ops, || {
                        c.bind(&user(uid), pw)?;
                        match c.search(
                            people,
                            LdapSearchScope::OneLevel,
                            &format!("(uid={uid})"),
                        )? {
                            1 => Ok(()),
                            n => Err(format!("{n} entries")),
                        }
                    });
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        for n in 0..10 {
            let before = ops.lock().unwrap().ok;
            assert!(eventually(Duration::from_secs(30), || ops
                .lock()
                .unwrap()
                .ok
                >= before + 50));
            // A changed file each time (the log level), reloaded under load.
            let level = if n % 2 == 0 { "warn" } else { "info" };
            std::fs::write(
                proxy.config_path(),
                config.replace("level = \"info\"", &format!("level = \"{level}\"")),
            )
            .unwrap();
            proxy.signal("HUP");
            assert!(eventually(Duration::from_secs(30), || proxy
                .metric("ldap_pam_proxy_config_reloads_total{result=\"ok\"}")
                == Some(f64::from(n + 1))));
        }
        let before = ops.lock().unwrap().ok;
        assert!(eventually(Duration::from_secs(30), || ops
            .lock()
            .unwrap()
            .ok
            >= before + 50));
        // The same eight connections all along.
        assert_eq!(proxy.metric("ldap_pam_proxy_client_connections"), Some(8.0));
        assert_eq!(
            proxy.metric("ldap_pam_proxy_client_connections_total"),
            Some(8.0)
        );
    });
    let peaks = sampler.stop();
    let ops = ops.into_inner().unwrap();
    eprintln!("{}", ops.summary("bind+search on 8 long-lived connections"));
    figures(
        "SIGHUP x10 under load (8 long-lived connections binding and searching)",
        &format!("{} ok p99 {:?}", ops.ok, ops.p99()),
        peaks,
        &format!("{} failed, 0 connections dropped", ops.failed.len()),
    );
    assert!(ops.failed.is_empty(), "{}", ops.summary("bind+search"));
}
