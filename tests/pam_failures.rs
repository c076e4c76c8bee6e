//! PAM modules failing in every way a bad day brings (pam_wrapper services in
//! `pam.d/test/`): one that hangs until the test lets it go, one whose pam_exec child
//! dies of SIGSEGV, one that answers PAM_SYSTEM_ERR, one that is slow and then fails.
//! Their binds get unavailable (52) in time; searches and binds through the healthy
//! routes go on meanwhile; the pool counts the workers stuck inside libpam, and they
//! come back when libpam returns.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::{LdapOp, LdapResultCode, LdapSearchScope};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PASSDB: &str = "alice:alice-pampw:duo\nerin:erin-pampw:csu\nuser005:user005-pw:syserr\n";

const STUCK: &str = "ldap_pam_proxy_pam_workers{state=\"stuck\"}";
const BUSY: &str = "ldap_pam_proxy_pam_workers{state=\"busy\"}";

fn config() -> String {
    format!(
        r#"
[metrics]
listen = "127.0.0.1:0"

[pam]
# Each of the 6 routes may hold all workers but one per other route: 3 of 8 here, and
# the hang route's own cap is 2.
workers = 8

[[route]]
name = "hang"
filter = "(|(uid=user001)(uid=user002)(uid=user003))"
pam_service = "hang"
secure = false
timeout = "2s"
max_concurrent = 2

[[route]]
name = "segv"
filter = "(uid=user004)"
pam_service = "segv"
secure = false

[[route]]
name = "syserr"
filter = "(uid=user005)"
pam_service = "syserr"
secure = false

[[route]]
name = "slowfail"
filter = "(uid=user006)"
pam_service = "slowfail"
secure = false
timeout = "20s"

{SITE_ROUTES}
"#
    )
}

/// The result and diagnostic message of the bind a connection waits for.
fn bind_answer(c: &mut RawClient) -> (LdapResultCode, String) {
    match c.recv().expect("bind response").op {
        LdapOp::BindResponse(r) => (r.res.code, r.res.message),
        other => panic!("expected a bind response, got {other:?}"),
    }
}

