//! Property test (DESIGN §7, "decide or refuse"): no encoding of a BindRequest for a
//! PAM-routed user, sent with that user's *directory* password, binds through the proxy.
//!
//! 389 reads requests with liblber, which accepts far more than DER: LDAPv2, other tags
//! for the name and the version, non-minimal lengths and integers, extra elements, DN
//! escapes of ordinary characters, `;` separators, quoted values, odd controls. Whatever
//! the proxy relays without having read it, 389 decides with the directory password. So
//! each generated request goes to the proxy on a fresh connection, and the proxy must
//! answer anything but success (or close the connection), after which the session must
//! not be bound (WhoAmI answers anonymous, if the connection is still open).
//!
//! About 256 cases by default (a few seconds); more with
//! `PROPTEST_CASES=5000 LPP_DS_ENV=… cargo test --test bind_encodings`.
//! One proxy serves every case; connections run one after another, each answer within
//! a per-case timeout.

mod common;

use common::ber::{self, Len};
use common::*;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::time::Duration;

/// One answer, and the WhoAmI after it, within this.
const PER_CASE: Duration = Duration::from_secs(10);

/// How one length is written.
fn length_form() -> impl Strategy<Value = Len> {
    prop_oneof![
        8 => Just(Len::Minimal),
        2 => (1u8..=5).prop_map(Len::Long),
        1 => Just(Len::Indefinite),
    ]
}

/// An INTEGER-like element: tag, value, extra leading zero octets, length form.
#[derive(Debug, Clone)]
struct Int {
    tag: u8,
    value: i64,
    pad: usize,
    len: Len,
}

impl Int {
    fn encode(&self) -> Vec<u8> {
        let mut content = vec![0u8; self.pad];
        content.extend(ber::int(self.value));
        ber::tlv_as(self.tag, &content, self.len)
    }
}

fn msgid() -> impl Strategy<Value = Int> {
    (
        prop_oneof![
            20 => Just(0x02u8),
            1 => Just(0x0a),
        ],
        prop_oneof![
            10 => 1i64..=1000,
            2 => 1i64..=i32::MAX as i64,
            1 => Just(0),
            1 => Just(-1),
            1 => Just(i32::MAX as i64 + 1),
        ],
        prop_oneof![8 => Just(0usize), 2 => 1usize..=3],
        length_form(),
    )
        .prop_map(|(tag, value, pad, len)| Int {
            tag,
            value,
            pad,
            len,
        })
}

fn version() -> impl Strategy<Value = Int> {
    (
        prop_oneof![
            12 => Just(0x02u8),
            2 => Just(0x0a),
            1 => Just(0x04),
            1 => Just(0x80),
        ],
        prop_oneof![
            10 => Just(3i64),
            4 => Just(2),
            1 => Just(1),
            1 => Just(0),
            1 => Just(4),
            1 => Just(-1),
            1 => Just(259),
            1 => Just(-253),
        ],
        prop_oneof![8 => Just(0usize), 2 => 1usize..=3],
        length_form(),
    )
        .prop_map(|(tag, value, pad, len)| Int {
            tag,
            value,
            pad,
            len,
        })
}

/// How one character of a DN value is spelled.
#[derive(Debug, Clone, Copy)]
enum CharForm {
    Plain,
    Flipped,
    /// `\c`: an escape of an ordinary character (RFC 4514 allows it for specials only).
    Escaped,
    /// `\hh`, lower or upper case hex.
    Hex(bool),
}

fn char_form() -> impl Strategy<Value = CharForm> {
    prop_oneof![
        12 => Just(CharForm::Plain),
        4 => Just(CharForm::Flipped),
        1 => Just(CharForm::Escaped),
        1 => any::<bool>().prop_map(CharForm::Hex),
    ]
}

/// How one RDN (`type=value`) and the separator after it are spelled.
#[derive(Debug, Clone)]
struct RdnForm {
    type_case: Vec<bool>,
    value: Vec<CharForm>,
    quoted: bool,
    spaces: [bool; 4],
    semicolon: bool,
}

fn rdn_form() -> impl Strategy<Value = RdnForm> {
    (
        proptest::collection::vec(prop::bool::weighted(0.2), 8),
        proptest::collection::vec(char_form(), 8),
        prop::bool::weighted(0.1),
        proptest::array::uniform4(prop::bool::weighted(0.1)),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(type_case, value, quoted, spaces, semicolon)| RdnForm {
            type_case,
            value,
            quoted,
            spaces,
            semicolon,
        })
}

fn flip(c: char) -> char {
    if c.is_ascii_lowercase() {
        c.to_ascii_uppercase()
    } else {
        c.to_ascii_lowercase()
    }
}

