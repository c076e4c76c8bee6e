//! Fail-closed controls and extended operations for PAM-bound sessions (DESIGN §7),
//! against the real 389 DS and real libpam under pam_wrapper.
//!
//! After a PAM bind the proxy relays the user's requests on a connection bound as its
//! service account, which may act as anyone. 389 reads requests with liblber, which
//! takes an OID followed by a NUL byte as that OID, an OID under any tag, and an element
//! after a control's value as one more control. Requests spelled that way must end the
//! connection (Notice of Disconnection, protocolError) and never reach 389; controls off
//! the allow-list get unavailableCriticalExtension (12). The control experiments send
//! the same bytes straight to 389 as the service account to show the hole is real.
//!
//! By the sample directory's ACIs a user reads only their own `mail`; the service
//! account reads everyone's. So a `mail` value of someone else's entry coming back to
//! alice's session means the session read as another identity.

mod common;

use common::*;
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapExtendedRequest, LdapMsg, LdapOp, LdapPartialAttribute, LdapResultCode, LdapSearchScope,
};
use ldap_pam_proxy::message;
use ldap_pam_proxy::proto::encode;
use std::time::Duration;

const PROXY_AUTHZ_V1: &[u8] = b"2.16.840.1.113730.3.4.12";
const PROXY_AUTHZ_V2: &[u8] = b"2.16.840.1.113730.3.4.18";
const WHOAMI: &[u8] = b"1.3.6.1.4.1.4203.1.11.3";
const PASSWD_MODIFY: &[u8] = b"1.3.6.1.4.1.4203.1.11.1";
const PAGED_RESULTS: &[u8] = b"1.2.840.113556.1.4.319";

/// A proxy under pam_wrapper where every user of the directory goes to the `csu`
/// service (a pam_matrix password check). (Field order: the proxy stops first.)
struct Bench {
    proxy: Proxy,
    _pam: PamSetup,
}

impl Bench {
    fn new() -> Bench {
        let pam = PamSetup::new("alice:alice-pampw:csu\n");
        let route = "[[route]]\nname = \"all\"\npam_service = \"csu\"\nsecure = false\n";
        Bench {
            proxy: Proxy::with_pam(&pam, route),
            _pam: pam,
        }
    }

    /// A new connection on which alice has bound through PAM.
    fn alice(&self) -> RawClient {
        let mut c = RawClient::connect(self.proxy.addr);
        assert_eq!(
            c.simple_bind(1, &user("alice"), "alice-pampw"),
            LdapResultCode::Success
        );
        c
    }
}

/// A connection straight to 389, bound as the proxy's service account.
fn service_on_389() -> RawClient {
    let ds = directory();
    let pw = std::fs::read_to_string(&ds.service_pw_file).expect("service password");
    let mut c = RawClient::connect(("127.0.0.1", ds.port));
    assert_eq!(
        c.simple_bind(1, &ds.service_dn, pw.trim()),
        LdapResultCode::Success
    );
    c
}

