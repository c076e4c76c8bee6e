//! The deploy kit is usable as shipped: the systemd unit passes `systemd-analyze verify`,
//! and the Grafana dashboard (parsed as JSON) and the Prometheus alerts query only
//! metrics that a live proxy exports.

mod common;

use common::*;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `systemd-analyze` comes with Debian's `systemd` package, which tests/run.sh installs
/// when it is missing: this check never skips.
#[test]
fn systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo("deploy/ldap-pam-proxy.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/ldap-pam-proxy",
            env!("CARGO_BIN_EXE_ldap-pam-proxy"),
        );
    let path = dir.path().join("ldap-pam-proxy.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e} (Debian package systemd; tests/run.sh installs it)")
        });
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // Only complaints about this unit count (the host's other units are not ours).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ldap-pam-proxy.service"))
        .collect();
    assert!(ours.is_empty() && out.status.success(), "{text}");
}

/// Names of `ldap_pam_proxy_*` metrics in a PromQL expression.
fn metric_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ldap_pam_proxy_"))
}

/// Every `expr` string anywhere in a JSON document.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `expr` of every rule of the alerts file: a one-line value, or a `|` block (the
/// lines indented deeper than the key).
fn alert_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value != "|" {
            out.push(value.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        out.push(block.join(" "));
    }
    out
}

