//! Fail closed (DESIGN §2, §3, §7): adversarial tests of the bind gate against the real
//! 389 DS and real libpam (pam_wrapper).
//!
//! The attacker holds a routed user's *directory* password (`<uid>-dirpw`) and wants a
//! bound session without PAM (`<uid>-pampw`), or to ride, guess under, or block someone
//! else's MFA push. Wherever the attack works against 389 itself, the test first shows
//! that (the "control": the same bytes bind when sent straight to the directory), so a
//! passing test proves the proxy closes a real hole.
//!
//! Each test starts its own proxy with its own PAM state; entries a test adds have unique
//! names and are removed at the end.

mod common;

use common::ber::{self, Len};
use common::*;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode, LdapSearchScope};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// "Another client address": the attacker's, when the victim's is 127.0.0.1.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// How long a test waits for one answer before calling it "no answer".
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

const IN_FLIGHT: &str = "ldap_pam_proxy_binds_rate_limited_total{reason=\"in_flight\"}";

fn dirpw(uid: &str) -> String {
    format!("{uid}-dirpw")
}

fn pampw(uid: &str) -> String {
    format!("{uid}-pampw")
}

/// A push line of the `duo` service: the PAM user and the client's address.
fn push_from(pam_user: &str, addr: &str) -> String {
    format!("{pam_user} {addr}")
}

fn push(pam_user: &str) -> String {
    push_from(pam_user, "127.0.0.1")
}

/// The pam_matrix passdb: internal users on `duo`, external users on `csu`.
fn passdb() -> String {
    let mut db = String::new();
    for uid in ["alice", "bob", "carol", "dave", "lockeduser", "noposix"] {
        db += &format!("{uid}:{}:duo\n", pampw(uid));
    }
    for uid in ["erin", "frank", "grace"] {
        db += &format!("{uid}:{}:csu\n", pampw(uid));
    }
    db
}

/// The same routes as a site deploys them: `secure` left at its default (true).
fn secure_site_routes() -> String {
    format!(
        "[[route]]\nname = \"duo\"\nfilter = \"{INTERNAL}\"\npam_service = \"duo\"\n\n[[route]]\nname = \"csu\"\nfilter = \"{EXTERNAL}\"\npam_service = \"csu\"\n"
    )
}

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// The proxy of these tests, with this file's PAM users.
fn bench(config: &str) -> PamBench {
    PamBench::new(&passdb(), config)
}

impl PamBench {
    fn raw_from(&self, local: IpAddr) -> RawClient {
        RawClient::connect_from(local, self.proxy.addr)
    }

    /// Waits until `n` duo transactions have started.
    fn wait_pushes(&self, n: usize) {
        assert!(
            eventually(Duration::from_secs(15), || self.pushes().len() >= n),
            "expected {n} duo transactions, saw {:?}\n{}",
            self.pushes(),
            self.proxy.log()
        );
    }

    /// A counter's value; an absent series has counted nothing yet.
    fn counter(&self, series: &str) -> f64 {
        self.proxy.metric(series).unwrap_or(0.0)
    }
}

/// A raw connection straight to the directory.
fn direct() -> RawClient {
    RawClient::connect(("127.0.0.1", directory().port))
}

/// What a client got for its bind.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Bind(LdapResultCode, String),
    /// A Notice of Disconnection, and the connection then closed.
    Notice(LdapResultCode),
    /// Closed without a word.
    Closed,
    Silent,
    Unexpected(String),
}

impl Answer {
    fn code(&self) -> Option<LdapResultCode> {
        match self {
            Answer::Bind(c, _) => Some(c.clone()),
            _ => None,
        }
    }

    fn is_success(&self) -> bool {
        self.code() == Some(LdapResultCode::Success)
    }

    /// A refusal by protocol: protocolError as the bind's answer, or as a Notice of
    /// Disconnection before the connection closes.
    fn is_protocol_refusal(&self) -> bool {
        matches!(
            self,
            Answer::Bind(LdapResultCode::ProtocolError, _)
                | Answer::Notice(LdapResultCode::ProtocolError)
        )
    }
}

/// Reads the answer to the bind just sent on `c`.
fn bind_answer(c: &mut RawClient) -> Answer {
    match c.recv_within(ANSWER_WITHIN) {
        Received::Msg(m) => {
            if let Some(code) = notice_code(&m) {
                return match c.recv_within(ANSWER_WITHIN) {
                    Received::Closed => Answer::Notice(code),
                    other => Answer::Unexpected(format!(
                        "notice {code:?} but the connection stayed open: {other:?}"
                    )),
                };
            }
            match m.op {
                LdapOp::BindResponse(r) => Answer::Bind(r.res.code, r.res.message),
                other => Answer::Unexpected(format!("{other:?}")),
            }
        }
        Received::Closed => Answer::Closed,
        Received::TimedOut => Answer::Silent,
        Received::Undecodable(e) => Answer::Unexpected(e),
    }
}

/// Sends raw bytes on a new connection to `addr`-side client `c` and reads the bind's answer.
fn send_bind(mut c: RawClient, bytes: &[u8]) -> (RawClient, Answer) {
    if !c.try_send_raw(bytes) {
        return (c, Answer::Closed);
    }
    let a = bind_answer(&mut c);
    (c, a)
}

/// WhoAmI on `c`, if the connection is still open: `Ok(None)` when it is closed,
/// `Ok(Some(authzId))` when answered.
fn whoami_on(c: &mut RawClient, msgid: i32) -> Result<Option<String>, String> {
    let mut req = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut ldap3_proto::LdapCodec::default(),
        whoami_request(msgid),
        &mut req,
    )
    .unwrap();
    if !c.try_send_raw(&req) {
        return Ok(None);
    }
    match c.recv_within(ANSWER_WITHIN) {
        Received::Closed => Ok(None),
        Received::Msg(m) if notice_code(&m).is_some() => Ok(None),
        Received::Msg(LdapMsg {
            op: LdapOp::ExtendedResponse(r),
            ..
        }) if r.res.code == LdapResultCode::Success => Ok(Some(
            String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned(),
        )),
        other => Err(format!("WhoAmI: {other:?}")),
    }
}