/// The routed user's DN as the forms spell it.
fn spell_dn(uid: &str, forms: &[RdnForm]) -> String {
    let rdns = [
        ("uid", uid),
        ("ou", "People"),
        ("dc", "example"),
        ("dc", "com"),
    ];
    let mut dn = String::new();
    for (i, ((attr, value), f)) in rdns.iter().zip(forms).enumerate() {
        let sp = |on: bool| if on { " " } else { "" };
        if i > 0 {
            dn += if forms[i - 1].semicolon { ";" } else { "," };
        }
        dn += sp(f.spaces[0]);
        dn.extend(
            attr.chars()
                .zip(f.type_case.iter().cycle())
                .map(|(c, up)| if *up { flip(c) } else { c }),
        );
        dn += sp(f.spaces[1]);
        dn += "=";
        dn += sp(f.spaces[2]);
        let mut v = String::new();
        for (c, form) in value.chars().zip(f.value.iter().cycle()) {
            match form {
                CharForm::Plain => v.push(c),
                CharForm::Flipped => v.push(flip(c)),
                CharForm::Escaped if !f.quoted => {
                    v.push('\\');
                    v.push(c);
                }
                CharForm::Hex(upper) if !f.quoted => {
                    v += &if *upper {
                        format!("\\{:02X}", c as u32)
                    } else {
                        format!("\\{:02x}", c as u32)
                    };
                }
                _ => v.push(c),
            }
        }
        if f.quoted {
            v = format!("\"{v}\"");
        }
        dn += &v;
        dn += sp(f.spaces[3]);
    }
    dn
}

/// Tag and shape of the name element.
#[derive(Debug, Clone)]
enum NameForm {
    /// OCTET STRING (0x04), or another primitive tag.
    Primitive(u8, Len),
    /// Constructed OCTET STRING (0x24) of two segments split at this fraction.
    Constructed(u8),
}

fn name_form() -> impl Strategy<Value = NameForm> {
    prop_oneof![
        12 => length_form().prop_map(|l| NameForm::Primitive(0x04, l)),
        2 => length_form().prop_map(|l| NameForm::Primitive(0x0c, l)),
        1 => length_form().prop_map(|l| NameForm::Primitive(0x13, l)),
        1 => any::<u8>().prop_map(NameForm::Constructed),
    ]
}

/// Tag and shape of the authentication choice.
#[derive(Debug, Clone)]
enum AuthForm {
    /// `simple [0]` or another primitive tag.
    Primitive(u8, Len),
    /// Constructed `[0]` holding the password as OCTET STRING segments.
    Constructed(u8),
    /// SASL PLAIN `[3]` carrying the directory password (mechanism spelled as given).
    SaslPlain(&'static str),
}

fn auth_form() -> impl Strategy<Value = AuthForm> {
    prop_oneof![
        12 => length_form().prop_map(|l| AuthForm::Primitive(0x80, l)),
        1 => length_form().prop_map(|l| AuthForm::Primitive(0x81, l)),
        1 => length_form().prop_map(|l| AuthForm::Primitive(0x04, l)),
        1 => length_form().prop_map(|l| AuthForm::Primitive(0x82, l)),
        1 => any::<u8>().prop_map(AuthForm::Constructed),
        1 => prop_oneof![Just("PLAIN"), Just("plain"), Just("PLAIN\0"), Just("pLaIn")]
            .prop_map(AuthForm::SaslPlain),
    ]
}

/// A control the client adds.
#[derive(Debug, Clone)]
enum ControlForm {
    AuthzIdRequest,
    PasswordPolicy,
    ManageDsaIt(bool),
    Unknown(bool),
    /// An OID followed by NUL (389 reads it as the OID).
    OidWithNul,
    /// Criticality that is not a DER BOOLEAN.
    OddCriticality(u8),
    /// Criticality tagged INTEGER.
    CriticalityAsInteger,
    /// Not a SEQUENCE.
    NotASequence,
    EmptySequence,
}

fn control_form() -> impl Strategy<Value = ControlForm> {
    prop_oneof![
        Just(ControlForm::AuthzIdRequest),
        Just(ControlForm::PasswordPolicy),
        any::<bool>().prop_map(ControlForm::ManageDsaIt),
        any::<bool>().prop_map(ControlForm::Unknown),
        Just(ControlForm::OidWithNul),
        (2u8..=0xfe).prop_map(ControlForm::OddCriticality),
        Just(ControlForm::CriticalityAsInteger),
        Just(ControlForm::NotASequence),
        Just(ControlForm::EmptySequence),
    ]
}

impl ControlForm {
    fn encode(&self) -> Vec<u8> {
        match self {
            ControlForm::AuthzIdRequest => ber::control(b"2.16.840.1.113730.3.4.16", None, None),
            ControlForm::PasswordPolicy => ber::control(b"1.3.6.1.4.1.42.2.27.8.5.1", None, None),
            ControlForm::ManageDsaIt(c) => ber::control(b"2.16.840.1.113730.3.4.2", Some(*c), None),
            ControlForm::Unknown(c) => ber::control(b"1.2.3.4.5", Some(*c), Some(b"v")),
            ControlForm::OidWithNul => ber::control(b"2.16.840.1.113730.3.4.16\0", None, None),
            ControlForm::OddCriticality(v) => ber::tlv(
                0x30,
                &[ber::tlv(0x04, b"1.2.3.4.5"), ber::tlv(0x01, &[*v])].concat(),
            ),
            ControlForm::CriticalityAsInteger => ber::tlv(
                0x30,
                &[ber::tlv(0x04, b"1.2.3.4.5"), ber::tlv(0x02, &[1])].concat(),
            ),
            ControlForm::NotASequence => ber::tlv(0x04, b"2.16.840.1.113730.3.4.16"),
            ControlForm::EmptySequence => ber::tlv(0x30, &[]),
        }
    }
}

/// Elements a lenient decoder skips.
fn extra_element() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(ber::tlv(0x04, b"x")),
        Just(ber::tlv(0x02, &[0])),
        Just(ber::tlv(0x30, &[])),
        Just(ber::tlv(0x80, b"other-password")),
        Just(ber::tlv(0xa0, &[])),
        Just(vec![0x00, 0x00]),
    ]
}