/// What a live proxy exports once it has done a bit of everything the dashboard and the
/// alerts watch: PAM binds (one joined, one abandoned, one refused by the guard), a
/// forwarded bind, a search, a reload, and a transaction that expired in the queue.
fn live_metric_names() -> BTreeSet<String> {
    let pam = PamSetup::new("alice:alice-pampw:duo\nbob:bob-pampw:duo\ncarol:carol-pampw:duo\n");
    let proxy = Proxy::with_pam(
        &pam,
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[pam]\nworkers = 1\nmax_attempts_per_minute = 1\n\n\
         [[route]]\nname = \"duo\"\nfilter = \"(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))\"\n\
         pam_service = \"duo\"\nsecure = false\ntimeout = \"3s\"\n",
    );
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success);
    let mut c = start_bind(&proxy, "alice", "alice-pampw");
    assert_eq!(bind_result(&mut c), LdapResultCode::Success, "joined");
    let (_, done) = c.exchange(search(
        3,
        &people(),
        ldap3_proto::proto::LdapSearchScope::Base,
        "(objectClass=*)",
        &["ou"],
    ));
    assert!(matches!(done.op, LdapOp::SearchResultDone(_)), "{done:?}");
    let out = ldap_tool(
        "ldapwhoami",
        &proxy.uri(),
        &["-x", "-D", &user("noposix"), "-w", "noposix-dirpw"],
    );
    assert_eq!(out.code, 0, "forwarded: {out:?}");
    let mut c = start_bind(&proxy, "carol", "wrong");
    assert_eq!(bind_result(&mut c), LdapResultCode::InvalidCredentials);
    let mut c = start_bind(&proxy, "carol", "wrong-again");
    assert_eq!(bind_result(&mut c), LdapResultCode::Busy, "rate limited");
    {
        // Bob's push holds the one worker past his deadline; his client abandons the
        // bind; dave's bind expires waiting for the worker.
        let hold = pam.hold();
        let mut bob = start_bind(&proxy, "bob", "bob-pampw");
        assert!(eventually(Duration::from_secs(15), || pam.pushes().len() == 2));
        bob.send(LdapMsg::new(2, LdapOp::AbandonRequest(1)));
        let mut late = start_bind(&proxy, "dave", "dave-pampw");
        assert_eq!(bind_result(&mut late), LdapResultCode::Unavailable);
        hold.release();
    }
    proxy.signal("HUP");
    assert!(eventually(Duration::from_secs(15), || {
        let (_, body) = proxy.http_get("/metrics");
        body.contains("ldap_pam_proxy_config_reloads_total")
            && body.contains("ldap_pam_proxy_pam_transactions_skipped_total")
            && body.contains("ldap_pam_proxy_binds_abandoned_total")
    }));
    let (status, body) = proxy.http_get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboard_and_alerts_query_exported_metrics() {
    let text =
        std::fs::read_to_string(repo("deploy/grafana/ldap-pam-proxy-dashboard.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"]
        .as_array()
        .expect("a dashboard with panels");
    assert!(!panels.is_empty());
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(
        queries.len() >= panels.len(),
        "every panel queries something: {queries:?}"
    );

    let alerts =
        std::fs::read_to_string(repo("deploy/prometheus/ldap-pam-proxy-alerts.yml")).unwrap();
    let rules = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let alert_queries = alert_exprs(&alerts);
    assert_eq!(alert_queries.len(), rules, "one expr per alert rule");
    assert!(alert_queries.iter().all(|q| !q.is_empty()));

    let live = live_metric_names();
    let queried: BTreeSet<&str> = queries
        .iter()
        .chain(&alert_queries)
        .flat_map(|q| metric_names(q))
        .collect();
    assert!(queried.len() > 10, "{queried:?}");
    let missing: Vec<&&str> = queried.iter().filter(|n| !live.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported by a live proxy: {missing:?}\nexported: {live:?}"
    );
}

/// The production example, config/ldap-pam-proxy.toml, passes `check-config` as shipped,
/// with stand-ins for its host's files (service password, TLS certificate, key and CAs,
/// PAM services), and is the secure setup: TLS on both listeners and to the backends,
/// secure routes.
#[test]
fn the_production_example_passes_check_config() {
    let text = std::fs::read_to_string(repo("config/ldap-pam-proxy.toml")).unwrap();
    for setting in [
        "ldaps_address = \"0.0.0.0:636\"",
        "require_tls = true",
        "[tls]",
        "ca = \"/etc/ldap-pam-proxy/tls/ds-ca.pem\"",
    ] {
        assert!(text.contains(setting), "the example lacks {setting}");
    }
    assert!(
        !text.contains("uris = [\"ldap://") && text.contains("uris = [\"ldaps://"),
        "backends over LDAPS"
    );
    assert!(
        !text.contains("secure = false") && !text.to_lowercase().contains("not served yet"),
        "secure routes, no stale text"
    );

    let dir = tempfile::tempdir().unwrap();
    let stand_in = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(stand_in("service.pw"), "secret\n").unwrap();
    let openssl = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=ldap.example.com"])
        .args([
            "-keyout",
            &stand_in("server.key"),
            "-out",
            &stand_in("server.crt"),
        ])
        .output()
        .expect("openssl");
    assert!(openssl.status.success(), "{openssl:?}");
    std::fs::copy(stand_in("server.crt"), stand_in("ds-ca.pem")).unwrap();
    let services = dir.path().join("pam.d");
    std::fs::create_dir(&services).unwrap();
    for svc in ["duo", "csu"] {
        std::fs::write(
            services.join(svc),
            "auth required pam_permit.so\naccount required pam_permit.so\n",
        )
        .unwrap();
    }
    let config = text
        .replace("/etc/ldap-pam-proxy/service.pw", &stand_in("service.pw"))
        .replace(
            "/etc/ldap-pam-proxy/tls/server.crt",
            &stand_in("server.crt"),
        )
        .replace(
            "/etc/ldap-pam-proxy/tls/server.key",
            &stand_in("server.key"),
        )
        .replace("/etc/ldap-pam-proxy/tls/ds-ca.pem", &stand_in("ds-ca.pem"));
    let settings: Vec<&str> = config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        settings.iter().all(|l| !l.contains("/etc/ldap-pam-proxy/")),
        "a file without a stand-in: {settings:?}"
    );
    let path = dir.path().join("ldap-pam-proxy.toml");
    std::fs::write(&path, config).unwrap();
    // check-config looks for PAM services where pam_wrapper would (it does not need to
    // be loaded for that).
    let out = Command::new(env!("CARGO_BIN_EXE_ldap-pam-proxy"))
        .arg("check-config")
        .arg(&path)
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", &services)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
