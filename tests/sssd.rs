//! A real sssd (Debian sssd 2.8, `auth_provider = ldap`, default `ldap_opt_timeout` of
//! 8 s) logs a user in through the proxy while the Duo push takes 20 s. sssd gives up on
//! the bind after 8 s, abandons it and sends it again on a new connection; the proxy
//! joins every retry onto the first transaction, so the login succeeds with one push.
//! (With 389's own PAM plugin the same login fails after 90 s with 5–6 pushes.)
//!
//! Needs root and the packages tests/run.sh installs (sssd-ldap, libpam-sss, libnss-sss,
//! pamtester), and util-linux's `unshare` and `nsenter`.
//!
//! sssd's state directory (`/var/lib/sss`: cache, memory cache, the sockets pam_sss and
//! nss_sss talk to), its pid file (`/run/sssd.pid`) and the PAM and NSS configuration are
//! fixed paths. So this sssd runs in a mount namespace of its own, where a temporary
//! directory stands in for each of them, and the PAM and NSS clients (`pamtester`,
//! `getent`) run in that namespace too: the host's sssd, its cache and its configuration
//! are neither touched nor used, and a host sssd may run meanwhile.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PAM_SERVICE: &str = "lpp-sssd-test";

/// sssd in the foreground, in its own mount namespace; stopped when dropped.
struct Sssd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Sssd {
    fn start(ldap_uri: &str, suffix: &str) -> Sssd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // /var/lib/sss as the package lays it out.
        for sub in [
            "sss/db",
            "sss/mc",
            "sss/pipes/private",
            "sss/pubconf/krb5.include.d",
            "sss/gpo_cache",
            "sss/secrets",
            "sss/deskprofile",
            "run",
            "pam.d",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for (sub, mode) in [
            ("sss/db", 0o700),
            ("sss/pipes/private", 0o750),
            ("sss/secrets", 0o700),
        ] {
            std::fs::set_permissions(
                root.join(sub),
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            )
            .unwrap();
        }
        std::fs::write(
            root.join("pam.d").join(PAM_SERVICE),
            "auth required pam_sss.so\naccount required pam_sss.so\n",
        )
        .unwrap();
        std::fs::write(
            root.join("nsswitch.conf"),
            "passwd: files sss\ngroup: files sss\nshadow: files\n",
        )
        .unwrap();
        let conf = root.join("sssd.conf");
        let text = format!(
            "[sssd]\nservices = nss, pam\ndomains = LPP\n\n[nss]\n\n[pam]\n\n[domain/LPP]\nid_provider = ldap\nauth_provider = ldap\nldap_uri = {ldap_uri}\nldap_search_base = {suffix}\nldap_schema = rfc2307\ncache_credentials = false\nenumerate = false\nldap_auth_disable_tls_never_use_in_production = true\n"
        );
        std::fs::write(&conf, text).unwrap();
        // sssd refuses a configuration others can read.
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let log = std::fs::File::create(root.join("sssd.log")).unwrap();
        // unshare runs the shell in the new namespace itself (no fork), and the shell
        // execs sssd: the child's pid names the namespace for nsenter.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(
                "mount --bind \"$1/sss\" /var/lib/sss
                 mount --bind \"$1/run\" /run
                 mount --bind \"$1/pam.d\" /etc/pam.d
                 mount --bind \"$1/nsswitch.conf\" /etc/nsswitch.conf
                 exec sssd -i -d 2 --logger=stderr -c \"$1/sssd.conf\"",
            )
            .arg("sh")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux)");
        Sssd { child, dir }
    }

    /// Runs `program args` in sssd's mount namespace.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.child.id()))
            .arg("--")
            .arg(program)
            .args(args);
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sssd.log")).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether this sssd is in a mount namespace of its own, serving its NSS and PAM
    /// sockets (they appear in the directory that stands in for /var/lib/sss). Until
    /// then, a client "in its namespace" could be in the host's and reach the host's
    /// sssd, if one runs.
    fn serving(&mut self) -> bool {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let own = ns(&self.child.id().to_string());
        let pipes = self.dir.path().join("sss/pipes");
        self.running()
            && own.is_some()
            && own != ns("self")
            && pipes.join("nss").exists()
            && pipes.join("pam").exists()
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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The file the host would read, to show that the test left it alone.
fn host_file(path: &str) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn sssd_login_with_a_20s_push_sends_one_push() {
    let pam = PamSetup::new("alice:alice-pampw:duo\n");
    pam.set_duo_delay(20);
    let proxy = Proxy::with_pam(
        &pam,
        r#"
[metrics]
listen = "127.0.0.1:0"

[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false
"#,
    );
    let host_pam: PathBuf = Path::new("/etc/pam.d").join(PAM_SERVICE);
    let host_nsswitch = host_file("/etc/nsswitch.conf");
    let mut sssd = Sssd::start(&proxy.uri(), &directory().suffix);
    assert!(
        eventually(Duration::from_secs(30), || sssd.serving()),
        "sssd did not come up in its namespace (running: {}):\n{}",
        sssd.running(),
        sssd.log()
    );
    assert!(
        eventually(Duration::from_secs(30), || {
            sssd.command("getent", &["passwd", "alice"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("alice:"))
        }),
        "sssd never resolved alice through the proxy (running: {}):\n{}\nproxy log:\n{}",
        sssd.running(),
        sssd.log(),
        proxy.log()
    );

    let mut login = sssd
        .command(
            "timeout",
            &["150", "pamtester", PAM_SERVICE, "alice", "authenticate"],
        )
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
    assert!(
        out.status.success(),
        "login failed: {}\nsssd log:\n{}\nproxy log:\n{}",
        text(&out),
        sssd.log(),
        proxy.log()
    );
    assert_eq!(
        pam.pushes().len(),
        1,
        "one login, one push: {:?}",
        pam.pushes()
    );
    // sssd really did retry, and its retries joined the one transaction.
    let coalesced = proxy
        .metric("ldap_pam_proxy_binds_coalesced_total")
        .unwrap_or(0.0);
    assert!(
        coalesced >= 1.0,
        "expected sssd's retries to join the push, {coalesced} did:\n{}",
        proxy.log()
    );
    // It was this sssd, through the proxy, that resolved and logged alice in.
    assert!(
        proxy.log().contains("uid=alice,ou=People"),
        "{}",
        proxy.log()
    );
    // Nothing of this reached the host's configuration.
    assert!(!host_pam.exists(), "{} was written", host_pam.display());
    assert_eq!(host_file("/etc/nsswitch.conf"), host_nsswitch);
}