/// The session on `c` is not bound: closed, or WhoAmI says anonymous.
fn anonymous(c: &mut RawClient, msgid: i32) -> Result<(), String> {
    match whoami_on(c, msgid)? {
        Some(id) if !(id.is_empty() || id == "dn:") => Err(format!(
            "the session is bound afterwards: WhoAmI says {id:?}"
        )),
        _ => Ok(()),
    }
}

fn assert_anonymous(c: &mut RawClient, msgid: i32, case: &str) {
    if let Err(e) = anonymous(c, msgid) {
        panic!("{case}: {e}");
    }
}

/// Fails with every collected failure, one per line.
fn assert_none(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The DNs of the entries under ou=People whose `mail` the session may read: by the
/// sample's ACIs, a user's own, nobody's when anonymous.
fn mail_readable(c: &mut RawClient, msgid: i32) -> Vec<String> {
    let (entries, done) = c.exchange(search(
        msgid,
        &people(),
        LdapSearchScope::Subtree,
        "(mail=*)",
        &["mail"],
    ));
    match done.op {
        LdapOp::SearchResultDone(r) => {
            assert_eq!(r.code, LdapResultCode::Success, "{r:?}")
        }
        other => panic!("{other:?}"),
    }
    entries
        .into_iter()
        .filter_map(|m| match m.op {
            LdapOp::SearchResultEntry(e) => Some(e.dn),
            _ => None,
        })
        .collect()
}

fn suffix() -> &'static str {
    let s = &directory().suffix;
    assert_eq!(
        s, "dc=example,dc=com",
        "these tests spell the sample's suffix"
    );
    s
}

// ---------------------------------------------------------------------------------------
// 1. Odd bind encodings: decided by the proxy or refused, never forwarded unread.
// ---------------------------------------------------------------------------------------

/// What the proxy must answer to an odd BindRequest.
#[derive(Debug, Clone, Copy)]
enum Must {
    /// A BindResponse protocolError (2) exactly (a bind version other than 3).
    AnswerProtocolError,
    /// protocolError as the bind's answer or as a Notice of Disconnection.
    Refuse,
    /// Anything but success: the proxy may read it and decide, or refuse.
    NotSucceed,
}

/// An odd encoding of a bind as alice with her directory password, and what 389 itself
/// answers to the same bytes (`None`: no answer at all).
struct Odd {
    name: &'static str,
    bytes: Vec<u8>,
    must: Must,
    direct: Option<LdapResultCode>,
}

fn odd_binds() -> Vec<Odd> {
    use LdapResultCode::*;
    let dn = user("alice");
    let dn = dn.as_bytes();
    let pw = b"alice-dirpw";
    let version = |content: &[u8]| ber::tlv(0x02, content);
    let op = |parts: &[&[u8]]| ber::tlv(0x60, &parts.concat());
    let op_as = |parts: &[&[u8]], form| ber::tlv_as(0x60, &parts.concat(), form);
    let msg = |op: &[u8]| ber::message(1, op, None);
    let v3 = version(&[3]);
    let name = ber::tlv(0x04, dn);
    let simple = ber::tlv(0x80, pw);
    let envelope = |body: &[u8], form| ber::tlv_as(0x30, body, form);
    let id = ber::tlv(0x02, &[1]);
    let mut cases = vec![
        Odd {
            name: "LDAPv2 bind",
            bytes: msg(&op(&[&version(&[2]), &name, &simple])),
            must: Must::AnswerProtocolError,
            direct: Some(Success),
        },
        Odd {
            name: "version 1",
            bytes: msg(&op(&[&version(&[1]), &name, &simple])),
            must: Must::AnswerProtocolError,
            direct: Some(ProtocolError),
        },
        Odd {
            name: "version 4",
            bytes: msg(&op(&[&version(&[4]), &name, &simple])),
            must: Must::AnswerProtocolError,
            direct: Some(ProtocolError),
        },
        Odd {
            name: "version -1",
            bytes: msg(&op(&[&version(&[0xff]), &name, &simple])),
            must: Must::AnswerProtocolError,
            direct: Some(ProtocolError),
        },
        Odd {
            // Valid BER with one meaning: the proxy reads it as version 3 and decides.
            name: "version 3 as a non-minimal INTEGER",
            bytes: msg(&op(&[&version(&[0, 3]), &name, &simple])),
            must: Must::NotSucceed,
            direct: Some(Success),
        },
        Odd {
            name: "version tagged ENUMERATED",
            bytes: msg(&op(&[&ber::tlv(0x0a, &[3]), &name, &simple])),
            must: Must::Refuse,
            direct: Some(Success),
        },
        Odd {
            name: "name tagged UTF8String (0x0c)",
            bytes: msg(&op(&[&v3, &ber::tlv(0x0c, dn), &simple])),
            must: Must::Refuse,
            direct: Some(Success),
        },
        Odd {
            name: "name as a constructed OCTET STRING",
            bytes: msg(&op(&[
                &v3,
                &ber::tlv(
                    0x24,
                    &[ber::tlv(0x04, &dn[..8]), ber::tlv(0x04, &dn[8..])].concat(),
                ),
                &simple,
            ])),
            must: Must::Refuse,
            direct: Some(InvalidCredentials),
        },
        Odd {
            name: "an extra element inside the BindRequest",
            bytes: msg(&op(&[&v3, &name, &simple, &ber::tlv(0x04, b"x")])),
            must: Must::Refuse,
            direct: Some(Success),
        },
        Odd {
            name: "an extra element after the protocolOp (not controls)",
            bytes: ber::tlv(
                0x30,
                &[
                    id.clone(),
                    op(&[&v3, &name, &simple]),
                    ber::tlv(0x04, b"zz"),
                ]
                .concat(),
            ),
            must: Must::Refuse,
            direct: Some(Success),
        },
        Odd {
            name: "indefinite length LDAPMessage",
            bytes: envelope(
                &[id.clone(), op(&[&v3, &name, &simple])].concat(),
                Len::Indefinite,
            ),
            must: Must::Refuse,
            direct: None,
        },
        Odd {
            name: "indefinite length BindRequest",
            bytes: envelope(
                &[id.clone(), op_as(&[&v3, &name, &simple], Len::Indefinite)].concat(),
                Len::Minimal,
            ),
            must: Must::Refuse,
            direct: None,
        },
        Odd {
            name: "constructed simple credentials",
            bytes: msg(&op(&[
                &v3,
                &name,
                &ber::tlv(
                    0xa0,
                    &[ber::tlv(0x04, &pw[..5]), ber::tlv(0x04, &pw[5..])].concat(),
                ),
            ])),
            must: Must::Refuse,
            direct: Some(ProtocolError),
        },
        Odd {
            name: "authentication tagged [1] (krbv42LDAP)",
            bytes: msg(&op(&[&v3, &name, &ber::tlv(0x81, pw)])),
            must: Must::Refuse,
            direct: Some(ProtocolError),
        },
        Odd {
            name: "authentication tagged OCTET STRING",
            bytes: msg(&op(&[&v3, &name, &ber::tlv(0x04, pw)])),
            must: Must::Refuse,
            direct: Some(ProtocolError),
        },
        Odd {
            name: "authentication with a multi-octet tag",
            bytes: msg(&op(&[
                &v3,
                &name,
                &[&[0x9f, 0x00][..], &ber::len(pw.len(), Len::Minimal), pw].concat(),
            ])),
            must: Must::Refuse,
            direct: Some(ProtocolError),
        },
        // Valid BER the proxy may read and decide (or refuse); 389 binds with each.
        Odd {
            name: "non-minimal lengths everywhere",
            bytes: envelope(
                &[
                    ber::tlv_as(0x02, &[1], Len::Long(2)),
                    op_as(
                        &[
                            &ber::tlv_as(0x02, &[3], Len::Long(1)),
                            &ber::tlv_as(0x04, dn, Len::Long(4)),
                            &ber::tlv_as(0x80, pw, Len::Long(3)),
                        ],
                        Len::Long(4),
                    ),
                ]
                .concat(),
                Len::Long(4),
            ),
            must: Must::NotSucceed,
            direct: Some(Success),
        },
        Odd {
            name: "non-minimal messageID",
            bytes: ber::tlv(
                0x30,
                &[ber::tlv(0x02, &[0, 1]), op(&[&v3, &name, &simple])].concat(),
            ),
            must: Must::NotSucceed,
            direct: Some(Success),
        },
        Odd {
            name: "password followed by NUL and more",
            bytes: msg(&op(&[&v3, &name, &ber::tlv(0x80, b"alice-dirpw\0tail")])),
            must: Must::NotSucceed,
            direct: Some(Success),
        },
        Odd {
            name: "an unknown non-critical control",
            bytes: ber::message(
                1,
                &op(&[&v3, &name, &simple]),
                Some(&ber::control(b"1.2.3.4", None, None)),
            ),
            must: Must::NotSucceed,
            direct: Some(Success),
        },
    ];
    // The DN followed by a NUL byte: 389 refuses it, the proxy must not bind either.
    cases.push(Odd {
        name: "DN followed by NUL and more",
        bytes: msg(&op(&[
            &v3,
            &ber::tlv(0x04, &[dn, b"\0garbage"].concat()),
            &simple,
        ])),
        must: Must::NotSucceed,
        direct: Some(ProtocolError),
    });
    cases
}

