//! The deploy kit is usable as shipped: the systemd unit passes `systemd-analyze verify`
//! and the Grafana dashboard is valid JSON that queries metrics the proxy exports.

use std::path::Path;
use std::process::Command;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping the unit check");
        return;
    }
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
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // Only complaints about this unit count (the host's other units are not ours).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ldap-pam-proxy.service"))
        .collect();
    assert!(ours.is_empty() && out.status.success(), "{text}");
}

#[test]
fn dashboard_and_alerts_query_exported_metrics() {
    let dashboard =
        std::fs::read_to_string(repo("deploy/grafana/ldap-pam-proxy-dashboard.json")).unwrap();
    assert!(dashboard.trim_start().starts_with('{') && dashboard.contains("\"panels\""));
    let alerts =
        std::fs::read_to_string(repo("deploy/prometheus/ldap-pam-proxy-alerts.yml")).unwrap();
    let source = std::fs::read_to_string(repo("src/metrics.rs")).unwrap();
    let text = dashboard + &alerts;
    for name in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ldap_pam_proxy_"))
    {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        assert!(
            source.contains(&format!("\"{base}\"")),
            "{name} is queried but src/metrics.rs does not export it"
        );
    }
}
