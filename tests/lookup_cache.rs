//! `bind.lookup_cache`: the directory's answers about a bind DN that no route takes are
//! reused for a while, and a reload forgets them. A change in the directory that makes
//! an entry routed takes effect within the cache's lifetime, at once with it off.

mod common;

use common::*;
use std::time::Duration;

/// A user no route takes yet, with a directory password; removed when dropped.
struct Unrouted {
    dn: String,
}

impl Unrouted {
    fn new() -> Unrouted {
        let uid = unique("cached");
        let dn = format!("uid={uid},{}", people());
        let ldif = format!(
            "dn: {dn}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: x\nuserPassword: dir-pw\n"
        );
        let root = as_root();
        let root: Vec<&str> = root.iter().map(String::as_str).collect();
        let out = ldap_tool_input("ldapadd", &directory().uri, &root, Some(&ldif));
        assert_eq!(out.code, 0, "{out:?}");
        Unrouted { dn }
    }

    /// Makes the entry match the route's filter.
    fn route_it(&self) {
        let root = as_root();
        let root: Vec<&str> = root.iter().map(String::as_str).collect();
        let change = format!(
            "dn: {}\nchangetype: modify\nadd: description\ndescription: routed-now\n",
            self.dn
        );
        let out = ldap_tool_input("ldapmodify", &directory().uri, &root, Some(&change));
        assert_eq!(out.code, 0, "{out:?}");
    }
}

impl Drop for Unrouted {
    fn drop(&mut self) {
        let mut args = as_root();
        args.push(self.dn.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ldap_tool("ldapdelete", &directory().uri, &args);
    }
}

fn proxy(cache: &str, pam: &PamSetup) -> Proxy {
    Proxy::with_pam(
        pam,
        &format!(
            "[bind]\nlookup_cache = \"{cache}\"\n[[route]]\nname = \"duo\"\nfilter = \"(description=routed-now)\"\npam_service = \"duo\"\nsecure = false\n"
        ),
    )
}

fn bind_code(proxy: &Proxy, dn: &str) -> i32 {
    ldap_tool(
        "ldapwhoami",
        &proxy.uri(),
        &["-x", "-D", dn, "-w", "dir-pw"],
    )
    .code
}

#[test]
fn facts_about_an_unrouted_entry_last_until_the_cache_expires_or_a_reload() {
    let pam = PamSetup::new("");
    let proxy = proxy("1h", &pam);
    let user = Unrouted::new();
    assert_eq!(
        bind_code(&proxy, &user.dn),
        0,
        "no route: the directory decides"
    );
    user.route_it();
    assert_eq!(
        bind_code(&proxy, &user.dn),
        0,
        "the facts are remembered: still forwarded"
    );
    proxy.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || proxy
        .log()
        .contains("configuration reloaded")));
    assert_eq!(
        bind_code(&proxy, &user.dn),
        49,
        "after a reload the entry is asked about again: PAM decides (and refuses)"
    );
    assert_eq!(
        bind_code(&proxy, &user.dn),
        49,
        "a routed entry's facts are never remembered"
    );
}

#[test]
fn without_the_cache_a_change_takes_effect_at_once() {
    let pam = PamSetup::new("");
    let proxy = proxy("0s", &pam);
    let user = Unrouted::new();
    assert_eq!(bind_code(&proxy, &user.dn), 0);
    user.route_it();
    assert_eq!(bind_code(&proxy, &user.dn), 49);
}