#[test]
fn failing_pam_modules_leave_everything_else_served() {
    let pam = PamSetup::new(PASSDB);
    pam.write_state("slowfail-delay", "2");
    let hangs = Hangs::new(&pam);
    let proxy = Proxy::with_pam(&pam, &config());
    let sampler = Sampler::start(proxy.pid());

    // Well-behaved traffic all along: searches on one connection, csu and duo binds on
    // new ones.
    let stop = AtomicBool::new(false);
    let (searches, csu, duo) = (
        Mutex::new(Tally::default()),
        Mutex::new(Tally::default()),
        Mutex::new(Tally::default()),
    );
    let people = people();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut c = Wire::connect(None, proxy.addr).expect("connect");
            while !stop.load(Relaxed) {
                timed(&searches, || {
                    match c.search(&people, LdapSearchScope::OneLevel, "(uid=erin)")? {
                        1 => Ok(()),
                        n => Err(format!("{n} entries")),
                    }
                });
            }
        });
        for (tally, uid, pw) in [(&csu, "erin", "erin-pampw"), (&duo, "alice", "alice-pampw")] {
            let stop = &stop;
            scope.spawn(move || {
                while !stop.load(Relaxed) {
                    timed(tally, || {
                        let mut c = Wire::connect(None, proxy.addr)?;
                        c.bind(&user(uid), pw)?;
                        c.unbind();
                        Ok(())
                    });
                }
            });
        }

        // Whatever happens below, the traffic threads stop.
        let _stop = StopOnDrop(&stop);

        // A module that hangs: two transactions run (the route's cap) and never return;
        // the third waits for a worker. All three answer unavailable at the deadline.
        let mut hung: Vec<RawClient> = ["user001", "user002", "user003"]
            .iter()
            .map(|u| start_bind(&proxy, u, "any"))
            .collect();
        for c in &mut hung {
            let (code, message) = bind_answer(c);
            assert_eq!(code, LdapResultCode::Unavailable, "{message}");
        }
        // Two inside libpam (the route's cap; the third expired waiting for a worker),
        // stuck: past their deadline. (A script may reach its first line after the
        // answers went out.)
        assert!(
            eventually(Duration::from_secs(20), || hangs.count() == 2
                && proxy.metric(STUCK) == Some(2.0)),
            "{} hangs, stuck {:?}",
            hangs.count(),
            proxy.metric(STUCK)
        );

        // A pam_exec child killed by SIGSEGV, and PAM_SYSTEM_ERR: unavailable.
        for (uid, pw) in [("user004", "user004-pw"), ("user005", "user005-pw")] {
            let mut c = start_bind(&proxy, uid, pw);
            let (code, message) = bind_answer(&mut c);
            assert_eq!(code, LdapResultCode::Unavailable, "{uid}: {message}");
        }
        // Slow, then failing: unavailable, not before the module gave up.
        let asked = Instant::now();
        let mut c = start_bind(&proxy, "user006", "user006-pw");
        let (code, message) = bind_answer(&mut c);
        assert_eq!(code, LdapResultCode::Unavailable, "{message}");
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );

        // The stuck workers still count until libpam returns, then come back.
        assert_eq!(proxy.metric(STUCK), Some(2.0));
        hangs.release();
        assert!(
            eventually(Duration::from_secs(20), || proxy.metric(STUCK) == Some(0.0)),
            "stuck {:?}",
            proxy.metric(STUCK)
        );
        // And serve the route again: two more hang, and are released.
        let mut again: Vec<RawClient> = ["user001", "user002"]
            .iter()
            .map(|u| start_bind(&proxy, u, "any"))
            .collect();
        assert!(
            eventually(Duration::from_secs(20), || hangs.count() == 4),
            "{} hangs",
            hangs.count()
        );
        hangs.release();
        for c in &mut again {
            let (code, message) = bind_answer(c);
            assert_eq!(code, LdapResultCode::Unavailable, "{message}");
        }
    });
    // With the traffic stopped, every worker is idle again once libpam returns. (A
    // transaction whose client left stays wanted for pam.coalesce_grace, for a retry to
    // join: one of the third kind may start late and hang too; it is let go as well.)
    assert!(
        eventually(Duration::from_secs(30), || {
            hangs.release_waiting();
            proxy.metric(BUSY) == Some(0.0) && proxy.metric(STUCK) == Some(0.0)
        }),
        "busy {:?} stuck {:?}",
        proxy.metric(BUSY),
        proxy.metric(STUCK)
    );
    let peaks = sampler.stop();
    let (searches, csu, duo) = (
        searches.into_inner().unwrap(),
        csu.into_inner().unwrap(),
        duo.into_inner().unwrap(),
    );
    let summary = format!(
        "{}; {}; {}",
        searches.summary("searches"),
        csu.summary("csu binds"),
        duo.summary("duo binds")
    );
    eprintln!("{summary}");
    figures(
        "PAM: module hangs (2 stuck), pam_exec child SIGSEGV, PAM_SYSTEM_ERR, slow then failing",
        &format!(
            "searches {} ok p99 {:?}; csu {} ok p99 {:?}; duo {} ok p99 {:?}",
            searches.ok,
            searches.p99(),
            csu.ok,
            csu.p99(),
            duo.ok,
            duo.p99()
        ),
        peaks,
        &format!(
            "{} failed",
            searches.failed.len() + csu.failed.len() + duo.failed.len()
        ),
    );
    assert!(
        searches.failed.is_empty() && csu.failed.is_empty() && duo.failed.is_empty(),
        "{summary}"
    );
    assert!(searches.ok > 0 && csu.ok > 0 && duo.ok > 0, "{summary}");
    for (service, n) in [
        ("hang", 4.0),
        ("segv", 1.0),
        ("syserr", 1.0),
        ("slowfail", 1.0),
    ] {
        assert_eq!(
            proxy.metric(&format!(
                "ldap_pam_proxy_pam_transactions_total{{service=\"{service}\",outcome=\"unavailable\"}}"
            )),
            Some(n),
            "{service}"
        );
    }
}
