//! The bind decision (DESIGN §2) end to end: the proxy in front of the real 389 DS, with
//! real libpam under pam_wrapper running the test services of `pam.d/test/`.
//!
//! PAM passwords (`<uid>-pampw`) differ from directory passwords (`<uid>-dirpw`), so every
//! answer shows whether PAM or the directory checked the password. The `duo` service
//! records one push (`<PAM user> <PAM rhost>`) per PAM transaction; `csu` records none.
//! Each test starts its own proxy with its own PAM state, so push counts are its own.

mod common;

use common::*;
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResult, LdapResultCode, LdapSearchScope};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AUTHZID_REQUEST: &str = "2.16.840.1.113730.3.4.16";
const AUTHZID_RESPONSE: &str = "2.16.840.1.113730.3.4.15";
const PW_EXPIRED: &str = "2.16.840.1.113730.3.4.4";
const PROXY_AUTHZ_V1: &str = "2.16.840.1.113730.3.4.12";

fn dn(uid: &str) -> String {
    user(uid)
}

fn pampw(uid: &str) -> String {
    format!("{uid}-pampw")
}

fn dirpw(uid: &str) -> String {
    format!("{uid}-dirpw")
}

/// A push line of the `duo` service: the PAM user and the client's address.
fn push(pam_user: &str) -> String {
    format!("{pam_user} 127.0.0.1")
}

/// The pam_matrix passdb, `user:password:service`: the account check of `duo` and `csu`
/// passes only for users listed with that service. user001 is unknown to PAM; ghost is
/// known to PAM but has no entry.
fn passdb() -> String {
    let mut db = String::new();
    for uid in [
        "alice",
        "bob",
        "carol",
        "dave",
        "lockeduser",
        "noposix",
        "ghost",
    ] {
        db += &format!("{uid}:{}:duo\n", pampw(uid));
    }
    for uid in ["erin", "frank", "grace"] {
        db += &format!("{uid}:{}:csu\n", pampw(uid));
    }
    // Identities of the `entry` (id_attr = mail) and `dn` methods.
    db += "alice@example.com:alice-mailpw:duo\n";
    db += &format!("{}:alice-dnpw:duo\n", dn("alice"));
    db
}

/// The proxy of these tests, with this file's PAM users.
fn bench(config: &str) -> PamBench {
    PamBench::new(&passdb(), config)
}

impl PamBench {
    /// A simple bind through the proxy, then WhoAmI (`ldapwhoami`).
    fn bind(&self, dn: &str, pw: &str) -> Outcome {
        whoami_as(&self.uri(), dn, pw)
    }
}

fn whoami_as(uri: &str, dn: &str, pw: &str) -> Outcome {
    ldap_tool("ldapwhoami", uri, &["-x", "-D", dn, "-w", pw])
}

/// The LDAPResult of a response.
fn result(m: &LdapMsg) -> &LdapResult {
    match &m.op {
        LdapOp::BindResponse(r) => &r.res,
        LdapOp::ExtendedResponse(r) => &r.res,
        LdapOp::SearchResultDone(r)
        | LdapOp::ModifyResponse(r)
        | LdapOp::AddResponse(r)
        | LdapOp::DelResponse(r)
        | LdapOp::ModifyDNResponse(r)
        | LdapOp::CompareResult(r) => r,
        other => panic!("not a response with a result: {other:?}"),
    }
}

/// The value of the response control `oid` in `m`: `None` when the control is absent.
fn control_value(m: &LdapMsg, oid: &str) -> Option<Vec<u8>> {
    m.ctrl.iter().find_map(|c| match c {
        LdapControl::Unknown { oid: o, value, .. } if o == oid => {
            Some(value.clone().unwrap_or_default())
        }
        _ => None,
    })
}

/// WhoAmI on a raw connection: the authzId, empty when anonymous.
fn whoami(c: &mut RawClient, msgid: i32) -> String {
    let (_, m) = c.exchange(whoami_request(msgid));
    assert_eq!(result(&m).code, LdapResultCode::Success, "{m:?}");
    let LdapOp::ExtendedResponse(r) = m.op else {
        unreachable!()
    };
    String::from_utf8(r.value.unwrap_or_default()).expect("UTF-8 authzId")
}

/// The DNs of the entries whose `mail` the connection's identity may read: by the
/// sample's ACIs, a user's own, nobody's when anonymous.
fn mail_readable(c: &mut RawClient, msgid: i32) -> Vec<String> {
    c.send(search(
        msgid,
        &people(),
        LdapSearchScope::Subtree,
        "(mail=*)",
        &["mail"],
    ));
    entries_of(c, msgid)
}

/// Reads the answer to search `msgid`: its entries' DNs; the search must succeed.
fn entries_of(c: &mut RawClient, msgid: i32) -> Vec<String> {
    let (entries, done) = c.answer(msgid);
    assert_eq!(result(&done).code, LdapResultCode::Success, "{done:?}");
    entries
        .into_iter()
        .filter_map(|m| match m.op {
            LdapOp::SearchResultEntry(e) => Some(e.dn),
            _ => None,
        })
        .collect()
}