/// Odd encodings of a bind as a routed user with her directory password: the proxy
/// refuses them or decides them itself; none binds, and the session stays anonymous.
/// Where 389 binds with the same bytes (the control), the proxy closes a real hole.
#[test]
fn odd_bind_encodings_are_refused_or_decided_never_forwarded() {
    let b = bench(&format!(
        "[pam]\nmax_attempts_per_minute = 1000\n{}",
        site_routes()
    ));
    let mut failures = Vec::new();
    for case in odd_binds() {
        // Control: what 389 does with these bytes (it never answers some of them:
        // nothing to compare then).
        let straight = match &case.direct {
            Some(code) => {
                let (_, straight) = send_bind(direct(), &case.bytes);
                assert_eq!(
                    straight.code().as_ref(),
                    Some(code),
                    "{}: 389 itself answers otherwise than measured: {straight:?}",
                    case.name
                );
                straight
            }
            None => Answer::Silent,
        };

        let (mut c, answer) = send_bind(b.raw(), &case.bytes);
        let ok = match case.must {
            Must::AnswerProtocolError => answer.code() == Some(LdapResultCode::ProtocolError),
            Must::Refuse => answer.is_protocol_refusal(),
            Must::NotSucceed => {
                matches!(answer, Answer::Bind(..) | Answer::Notice(_)) && !answer.is_success()
            }
        };
        if !ok {
            failures.push(format!(
                "{} (389 alone: {straight:?}): must {:?}, got {answer:?}",
                case.name, case.must
            ));
        }
        if let Err(e) = anonymous(&mut c, 2) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert_none(&failures);
}

/// `ldapsearch -P 2` (an LDAPv2 bind) with a routed user's directory password: 389 binds
/// it; the proxy answers protocolError.
#[test]
fn ldapv2_bind_gets_protocol_error() {
    let b = bench(&site_routes());
    let alice = user("alice");
    let args = [
        "-P",
        "2",
        "-x",
        "-LLL",
        "-D",
        &alice,
        "-w",
        "alice-dirpw",
        "-b",
        &alice,
        "-s",
        "base",
        "uid",
    ];
    let straight = ldap_tool("ldapsearch", &directory().uri, &args);
    assert_eq!(straight.code, 0, "control: 389 binds LDAPv2: {straight:?}");
    let proxied = ldap_tool("ldapsearch", &b.uri(), &args);
    assert_eq!(proxied.code, 2, "{proxied:?}");
    assert!(!proxied.stdout.contains("uid: alice"), "{proxied:?}");
    assert_eq!(b.pushes(), Vec::<String>::new());
}

/// DN spellings the directory resolves to alice's entry are alice to the proxy too: PAM
/// decides (as alice), so her directory password fails (49), and on clear text with a
/// secure route every spelling gets confidentialityRequired (13).
#[test]
fn dn_spellings_of_a_routed_user_are_decided_as_the_entry() {
    let s = suffix();
    assert_eq!(s, "dc=example,dc=com");
    let spellings = [
        r"uid=al\ice,ou=People,dc=example,dc=com",
        r"uid=\61lice,ou=People,dc=example,dc=com",
        r"uid=a\6C\69ce,ou=Pe\ople,dc=ex\ample,dc=com",
        "UID=ALICE,OU=PEOPLE,DC=EXAMPLE,DC=COM",
        "uid=Alice,ou=people,dc=example,dc=com",
        r#"uid=alice,ou="People",dc=example,dc=com"#,
        r#"uid="alice",ou=People,dc=example,dc=com"#,
        "uid=alice;ou=People;dc=example;dc=com",
        "uid = alice , ou = People , dc = example , dc = com",
        " uid=alice,ou=People,dc=example,dc=com ",
    ];
    // Control: 389 binds every spelling with the directory password.
    for dn in spellings {
        let (_, a) = send_bind(direct(), &ber::simple_bind(1, dn, "alice-dirpw"));
        assert!(a.is_success(), "control: 389 binds {dn:?}: {a:?}");
    }

    let b = bench(&format!(
        "[pam]\nmax_attempts_per_minute = 1000\n{}",
        site_routes()
    ));
    let mut failures = Vec::new();
    for dn in spellings {
        let (mut c, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, "alice-dirpw"));
        if a.code() != Some(LdapResultCode::InvalidCredentials) {
            failures.push(format!("{dn:?}: not decided as alice: {a:?}"));
        }
        if let Err(e) = anonymous(&mut c, 2) {
            failures.push(format!("{dn:?}: {e}"));
        }
    }
    // PAM decided, as alice: (identical failed binds within the grace window may share
    // one transaction, so the count is not fixed).
    let pushes = b.pushes();
    if pushes.is_empty() || pushes.iter().any(|p| *p != push("alice")) {
        failures.push(format!(
            "PAM transactions must all be for the PAM user alice: {pushes:?}"
        ));
    }

    let b = bench(&secure_site_routes());
    for dn in spellings {
        let (mut c, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, "alice-dirpw"));
        if a.code() != Some(LdapResultCode::ConfidentialityRequired) {
            failures.push(format!("{dn:?} on clear text: {a:?}"));
        }
        if let Err(e) = anonymous(&mut c, 2) {
            failures.push(format!("{dn:?} on clear text: {e}"));
        }
    }
    assert_none(&failures);
}

