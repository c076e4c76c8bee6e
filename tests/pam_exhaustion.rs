//! Pool exhaustion: unauthenticated clients can start a PAM transaction for any user with
//! a wrong password. 200 of them at once, and again as soon as each is answered, must not
//! deny binds to users with the right password, on another route or on the same one; and
//! `/readyz`, which a balancer uses to pick proxies, must not follow what clients fill:
//! a full PAM queue leaves the proxy ready (it says so in the body), or such a flood
//! would take every proxy out of rotation at once.
//!
//! The test's `duo` service pushes before it checks the password (pam_exec then
//! pam_matrix), so every wrong-password bind holds a worker for the whole push (2 s
//! here): the worst case. The production stack (`pam.d/duo`) checks the password first
//! and sends no push for a wrong one.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::LdapResultCode;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

const ATTACKERS: usize = 200;

/// What a bind refused by a full PAM queue is told.
const QUEUE_FULL: &str = "Busy: too many authentications in progress; try again later";

fn routes(pam: &str) -> String {
    format!(
        r#"
[metrics]
listen = "127.0.0.1:0"

[pam]
{pam}

{SITE_ROUTES}
"#
    )
}

/// 200 clients, from 20 addresses, each binding again as soon as it is answered, each
/// time as another of `victims` with a wrong password, until `stop`.
fn attack<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    proxy: &'s Proxy,
    victims: &'s Users,
    stop: &'s AtomicBool,
    answers: &'s Mutex<std::collections::BTreeMap<String, usize>>,
    next: &'s AtomicUsize,
) {
    for n in 0..ATTACKERS {
        let from: IpAddr = format!("127.0.66.{}", 1 + n % 20).parse().unwrap();
        scope.spawn(move || {
            while !stop.load(Relaxed) {
                let uid = &victims.uids[next.fetch_add(1, Relaxed) % victims.uids.len()];
                let code = Wire::connect(Some(from), proxy.addr)
                    .and_then(|mut c| c.bind_answer(&victims.dn(uid), "wrong-password"))
                    .map_or_else(
                        |e| e,
                        |(c, message)| match c {
                            // Which refusal: a full queue, or the user's transaction
                            // in flight.
                            LdapResultCode::Busy => format!("Busy: {message}"),
                            c => format!("{c:?}"),
                        },
                    );
                *answers.lock().unwrap().entry(code).or_default() += 1;
            }
        });
    }
}

/// A user with the right password binds, from an address of its own, on a new connection.
fn login(proxy: &Proxy, from: &str, dn: &str, pw: &str) -> Result<(), String> {
    let mut c = Wire::connect(Some(from.parse().unwrap()), proxy.addr)?;
    c.bind(dn, pw)?;
    c.unbind();
    Ok(())
}