/// Each route is chosen by its filter, and then PAM alone decides: the directory
/// password of a PAM-routed user does not work. WhoAmI answers the bound user's DN.
#[test]
fn routes_choose_the_pam_service_and_pam_decides() {
    let b = bench(&site_routes());
    let cases = [
        // (uid, password, ldapwhoami exit code = LDAP result, why)
        (
            "alice",
            pampw("alice"),
            0,
            "internal user: duo, her PAM password",
        ),
        (
            "erin",
            pampw("erin"),
            0,
            "external user: csu, her PAM password",
        ),
        (
            "alice",
            dirpw("alice"),
            49,
            "directory password of a PAM user",
        ),
        (
            "erin",
            dirpw("erin"),
            49,
            "directory password of a PAM user",
        ),
        ("alice", "wrong".into(), 49, "wrong password"),
        ("user001", pampw("user001"), 49, "user unknown to PAM"),
    ];
    for (uid, pw, code, why) in &cases {
        let out = b.bind(&dn(uid), pw);
        assert_eq!(out.code, *code, "{uid}: {why}: {out:?}");
        if *code == 0 {
            assert_eq!(out.stdout.trim(), format!("dn:{}", dn(uid)), "WhoAmI");
        }
    }
    // One duo transaction per bind of an internal user, none for csu.
    assert_eq!(
        b.pushes(),
        [push("alice"), push("alice"), push("alice"), push("user001")]
    );
}

/// Two routes match erin; the first in file order decides. Only csu accepts her (duo's
/// account check refuses a user listed for csu: unwillingToPerform).
#[test]
fn first_matching_route_wins() {
    let erin_csu = route("erin-csu", Some("(uid=erin)"), "csu", "");
    let posix_duo = route("posix-duo", Some("(objectClass=posixAccount)"), "duo", "");
    for (routes, code, pushes) in [
        (format!("{erin_csu}{posix_duo}"), 0, vec![]),
        (format!("{posix_duo}{erin_csu}"), 53, vec![push("erin")]),
    ] {
        let b = bench(&routes);
        let out = b.bind(&dn("erin"), &pampw("erin"));
        assert_eq!(out.code, code, "{routes}{out:?}");
        assert_eq!(b.pushes(), pushes, "{routes}");
    }
}

/// Route filters are evaluated by the directory, with its matching rules: `sn` and `cn`
/// are case-insensitive, `homeDirectory` (caseExactIA5Match) is not. RFC 4515 allows
/// spaces in assertion values.
#[test]
fn route_filters_use_the_directorys_matching_rules() {
    for (filter, code, pushes) in [
        ("(sn=ANDERSON)", 0, vec![push("alice")]),
        ("(homeDirectory=/HOME/ALICE)", 49, vec![]),
        ("(cn=ALICE ANDERSON)", 0, vec![push("alice")]),
    ] {
        let b = bench(&format!(
            "[bind]\nunmatched = \"reject\"\n{}",
            route("duo", Some(filter), "duo", "")
        ));
        let out = b.bind(&dn("alice"), "alice-pampw");
        assert_eq!(out.code, code, "{filter}: {out:?}");
        assert_eq!(b.pushes(), pushes, "{filter}");
    }
}