// ---------------------------------------------------------------------------------------
// 2. SASL mechanisms that carry a password are refused; EXTERNAL and GSSAPI are not.
// ---------------------------------------------------------------------------------------

/// `ldapwhoami -Y <mech> -U alice -w alice-dirpw`: 389 accepts every password mechanism
/// (and maps alice to her entry); through the proxy, authMethodNotSupported (7).
#[test]
fn password_sasl_mechanisms_are_refused() {
    let b = bench(&site_routes());
    let mut failures = Vec::new();
    for mech in [
        "PLAIN",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "CRAM-MD5",
        "DIGEST-MD5",
    ] {
        // PLAIN is refused by the client library's own default security properties.
        let args = ["-O", "none", "-Y", mech, "-U", "alice", "-w", "alice-dirpw"];
        let straight = ldap_tool("ldapwhoami", &directory().uri, &args);
        assert_eq!(
            straight.code, 0,
            "control: 389 accepts {mech}: {straight:?}"
        );
        let proxied = ldap_tool("ldapwhoami", &b.uri(), &args);
        if proxied.code != 7 || !proxied.stderr.contains("(7)") || proxied.stdout.contains("dn:") {
            failures.push(format!("{mech}: {proxied:?}"));
        }
    }
    assert_none(&failures);
}

/// Hand-made SASL binds with spellings of PLAIN that 389 also reads as PLAIN (it compares
/// mechanism names as C strings, case-insensitively): refused too.
#[test]
fn sasl_plain_spellings_are_refused() {
    let b = bench(&site_routes());
    let creds = b"\0alice\0alice-dirpw";
    let mut failures = Vec::new();
    for (mech, direct_binds) in [
        (&b"PLAIN"[..], true),
        (b"plain", true),
        (b"Plain", true),
        (b"PLAIN\0", true),
        (b"PLAIN\0junk", false),
    ] {
        let bytes = ber::message(1, &ber::sasl_bind_op(b"", mech, Some(creds)), None);
        let (_, straight) = send_bind(direct(), &bytes);
        assert_eq!(
            straight.is_success(),
            direct_binds,
            "control: 389 with {mech:?}: {straight:?}"
        );
        let (mut c, a) = send_bind(b.raw(), &bytes);
        let refused =
            a.code() == Some(LdapResultCode::AuthMethodNotSupported) || a.is_protocol_refusal();
        let mech = String::from_utf8_lossy(mech);
        if !refused {
            failures.push(format!("{mech:?}: {a:?}"));
        }
        if let Err(e) = anonymous(&mut c, 2) {
            failures.push(format!("{mech:?}: {e}"));
        }
    }
    assert_none(&failures);
}

