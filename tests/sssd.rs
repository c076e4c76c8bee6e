//! A real sssd (Debian sssd 2.8, `auth_provider = ldap`, default `ldap_opt_timeout` of
//! 8 s) logs a user in through the proxy while the Duo push takes 20 s. sssd gives up on
//! the bind after 8 s, abandons it and sends it again on a new connection; the proxy
//! joins every retry onto the first transaction, so the login succeeds with one push.
//! (With 389's own PAM plugin the same login fails after 90 s with 5–6 pushes.)
//!
//! Needs root and the packages tests/run.sh installs (sssd-ldap, libpam-sss, pamtester).
//! Only one sssd can run per machine: this file holds the only sssd test.

mod common;

use common::*;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PAM_SERVICE: &str = "lpp-sssd-test";

/// sssd in the foreground with a private configuration; stopped when dropped.
struct Sssd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sssd {
    fn start(ldap_uri: &str, suffix: &str) -> Sssd {
        // Cached identities of an earlier run would hide a broken lookup.
        for dir in ["/var/lib/sss/db", "/var/lib/sss/mc"] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sssd.conf");
        let text = format!(
            "[sssd]\nservices = nss, pam\ndomains = LPP\n\n[nss]\n\n[pam]\n\n[domain/LPP]\nid_provider = ldap\nauth_provider = ldap\nldap_uri = {ldap_uri}\nldap_search_base = {suffix}\nldap_schema = rfc2307\ncache_credentials = false\nenumerate = false\nldap_auth_disable_tls_never_use_in_production = true\n"
        );
        std::fs::write(&conf, text).unwrap();
        // sssd refuses a configuration others can read.
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let child = Command::new("sssd")
            .args(["-i", "-d", "2", "--logger=stderr", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sssd (install sssd-ldap: tests/run.sh does)");
        Sssd { child, _dir: dir }
    }
}

impl Drop for Sssd {
    fn drop(&mut self) {
        // Stop the main process: killing a responder only makes sssd restart it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !eventually(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn sssd_login_with_a_20s_push_sends_one_push() {
    let pam = PamSetup::new("alice:alice-pampw:duo\n");
    pam.set_duo_delay(20);
    let proxy = Proxy::with_pam(
        &pam,
        r#"
[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false
"#,
    );
    std::fs::write(
        format!("/etc/pam.d/{PAM_SERVICE}"),
        "auth required pam_sss.so\naccount required pam_sss.so\n",
    )
    .expect("write /etc/pam.d service (run as root)");
    let _sssd = Sssd::start(&proxy.uri(), &directory().suffix);
    assert!(
        eventually(Duration::from_secs(30), || {
            Command::new("getent")
                .args(["passwd", "alice"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("alice:"))
        }),
        "sssd never resolved alice through the proxy:\n{}",
        proxy.log()
    );

    let mut login = Command::new("timeout")
        .args(["150", "pamtester", PAM_SERVICE, "alice", "authenticate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pamtester");
    login
        .stdin
        .take()
        .unwrap()
        .write_all(b"alice-pampw\n")
        .unwrap();
    let out = login.wait_with_output().unwrap();
    // One log line per bind sssd sent: abandoned ones and the one that got the answer.
    let binds = proxy
        .log()
        .lines()
        .filter(|l| l.contains("bind") && l.contains("uid=alice,ou=People"))
        .count();
    let _ = std::fs::remove_file(format!("/etc/pam.d/{PAM_SERVICE}"));
    assert!(
        out.status.success(),
        "login failed: {}{}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    assert_eq!(
        pam.pushes().len(),
        1,
        "one login, one push: {:?}",
        pam.pushes()
    );
    // sssd really did retry: the proxy saw its bind more than once.
    assert!(binds >= 2, "expected sssd's retries, saw {binds} bind(s)");
}
