//! Operating the proxy: metrics that follow the PAM pool, health endpoints, and SIGHUP
//! reloads that take effect at the next bind (or are refused whole).

mod common;

use common::*;
use ldap3_proto::proto::LdapResultCode;
use std::time::Duration;

const PASSDB: &str = "alice:alice-pampw:duo\nbob:bob-pampw:duo\n";

fn duo_route(extra: &str) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"duo\"\nfilter = \"(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))\"\npam_service = \"duo\"\nsecure = false\n{extra}\n"
    )
}

const BUSY: &str = "ldap_pam_proxy_pam_workers{state=\"busy\"}";
const STUCK: &str = "ldap_pam_proxy_pam_workers{state=\"stuck\"}";

#[test]
fn pool_gauges_follow_pending_binds() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(3);
    let proxy = Proxy::with_pam(&pam, &duo_route("[pam]\nworkers = 4"));
    assert_eq!(proxy.metric(BUSY), Some(0.0));
    assert_eq!(
        proxy.metric("ldap_pam_proxy_pam_workers_capacity"),
        Some(4.0)
    );
    let mut a = start_bind(&proxy, "alice", "alice-pampw");
    let mut b = start_bind(&proxy, "bob", "bob-pampw");
    assert!(
        eventually(Duration::from_secs(10), || proxy.metric(BUSY) == Some(2.0)),
        "busy never reached 2: {:?}",
        proxy.metric(BUSY)
    );
    assert_eq!(proxy.metric("ldap_pam_proxy_client_connections"), Some(2.0));
    assert_eq!(bind_result(&mut a), LdapResultCode::Success);
    assert_eq!(bind_result(&mut b), LdapResultCode::Success);
    assert!(eventually(Duration::from_secs(10), || proxy.metric(BUSY) == Some(0.0)));
    assert_eq!(
        proxy.metric("ldap_pam_proxy_binds_total{route=\"duo\",result=\"Success\"}"),
        Some(2.0)
    );
    assert_eq!(
        proxy.metric("ldap_pam_proxy_pam_transactions_total{service=\"duo\",outcome=\"success\"}"),
        Some(2.0)
    );
    // A retry joining a finished transaction is counted, and sends no push.
    let mut again = start_bind(&proxy, "alice", "alice-pampw");
    assert_eq!(bind_result(&mut again), LdapResultCode::Success);
    assert_eq!(
        proxy.metric("ldap_pam_proxy_binds_coalesced_total"),
        Some(1.0)
    );
    assert_eq!(pam.pushes().len(), 2);
    // Passwords appear nowhere in what the proxy exposes.
    let (_, body) = proxy.http_get("/metrics");
    assert!(!body.contains("pampw") && !proxy.log().contains("pampw"));
}

#[test]
fn stuck_workers_are_counted_until_libpam_returns() {
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(3);
    let proxy = Proxy::with_pam(&pam, &duo_route("timeout = \"1s\"\n[pam]\nworkers = 2"));
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Unavailable);
    assert_eq!(proxy.metric(STUCK), Some(1.0));
    assert!(
        eventually(Duration::from_secs(10), || proxy.metric(STUCK) == Some(0.0)
            && proxy.metric(BUSY) == Some(0.0)),
        "stuck {:?} busy {:?}",
        proxy.metric(STUCK),
        proxy.metric(BUSY)
    );
    assert_eq!(
        proxy.metric("ldap_pam_proxy_pam_transactions_total{service=\"duo\",outcome=\"success\"}"),
        Some(1.0),
        "the transaction itself ended normally"
    );
}