/// `id_map` picks the PAM user (seen in the duo push line); the next method is tried
/// only when one yields no identity, never after a PAM failure (one bind, one push).
#[test]
fn id_map_methods_choose_the_pam_user() {
    let alice = dn("alice");
    let cases: [(&str, &str, &str, i32, Vec<String>); 7] = [
        // (id_map, id_attr, password, exit code, duo pushes)
        (r#"["rdn"]"#, "uid", "alice-pampw", 0, vec![push("alice")]),
        (
            r#"["entry"]"#,
            "mail",
            "alice-mailpw",
            0,
            vec![push("alice@example.com")],
        ),
        (
            r#"["entry"]"#,
            "mail",
            "alice-pampw",
            49,
            vec![push("alice@example.com")],
        ),
        (r#"["dn"]"#, "uid", "alice-dnpw", 0, vec![push(&alice)]),
        // alice has no employeeNumber: `entry` yields nothing, `rdn` is next.
        (
            r#"["entry", "rdn"]"#,
            "employeeNumber",
            "alice-pampw",
            0,
            vec![push("alice")],
        ),
        // No method yields an identity: invalidCredentials (389's noSuchObject would tell
        // that the entry exists and is routed), and PAM is not asked.
        (r#"["entry"]"#, "employeeNumber", "alice-pampw", 49, vec![]),
        // A wrong password fails at `rdn`; `entry` is not tried.
        (
            r#"["rdn", "entry"]"#,
            "mail",
            "wrong",
            49,
            vec![push("alice")],
        ),
    ];
    for (id_map, id_attr, pw, code, pushes) in cases {
        let b = bench(&route(
            "duo",
            Some(INTERNAL),
            "duo",
            &format!("id_map = {id_map}\nid_attr = \"{id_attr}\""),
        ));
        let out = b.bind(&alice, pw);
        let case = format!("id_map = {id_map}, id_attr = {id_attr}, password {pw}");
        assert_eq!(out.code, code, "{case}: {out:?}");
        assert_eq!(b.pushes(), pushes, "{case}");
    }
}

/// Binds outside the PAM scope go to the directory unchanged, even where every bind in
/// scope would go to PAM (a route without filter) or be rejected (`unmatched = reject`).
#[test]
fn binds_outside_the_pam_scope_are_forwarded() {
    let ds = directory();
    let suffix = &ds.suffix;
    let services = format!("ou=Services,{suffix}");
    let grafana = format!("cn=grafana,{services}");
    let grafana_spaced = grafana.replace(',', ", ");
    let root_upper = ds.root_dn.to_uppercase();

    // A bindable entry under cn=config, which is excluded by default.
    let config_dn = format!("cn={},cn=config", unique("lpp-bind"));
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let add = format!(
        "dn: {config_dn}\nobjectClass: top\nobjectClass: person\ncn: x\nsn: x\nuserPassword: config-entry-pw\n"
    );
    let out = ldap_tool_input("ldapadd", &ds.uri, &root, Some(&add));
    assert_eq!(out.code, 0, "{out:?}");
    struct Delete<'a>(&'a str, &'a [&'a str]);
    impl Drop for Delete<'_> {
        fn drop(&mut self) {
            let mut args = self.1.to_vec();
            args.push(self.0);
            ldap_tool("ldapdelete", &directory().uri, &args);
        }
    }
    let _delete = Delete(&config_dn, &root);

    // Application accounts are named by cn: `rdn` takes that attribute.
    let all = |extra: &str| route("all", None, "duo", &format!("rdn_attr = \"cn\"\n{extra}"));
    let reject = "[bind]\nunmatched = \"reject\"\n";
    let cases = [
        // (config, bind DN, password, exit code, duo pushes)
        // Control: in scope, PAM decides for the application account too.
        (all(""), grafana.as_str(), "grafana-pw", 49, vec![push("grafana")]),
        (format!("{reject}{}", all("")), config_dn.as_str(), "config-entry-pw", 0, vec![]),
        (format!("{reject}{}", all("")), ds.root_dn.as_str(), ds.root_pw.as_str(), 0, vec![]),
        // DNs compare as DNs: case and spaces after commas do not matter.
        (format!("{reject}{}", all("")), root_upper.as_str(), ds.root_pw.as_str(), 0, vec![]),
        (
            format!("{reject}exclude_suffixes = [\"{}\"]\n{}", services.to_lowercase(), all("")),
            &grafana_spaced,
            "grafana-pw",
            0,
            vec![],
        ),
        (
            format!("{reject}exclude_suffixes = [\"{services}\"]\n{}", all("")),
            &grafana,
            "grafana-pw",
            0,
            vec![],
        ),
        (
            format!("{reject}include_suffixes = [\"{}\"]\n{}", people(), all("")),
            &grafana,
            "grafana-pw",
            0,
            vec![],
        ),
        // Exclude wins over include.
        (
            format!(
                "{reject}include_suffixes = [\"{suffix}\"]\nexclude_suffixes = [\"{services}\"]\n{}",
                all("")
            ),
            &grafana,
            "grafana-pw",
            0,
            vec![],
        ),
        // Per-route scope: the only route does not apply, so no route matches.
        (
            all(&format!("exclude_suffixes = [\"{services}\"]")),
            &grafana,
            "grafana-pw",
            0,
            vec![],
        ),
        (
            all(&format!("include_suffixes = [\"{}\"]", people())),
            &grafana,
            "grafana-pw",
            0,
            vec![],
        ),
    ];
    for (config, bind_dn, pw, code, pushes) in cases {
        let b = bench(&config);
        let out = b.bind(bind_dn, pw);
        assert_eq!(out.code, code, "{bind_dn} with\n{config}{out:?}");
        assert_eq!(b.pushes(), pushes, "{bind_dn} with\n{config}");
    }
}

/// Anonymous and unauthenticated binds are never PAM's: the proxy's answer is the
/// directory's, even for a PAM-routed user. SASL mechanisms that carry a password would
/// let the routed user in with the directory password: the proxy refuses them, though
/// 389 itself accepts them (DESIGN §7).
#[test]
fn anonymous_and_unauthenticated_binds_are_forwarded_password_sasl_is_refused() {
    let b = bench(&site_routes());
    let alice = dn("alice");
    let plain_user = format!("dn:{alice}");
    let plain = [
        "-O",
        "none",
        "-Y",
        "PLAIN",
        "-U",
        &plain_user,
        "-w",
        "alice-dirpw",
    ];
    // Two round trips (saslBindInProgress) straight to 389.
    let cram = [
        "-O",
        "none",
        "-Y",
        "CRAM-MD5",
        "-U",
        "alice",
        "-w",
        "alice-dirpw",
    ];
    let cases: [(&[&str], i32, i32); 4] = [
        // (arguments, 389's code, the proxy's code)
        (&["-x"], 0, 0),
        // 389 refuses unauthenticated binds (DN, empty password).
        (&["-x", "-D", &alice, "-w", ""], 53, 53),
        (&plain, 0, 7),
        (&cram, 0, 7),
    ];
    for (args, code, proxy_code) in cases {
        let direct = ldap_tool("ldapwhoami", &directory().uri, args);
        assert_eq!(direct.code, code, "389 itself: {args:?}: {direct:?}");
        let proxied = ldap_tool("ldapwhoami", &b.uri(), args);
        if code == proxy_code {
            assert_eq!(
                proxied, direct,
                "{args:?}: the proxy's answer differs from 389's"
            );
        } else {
            assert_eq!(proxied.code, proxy_code, "{args:?}: {proxied:?}");
            assert!(
                proxied.stderr.contains("not available through this proxy"),
                "{proxied:?}"
            );
        }
    }
    assert_eq!(b.pushes(), Vec::<String>::new());
}