/// A BER element (definite length, short or long form).
fn el(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else {
        v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

/// A control whose controlType is exactly `oid` (NUL bytes and all), critical.
fn raw_control(oid: &[u8], value: &[u8]) -> Vec<u8> {
    el(
        0x30,
        &[el(0x04, oid), el(0x01, &[0xff]), el(0x04, value)].concat(),
    )
}

/// `msg` with `controls` (raw control elements, in order) as its controls element.
fn with_controls(msg: LdapMsg, controls: &[Vec<u8>]) -> Vec<u8> {
    let plain = encode(msg);
    let header = if plain[1] < 0x80 {
        2
    } else {
        2 + usize::from(plain[1] & 0x7f)
    };
    let body = [&plain[header..], &el(0xa0, &controls.concat())].concat();
    el(0x30, &body)
}

/// A base search of `dn` for `mail`.
fn read_mail(msgid: i32, dn: &str) -> LdapMsg {
    search(
        msgid,
        dn,
        LdapSearchScope::Base,
        "(objectClass=*)",
        &["mail"],
    )
}

/// An ExtendedRequest (message `msgid`) whose requestName is exactly `name`.
fn extended_raw(msgid: u8, name: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut op = el(0x80, name);
    if let Some(v) = value {
        op.extend_from_slice(&el(0x81, v));
    }
    el(0x30, &[&el(0x02, &[msgid])[..], &el(0x77, &op)].concat())
}

/// The values of `attr` in the entries of a search answer.
fn values(entries: &[LdapMsg], attr: &str) -> Vec<String> {
    entries
        .iter()
        .filter_map(|m| match &m.op {
            LdapOp::SearchResultEntry(e) => Some(e.attributes.clone()),
            _ => None,
        })
        .flatten()
        .filter(|a: &LdapPartialAttribute| a.atype.eq_ignore_ascii_case(attr))
        .flat_map(|a| a.vals)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect()
}

/// The proxy answers the request just sent by ending the connection: a Notice of
/// Disconnection (protocolError) is the first and last thing it sends.
fn assert_disconnected(c: &mut RawClient, what: &str) {
    let m = c
        .recv()
        .unwrap_or_else(|| panic!("{what}: closed without a notice"));
    assert_eq!(
        notice_code(&m),
        Some(LdapResultCode::ProtocolError),
        "{what}: {m:?}"
    );
    assert!(c.closed(), "{what}: the connection stayed open");
}

/// The result code and diagnostic of a final response.
fn result_of(m: &LdapMsg) -> (LdapResultCode, String) {
    match &m.op {
        LdapOp::SearchResultDone(r) => (r.code.clone(), r.message.clone()),
        LdapOp::ExtendedResponse(r) => (r.res.code.clone(), r.res.message.clone()),
        other => panic!("not a final response: {other:?}"),
    }
}

/// Control experiment: the NUL-suffixed proxied authorization control, sent straight to
/// 389 as the service account ahead of the proxy's own, is honoured (alice's session
/// would read bob's mail), and so is one hidden after a control's value. NUL-suffixed
/// WhoAmI is answered as the service account. These are the holes the proxy closes.
#[test]
fn control_experiment_389_honours_what_the_proxy_refuses() {
    let (alice, bob) = (user("alice"), user("bob"));
    let ours = message::control(
        "2.16.840.1.113730.3.4.18",
        true,
        Some(format!("dn:{alice}").as_bytes()),
    );
    let as_bob = [PROXY_AUTHZ_V2, b"\0"].concat();
    let bob_value = format!("dn:{bob}").into_bytes();
    let mut c = service_on_389();
    let cases: [(&str, Vec<Vec<u8>>, bool); 4] = [
        ("the proxy's control alone", vec![ours.clone()], false),
        (
            "NUL-suffixed v2 first",
            vec![raw_control(&as_bob, &bob_value), ours.clone()],
            true,
        ),
        (
            "v2 nested after the value of a paged-results control",
            vec![
                el(
                    0x30,
                    &[
                        el(0x04, PAGED_RESULTS),
                        raw_control(PROXY_AUTHZ_V2, &bob_value),
                    ]
                    .concat(),
                ),
                ours.clone(),
            ],
            true,
        ),
        (
            // 389 prefers v1 over v2 wherever it is: the proxy's control first is not
            // enough, the proxy must refuse v1 too.
            "NUL-suffixed v1 after the proxy's control",
            vec![
                ours.clone(),
                raw_control(
                    &[PROXY_AUTHZ_V1, b"\0"].concat(),
                    &el(0x30, &el(0x04, bob.as_bytes())),
                ),
            ],
            true,
        ),
    ];
    for (i, (what, controls, reads_as_bob)) in cases.into_iter().enumerate() {
        let msgid = 10 + i as i32;
        c.send_raw(&with_controls(read_mail(msgid, &bob), &controls));
        let (entries, done) = c.answer(msgid);
        assert_eq!(
            result_of(&done).0,
            LdapResultCode::Success,
            "{what}: {done:?}"
        );
        let expected = if reads_as_bob {
            vec!["bob@example.com".to_owned()]
        } else {
            vec![]
        };
        assert_eq!(values(&entries, "mail"), expected, "{what}");
    }
    c.send_raw(&extended_raw(20, &[WHOAMI, b"\0"].concat(), None));
    let (_, m) = c.answer(20);
    let LdapOp::ExtendedResponse(r) = m.op else {
        panic!("{m:?}")
    };
    let who = String::from_utf8(r.value.unwrap_or_default()).unwrap();
    assert!(
        who.eq_ignore_ascii_case(&format!("dn: {}", directory().service_dn)),
        "{who}"
    );
}

/// The same proxied authorization controls from alice's PAM-bound session end the
/// connection before anything reaches 389; spelled exactly, they get 50. In no case does
/// the session read bob's mail.
#[test]
fn smuggled_proxied_authorization_is_refused() {
    let b = Bench::new();
    let bob = user("bob");
    let bob_value = format!("dn:{bob}").into_bytes();
    let v1_value = el(0x30, &el(0x04, bob.as_bytes()));
    let malformed: [(&str, Vec<u8>); 7] = [
        (
            "NUL-suffixed v2",
            raw_control(&[PROXY_AUTHZ_V2, b"\0"].concat(), &bob_value),
        ),
        (
            "NUL-suffixed v1",
            raw_control(&[PROXY_AUTHZ_V1, b"\0"].concat(), &v1_value),
        ),
        (
            "v2 with NUL and more",
            raw_control(&[PROXY_AUTHZ_V2, b"\0x"].concat(), &bob_value),
        ),
        (
            "v2 nested after a paged-results value (trailing bytes in a control)",
            el(
                0x30,
                &[
                    el(0x04, PAGED_RESULTS),
                    el(0x04, &[0x30, 0x05, 0x02, 0x01, 0x05, 0x04, 0x00]),
                    raw_control(PROXY_AUTHZ_V2, &bob_value),
                ]
                .concat(),
            ),
        ),
        (
            "v2 under a UTF8String tag",
            el(
                0x30,
                &[
                    el(0x0c, PROXY_AUTHZ_V2),
                    el(0x01, &[0xff]),
                    el(0x04, &bob_value),
                ]
                .concat(),
            ),
        ),
        (
            "criticality of two octets",
            el(
                0x30,
                &[
                    el(0x04, PROXY_AUTHZ_V2),
                    el(0x01, &[0, 1]),
                    el(0x04, &bob_value),
                ]
                .concat(),
            ),
        ),
        (
            "v2 with a leading zero",
            raw_control(b"2.16.840.1.113730.3.4.018", &bob_value),
        ),
    ];
    for (what, control) in malformed {
        let mut c = b.alice();
        c.send_raw(&with_controls(read_mail(2, &bob), &[control]));
        assert_disconnected(&mut c, what);
    }
    // Well-formed client proxied authorization, alone or behind an allowed control.
    let paged = message::control(
        "1.2.840.113556.1.4.319",
        false,
        Some(&[0x30, 0x05, 0x02, 0x01, 0x05, 0x04, 0x00]),
    );
    let mut c = b.alice();
    for (msgid, controls) in [
        (2, vec![raw_control(PROXY_AUTHZ_V2, &bob_value)]),
        (
            3,
            vec![paged.clone(), raw_control(PROXY_AUTHZ_V1, &v1_value)],
        ),
        (
            4,
            vec![
                raw_control(PROXY_AUTHZ_V2, &bob_value),
                raw_control(PROXY_AUTHZ_V2, &bob_value),
            ],
        ),
    ] {
        c.send_raw(&with_controls(read_mail(msgid, &bob), &controls));
        let (entries, done) = c.answer(msgid);
        assert!(entries.is_empty(), "{entries:?}");
        assert_eq!(
            result_of(&done).0,
            LdapResultCode::InsufficentAccessRights,
            "{done:?}"
        );
    }
    // The session is still alice: her own mail, not bob's.
    let (entries, _) = c.exchange(read_mail(5, &bob));
    assert_eq!(values(&entries, "mail"), Vec::<String>::new());
    let (entries, _) = c.exchange(read_mail(6, &user("alice")));
    assert_eq!(
        values(&entries, "mail"),
        vec!["alice@example.com".to_owned()]
    );
}

/// WhoAmI and Password Modify under names 389 reads as theirs (NUL suffix, other tags)
/// end the connection instead of reaching 389, which would answer for the service
/// account (and change its password).
#[test]
fn smuggled_whoami_and_password_modify_are_refused() {
    let b = Bench::new();
    let ds = directory();
    let service_pw = std::fs::read_to_string(&ds.service_pw_file).expect("service password");
    let service_pw = service_pw.trim();
    // PasswdModifyRequestValue { newPasswd [2] }: the service account's own password, so
    // that a broken proxy changes nothing (the answer tells whether 389 saw it).
    let new_password = el(0x30, &el(0x82, service_pw.as_bytes()));
    let requests: [(&str, Vec<u8>); 6] = [
        (
            "NUL-suffixed WhoAmI",
            extended_raw(2, &[WHOAMI, b"\0"].concat(), None),
        ),
        (
            "NUL-suffixed Password Modify",
            extended_raw(2, &[PASSWD_MODIFY, b"\0"].concat(), Some(&new_password)),
        ),
        (
            "Password Modify with NUL and more",
            extended_raw(2, &[PASSWD_MODIFY, b"\0junk"].concat(), Some(&new_password)),
        ),
        (
            "Password Modify with a trailing space",
            extended_raw(2, &[PASSWD_MODIFY, b" "].concat(), Some(&new_password)),
        ),
        (
            "WhoAmI named by an OCTET STRING",
            el(
                0x30,
                &[&el(0x02, &[2])[..], &el(0x77, &el(0x04, WHOAMI))].concat(),
            ),
        ),
        (
            "Password Modify named by a UTF8String",
            el(
                0x30,
                &[
                    &el(0x02, &[2])[..],
                    &el(
                        0x77,
                        &[el(0x0c, PASSWD_MODIFY), el(0x81, &new_password)].concat(),
                    ),
                ]
                .concat(),
            ),
        ),
    ];
    for (what, request) in requests {
        let mut c = b.alice();
        c.send_raw(&request);
        assert_disconnected(&mut c, what);
    }
    // Spelled exactly, both are answered by the proxy.
    let mut c = b.alice();
    let (_, m) = c.exchange(whoami_request(2));
    let LdapOp::ExtendedResponse(r) = &m.op else {
        panic!("{m:?}")
    };
    assert_eq!(
        r.value.as_deref(),
        Some(format!("dn:{}", user("alice")).as_bytes())
    );
    c.send_raw(&extended_raw(3, PASSWD_MODIFY, Some(&new_password)));
    let (_, m) = c.answer(3);
    assert_eq!(
        result_of(&m),
        (
            LdapResultCode::UnwillingToPerform,
            "password is managed by PAM service csu".to_owned()
        )
    );
    // Any other extended operation is refused by name.
    let (_, m) = c.exchange(LdapMsg::new(
        4,
        LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: "2.16.840.1.113730.3.5.12".into(),
            value: None,
        }),
    ));
    let (code, text) = result_of(&m);
    assert_eq!(code, LdapResultCode::UnwillingToPerform, "{text}");
    assert!(text.contains("2.16.840.1.113730.3.5.12"), "{text}");
}

