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
    // Both pushes stay pending until the test lets them go.
    let hold = pam.hold();
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
    hold.release();
    assert_eq!(bind_result(&mut a), LdapResultCode::Success);
    assert_eq!(bind_result(&mut b), LdapResultCode::Success);
    assert!(eventually(Duration::from_secs(10), || proxy.metric(BUSY) == Some(0.0)));
    assert_eq!(
        proxy.metric("ldap_pam_proxy_binds_total{route=\"duo\",result=\"success\"}"),
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
    let hold = pam.hold();
    // The deadline leaves a loaded machine time to start the push, which is then held
    // past it.
    let proxy = Proxy::with_pam(&pam, &duo_route("timeout = \"3s\"\n[pam]\nworkers = 2"));
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Unavailable);
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
    assert_eq!(proxy.metric(STUCK), Some(1.0));
    assert_eq!(proxy.metric(BUSY), Some(1.0));
    hold.release();
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
    // Bob's push is held past his deadline (long enough for a loaded machine to start
    // it), so it is still running for the refusal below.
    let hold = pam.hold();
    let proxy = Proxy::with_pam(&pam, &duo_route("timeout = \"3s\""));
    // PAM says no (after the deadline, the transaction still ends with AUTH_ERR).
    let mut c = start_bind(&proxy, "bob", marker);
    assert_eq!(bind_result(&mut c), LdapResultCode::Unavailable);
    assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 1));
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
    hold.release();
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

/// A pam_duo service "mfa" in `pam`'s service directory reading `conf`, and a route to it.
/// pam_duo.so itself is never loaded here: the check reads text files only.
fn mfa_route(pam: &PamSetup, conf: &std::path::Path) -> String {
    std::fs::write(
        pam.services().join("mfa"),
        format!(
            "auth requisite /usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so passdb={}\n\
             auth [success=done default=die] pam_duo.so conf={}\n\
             account required pam_permit.so\n",
            pam.state().join("passdb").display(),
            conf.display()
        ),
    )
    .unwrap();
    "[[route]]\nname = \"internal\"\nfilter = \"(objectClass=posixAccount)\"\npam_service = \"mfa\"\nsecure = false\n".to_owned()
}

fn write_mode(path: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A pam_duo configuration that would let users in on the password alone (readable by
/// others, or without failmode = secure) stops the start, naming route, service, file
/// and problem; `duo_config_check = "warn"` only warns; a good one starts, and a reload
/// that would break it is refused.
#[test]
fn pam_duo_that_would_fail_open_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("pam_duo.conf");
    let good = "[duo]\nfailmode = secure\nikey = i\nskey = s\nhost = api.example\nautopush = yes\n";
    let cases = [
        (good, 0o644, Some("mode 0644")),
        (
            "[duo]\nikey = i\nskey = s\nhost = api.example\n",
            0o600,
            Some("failmode = secure"),
        ),
        (
            "[duo]\nhost = h\nfailmode = safe\n",
            0o600,
            Some("failmode = safe"),
        ),
        (good, 0o600, None),
    ];
    for (text, mode, problem) in cases {
        write_mode(&conf, text, mode);
        let pam = PamSetup::new(PASSDB);
        let route = mfa_route(&pam, &conf);
        match (Proxy::try_with_pam(&pam, &route), problem) {
            (Err(log), Some(problem)) => {
                for part in [
                    "route 'internal'",
                    "PAM service 'mfa'",
                    &conf.display().to_string(),
                    problem,
                ] {
                    assert!(log.contains(part), "no '{part}' in:\n{log}");
                }
            }
            (Ok(_), None) => {}
            (Ok(p), Some(problem)) => panic!("started despite {problem}:\n{}", p.log()),
            (Err(log), None) => panic!("did not start with a good pam_duo.conf:\n{log}"),
        }
    }

    // "warn": the same problem is a warning.
    write_mode(&conf, good, 0o640);
    let pam = PamSetup::new(PASSDB);
    let route = mfa_route(&pam, &conf);
    let proxy = Proxy::with_pam(
        &pam,
        &format!("[pam]\nduo_config_check = \"warn\"\n{route}"),
    );
    assert!(
        proxy
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("mode 0640")),
        "{}",
        proxy.log()
    );
    drop(proxy);

    // A running proxy refuses a reload that would make pam_duo fail open.
    write_mode(&conf, good, 0o600);
    let proxy = Proxy::with_pam(&pam, &route);
    write_mode(&conf, good, 0o604);
    proxy.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || proxy
            .log()
            .lines()
            .any(|l| l.contains("reload refused") && l.contains("mode 0604"))),
        "{}",
        proxy.log()
    );
}

/// The service account's rights on the attributes a route filter uses are checked at
/// start: without read/search on homeDirectory in the route's scope (a deny ACI on a
/// throwaway subtree, so tests running beside this one are not affected), the proxy
/// refuses to start, naming the attribute and the route; with them, it starts.
#[test]
fn missing_rights_on_a_filter_attribute_stop_the_start() {
    let ds = directory();
    let route = |base: &str| {
        format!(
            "[[route]]\nname = \"rights\"\nfilter = \"(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))\"\n\
             pam_service = \"duo\"\nsecure = false\ninclude_suffixes = [\"{base}\"]\n"
        )
    };
    let deny = format!(
        "(targetattr = \"homeDirectory\")(version 3.0; acl \"rights test: no homeDirectory\"; deny (read, search, compare) userdn = \"ldap:///{}\";)",
        ds.service_dn
    );
    let denied = Subtree::create(
        &unique("RightsTest"),
        Some(&deny),
        &["rt-denied".to_owned()],
    );
    let pam = PamSetup::new(PASSDB);
    match Proxy::try_with_pam(&pam, &route(&denied.0)) {
        Ok(p) => panic!("started without rights on homeDirectory:\n{}", p.log()),
        Err(log) => {
            for part in ["route 'rights'", "homeDirectory", "uid=rt-denied"] {
                assert!(log.contains(part), "no '{part}' in:\n{log}");
            }
        }
    }
    let allowed = Subtree::create(&unique("RightsTest"), None, &["rt-allowed".to_owned()]);
    let proxy = Proxy::with_pam(&pam, &route(&allowed.0));
    assert!(
        !proxy.log().contains("cannot read and search"),
        "{}",
        proxy.log()
    );
}

/// A proxy whose directory is down at start still starts, but is not ready until its
/// directory checks have passed; once the directory answers, they pass on their own.
#[test]
fn directory_checks_wait_for_a_directory_that_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ds = directory();
    let proxy = Proxy::start_config(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[backend]\nuris = [\"ldap://127.0.0.1:{port}\"]\nconnect_timeout = \"2s\"\n\
         service_dn = \"{}\"\nservice_password_file = \"{}\"\n\n{}",
        ds.service_dn,
        ds.service_pw_file.display(),
        duo_route("")
    ));
    let (status, body) = proxy.http_get("/readyz");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("directory checks have not passed"), "{body}");

    // The directory "comes up": a relay to the real one on the configured port.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let target = format!("127.0.0.1:{}", ds.port);
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    assert!(
        eventually(Duration::from_secs(40), || proxy.http_get("/readyz").0
            == "HTTP/1.1 200 OK"),
        "{:?}\n{}",
        proxy.http_get("/readyz"),
        proxy.log()
    );
    // /readyz turns ready just before the line is logged, and the log is read from the
    // proxy's stderr as it comes.
    assert!(
        eventually(Duration::from_secs(10), || proxy
            .log()
            .contains("directory checks passed")),
        "{}",
        proxy.log()
    );
}