/// EXTERNAL and GSSAPI are the directory's: the proxy relays them, so the client gets
/// 389's own answer (code and diagnostic), not the proxy's authMethodNotSupported.
#[test]
fn external_and_gssapi_are_forwarded() {
    let b = bench(&site_routes());
    for (mech, creds) in [(&b"EXTERNAL"[..], None), (b"GSSAPI", Some(&b""[..]))] {
        let bytes = ber::message(1, &ber::sasl_bind_op(b"", mech, creds), None);
        let (_, straight) = send_bind(direct(), &bytes);
        let (_, proxied) = send_bind(b.raw(), &bytes);
        assert!(
            matches!(straight, Answer::Bind(..)),
            "control: 389 answers {mech:?}: {straight:?}"
        );
        assert_ne!(
            proxied.code(),
            Some(LdapResultCode::AuthMethodNotSupported),
            "{mech:?}"
        );
        assert_eq!(
            proxied,
            straight,
            "{:?}: not 389's answer",
            String::from_utf8_lossy(mech)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. Coalescing never crosses client addresses.
// ---------------------------------------------------------------------------------------

/// While alice's push from 127.0.0.1 is pending, the same bind (DN and password) from
/// 127.0.0.2 never succeeds on her approval; after it, within the grace window, it gets a
/// PAM transaction of its own. Retries from 127.0.0.1 still share the one push.
#[test]
fn coalescing_is_per_client_address() {
    let b = bench(&format!(
        "[pam]\ncoalesce_grace = \"5m\"\n{}",
        site_routes()
    ));
    let (alice, pw) = (user("alice"), pampw("alice"));
    b.pam.set_duo_delay(4);
    let mut first = b.raw();
    first.send(bind_request(1, &alice, &pw));
    b.wait_pushes(1);
    // sssd's retry from the same host, and the attacker's bind from another.
    let mut retry = b.raw();
    retry.send(bind_request(1, &alice, &pw));
    let mut other = b.raw_from(OTHER);
    other.send(bind_request(1, &alice, &pw));

    assert_eq!(
        bind_answer(&mut first).code(),
        Some(LdapResultCode::Success)
    );
    assert_eq!(
        bind_answer(&mut retry).code(),
        Some(LdapResultCode::Success),
        "the same-address retry joins the push"
    );
    let theirs = bind_answer(&mut other);
    let pushes = b.pushes();
    assert!(
        !theirs.is_success() || pushes.contains(&push_from("alice", "127.0.0.2")),
        "127.0.0.2 was bound by 127.0.0.1's approval: {theirs:?}, pushes {pushes:?}"
    );
    assert_eq!(
        pushes.iter().filter(|p| **p == push("alice")).count(),
        1,
        "one push for 127.0.0.1's login and its retry: {pushes:?}"
    );

    // After the approval, within the grace window: another address gets its own
    // transaction, 127.0.0.1's retry reuses the result. (If 127.0.0.2 already has a
    // transaction of its own from above, a third address stands in for it.)
    b.pam.set_duo_delay(0);
    let stranger = if pushes.contains(&push_from("alice", "127.0.0.2")) {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))
    } else {
        OTHER
    };
    let before = b.pushes().len();
    let (_, theirs) = send_bind(b.raw_from(stranger), &ber::simple_bind(1, &alice, &pw));
    assert_eq!(
        theirs.code(),
        Some(LdapResultCode::Success),
        "its own push approves"
    );
    let after = b.pushes();
    assert_eq!(
        after.len(),
        before + 1,
        "127.0.0.2 reused 127.0.0.1's finished transaction: {after:?}"
    );
    assert_eq!(
        after.last(),
        Some(&push_from("alice", &stranger.to_string()))
    );
    let (_, again) = send_bind(b.raw(), &ber::simple_bind(1, &alice, &pw));
    assert_eq!(again.code(), Some(LdapResultCode::Success));
    assert_eq!(
        b.pushes(),
        after,
        "a retry from 127.0.0.1 within the grace window"
    );
}

// ---------------------------------------------------------------------------------------
// 5. One identity is the entry, however the DN is spelled.
// ---------------------------------------------------------------------------------------

/// Spellings of bob's DN are one entry: while a push for one is pending, binds with other
/// passwords for the others start no PAM transaction (busy); one push in all.
#[test]
fn dn_spellings_of_one_entry_get_one_push_at_a_time() {
    let b = bench(&site_routes());
    b.pam.set_duo_delay(3);
    let s = suffix();
    let mut first = b.raw();
    first.send(bind_request(
        1,
        &format!("uid=bob,ou=People,{s}"),
        &pampw("bob"),
    ));
    b.wait_pushes(1);
    let others: Vec<(String, RawClient)> = [
        "uid=Bob,ou=People,dc=example,dc=com",
        "uid=BOB,ou=People,dc=example,dc=com",
        "uid=bob,ou=people,dc=example,dc=com",
    ]
    .iter()
    .enumerate()
    .map(|(i, dn)| {
        let mut c = b.raw();
        c.send(bind_request(1, dn, &format!("guess-{i}")));
        (dn.to_string(), c)
    })
    .collect();
    let answers: Vec<(String, Answer)> = others
        .into_iter()
        .map(|(dn, mut c)| {
            let a = bind_answer(&mut c);
            (dn, a)
        })
        .collect();
    assert_eq!(
        bind_answer(&mut first).code(),
        Some(LdapResultCode::Success)
    );
    for (dn, a) in &answers {
        assert_eq!(a.code(), Some(LdapResultCode::Busy), "{dn}: {a:?}");
    }
    assert_eq!(
        b.pushes(),
        [push("bob")],
        "one PAM transaction for bob's entry"
    );
}

/// Spellings of bob's DN share one attempt budget (`max_attempts_per_minute`).
#[test]
fn dn_spellings_of_one_entry_share_one_attempt_budget() {
    let b = bench(&format!(
        "[pam]\nmax_attempts_per_minute = 3\n{}",
        site_routes()
    ));
    let s = suffix();
    for (i, dn) in [
        format!("uid=bob,ou=People,{s}"),
        format!("uid=Bob,ou=People,{s}"),
        format!("uid=BOB,ou=People,{s}"),
    ]
    .iter()
    .enumerate()
    {
        let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, &format!("guess-{i}")));
        assert_eq!(
            a.code(),
            Some(LdapResultCode::InvalidCredentials),
            "{dn}: {a:?}"
        );
    }
    for dn in [
        "uid=bob,ou=people,dc=example,dc=com",
        "uid=bOb,ou=People,dc=example,dc=com",
    ] {
        let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, &pampw("bob")));
        assert_eq!(
            a.code(),
            Some(LdapResultCode::Busy),
            "{dn}: bob's budget of 3 is spent: {a:?}"
        );
    }
    assert_eq!(b.pushes().len(), 3, "{:?}", b.pushes());
}

// ---------------------------------------------------------------------------------------
// 6. No free guessing while a push is pending.
// ---------------------------------------------------------------------------------------

/// A wrong password for alice while her push is pending (from her address or another)
/// is refused with busy, counted, and answered no sooner than the pending push ends: the
/// refusal is neither free guessing nor a timing oracle.
#[test]
fn a_guess_during_a_pending_push_waits_for_it_and_gets_busy() {
    const DELAY: u64 = 4;
    let b = bench(&format!("{METRICS}{}", site_routes()));
    let before = b.counter(IN_FLIGHT);
    b.pam.set_duo_delay(DELAY as u32);
    let alice = user("alice");
    let sent = Instant::now();
    let mut pending = b.raw();
    pending.send(bind_request(1, &alice, &pampw("alice")));
    b.wait_pushes(1);
    // The push started after `sent` and sleeps DELAY seconds: it cannot end earlier
    // than sent + DELAY.
    let guesses: Vec<_> = [None, Some(OTHER)]
        .into_iter()
        .enumerate()
        .map(|(i, from)| {
            let alice = alice.clone();
            let mut c = match from {
                None => b.raw(),
                Some(ip) => b.raw_from(ip),
            };
            std::thread::spawn(move || {
                c.send(bind_request(1, &alice, &format!("guess-{i}")));
                let a = bind_answer(&mut c);
                (from, a, sent.elapsed())
            })
        })
        .collect();
    for g in guesses {
        let (from, a, elapsed) = g.join().unwrap();
        assert_eq!(
            a.code(),
            Some(LdapResultCode::Busy),
            "guess from {from:?}: {a:?}"
        );
        assert!(
            elapsed >= Duration::from_secs(DELAY),
            "guess from {from:?} refused after {elapsed:?}, before the pending push ended"
        );
    }
    assert_eq!(
        bind_answer(&mut pending).code(),
        Some(LdapResultCode::Success)
    );
    assert_eq!(b.pushes(), [push("alice")]);
    assert!(
        b.counter(IN_FLIGHT) >= before + 2.0,
        "{IN_FLIGHT}: {before} → {}",
        b.counter(IN_FLIGHT)
    );
}