/// Controls off the allow-list are refused with 12, critical or not, naming the OID;
/// the connection stays usable. Get Effective Rights takes an authzId: refused.
#[test]
fn controls_off_the_allow_list_are_refused() {
    let b = Bench::new();
    let mut c = b.alice();
    let ger_value = el(0x04, b"dn: cn=Directory Manager");
    let cases: [(&str, Vec<u8>); 3] = [
        // 389's "real attributes only", which it supports.
        (
            "2.16.840.1.113730.3.4.17",
            message::control("2.16.840.1.113730.3.4.17", false, None),
        ),
        (
            "1.3.6.1.4.1.42.2.27.9.5.2",
            message::control("1.3.6.1.4.1.42.2.27.9.5.2", true, Some(&ger_value)),
        ),
        (
            "1.2.3.4.5",
            message::control("1.2.3.4.5", false, Some(b"x")),
        ),
    ];
    for (i, (oid, control)) in cases.into_iter().enumerate() {
        let msgid = 2 + i as i32;
        c.send_raw(&with_controls(read_mail(msgid, &user("alice")), &[control]));
        let (entries, done) = c.answer(msgid);
        assert!(entries.is_empty(), "{oid}: {entries:?}");
        let (code, text) = result_of(&done);
        assert_eq!(
            code,
            LdapResultCode::UnavailableCriticalExtension,
            "{oid}: {text}"
        );
        assert!(text.contains(oid), "{oid}: {text}");
    }
    let (entries, _) = c.exchange(read_mail(9, &user("alice")));
    assert_eq!(
        values(&entries, "mail"),
        vec!["alice@example.com".to_owned()]
    );
}