/// One BindRequest spelling, for a routed user with the directory password.
#[derive(Debug, Clone)]
struct Encoding {
    uid: &'static str,
    outer_len: Len,
    msgid: Int,
    op_len: Len,
    version: Int,
    dn: Vec<RdnForm>,
    name: NameForm,
    auth: AuthForm,
    password_tail: Option<&'static str>,
    inside_op: Vec<Vec<u8>>,
    after_op: Option<Vec<u8>>,
    controls: Option<(u8, Vec<ControlForm>)>,
}

fn encoding() -> impl Strategy<Value = Encoding> {
    (
        (
            prop_oneof![Just("alice"), Just("erin")],
            prop_oneof![10 => Just(Len::Minimal), 2 => (1u8..=5).prop_map(Len::Long), 1 => Just(Len::Indefinite)],
            msgid(),
            length_form(),
            version(),
            proptest::collection::vec(rdn_form(), 4),
        ),
        (
            name_form(),
            auth_form(),
            prop_oneof![8 => Just(None), 1 => Just(Some("\0")), 1 => Just(Some("\0tail"))],
            prop_oneof![
                8 => Just(Vec::new()),
                2 => proptest::collection::vec(extra_element(), 1..=2),
            ],
            prop_oneof![8 => Just(None), 1 => extra_element().prop_map(Some)],
            prop_oneof![
                6 => Just(None),
                3 => proptest::collection::vec(control_form(), 1..=3).prop_map(|c| Some((0xa0, c))),
                1 => proptest::collection::vec(control_form(), 1..=2).prop_map(|c| Some((0x30, c))),
            ],
        ),
    )
        .prop_map(
            |((uid, outer_len, msgid, op_len, version, dn), (name, auth, password_tail, inside_op, after_op, controls))| {
                Encoding {
                    uid,
                    outer_len,
                    msgid,
                    op_len,
                    version,
                    dn,
                    name,
                    auth,
                    password_tail,
                    inside_op,
                    after_op,
                    controls,
                }
            },
        )
}

/// Two OCTET STRING segments of `bytes`, split at `at`/255 of its length.
fn segments(bytes: &[u8], at: u8) -> Vec<u8> {
    let cut = bytes.len() * at as usize / 255;
    [ber::tlv(0x04, &bytes[..cut]), ber::tlv(0x04, &bytes[cut..])].concat()
}

impl Encoding {
    fn dn(&self) -> String {
        spell_dn(self.uid, &self.dn)
    }

    fn password(&self) -> Vec<u8> {
        let mut pw = format!("{}-dirpw", self.uid).into_bytes();
        if let Some(tail) = self.password_tail {
            pw.extend_from_slice(tail.as_bytes());
        }
        pw
    }