// ---------------------------------------------------------------------------------------
// 7. A stranger cannot lock a user out.
// ---------------------------------------------------------------------------------------

/// Wrong passwords for frank from 127.0.0.2 until the budget answers busy: 127.0.0.2
/// stays refused (even with the right password), frank still logs in from 127.0.0.1.
#[test]
fn a_stranger_cannot_lock_a_user_out() {
    let b = bench(&site_routes());
    let frank = user("frank");
    let mut stranger = b.raw_from(OTHER);
    let mut busy_after = None;
    for i in 0..30 {
        match stranger.simple_bind(i + 1, &frank, &format!("guess-{i}")) {
            LdapResultCode::InvalidCredentials => {}
            LdapResultCode::Busy => {
                busy_after = Some(i);
                break;
            }
            other => panic!("guess {i}: {other:?}"),
        }
    }
    assert!(
        busy_after.is_some(),
        "30 wrong passwords and never busy: no attempt budget"
    );

    let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, &frank, &pampw("frank")));
    assert_eq!(
        a.code(),
        Some(LdapResultCode::Success),
        "frank from 127.0.0.1: {a:?}"
    );

    for (msgid, pw) in [(100, "guess-x".to_owned()), (101, pampw("frank"))] {
        assert_eq!(
            stranger.simple_bind(msgid, &frank, &pw),
            LdapResultCode::Busy,
            "127.0.0.2 with {pw}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. A refused bind resets the session.
// ---------------------------------------------------------------------------------------

/// On a session the directory bound (forwarded: noposix, which no route takes), a PAM
/// bind that fails (wrong password 49, clear text on a secure route 13, locked entry 53)
/// leaves the session anonymous (RFC 4511 §4.2.1): WhoAmI says so, and the mail only the
/// earlier identity could read is no longer readable.
///
/// With secure routes on clear text, noposix (in their scope) gets 13 itself (no oracle
/// on clear text): there the earlier identity is the root DN, outside every route's scope.
#[test]
fn a_refused_bind_leaves_the_session_anonymous() {
    use LdapResultCode::*;
    let ds = directory();
    let noposix = (user("noposix"), dirpw("noposix"));
    let root = (ds.root_dn.clone(), ds.root_pw.clone());
    let cases = [
        (
            site_routes(),
            &noposix,
            "alice",
            "wrong",
            InvalidCredentials,
        ),
        (
            secure_site_routes(),
            &root,
            "alice",
            "alice-pampw",
            ConfidentialityRequired,
        ),
        (
            site_routes(),
            &noposix,
            "lockeduser",
            "lockeduser-pampw",
            UnwillingToPerform,
        ),
    ];
    let mut failures = Vec::new();
    for (routes, (first_dn, first_pw), uid, pw, code) in cases {
        let b = bench(&routes);
        let mut c = b.raw();
        assert_eq!(c.simple_bind(1, first_dn, first_pw), Success, "{first_dn}");
        // Control: the session is the directory's, as the first identity.
        let who = whoami_on(&mut c, 2).unwrap().unwrap();
        assert_eq!(
            who.to_lowercase().replace(' ', ""),
            format!("dn:{}", first_dn.to_lowercase().replace(' ', ""))
        );
        let readable = mail_readable(&mut c, 3);
        assert!(
            readable.contains(&noposix.0),
            "{first_dn} reads {readable:?}"
        );

        assert_eq!(c.simple_bind(4, &user(uid), pw), code, "{uid} {pw}");
        if let Err(e) = anonymous(&mut c, 5) {
            failures.push(format!("after {code:?}: {e}"));
        }
        let readable = mail_readable(&mut c, 6);
        if !readable.is_empty() {
            failures.push(format!(
                "after {code:?} the session still reads {readable:?}"
            ));
        }
    }
    assert_none(&failures);
}

// ---------------------------------------------------------------------------------------
// 9. Logs are data.
// ---------------------------------------------------------------------------------------

/// A bind DN with a newline and a forged log line after it, and a DN with an escape
/// sequence: the log holds each DN on its bind line, escaped, and no line starts with
/// the forged text or carries an ESC byte.
#[test]
fn client_strings_cannot_forge_log_lines() {
    let b = bench(&site_routes());
    let tag = unique("forged").replace('-', "");
    let forged = format!(
        "{tag} 2026-12-01T00:00:00.000000Z  INFO ldap_pam_proxy::session: bind client=10.0.0.1:1 dn=uid=alice,ou=People,dc=example,dc=com route=\"duo\" service=\"duo\" result=success"
    );
    let newline_dn = format!("uid=nl{tag}\n{forged},ou=People,dc=example,dc=com");
    let esc_dn = format!("uid=esc{tag}\x1b[2K\x1b[1Gred,ou=People,dc=example,dc=com");
    for dn in [&newline_dn, &esc_dn] {
        let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, "pw"));
        assert!(!a.is_success(), "{a:?}");
    }
    let logged = |marker: &str| {
        let marker = marker.to_owned();
        move |log: &str| {
            log.lines()
                .any(|l| l.contains(&marker) && l.contains(" bind "))
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || {
            let log = b.proxy.log();
            logged(&format!("nl{tag}"))(&log) && logged(&format!("esc{tag}"))(&log)
        }),
        "no bind line for the DNs:\n{}",
        b.proxy.log()
    );
    let log = b.proxy.log();
    for line in log.lines() {
        assert!(!line.starts_with(&tag), "forged log line: {line:?}");
        assert!(!line.contains('\x1b'), "raw ESC in the log: {line:?}");
    }
    // Each DN is on its bind line, the forged text included (escaped, not a new line).
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("nl{tag}")) && l.contains(&format!("{tag} 2026-12-01T"))),
        "the newline DN is not on one line:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("esc{tag}")) && l.contains("red,ou=People")),
        "the ESC DN is not on one line:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// 10. Memory per connection is bounded.