/// A DN without entry (ghost) or matching no route (noposix) is forwarded to the
/// directory, or rejected with `unmatched = "reject"`; PAM is never asked.
#[test]
fn unmatched_binds_are_forwarded_or_rejected() {
    let ghost = dn("ghost");
    let noposix = dn("noposix");
    let cases = [
        (ghost.as_str(), pampw("ghost")),
        (&noposix, dirpw("noposix")),
        (&noposix, pampw("noposix")),
    ];
    for (unmatched, codes) in [("forward", [49, 0, 49]), ("reject", [49, 49, 49])] {
        let b = bench(&format!(
            "[bind]\nunmatched = \"{unmatched}\"\n{}",
            site_routes()
        ));
        for ((bind_dn, pw), code) in cases.iter().zip(codes) {
            let out = b.bind(bind_dn, pw);
            assert_eq!(
                out.code, code,
                "unmatched = {unmatched}: {bind_dn} {pw}: {out:?}"
            );
            if unmatched == "forward" {
                assert_eq!(out, whoami_as(&directory().uri, bind_dn, pw), "forwarded");
            }
        }
        assert_eq!(b.pushes(), Vec::<String>::new(), "unmatched = {unmatched}");
    }
}

/// A locked entry is refused before PAM, whatever the password.
#[test]
fn locked_account_is_refused_before_pam() {
    let b = bench(&site_routes());
    for pw in [pampw("lockeduser"), "wrong".into()] {
        let out = b.bind(&dn("lockeduser"), &pw);
        assert_eq!(out.code, 53, "{out:?}");
        assert!(out.stderr.contains("Account inactivated"), "{out:?}");
    }
    assert_eq!(b.pushes(), Vec::<String>::new());
}

/// PAM's answers as LDAP results (DESIGN §2.9), one route per PAM service.
#[test]
fn pam_results_map_to_ldap_results() {
    use LdapResultCode::*;
    let services = [
        ("carol", "acct-expired"),
        ("bob", "acct-newtok"),
        ("dave", "acct-denied"),
        ("frank", "maxtries"),
        ("grace", "syserr"),
        ("user002", "no-such-service"),
    ];
    // (The deadline, also unavailable, is tested in resilience.rs.)
    let config: String = services
        .iter()
        .map(|(uid, service)| route(service, Some(&format!("(uid={uid})")), service, ""))
        .collect();
    let b = bench(&config);

    let cases = [
        // (uid, password, result, diagnostic contains, pwExpired control)
        ("carol", pampw("carol"), InvalidCredentials, "", true),
        ("bob", pampw("bob"), InvalidCredentials, "", true),
        // The account check runs only after a successful authentication.
        ("carol", "wrong".to_owned(), InvalidCredentials, "", false),
        ("dave", pampw("dave"), UnwillingToPerform, "", false),
        ("frank", pampw("frank"), ConstraintViolation, "", false),
        ("grace", pampw("grace"), Unavailable, "syserr", false),
        (
            "user002",
            pampw("user002"),
            Unavailable,
            "no-such-service",
            false,
        ),
    ];
    for (uid, pw, code, diagnostic, pw_expired) in cases {
        let (_, m) = b.raw().exchange(bind_request(1, &dn(uid), &pw));
        let res = result(&m);
        assert_eq!(res.code, code, "{uid}: {m:?}");
        assert!(res.message.contains(diagnostic), "{uid}: diagnostic: {m:?}");
        assert_eq!(
            control_value(&m, PW_EXPIRED).is_some(),
            pw_expired,
            "{uid}: pwExpired control: {m:?}"
        );
    }
    // With the password policy request control, PAM_MAXTRIES also says accountLocked.
    let out = ldap_tool(
        "ldapwhoami",
        &b.uri(),
        &[
            "-x",
            "-e",
            "ppolicy",
            "-D",
            &dn("frank"),
            "-w",
            &pampw("frank"),
        ],
    );
    assert_eq!(out.code, 19, "{out:?}");
    assert!(out.stderr.contains("Account locked"), "{out:?}");
}

/// `fallback = true`: a failed PAM bind goes on to the directory's password check.
#[test]
fn fallback_forwards_failed_pam_binds() {
    let b = bench(&route("duo", Some(INTERNAL), "duo", "fallback = true"));
    for (pw, code) in [
        (pampw("alice"), 0),
        (dirpw("alice"), 0),
        ("wrong".into(), 49),
    ] {
        let out = b.bind(&dn("alice"), &pw);
        assert_eq!(out.code, code, "{pw}: {out:?}");
    }
    // PAM was asked every time.
    assert_eq!(b.pushes(), [push("alice"), push("alice"), push("alice")]);
}