/// Paged results (OpenLDAP's ldapsearch) and a persistent search work for a PAM-bound
/// user, and run as the user: the same entries as alice's own bind straight to 389, and
/// change notifications without attributes only the service account may read.
#[test]
fn paged_results_and_persistent_search_work_for_a_pam_user() {
    let b = Bench::new();
    let ds = directory();
    let alice = user("alice");
    let people = people();
    let dns = |uri: &str, pw: &str, paged: bool| {
        let mut args = vec!["-x", "-LLL", "-D", &alice, "-w", pw];
        if paged {
            args.extend(["-E", "pr=7/noprompt"]);
        }
        args.extend(["-b", &people, "(|(uid=user0*)(mail=*))", "uid", "mail"]);
        let out = ldap_tool("ldapsearch", uri, &args);
        assert_eq!(out.code, 0, "{out:?}");
        let mut lines: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("dn: ") || l.starts_with("mail: "))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let direct = dns(&ds.uri, "alice-dirpw", false);
    assert!(direct.len() > 20, "{direct:?}");
    assert_eq!(dns(&b.proxy.uri(), "alice-pampw", true), direct);
    assert_eq!(
        direct.iter().filter(|l| l.starts_with("mail: ")).count(),
        1,
        "alice reads her own mail only: {direct:?}"
    );

    // A persistent search on an entry whose mail alice may not read.
    let cn = unique("psearch-policy");
    let dn = format!("cn={cn},{people}");
    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let add = format!(
        "dn: {dn}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\nobjectClass: inetOrgPerson\ncn: {cn}\nsn: probe\nmail: {cn}@example.com\ndescription: v1\n"
    );
    let _remove = Entries::add(&add, vec![dn.clone()]);
    let mut c = b.alice();
    c.send(persistent_search(
        2,
        &dn,
        LdapSearchScope::Base,
        "(objectClass=*)",
        &["mail", "description"],
    ));
    // Give 389 a moment to register the persistent search before the change.
    std::thread::sleep(Duration::from_millis(500));
    let modify = format!("dn: {dn}\nchangetype: modify\nreplace: description\ndescription: v2\n");
    let changed = ldap_tool_input("ldapmodify", &ds.uri, &root, Some(&modify));
    let notice = c.recv().expect("change notification");
    assert_eq!(changed.code, 0, "{changed:?}");
    assert_eq!(notice.msgid, 2, "{notice:?}");
    assert!(
        notice.ctrl.iter().any(
            |c| matches!(c, LdapControl::Unknown { oid, .. } if oid == "2.16.840.1.113730.3.4.7")
        ),
        "entry change notification control expected: {notice:?}"
    );
    let entries = vec![notice];
    assert_eq!(values(&entries, "description"), vec!["v2".to_owned()]);
    assert_eq!(values(&entries, "mail"), Vec::<String>::new());
    c.send(LdapMsg::new(3, LdapOp::AbandonRequest(2)));
    let (_, who) = c.exchange(whoami_request(4));
    assert!(matches!(who.op, LdapOp::ExtendedResponse(_)), "{who:?}");
}