// ---------------------------------------------------------------------------------------

/// A connection whose bind pends sends 64 requests of 2 MB behind it without reading: the
/// proxy's memory grows by less than 32 MiB (backpressure, not buffering 128 MB).
#[test]
fn requests_held_behind_a_pending_bind_are_bounded_in_memory() {
    const REQUESTS: usize = 64;
    const SIZE: usize = 2_000_000; // under limits.max_message_size (2 MiB)
    const LIMIT: u64 = 32 << 20;
    let b = bench(&site_routes());
    b.pam.set_duo_delay(60);
    let mut c = b.raw();
    c.send(bind_request(1, &user("alice"), &pampw("alice")));
    b.wait_pushes(1);
    let baseline = rss_bytes(b.proxy.pid());

    let request = ber::large_search(2, &people(), SIZE - 200).len();
    assert!(request <= SIZE && request > SIZE - 1000, "{request}");
    let written = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, done) = (Arc::clone(&written), Arc::clone(&done));
        let mut stream = c.stream_clone();
        let base = people();
        std::thread::spawn(move || {
            use std::io::Write;
            for i in 0..REQUESTS {
                let msg = ber::large_search(2 + i as i32, &base, SIZE - 200);
                for chunk in msg.chunks(64 * 1024) {
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    written.fetch_add(chunk.len(), Ordering::Relaxed);
                }
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    // Wait until every byte is written, or the writes have stopped moving (the proxy
    // no longer reads: backpressure).
    let mut last = (0, Instant::now());
    let start = Instant::now();
    while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
        let now = written.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let grown = rss_bytes(b.proxy.pid()).saturating_sub(baseline);
    let sent = written.load(Ordering::Relaxed);
    // Close: unblocks the writer.
    let _ = c.stream_clone().shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    assert!(
        grown < LIMIT,
        "the proxy grew by {} MiB while a client sent {} MiB behind a pending bind",
        grown >> 20,
        sent >> 20
    );
}

// ---------------------------------------------------------------------------------------
// 12. Scope is decided on the entry, not on its spelling.
// ---------------------------------------------------------------------------------------

/// `include_suffixes = ["ou=People,…"]`: alice's DN spelled with a quoted `"People"` (or
/// an escaped one) is still in scope: decided as alice, her directory password fails.
/// With per-route scopes, such a spelling does not land on a weaker route (one that
/// falls back to the directory's password check).
#[test]
fn suffix_scope_follows_the_entry_not_the_spelling() {
    let s = suffix();
    let people = format!("ou=People,{s}");
    let spellings = [
        format!(r#"uid=alice,ou="People",{s}"#),
        format!(r"uid=alice,ou=Peop\le,{s}"),
        format!(r#"uid=alice , ou="People";{s}"#),
    ];
    for dn in &spellings {
        let (_, a) = send_bind(direct(), &ber::simple_bind(1, dn, "alice-dirpw"));
        assert!(a.is_success(), "control: 389 binds {dn}: {a:?}");
    }
    let global = format!(
        "[bind]\ninclude_suffixes = [\"{people}\"]\n{}",
        site_routes()
    );
    let per_route = route(
        "duo",
        Some(INTERNAL),
        "duo",
        &format!("include_suffixes = [\"{people}\"]"),
    ) + &route("weak", None, "duo", "fallback = true");
    let mut failures = Vec::new();
    for (scope, config) in [("global", global), ("per route", per_route)] {
        let b = bench(&config);
        // Control: the plain spelling is the strong route's.
        let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, &user("alice"), "alice-dirpw"));
        assert_eq!(
            a.code(),
            Some(LdapResultCode::InvalidCredentials),
            "{config}"
        );
        for dn in &spellings {
            let (mut c, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, "alice-dirpw"));
            if a.code() != Some(LdapResultCode::InvalidCredentials) {
                failures.push(format!("{scope} include_suffixes: {dn}: {a:?}"));
            }
            if let Err(e) = anonymous(&mut c, 2) {
                failures.push(format!("{scope} include_suffixes: {dn}: {e}"));
            }
        }
    }
    assert_none(&failures);
}

// ---------------------------------------------------------------------------------------
// 13. The PAM name comes from the resolved entry.
// ---------------------------------------------------------------------------------------

/// `id_map = ["rdn"]` takes the route's `id_attr` (uid) from the entry's RDN: none in
/// `cn=erin,…` (no PAM identity: erin's password fails), `grace` in `cn=erin+uid=grace,…`
/// (grace's password works, erin's fails).
#[test]
fn pam_identity_is_the_id_attr_of_the_entrys_rdn() {
    let s = suffix();
    let ou = unique("lpp-idmap");
    let base = format!("ou={ou},{s}");
    let cn_only = format!("cn=erin,{base}");
    let multi = format!("cn=erin+uid=grace,{base}");
    let person = |dn: &str, cn: &str, uid: &str, n: u32| {
        format!(
            "dn: {dn}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\ncn: {cn}\nsn: {cn}\nuid: {uid}\nuidNumber: {n}\ngidNumber: 10000\nhomeDirectory: /home/erin@colostate.edu\nuserPassword: erin-dirpw\n\n"
        )
    };
    let ldif = format!(
        "dn: {base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n{}{}",
        person(&cn_only, "erin", "erin", 20001),
        person(&multi, "erin", "grace", 20002)
    );
    let _entries = Entries::add(&ldif, vec![cn_only.clone(), multi.clone(), base.clone()]);

    let b = bench(&site_routes());
    // Control: the csu route takes both entries (external home directories).
    let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, &multi, "erin-dirpw"));
    assert_eq!(a.code(), Some(LdapResultCode::InvalidCredentials), "{a:?}");
    let cases = [
        (&cn_only, pampw("erin"), false),
        (&multi, pampw("erin"), false),
        (&multi, pampw("grace"), true),
    ];
    let mut failures = Vec::new();
    for (dn, pw, binds) in cases {
        let (mut c, a) = send_bind(b.raw(), &ber::simple_bind(1, dn, &pw));
        let ok = match binds {
            true => a.is_success(),
            false => matches!(
                a.code(),
                Some(LdapResultCode::NoSuchObject | LdapResultCode::InvalidCredentials)
            ),
        };
        if !ok {
            failures.push(format!("{dn} with {pw}: {a:?}"));
        }
        if !binds {
            if let Err(e) = anonymous(&mut c, 2) {
                failures.push(format!("{dn} with {pw}: {e}"));
            }
        }
    }
    assert_none(&failures);
}