/// A secure route (the default) on a connection without TLS: confidentialityRequired
/// before PAM, or, with `insecure = "forward"`, the directory's own check (389's way).
#[test]
fn secure_route_without_tls() {
    // No `secure` key: secure by default.
    let secure_route =
        format!("[[route]]\nname = \"duo\"\nfilter = \"{INTERNAL}\"\npam_service = \"duo\"\n");
    for (bind, codes) in [
        ("", [13, 13]),
        ("[bind]\ninsecure = \"forward\"\n", [49, 0]),
    ] {
        let b = bench(&format!("{bind}{secure_route}"));
        for (pw, code) in [pampw("alice"), dirpw("alice")].iter().zip(codes) {
            let out = b.bind(&dn("alice"), pw);
            assert_eq!(out.code, code, "{bind}{pw}: {out:?}");
        }
        assert_eq!(b.pushes(), Vec::<String>::new(), "{bind}");
    }
}

/// The Authorization Identity response control answers its request control, only then.
#[test]
fn authorization_identity_control() {
    let b = bench(&site_routes());
    let alice = dn("alice");
    for (requested, expected) in [(true, Some(format!("dn:{alice}"))), (false, None)] {
        let mut req = bind_request(1, &alice, &pampw("alice"));
        if requested {
            req.ctrl.push(LdapControl::Unknown {
                oid: AUTHZID_REQUEST.into(),
                criticality: false,
                value: None,
            });
        }
        let (_, m) = b.raw().exchange(req);
        assert_eq!(result(&m).code, LdapResultCode::Success, "{m:?}");
        assert_eq!(
            control_value(&m, AUTHZID_RESPONSE).map(|v| String::from_utf8(v).unwrap()),
            expected,
            "{m:?}"
        );
    }
}

/// After a PAM bind the directory's ACIs apply to the user: the same answer as the user
/// bound straight to 389 (`identity = "proxy-authz"`), or as the service account with
/// `identity = "service"`.
#[test]
fn bound_session_runs_with_the_configured_identity() {
    let ds = directory();
    let alice = dn("alice");
    let service_pw = ds.service_pw_file.to_string_lossy().into_owned();
    let people = people();
    let mail_search = |uri: &str, credentials: &[&str]| {
        let mut args = vec!["-x", "-LLL"];
        args.extend(credentials);
        args.extend(["-b", &people, "(mail=*)", "mail"]);
        ldap_tool("ldapsearch", uri, &args)
    };
    for (identity, direct_credentials, entries) in [
        ("proxy-authz", ["-D", &alice, "-w", "alice-dirpw"], Some(1)),
        ("service", ["-D", &ds.service_dn, "-y", &service_pw], None),
    ] {
        let b = bench(&format!(
            "[bind]\nidentity = \"{identity}\"\n{}",
            site_routes()
        ));
        let proxied = mail_search(&b.uri(), &["-D", &alice, "-w", "alice-pampw"]);
        let direct = mail_search(&ds.uri, &direct_credentials);
        assert_eq!(direct.code, 0, "{direct:?}");
        assert_eq!(proxied, direct, "identity = {identity}");
        if let Some(n) = entries {
            assert_eq!(
                proxied.stdout.matches("dn: ").count(),
                n,
                "{}",
                proxied.stdout
            );
        }
    }
}

/// A client may not bring its own proxied authorization (v2 or v1) onto a session the
/// proxy runs as its service account.
#[test]
fn client_proxied_authorization_is_refused() {
    let b = bench(&site_routes());
    let (alice, bob) = (dn("alice"), dn("bob"));
    // v1 value: SEQUENCE { LDAPDN }.
    assert!(bob.len() < 120);
    let mut v1 = vec![0x30, bob.len() as u8 + 2, 0x04, bob.len() as u8];
    v1.extend_from_slice(bob.as_bytes());
    // ldapsearch knows v2 as a general extension (-e); v1 goes as a generic search
    // control (-E).
    for (option, control) in [
        ("-e", format!("!authzid=dn:{bob}")),
        ("-E", format!("!{PROXY_AUTHZ_V1}=::{}", base64(&v1))),
    ] {
        let out = ldap_tool(
            "ldapsearch",
            &b.uri(),
            &[
                "-x",
                "-D",
                &alice,
                "-w",
                "alice-pampw",
                option,
                &control,
                "-b",
                &bob,
                "-s",
                "base",
                "mail",
            ],
        );
        assert_eq!(out.code, 50, "{control}: {out:?}");
        assert!(!out.stdout.contains("mail:"), "{control}: {out:?}");
    }
}

/// Password Modify from a PAM-bound session is answered by the proxy: the password is
/// PAM's, and no directory password changes (389 would change the service account's).
#[test]
fn password_modify_is_refused_for_pam_sessions() {
    let ds = directory();
    let b = bench(&site_routes());
    let alice = dn("alice");
    let outcomes: Vec<Outcome> = [None, Some(alice.as_str())]
        .into_iter()
        .map(|target| {
            let mut args = vec![
                "-x",
                "-D",
                &alice,
                "-w",
                "alice-pampw",
                "-s",
                "changed-pw-1",
            ];
            args.extend(target);
            ldap_tool("ldappasswd", &b.uri(), &args)
        })
        .collect();

    // Checked straight at 389, and repaired before asserting, so that a wrong proxy does
    // not break the other tests sharing the directory.
    let service_pw = std::fs::read_to_string(&ds.service_pw_file).expect("service password");
    let unchanged: Vec<(String, bool)> = [
        (ds.service_dn.clone(), service_pw),
        (alice.clone(), dirpw("alice")),
    ]
    .into_iter()
    .map(|(who, pw)| {
        let ok = whoami_as(&ds.uri, &who, &pw).code == 0;
        if !ok {
            let root = as_root();
            let mut args: Vec<&str> = root.iter().map(String::as_str).collect();
            args.extend(["-s", &pw, &who]);
            ldap_tool("ldappasswd", &ds.uri, &args);
        }
        (who, ok)
    })
    .collect();

    // ldappasswd exits with 1 on any failure and prints the result.
    for out in &outcomes {
        assert!(
            out.stdout.contains("Result: Server is unwilling to perform (53)\nAdditional info: password is managed by PAM service duo"),
            "{out:?}"
        );
    }
    for (who, ok) in unchanged {
        assert!(ok, "the password of {who} was changed (now restored)");
    }
}