    fn encode(&self) -> Vec<u8> {
        let dn = self.dn().into_bytes();
        let password = self.password();
        let name = match &self.name {
            NameForm::Primitive(tag, len) => ber::tlv_as(*tag, &dn, *len),
            NameForm::Constructed(at) => ber::tlv(0x24, &segments(&dn, *at)),
        };
        let auth = match &self.auth {
            AuthForm::Primitive(tag, len) => ber::tlv_as(*tag, &password, *len),
            AuthForm::Constructed(at) => ber::tlv(0xa0, &segments(&password, *at)),
            AuthForm::SaslPlain(mech) => {
                let mut creds = format!("\0{}\0", self.uid).into_bytes();
                creds.extend_from_slice(&password);
                ber::tlv(
                    0xa3,
                    &[ber::tlv(0x04, mech.as_bytes()), ber::tlv(0x04, &creds)].concat(),
                )
            }
        };
        let mut op = [self.version.encode(), name, auth].concat();
        for e in &self.inside_op {
            op.extend_from_slice(e);
        }
        let mut body = [self.msgid.encode(), ber::tlv_as(0x60, &op, self.op_len)].concat();
        if let Some(e) = &self.after_op {
            body.extend_from_slice(e);
        }
        if let Some((tag, controls)) = &self.controls {
            let content: Vec<u8> = controls.iter().flat_map(ControlForm::encode).collect();
            body.extend(ber::tlv(*tag, &content));
        }
        ber::tlv_as(0x30, &body, self.outer_len)
    }
}

fn passdb() -> String {
    "alice:alice-pampw:duo\nerin:erin-pampw:csu\n".to_owned()
}

fn config() -> String {
    format!(
        r#"
[pam]
max_attempts_per_minute = 1000000

[[route]]
name = "duo"
filter = "{INTERNAL}"
pam_service = "duo"
secure = false

[[route]]
name = "csu"
filter = "{EXTERNAL}"
pam_service = "csu"
secure = false
"#
    )
}

fn whoami_bytes() -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut ldap3_proto::LdapCodec::default(),
        whoami_request(0x7fff_0001),
        &mut out,
    )
    .unwrap();
    out.to_vec()
}

/// Sends one encoding on a fresh connection: never success, never bound afterwards.
fn check(proxy: &Proxy, e: &Encoding) -> Result<(), TestCaseError> {
    let bytes = e.encode();
    let mut c = RawClient::connect(proxy.addr);
    if !c.try_send_raw(&bytes) {
        return Ok(());
    }
    match c.recv_within(PER_CASE) {
        Received::Closed => return Ok(()),
        Received::TimedOut => {
            return Err(TestCaseError::fail(format!(
                "no answer within {PER_CASE:?} to {:02x?}",
                bytes
            )))
        }
        Received::Undecodable(err) => {
            return Err(TestCaseError::fail(format!("undecodable answer: {err}")))
        }
        Received::Msg(m) if notice_code(&m).is_some() => return Ok(()),
        Received::Msg(LdapMsg {
            op: LdapOp::BindResponse(r),
            ..
        }) => {
            prop_assert_ne!(
                r.res.code,
                LdapResultCode::Success,
                "bound as {:?} with the directory password",
                e.dn()
            );
        }
        Received::Msg(other) => {
            return Err(TestCaseError::fail(format!("not a bind answer: {other:?}")))
        }
    }
    if !c.try_send_raw(&whoami_bytes()) {
        return Ok(());
    }
    match c.recv_within(PER_CASE) {
        Received::Closed => Ok(()),
        Received::Msg(m) if notice_code(&m).is_some() => Ok(()),
        Received::Msg(LdapMsg {
            op: LdapOp::ExtendedResponse(r),
            ..
        }) if r.res.code == LdapResultCode::Success => {
            let id = String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned();
            prop_assert!(
                id.is_empty() || id == "dn:",
                "bound afterwards: WhoAmI says {id:?}"
            );
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("WhoAmI: {other:?}"))),
    }
}

#[test]
fn no_encoding_of_a_routed_bind_succeeds_with_the_directory_password() {
    let pam = PamSetup::new(&passdb());
    let proxy = Proxy::with_pam(&pam, &config());
    // Control: the strict encoding is decided by PAM (49), and the PAM password works.
    let mut c = RawClient::connect(proxy.addr);
    assert_eq!(
        c.simple_bind(1, &user("alice"), "alice-dirpw"),
        LdapResultCode::InvalidCredentials
    );
    assert_eq!(
        c.simple_bind(2, &user("erin"), "erin-pampw"),
        LdapResultCode::Success
    );
    drop(c);

    // Cases: PROPTEST_CASES, else 256.
    let config = Config {
        failure_persistence: None,
        max_shrink_iters: 400,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(&encoding(), |e| check(&proxy, &e)) {
        Ok(()) => {}
        Err(TestError::Fail(why, e)) => panic!(
            "{why}\nminimal failing encoding: {e:?}\nDN {:?}\nbytes {:02x?}",
            e.dn(),
            e.encode()
        ),
        Err(other) => panic!("{other}"),
    }
}