/// Another entry whose RDN also says uid=alice is another bind: with the same password,
/// it never rides the push pending for alice's own entry.
#[test]
fn another_entry_with_the_same_pam_name_does_not_ride_the_push() {
    let s = suffix();
    let ou = unique("lpp-twin");
    let base = format!("ou={ou},{s}");
    let twin = format!("uid=alice,{base}");
    let ldif = format!(
        "dn: {base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n\
         dn: {twin}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\ncn: Twin Alice\nsn: Twin\nuid: alice\nuidNumber: 20011\ngidNumber: 10000\nhomeDirectory: /home/alice\nuserPassword: twin-dirpw\n"
    );
    let _entries = Entries::add(&ldif, vec![twin.clone(), base.clone()]);

    let b = bench(&site_routes());
    b.pam.set_duo_delay(4);
    let mut real = b.raw();
    real.send(bind_request(1, &user("alice"), &pampw("alice")));
    b.wait_pushes(1);
    let (mut c, a) = send_bind(b.raw(), &ber::simple_bind(1, &twin, &pampw("alice")));
    let pushes = b.pushes();
    assert!(
        !a.is_success() || pushes.len() >= 2,
        "{twin} was bound by the push for alice's entry: {a:?}, pushes {pushes:?}"
    );
    if !a.is_success() {
        assert_anonymous(&mut c, 2, &twin);
    }
    assert_eq!(bind_answer(&mut real).code(), Some(LdapResultCode::Success));
}

// ---------------------------------------------------------------------------------------
// 14. No oracle on clear text.
// ---------------------------------------------------------------------------------------

/// Secure routes on a clear connection: every DN in their scope gets the same answer,
/// code and text, whether it is routed (alice, erin), not routed (noposix) or has no
/// entry, so clear text tells nothing about accounts. Binds outside every route's scope
/// (the root DN) still work.
#[test]
fn clear_text_binds_in_scope_all_get_the_same_answer() {
    let b = bench(&secure_site_routes());
    let nobody = format!("uid={},ou=People,{}", unique("nobody"), suffix());
    let answers: Vec<(String, Answer)> = [user("alice"), user("erin"), user("noposix"), nobody]
        .into_iter()
        .map(|dn| {
            let (_, a) = send_bind(b.raw(), &ber::simple_bind(1, &dn, "wrong-password"));
            (dn, a)
        })
        .collect();
    let first = &answers[0].1;
    assert_eq!(
        first.code(),
        Some(LdapResultCode::ConfidentialityRequired),
        "{answers:#?}"
    );
    for (dn, a) in &answers {
        assert_eq!(
            a, first,
            "{dn} answers differently on clear text: {answers:#?}"
        );
    }
    let ds = directory();
    let (mut c, a) = send_bind(b.raw(), &ber::simple_bind(1, &ds.root_dn, &ds.root_pw));
    assert_eq!(a.code(), Some(LdapResultCode::Success), "root DN: {a:?}");
    assert!(whoami_on(&mut c, 2)
        .unwrap()
        .is_some_and(|id| id.contains("directory manager")));
    assert_eq!(b.pushes(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// 15. Every bind gets its audit line.
// ---------------------------------------------------------------------------------------

/// Three forwarded binds pipelined on one connection (the root DN, noposix, a DN without
/// entry): one `bind` log line each, with its DN and result. With routes the proxy looks
/// the last two up; without routes it forwards all three at once.
#[test]
fn every_pipelined_bind_gets_an_audit_line() {
    let ds = directory();
    let nobody = format!("uid={},ou=People,{}", unique("nobody"), suffix());
    let binds = [
        (ds.root_dn.clone(), ds.root_pw.clone(), "0"),
        (user("noposix"), dirpw("noposix"), "0"),
        (nobody, "whatever".to_owned(), "49"),
    ];
    for routes in [site_routes(), String::new()] {
        let b = bench(&routes);
        let mut c = b.raw();
        let pipelined: Vec<u8> = binds
            .iter()
            .enumerate()
            .flat_map(|(i, (dn, pw, _))| ber::simple_bind(i as i32 + 1, dn, pw))
            .collect();
        c.send_raw(&pipelined);
        // 389 may answer binds pipelined on one connection in any order.
        let mut codes = vec![String::new(); binds.len()];
        for _ in &binds {
            let m = c.recv().expect("bind response");
            let LdapOp::BindResponse(r) = m.op else {
                panic!("{m:?}")
            };
            codes[m.msgid as usize - 1] = (r.res.code as i32).to_string();
        }
        let expected: Vec<&str> = binds.iter().map(|(_, _, code)| *code).collect();
        assert_eq!(codes, expected);
        let client = format!("client={} ", c.local_addr());
        let lines = || -> Vec<String> {
            b.proxy
                .log()
                .lines()
                .filter(|l| l.contains(": bind ") && l.contains(&client))
                .map(str::to_owned)
                .collect()
        };
        let complete = eventually(Duration::from_secs(10), || lines().len() >= binds.len());
        let lines = lines();
        assert!(complete, "routes:\n{routes}\nbind lines: {lines:#?}");
        assert_eq!(lines.len(), binds.len(), "{lines:#?}");
        for (dn, _, code) in &binds {
            let mine: Vec<&String> = lines.iter().filter(|l| l.contains(dn.as_str())).collect();
            assert_eq!(mine.len(), 1, "{dn}: {lines:#?}");
            let result = mine[0]
                .split(" result=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("")
                .trim_matches('"');
            let named = match *code {
                "0" => "success",
                _ => "invalidCredentials",
            };
            assert!(
                result == *code || result == named,
                "{dn}: result {result:?} in {}",
                mine[0]
            );
        }
    }
}