/// The root DSE and the schema read the same after a PAM bind as straight from 389.
#[test]
fn root_dse_and_schema_match_direct_after_pam_bind() {
    let b = bench(&site_routes());
    let alice = dn("alice");
    for base in ["", "cn=schema"] {
        let read = |uri: &str, pw: &str| {
            ldap_tool(
                "ldapsearch",
                uri,
                &[
                    "-x", "-LLL", "-D", &alice, "-w", pw, "-b", base, "-s", "base", "*", "+",
                ],
            )
        };
        let direct = read(&directory().uri, "alice-dirpw");
        assert_eq!(direct.code, 0, "{direct:?}");
        assert!(direct.stdout.lines().count() > 10, "{direct:?}");
        assert_eq!(read(&b.uri(), "alice-pampw"), direct, "base '{base}'");
    }
}

/// A PAM success for a DN without an entry is never a bind (389 would accept any DN as
/// a proxied identity).
#[test]
fn pam_success_for_a_dn_without_entry_is_not_a_bind() {
    let b = bench(&route("all", None, "duo", ""));
    let nowhere = format!("uid=alice,ou=Nowhere,{}", directory().suffix);
    let mut c = b.raw();
    // Control: the route works for alice's real DN.
    assert_eq!(
        c.simple_bind(1, &dn("alice"), "alice-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(
        c.simple_bind(2, &nowhere, "alice-pampw"),
        LdapResultCode::InvalidCredentials
    );
    assert_eq!(whoami(&mut c, 3), "");
    assert_eq!(mail_readable(&mut c, 4), Vec::<String>::new());
}

/// A failed bind leaves the session anonymous, in the proxy and in the directory; a
/// rebind on the same connection switches the identity.
#[test]
fn failed_bind_leaves_anonymous_and_rebind_switches_identity() {
    let b = bench(&site_routes());
    let (alice, erin) = (dn("alice"), dn("erin"));
    let mut c = b.raw();
    assert_eq!(
        c.simple_bind(1, &alice, "alice-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(whoami(&mut c, 2), format!("dn:{alice}"));
    assert_eq!(mail_readable(&mut c, 3), std::slice::from_ref(&alice));

    assert_eq!(
        c.simple_bind(4, &alice, "wrong"),
        LdapResultCode::InvalidCredentials
    );
    assert_eq!(whoami(&mut c, 5), "");
    assert_eq!(mail_readable(&mut c, 6), Vec::<String>::new());

    assert_eq!(
        c.simple_bind(7, &alice, "alice-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(
        c.simple_bind(8, &erin, "erin-pampw"),
        LdapResultCode::Success
    );
    assert_eq!(whoami(&mut c, 9), format!("dn:{erin}"));
    assert_eq!(mail_readable(&mut c, 10), std::slice::from_ref(&erin));

    // A forwarded bind after a PAM bind: the directory's own session, never the
    // service account's (which reads every mail).
    let grafana = format!("cn=grafana,ou=Services,{}", directory().suffix);
    assert_eq!(
        c.simple_bind(11, &grafana, "grafana-pw"),
        LdapResultCode::Success
    );
    assert_eq!(
        whoami(&mut c, 12),
        format!("dn: {}", grafana.to_lowercase())
    );
    assert_eq!(mail_readable(&mut c, 13), Vec::<String>::new());
}

/// DESIGN §6, web apps: on one connection, bind as the application account (forwarded),
/// find the user, bind as the user (PAM), read the user's groups as the user.
#[test]
fn web_app_flow_on_one_connection() {
    use ldap3::{LdapConn, Scope, SearchEntry};
    let b = bench(&site_routes());
    let suffix = &directory().suffix;
    let mut conn = LdapConn::new(&b.uri()).expect("connect");
    let find_alice = |conn: &mut LdapConn| {
        let (entries, _) = conn
            .search(
                &people(),
                Scope::Subtree,
                "(uid=alice)",
                vec!["uid", "mail"],
            )
            .unwrap()
            .success()
            .expect("search alice");
        assert_eq!(entries.len(), 1);
        SearchEntry::construct(entries.into_iter().next().unwrap())
    };

    conn.simple_bind(&format!("cn=grafana,ou=Services,{suffix}"), "grafana-pw")
        .unwrap()
        .success()
        .expect("application account bind");
    let user = find_alice(&mut conn);
    assert_eq!(user.dn, dn("alice"));
    assert!(
        !user.attrs.contains_key("mail"),
        "the application cannot read mail"
    );

    conn.simple_bind(&user.dn, "alice-pampw")
        .unwrap()
        .success()
        .expect("user bind through PAM");
    let (groups, _) = conn
        .search(
            &format!("ou=Groups,{suffix}"),
            Scope::Subtree,
            &format!("(|(memberUid=alice)(member={}))", user.dn),
            vec!["cn"],
        )
        .unwrap()
        .success()
        .expect("group search as the user");
    let mut cns: Vec<String> = groups
        .into_iter()
        .flat_map(|e| {
            SearchEntry::construct(e)
                .attrs
                .remove("cn")
                .unwrap_or_default()
        })
        .collect();
    cns.sort();
    assert_eq!(cns, ["admins", "grafana-admins", "hpcusers"]);
    // Now the user herself: she reads her own mail.
    assert_eq!(
        find_alice(&mut conn).attrs.get("mail"),
        Some(&vec!["alice@example.com".to_owned()])
    );
    assert_eq!(b.pushes(), [push("alice")]);
    conn.unbind().unwrap();
}

/// A PAM bind waiting for its push holds up nobody else: another client's search is
/// answered while it is pending.
#[test]
fn slow_pam_bind_does_not_hold_up_other_clients() {
    let b = bench(&site_routes());
    // The push stays pending until the search has been answered.
    let hold = b.pam.hold();
    let events = Arc::new(Mutex::new(Vec::new()));
    let slow = {
        let (events, mut c) = (Arc::clone(&events), b.raw());
        std::thread::spawn(move || {
            let code = c.simple_bind(1, &dn("alice"), "alice-pampw");
            events.lock().unwrap().push(format!("bind {code:?}"));
        })
    };
    assert!(
        eventually(Duration::from_secs(15), || b.pushes().len() == 1),
        "the slow bind never reached PAM"
    );
    // The push is recorded before the wait: the bind is now pending in PAM.
    let out = ldap_tool(
        "ldapsearch",
        &b.uri(),
        &["-x", "-LLL", "-b", &dn("bob"), "-s", "base", "uid"],
    );
    events.lock().unwrap().push(format!("search {}", out.code));
    hold.release();
    slow.join().unwrap();
    assert_eq!(*events.lock().unwrap(), ["search 0", "bind Success"]);
}

/// Requests sent behind a pending bind on the same connection wait for it and then run
/// as the newly bound user.
#[test]
fn requests_behind_a_pending_bind_wait_for_it() {
    let b = bench(&site_routes());
    b.pam.set_duo_delay(1);
    let mut c = b.raw();
    c.send(bind_request(1, &dn("alice"), "alice-pampw"));
    c.send(search(
        2,
        &people(),
        LdapSearchScope::Subtree,
        "(mail=*)",
        &["mail"],
    ));
    let (_, bound) = c.answer(1);
    assert_eq!(result(&bound).code, LdapResultCode::Success, "{bound:?}");
    assert_eq!(entries_of(&mut c, 2), [dn("alice")]);
}

/// `passcode_delimiter`: `password,passcode` answers a service's two questions.
#[test]
fn passcode_delimiter_splits_the_password() {
    let b = bench(&route(
        "passcode",
        Some("(uid=grace)"),
        "passcode",
        "passcode_delimiter = \",\"",
    ));
    b.pam.write_state("passcodes", "grace:123456:passcode\n");
    for (pw, code) in [
        ("grace-pampw,123456", 0),
        ("grace-pampw,999999", 49),
        ("grace-pampw", 49),
    ] {
        let out = b.bind(&dn("grace"), pw);
        assert_eq!(out.code, code, "{pw}: {out:?}");
    }
}

/// `missing_suffix`: a configured suffix the directory does not hold stops the proxy
/// (error), is logged (allow) or ignored. The suffix the directory holds is never missing.
#[test]
fn missing_suffix_policy_applies_at_load() {
    let suffix = &directory().suffix;
    let nowhere = "dc=nowhere,dc=org";
    let cases = [
        ("error", format!("\"{suffix}\""), true),
        ("error", format!("\"{suffix}\", \"{nowhere}\""), false),
        ("allow", format!("\"{suffix}\", \"{nowhere}\""), true),
        ("ignore", format!("\"{suffix}\", \"{nowhere}\""), true),
    ];
    for (policy, include, starts) in cases {
        let pam = PamSetup::new(&passdb());
        let config = format!(
            "[bind]\nmissing_suffix = \"{policy}\"\ninclude_suffixes = [{include}]\n{}",
            site_routes()
        );
        let case = format!("missing_suffix = {policy}, include_suffixes = [{include}]");
        match (Proxy::try_with_pam(&pam, &config), starts) {
            (Ok(proxy), true) => {
                if policy == "allow" {
                    assert!(
                        eventually(Duration::from_secs(5), || proxy
                            .log()
                            .lines()
                            .any(|l| l.contains("WARN") && l.contains(nowhere))),
                        "{case}: no warning naming {nowhere}:\n{}",
                        proxy.log()
                    );
                }
                // It serves PAM binds.
                assert_eq!(
                    whoami_as(&proxy.uri(), &dn("erin"), "erin-pampw").code,
                    0,
                    "{case}"
                );
            }
            (Err(log), false) => assert!(
                log.contains(nowhere),
                "{case}: error does not name it:\n{log}"
            ),
            (Ok(proxy), false) => panic!("{case}: started:\n{}", proxy.log()),
            (Err(log), true) => panic!("{case}: did not start:\n{log}"),
        }
    }
}

/// Standard base64 (for `ldapsearch -E oid=::value`).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A rebind that arrives while a large entry is half passed to the client, on a
/// PAM-bound session: the bind waits for the entry then in progress to be passed on
/// whole, then drops the service-bound backend connection (what is left of the search
/// is abandoned, as RFC 4511 §4.2.1 allows), so the client reads whole messages: the
/// entry, then its bind result. How much of the search passes before the decision (it
/// takes a lookup and PAM) depends on timing: the second entry may too, and the end of
/// the search; the stream is whole either way.
///
/// That the bind arrives in the middle of the entry is made certain, not likely: the
/// client reads only the start of the entry, and the entry is larger than all the bytes
/// that can be on their way to a client that does not read (its receive buffer, the
/// proxy's send buffer and the proxy's own buffers), so the proxy cannot have passed it
/// on whole before the client reads more.
#[test]
fn rebind_in_the_middle_of_a_large_entry_keeps_the_stream_whole() {
    let ds = directory();
    let bench = bench(&site_routes());
    let mut c = RawClient::connect_with_rcvbuf(bench.proxy.addr, 64 << 10);
    // The proxy's send buffer is at most tcp_wmem's maximum; its own buffers hold less
    // than 2 x 256 KiB plus a 64 KiB read (src/session.rs), counted here as 1 MiB.
    let tcp_wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .expect("tcp_wmem")
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem maximum");
    let in_flight_max = c.rcvbuf() + tcp_wmem_max + (1 << 20);
    // Values below 389's 2 MiB request limit, added one request at a time, as many as
    // make an entry larger than that (with 1 MiB to spare). Two such entries.
    const VALUE: usize = 1_900_000;
    let values = (in_flight_max + (1 << 20)) / VALUE + 1;
    let cn = unique("big");
    let base = format!("ou=Groups,{}", ds.suffix);
    let dns: Vec<String> = (0..2).map(|i| format!("cn={cn}-{i},{base}")).collect();
    let mut ldif = String::new();
    for (i, dn) in dns.iter().enumerate() {
        let value = |k: usize| format!("{k}{}", "x".repeat(VALUE - 1));
        ldif.push_str(&format!(
            "dn: {dn}\nchangetype: add\nobjectClass: top\nobjectClass: groupOfNames\ncn: {cn}-{i}\ndescription: {}\n\n",
            value(0)
        ));
        for k in 1..values {
            ldif.push_str(&format!(
                "dn: {dn}\nchangetype: modify\nadd: description\ndescription: {}\n\n",
                value(k)
            ));
        }
    }
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let added = ldap_tool_input("ldapmodify", &ds.uri, &root, Some(&ldif));
    let _cleanup = Entries(dns.clone());
    assert_eq!(added.code, 0, "{}", added.stderr);

    assert_eq!(
        c.simple_bind(1, &dn("erin"), &pampw("erin")),
        LdapResultCode::Success
    );
    c.send(search(
        2,
        &base,
        LdapSearchScope::OneLevel,
        &format!("(cn={cn}-*)"),
        &["description"],
    ));
    // Only the start of the first entry: enough to read its envelope.
    let first = loop {
        if let Some(env) = ldap_pam_proxy::frame::peek(c.buffered(), usize::MAX).expect("BER") {
            break env;
        }
        assert!(c.read_chunk() > 0, "the proxy closed the connection");
    };
    assert_eq!(
        (first.msgid, first.op),
        (2, ldap_pam_proxy::frame::op::SEARCH_RESULT_ENTRY)
    );
    assert!(
        first.len > in_flight_max + c.buffered().len(),
        "an entry of {} bytes could be passed on whole ({in_flight_max} bytes in flight, {} read)",
        first.len,
        c.buffered().len()
    );
    // The proxy is in the middle of the entry, and stays there until the client reads.
    c.send(bind_request(3, &dn("erin"), &pampw("erin")));
    let mut entries = 0;
    let mut done = false;
    loop {
        let m = c.recv().expect("the connection stays open");
        assert!(notice_code(&m).is_none(), "{m:?}");
        match m.op {
            LdapOp::BindResponse(r) => {
                assert_eq!((m.msgid, r.res.code), (3, LdapResultCode::Success));
                break;
            }
            LdapOp::SearchResultEntry(e) if !done => {
                assert_eq!(m.msgid, 2);
                assert_eq!(e.attributes[0].vals.len(), values, "entries arrive whole");
                assert!(e.attributes[0].vals.iter().all(|v| v.len() == VALUE));
                entries += 1;
            }
            LdapOp::SearchResultDone(r) if !done && entries == 2 => {
                assert_eq!((m.msgid, r.code), (2, LdapResultCode::Success));
                done = true;
            }
            other => panic!("after the bind, only whole messages of the search: {other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&entries),
        "the entry the bind arrived in, whole, and no more than the search had: {entries}"
    );
    // Nothing more of the search: the next answer is WhoAmI's.
    assert_eq!(whoami(&mut c, 4), format!("dn:{}", dn("erin")));
    assert!(
        !bench.proxy.log().contains("in the middle of a response"),
        "{}",
        bench.proxy.log()
    );
}