#[test]
fn wrong_password_floods_deny_no_one_and_leave_the_proxy_ready() {
    let victims = Users::create("victim", 400, false);
    let duo_users = Users::create("duoer", 20, false);
    let csu_users = Users::create("csuer", 20, true);
    let mut passdb = String::new();
    for u in &duo_users.uids {
        passdb.push_str(&format!("{u}:{u}-pw:duo\n"));
    }
    for u in &csu_users.uids {
        passdb.push_str(&format!("{u}:{u}-pw:csu\n"));
    }
    let pam = PamSetup::new(&passdb);
    pam.set_duo_delay(2);
    // The default pool: 64 workers, a queue of 1024.
    let proxy = proxy_with(&pam, "", &routes(""), &[("RUST_LOG", "info")]);
    assert!(eventually(Duration::from_secs(20), || proxy
        .http_get("/readyz")
        .0
        == "HTTP/1.1 200 OK"));
    let sampler = Sampler::start(proxy.pid());

    let stop = AtomicBool::new(false);
    let answers = Mutex::new(std::collections::BTreeMap::new());
    let next = AtomicUsize::new(0);
    let (duo, csu) = (Mutex::new(Tally::default()), Mutex::new(Tally::default()));
    let mut ready = Vec::new();
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        attack(scope, &proxy, &victims, &stop, &answers, &next);
        // Under way: the workers are all taken and transactions wait in the queue.
        assert!(
            eventually(Duration::from_secs(30), || proxy
                .metric("ldap_pam_proxy_pam_queue_depth")
                .is_some_and(|q| q > 0.0)),
            "{:?}",
            proxy.http_get("/readyz")
        );
        // Every legitimate user logs in twice, csu and duo side by side.
        let logins: Vec<_> = duo_users
            .uids
            .iter()
            .map(|u| (&duo, duo_users.dn(u), u))
            .chain(csu_users.uids.iter().map(|u| (&csu, csu_users.dn(u), u)))
            .enumerate()
            .map(|(n, (tally, dn, uid))| {
                let proxy = &proxy;
                scope.spawn(move || {
                    let from = format!("127.0.77.{}", 1 + n);
                    for _ in 0..2 {
                        timed(tally, || login(proxy, &from, &dn, &format!("{uid}-pw")));
                    }
                })
            })
            .collect();
        while logins.iter().any(|l| !l.is_finished()) {
            ready.push(proxy.http_get("/readyz"));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let peaks = sampler.stop();
    let (duo, csu) = (duo.into_inner().unwrap(), csu.into_inner().unwrap());
    let answers = answers.into_inner().unwrap();
    let summary = format!(
        "{}; {}; attackers got {answers:?}; /readyz: {} of {} checks 200",
        csu.summary("csu logins (another route)"),
        duo.summary("duo logins (the attacked route)"),
        ready.iter().filter(|(s, _)| s == "HTTP/1.1 200 OK").count(),
        ready.len()
    );
    eprintln!("{summary}");
    figures(
        "PAM pool flood: 200 clients (20 addresses) binding wrong passwords without pause, duo route (2 s push first)",
        &format!(
            "csu {} ok p99 {:?}; duo {} ok p99 {:?}",
            csu.ok,
            csu.p99(),
            duo.ok,
            duo.p99()
        ),
        peaks,
        &format!("{} legitimate logins denied", csu.failed.len() + duo.failed.len()),
    );
    assert!(csu.failed.is_empty() && duo.failed.is_empty(), "{summary}");
    assert!(
        ready.iter().all(|(s, _)| s == "HTTP/1.1 200 OK"),
        "{summary}: {ready:?}"
    );
    assert!(answers.contains_key("InvalidCredentials"), "{summary}");
}

/// With a pool small enough for the flood to fill its queue: the attackers and, for as
/// long as it is full, everyone else get busy (51) at once — no hang, no unavailable —
/// and `/readyz` stays 200, saying the queue is full in its body.
#[test]
fn a_full_pam_queue_answers_busy_and_is_not_unreadiness() {
    let victims = Users::create("qvictim", 300, false);
    let pam = PamSetup::new("alice:alice-pampw:duo\n");
    pam.set_duo_delay(2);
    let proxy = proxy_with(
        &pam,
        "",
        &routes("workers = 8\nqueue = 16"),
        &[("RUST_LOG", "info")],
    );
    assert!(eventually(Duration::from_secs(20), || proxy
        .http_get("/readyz")
        .0
        == "HTTP/1.1 200 OK"));
    let stop = AtomicBool::new(false);
    let answers = Mutex::new(std::collections::BTreeMap::new());
    let next = AtomicUsize::new(0);
    let mut full = None;
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        attack(scope, &proxy, &victims, &stop, &answers, &next);
        // Full: the pool refuses (busy) the attacked route's next transaction. (The
        // queue keeps a slot for each other route, so it is full for duo at 15 of 16.)
        assert!(
            eventually(Duration::from_secs(30), || {
                if !answers.lock().unwrap().contains_key(QUEUE_FULL) {
                    return false;
                }
                full = Some(proxy.http_get("/readyz"));
                true
            }),
            "the queue never filled: {:?}",
            answers.lock().unwrap()
        );
    });
    let (status, body) = full.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.starts_with("ready\n") && body.contains("of 16 queued"),
        "{body}"
    );
    let answers = answers.into_inner().unwrap();
    assert!(
        answers
            .keys()
            .all(|k| k.starts_with("Busy: ") || k == "InvalidCredentials"),
        "{answers:?}"
    );
}