#[test]
fn health_endpoints() {
    let pam = PamSetup::new(PASSDB);
    let proxy = Proxy::with_pam(&pam, &duo_route(""));
    assert_eq!(proxy.http_get("/healthz").0, "HTTP/1.1 200 OK");
    assert!(eventually(Duration::from_secs(10), || proxy
        .http_get("/readyz")
        .0
        == "HTTP/1.1 200 OK"));
    assert_eq!(proxy.http_get("/nope").0, "HTTP/1.1 404 Not Found");

    // A proxy whose backend is gone is alive but not ready.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lonely = Proxy::start(
        &format!("ldap://{dead}"),
        "[metrics]\nlisten = \"127.0.0.1:0\"",
    );
    assert_eq!(lonely.http_get("/healthz").0, "HTTP/1.1 200 OK");
    assert!(eventually(Duration::from_secs(10), || lonely
        .http_get("/readyz")
        .0
        == "HTTP/1.1 503 Service Unavailable"));
    assert_eq!(lonely.metric("ldap_pam_proxy_backend_up"), Some(0.0));
}

/// SIGHUP with a changed route changes the route of the next bind; a broken file is
/// refused and the running routes stay.
#[test]
fn sighup_reloads_routes_and_refuses_a_broken_file() {
    let pam = PamSetup::new(PASSDB);
    let proxy = Proxy::with_pam(&pam, &duo_route(""));
    let whoami_as = |pw: &str| {
        ldap_tool(
            "ldapwhoami",
            &proxy.uri(),
            &["-x", "-D", &user("alice"), "-w", pw],
        )
        .code
    };
    assert_eq!(whoami_as("alice-pampw"), 0);
    assert_eq!(whoami_as("alice-dirpw"), 49);

    // The route no longer matches alice: her binds go to the directory's own check.
    let path = proxy.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let filter = "filter = \"(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))\"";
    assert!(text.contains(filter));
    std::fs::write(&path, text.replace(filter, "filter = \"(uid=nobody)\"")).unwrap();
    proxy.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || proxy
        .log()
        .contains("configuration reloaded")));
    assert_eq!(
        whoami_as("alice-dirpw"),
        0,
        "the next bind takes the new route:\n{}",
        proxy.log()
    );
    assert_eq!(whoami_as("alice-pampw"), 49);

    std::fs::write(
        &path,
        "[listen]\naddress = \"127.0.0.1:0\"\n[[route]]\nname = \"x\"\nfilter = \"(broken\"\n",
    )
    .unwrap();
    proxy.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || proxy
        .log()
        .contains("reload refused")));
    assert_eq!(whoami_as("alice-dirpw"), 0, "the running routes stay");
    assert_eq!(
        proxy.metric("ldap_pam_proxy_config_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );
}

/// A password never reaches the logs, whatever happens to the bind: refused by PAM,
/// forwarded and refused by the directory, or cut off by its deadline. The proxy runs
/// at debug level here, PAM conversation messages included.
#[test]
fn passwords_never_reach_the_logs() {
    let marker = "Zx9-secret-marker-7Qw";
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(2);
    let proxy = Proxy::with_pam(&pam, &duo_route("timeout = \"1s\""));
    // PAM says no (after the deadline, the transaction still ends with AUTH_ERR).
    let mut c = start_bind(&proxy, "bob", marker);
    assert_eq!(bind_result(&mut c), LdapResultCode::Unavailable);
    // The directory says no (a forwarded bind).
    let out = ldap_tool(
        "ldapwhoami",
        &proxy.uri(),
        &["-x", "-D", &user("noposix"), "-w", marker],
    );
    assert_eq!(out.code, 49);
    // The guard says no, while bob's transaction is still running; the refusal is counted.
    let mut c = start_bind(&proxy, "bob", &format!("{marker}-2"));
    assert_eq!(bind_result(&mut c), LdapResultCode::Busy);
    assert_eq!(
        proxy.metric("ldap_pam_proxy_binds_rate_limited_total{reason=\"in_flight\"}"),
        Some(1.0)
    );
    assert!(eventually(Duration::from_secs(10), || proxy.metric(
        "ldap_pam_proxy_pam_transactions_total{service=\"duo\",outcome=\"auth_err\"}"
    ) == Some(1.0)));
    let (_, metrics) = proxy.http_get("/metrics");
    for (what, text) in [("log", proxy.log()), ("metrics", metrics)] {
        assert!(
            !text.contains("secret-marker"),
            "the password is in the {what}:\n{text}"
        );
    }
}
