//! Byte-level reading and rewriting of whole relayed LDAP messages: the few facts the
//! session needs about a request (its controls, a search base, an extended operation's
//! OID) and adding the Proxied Authorization control, without decoding the rest, so
//! everything the proxy does not touch stays byte for byte as the client sent it.
//!
//! What the proxy does read, it reads strictly (DESIGN §7): 389 decodes requests with
//! liblber, which accepts more spellings than this module (OIDs under any tag and as C
//! strings, so `OID\0` is `OID`; extra elements inside a control read as further
//! controls). Whatever this module cannot read exactly is an error, so the session
//! refuses it instead of relaying something the directory would read differently.

use crate::ber;
use crate::frame::{op, Envelope, FrameError};

/// One BER element: its tag byte and content.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// Bytes the whole element takes.
    len: usize,
}

const MALFORMED: FrameError = FrameError::Malformed("bad element inside the message");

/// Reads the complete element at the start of `buf` with [`ber::element`]. Whatever
/// makes an element unreadable, this module reports it the same way: the message is
/// refused either way, and its diagnostic need not say more.
fn tlv(buf: &[u8]) -> Result<Tlv<'_>, FrameError> {
    let (ber::Tlv { tag, content }, len) = ber::element(buf).map_err(|_| MALFORMED)?;
    Ok(Tlv { tag, content, len })
}

/// The parts of an LDAPMessage: messageID and protocolOp elements, and the content of
/// the controls element if present.
struct Parts<'a> {
    id_and_op: &'a [u8],
    /// protocolOp and controls elements, as they are.
    after_id: &'a [u8],
    op: Tlv<'a>,
    controls: Option<&'a [u8]>,
}

fn parts(msg: &[u8]) -> Result<Parts<'_>, FrameError> {
    let outer = tlv(msg)?;
    let body = outer.content;
    let id = tlv(body)?;
    let op = tlv(&body[id.len..])?;
    let rest = &body[id.len + op.len..];
    let controls = if rest.is_empty() {
        None
    } else {
        let c = tlv(rest)?;
        if c.tag != 0xa0 || c.len != rest.len() {
            return Err(MALFORMED);
        }
        Some(c.content)
    };
    Ok(Parts {
        id_and_op: &body[..id.len + op.len],
        after_id: &body[id.len..],
        op,
        controls,
    })
}

/// Whether `oid` is an RFC 4512 `numericoid`: at least two arcs of decimal digits
/// separated by single dots, without leading zeros (`0` itself is an arc). Nothing
/// else: no NUL, space, sign, letter or empty arc, so that the proxy and the directory,
/// which reads OIDs as C strings, can only ever mean the same OID, and comparing the
/// bytes compares the OIDs.
pub fn is_numeric_oid(oid: &[u8]) -> bool {
    let mut arcs = 0;
    for arc in oid.split(|b| *b == b'.') {
        let ok = match arc {
            [] => false,
            [b'0'] => true,
            [b'0', ..] => false,
            _ => arc.iter().all(u8::is_ascii_digit),
        };
        if !ok {
            return false;
        }
        arcs += 1;
    }
    arcs >= 2
}

/// One control of a request (RFC 4511 §4.1.11), as read by [`controls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control<'a> {
    /// The controlType: always a well-formed numeric OID.
    pub oid: &'a str,
    pub critical: bool,
    pub value: Option<&'a [u8]>,
}

const BAD_CONTROL: FrameError =
    FrameError::Malformed("control is not SEQUENCE { LDAPOID, BOOLEAN, OCTET STRING }");
const BAD_CONTROL_OID: FrameError = FrameError::Malformed("control type is not a numeric OID");
const BAD_EXTENDED: FrameError =
    FrameError::Malformed("extended request name is not a numeric OID");

/// Reads one Control strictly: `SEQUENCE { controlType LDAPOID, criticality BOOLEAN
/// DEFAULT FALSE, controlValue OCTET STRING OPTIONAL }` with exactly these universal tags,
/// in this order, and nothing after them. liblber is more lenient (it takes an OID under
/// any tag, treats an element it does not expect inside a control as the next control,
/// and reads OIDs as C strings), so every other spelling is an error rather than
/// something the directory would read differently from the proxy.
fn control_at(element: Tlv<'_>) -> Result<Control<'_>, FrameError> {
    if element.tag != 0x30 {
        return Err(BAD_CONTROL);
    }
    let mut rest = element.content;
    let oid = tlv(rest)?;
    if oid.tag != 0x04 {
        return Err(BAD_CONTROL);
    }
    if !is_numeric_oid(oid.content) {
        return Err(BAD_CONTROL_OID);
    }
    let oid_text = std::str::from_utf8(oid.content).map_err(|_| BAD_CONTROL_OID)?;
    rest = &rest[oid.len..];
    let mut critical = false;
    if rest.first() == Some(&0x01) {
        let boolean = tlv(rest)?;
        // BER: one content octet, zero is FALSE and anything else TRUE (as liblber
        // reads it); other lengths are refused.
        critical = ber::boolean(boolean.content).map_err(|_| BAD_CONTROL)?;
        rest = &rest[boolean.len..];
    }
    let mut value = None;
    if rest.first() == Some(&0x04) {
        let v = tlv(rest)?;
        value = Some(v.content);
        rest = &rest[v.len..];
    }
    if !rest.is_empty() {
        return Err(BAD_CONTROL);
    }
    Ok(Control {
        oid: oid_text,
        critical,
        value,
    })
}

/// The controls of the content of a Controls element, one by one; stops after the
/// first error.
struct Controls<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Controls<'a> {
    type Item = Result<Control<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let read = tlv(self.rest).and_then(|element| {
            self.rest = &self.rest[element.len..];
            control_at(element)
        });
        if read.is_err() {
            self.rest = &[];
        }
        Some(read)
    }
}

/// The controls a message carries, each read strictly (see [`Control`]); any element
/// that is not exactly a Control, or a controlType that is not a numeric OID, is an error.
pub fn controls(msg: &[u8]) -> Result<Vec<Control<'_>>, FrameError> {
    let rest = parts(msg)?.controls.unwrap_or_default();
    Controls { rest }.collect()
}

/// What the proxy must be able to read in every client request before it acts on it or
/// relays it (DESIGN §7): the controls, read strictly with numeric OIDs, and an
/// ExtendedRequest's name and value. Only the envelope and the controls are parsed,
/// never the rest of an operation, so this costs a few element headers per request.
/// Checks what the proxy itself reads of a request, strictly: every control, an extended
/// request's name, an Abandon's messageID and a paged-results control's value (a shared
/// service connection maps both: src/service_links).
pub fn check_request(env: Envelope, msg: &[u8]) -> Result<(), FrameError> {
    let p = parts(msg)?;
    let rest = p.controls.unwrap_or_default();
    for control in (Controls { rest }) {
        control?;
    }
    match env.op {
        op::EXTENDED_REQUEST => {
            extended_name(p.op)?;
        }
        op::ABANDON_REQUEST => {
            abandon_target(msg)?;
        }
        _ => {}
    }
    paged_cookie(msg)?;
    Ok(())
}

/// `msg` with `control` (a complete DER Control) put first among its controls: 389
/// honours the first proxied-authorization control it finds, so the proxy's own must
/// precede anything a client sent.
pub fn with_control(msg: &[u8], control: &[u8]) -> Result<Vec<u8>, FrameError> {
    let p = parts(msg)?;
    let existing = p.controls.unwrap_or_default();
    let controls_len = existing.len() + control.len();
    let mut controls = Vec::with_capacity(controls_len + 6);
    ber::write_header(&mut controls, 0xa0, controls_len);
    controls.extend_from_slice(control);
    controls.extend_from_slice(existing);
    let body_len = p.id_and_op.len() + controls.len();
    let mut out = Vec::with_capacity(body_len + 6);
    ber::write_header(&mut out, 0x30, body_len);
    out.extend_from_slice(p.id_and_op);
    out.extend_from_slice(&controls);
    Ok(out)
}

/// `msg` under another messageID: the protocolOp and controls stay as they are.
pub fn with_msgid(msg: &[u8], msgid: i32) -> Result<Vec<u8>, FrameError> {
    let rest = parts(msg)?.after_id;
    let mut body = Vec::with_capacity(rest.len() + 6);
    ber::write_integer(&mut body, i64::from(msgid));
    body.extend_from_slice(rest);
    let mut out = Vec::with_capacity(body.len() + 6);
    ber::write(&mut out, 0x30, &body);
    Ok(out)
}

/// An AbandonRequest (RFC 4511 §4.11) for `target`.
pub fn abandon_request(msgid: i32, target: i32) -> Vec<u8> {
    let mut id = Vec::with_capacity(6);
    ber::write_integer(&mut id, i64::from(target));
    // The INTEGER's content under [APPLICATION 16].
    let mut body = Vec::with_capacity(12);
    ber::write_integer(&mut body, i64::from(msgid));
    ber::write(&mut body, op::ABANDON_REQUEST, &id[2..]);
    let mut out = Vec::with_capacity(body.len() + 2);
    ber::write(&mut out, 0x30, &body);
    out
}

/// Simple Paged Results (RFC 2696).
pub const OID_PAGED_RESULTS: &str = "1.2.840.113556.1.4.319";

/// The cookie of the message's paged-results control (`realSearchControlValue ::=
/// SEQUENCE { size INTEGER, cookie OCTET STRING }`), or `None` without that control;
/// an empty cookie starts a paged search (request) or ends it (response).
pub fn paged_cookie(msg: &[u8]) -> Result<Option<&[u8]>, FrameError> {
    let Some(control) = controls(msg)?
        .into_iter()
        .find(|c| c.oid == OID_PAGED_RESULTS)
    else {
        return Ok(None);
    };
    let value = control.value.ok_or(MALFORMED)?;
    let outer = tlv(value)?;
    if outer.tag != 0x30 || outer.len != value.len() {
        return Err(MALFORMED);
    }
    let size = tlv(outer.content)?;
    let cookie = tlv(&outer.content[size.len..])?;
    if size.tag != 0x02 || cookie.tag != 0x04 || size.len + cookie.len != outer.content.len() {
        return Err(MALFORMED);
    }
    Ok(Some(cookie.content))
}

/// A DER-encoded control.
pub fn control(oid: &str, critical: bool, value: Option<&[u8]>) -> Vec<u8> {
    let mut inner = Vec::new();
    ber::write_header(&mut inner, 0x04, oid.len());
    inner.extend_from_slice(oid.as_bytes());
    if critical {
        inner.extend_from_slice(&[0x01, 0x01, 0xff]);
    }
    if let Some(v) = value {
        ber::write_header(&mut inner, 0x04, v.len());
        inner.extend_from_slice(v);
    }
    let mut out = Vec::with_capacity(inner.len() + 6);
    ber::write_header(&mut out, 0x30, inner.len());
    out.extend_from_slice(&inner);
    out
}

/// A simple BindRequest, encoded by hand so the password is only ever in a buffer that
/// is wiped when dropped.
pub fn simple_bind_request(msgid: i32, dn: &str, password: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut op = zeroize::Zeroizing::new(Vec::with_capacity(dn.len() + password.len() + 16));
    ber::write_integer(&mut op, 3);
    ber::write(&mut op, 0x04, dn.as_bytes());
    ber::write(&mut op, 0x80, password);
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(op.len() + 16));
    ber::write_integer(&mut body, i64::from(msgid));
    ber::write(&mut body, op::BIND_REQUEST, &op);
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(body.len() + 6));
    ber::write(&mut out, 0x30, &body);
    out
}

/// The resultCode of an LDAPResult-shaped response (BindResponse, SearchResultDone, …).
pub fn result_code(msg: &[u8]) -> Result<u32, FrameError> {
    let op = parts(msg)?.op;
    let code = tlv(op.content)?;
    if code.tag != 0x0a || code.content.is_empty() || code.content.len() > 4 {
        return Err(MALFORMED);
    }
    Ok(code
        .content
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// The messageID an AbandonRequest names.
pub fn abandon_target(msg: &[u8]) -> Result<i32, FrameError> {
    let op = parts(msg)?.op;
    // MessageID ::= INTEGER (0 .. maxInt): no sign bit, at most 4 octets.
    if op.tag != 0x50 || op.content.is_empty() || op.content.len() > 4 || op.content[0] & 0x80 != 0
    {
        return Err(MALFORMED);
    }
    Ok(op
        .content
        .iter()
        .fold(0i32, |acc, b| (acc << 8) | i32::from(*b)))
}

/// A search request's base DN (as bytes) and scope (0 base, 1 one level, 2 subtree).
pub fn search_base(msg: &[u8]) -> Result<(&[u8], u8), FrameError> {
    let op = parts(msg)?.op;
    let base = tlv(op.content)?;
    let scope = tlv(&op.content[base.len..])?;
    if base.tag != 0x04 || scope.tag != 0x0a || scope.content.len() != 1 {
        return Err(MALFORMED);
    }
    Ok((base.content, scope.content[0]))
}

/// An extended request's name: always a well-formed numeric OID. The request must be
/// exactly `[APPLICATION 23] { [0] requestName, [1] requestValue OPTIONAL }`: liblber
/// takes the name under any tag and as a C string, so anything else is an error.
pub fn extended_oid(msg: &[u8]) -> Result<&str, FrameError> {
    extended_name(parts(msg)?.op)
}

fn extended_name(request: Tlv<'_>) -> Result<&str, FrameError> {
    if request.tag != op::EXTENDED_REQUEST {
        return Err(MALFORMED);
    }
    let name = tlv(request.content)?;
    if name.tag != 0x80 || !is_numeric_oid(name.content) {
        return Err(BAD_EXTENDED);
    }
    let rest = &request.content[name.len..];
    if !rest.is_empty() {
        let value = tlv(rest)?;
        if value.tag != 0x81 || value.len != rest.len() {
            return Err(MALFORMED);
        }
    }
    std::str::from_utf8(name.content).map_err(|_| BAD_EXTENDED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode;
    use bytes::BytesMut;
    use ldap3_proto::control::LdapControl;
    use ldap3_proto::proto::*;
    use ldap3_proto::LdapCodec;
    use tokio_util::codec::Decoder;

    fn search_msg(base: &str, ctrl: Vec<LdapControl>) -> Vec<u8> {
        let req = LdapSearchRequest {
            base: base.into(),
            scope: LdapSearchScope::OneLevel,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter: LdapFilter::Present("objectClass".into()),
            attrs: vec!["cn".into()],
        };
        encode(LdapMsg::new_with_ctrls(3, LdapOp::SearchRequest(req), ctrl)).to_vec()
    }

    fn decode(b: &[u8]) -> LdapMsg {
        LdapCodec::default()
            .decode(&mut BytesMut::from(b))
            .unwrap()
            .unwrap()
    }

    fn unknown(oid: &str) -> LdapControl {
        LdapControl::Unknown {
            oid: oid.into(),
            criticality: false,
            value: Some(b"v".to_vec()),
        }
    }

    fn unknown_with(oid: &str, value: &[u8]) -> LdapControl {
        LdapControl::Unknown {
            oid: oid.into(),
            criticality: false,
            value: Some(value.to_vec()),
        }
    }

    /// A BER element.
    fn el(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        ber::write_header(&mut v, tag, content.len());
        v.extend_from_slice(content);
        v
    }

    /// A search message whose controls element holds exactly `controls`.
    fn with_raw_controls(controls: &[u8]) -> Vec<u8> {
        let m = search_msg("dc=x", vec![]);
        let p = parts(&m).unwrap();
        el(0x30, &[p.id_and_op, &el(0xa0, controls)].concat())
    }

    fn oids<'a>(cs: &[Control<'a>]) -> Vec<&'a str> {
        cs.iter().map(|c| c.oid).collect()
    }

    #[test]
    fn adds_a_control_where_there_was_none() {
        let m = search_msg("ou=People,dc=example,dc=com", vec![]);
        let pa = control("2.16.840.1.113730.3.4.18", true, Some(b"dn:uid=a,dc=x"));
        let out = with_control(&m, &pa).unwrap();
        let d = decode(&out);
        assert_eq!(d.ctrl.len(), 1);
        assert_eq!(
            controls(&out).unwrap(),
            vec![Control {
                oid: "2.16.840.1.113730.3.4.18",
                critical: true,
                value: Some(b"dn:uid=a,dc=x"),
            }]
        );
        // Everything else is untouched.
        let mut orig = decode(&m);
        orig.ctrl = d.ctrl.clone();
        assert_eq!(orig, d);
    }

    #[test]
    fn puts_its_control_first_and_grows_long_lengths() {
        let long_base = format!("cn={},dc=x", "a".repeat(300));
        let m = search_msg(&long_base, vec![unknown("1.2.3"), unknown("1.2.5")]);
        let out = with_control(&m, &control("1.2.4", false, None)).unwrap();
        assert_eq!(oids(&controls(&out).unwrap()), ["1.2.4", "1.2.3", "1.2.5"]);
        let (base, scope) = search_base(&out).unwrap();
        assert_eq!((base, scope), (long_base.as_bytes(), 1));
        assert_eq!(decode(&out).ctrl.len(), 3);
    }

    #[test]
    fn numeric_oids() {
        let good: &[&[u8]] = &[
            b"0.0",
            b"1.2",
            b"2.16.840.1.113730.3.4.18",
            b"1.3.6.1.4.1.4203.1.11.3",
            b"10.20.0",
        ];
        for oid in good {
            assert!(is_numeric_oid(oid), "{:?}", String::from_utf8_lossy(oid));
        }
        let bad: &[&[u8]] = &[
            b"",
            b"1",
            b"12345",
            b"2.16.840.1.113730.3.4.18\0",
            b"2.16.840.1.113730.3.4.18\0junk",
            b"\x002.16.840.1.113730.3.4.18",
            b"2.16.840.1.113730.3.4.018",
            b"01.2",
            b"1.2.00",
            b"2.16.840.1.113730.3.4.18 ",
            b" 2.16.840.1.113730.3.4.18",
            b"1. 2",
            b"1.2.",
            b".1.2",
            b"1..2",
            b"1.2.3A",
            b"1.2.+3",
            b"1.2.-3",
            b"cn",
            b"supportedControl",
            "1.2.\u{0663}".as_bytes(),
        ];
        for oid in bad {
            assert!(!is_numeric_oid(oid), "{:?}", String::from_utf8_lossy(oid));
        }
    }

    #[test]
    fn controls_are_read_strictly() {
        const PA: &[u8] = b"2.16.840.1.113730.3.4.18";
        let oid = el(0x04, PA);
        let t = el(0x01, &[0xff]);
        let value = el(0x04, b"dn:uid=b,dc=x");
        let read = |critical: bool, value: Option<&'static [u8]>| {
            Ok(vec![Control {
                oid: "2.16.840.1.113730.3.4.18",
                critical,
                value,
            }])
        };
        let v = Some(&b"dn:uid=b,dc=x"[..]);
        type Case<'a> = (&'a str, Vec<u8>, Result<Vec<Control<'a>>, FrameError>);
        let cases: Vec<Case> = vec![
            ("OID alone", el(0x30, &oid), read(false, None)),
            (
                "critical",
                el(0x30, &[&oid[..], &t].concat()),
                read(true, None),
            ),
            (
                "critical, value",
                el(0x30, &[&oid[..], &t, &value].concat()),
                read(true, v),
            ),
            (
                "value only",
                el(0x30, &[&oid[..], &value].concat()),
                read(false, v),
            ),
            (
                "explicit FALSE",
                el(0x30, &[&oid[..], &el(0x01, &[0]), &value].concat()),
                read(false, v),
            ),
            // BER TRUE is any non-zero octet; liblber reads it the same way.
            (
                "TRUE as 0x01",
                el(0x30, &[&oid[..], &el(0x01, &[1])].concat()),
                read(true, None),
            ),
            (
                "long-form lengths read as liblber reads them",
                [
                    &[0x30, 0x82, 0x00, oid.len() as u8 + 7][..],
                    &oid,
                    &[0x01, 0x81, 0x01, 0xff],
                    &[0x04, 0x81, 0x00],
                ]
                .concat(),
                read(true, Some(b"")),
            ),
            (
                "NUL-suffixed OID",
                el(0x30, &[&el(0x04, &[PA, b"\0"].concat())[..], &t].concat()),
                Err(BAD_CONTROL_OID),
            ),
            (
                "OID with a leading zero",
                el(0x30, &el(0x04, b"2.16.840.1.113730.3.4.018")),
                Err(BAD_CONTROL_OID),
            ),
            (
                "OID with a space",
                el(0x30, &el(0x04, b"2.16.840.1.113730.3.4.18 ")),
                Err(BAD_CONTROL_OID),
            ),
            (
                "OID with a letter",
                el(0x30, &el(0x04, b"2.16.840.1.113730.3.4.1B")),
                Err(BAD_CONTROL_OID),
            ),
            ("empty OID", el(0x30, &el(0x04, b"")), Err(BAD_CONTROL_OID)),
            (
                "OID as UTF8String",
                el(0x30, &[&el(0x0c, PA)[..], &t].concat()),
                Err(BAD_CONTROL),
            ),
            ("no OID", el(0x30, &t), Err(BAD_CONTROL)),
            ("empty control", el(0x30, b""), Err(MALFORMED)),
            ("not a SEQUENCE", el(0x31, &oid), Err(BAD_CONTROL)),
            (
                "empty BOOLEAN",
                el(0x30, &[&oid[..], &el(0x01, &[])].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "two-octet BOOLEAN",
                el(0x30, &[&oid[..], &el(0x01, &[0, 1])].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "BOOLEAN twice",
                el(0x30, &[&oid[..], &t, &t].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "criticality as INTEGER",
                el(0x30, &[&oid[..], &el(0x02, &[1])].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "value before criticality",
                el(0x30, &[&oid[..], &value, &t].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "value tagged [0]",
                el(0x30, &[&oid[..], &t, &el(0x80, b"dn:")].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "two values",
                el(0x30, &[&oid[..], &value, &value].concat()),
                Err(BAD_CONTROL),
            ),
            (
                // liblber reads the nested SEQUENCE as a second control.
                "a control nested after the value",
                el(
                    0x30,
                    &[
                        &el(0x04, b"1.2.840.113556.1.4.319")[..],
                        &el(0x30, &[&oid[..], &t, &value].concat()),
                    ]
                    .concat(),
                ),
                Err(BAD_CONTROL),
            ),
            (
                "trailing NUL octet",
                el(0x30, &[&oid[..], &t, &[0]].concat()),
                Err(BAD_CONTROL),
            ),
            (
                "truncated element",
                [&[0x30, 0x20][..], &oid].concat(),
                Err(MALFORMED),
            ),
            (
                "indefinite length",
                [&[0x30, 0x80][..], &oid, &[0, 0]].concat(),
                Err(MALFORMED),
            ),
        ];
        for (what, control, expected) in cases {
            let m = with_raw_controls(&control);
            assert_eq!(controls(&m), expected, "{what}");
            let env = crate::frame::peek(&m, 1 << 20).unwrap().unwrap();
            assert_eq!(check_request(env, &m), expected.map(|_| ()), "{what}");
        }
    }

    #[test]
    fn several_controls_and_an_empty_list() {
        assert_eq!(controls(&with_raw_controls(b"")), Ok(vec![]));
        let two = [
            control("1.2.840.113556.1.4.319", false, Some(b"x")),
            control("2.16.840.1.113730.3.4.18", true, None),
        ]
        .concat();
        let m = with_raw_controls(&two);
        assert_eq!(
            oids(&controls(&m).unwrap()),
            ["1.2.840.113556.1.4.319", "2.16.840.1.113730.3.4.18"]
        );
        // A bad control after a good one spoils the message.
        let m = with_raw_controls(&[&two[..], &el(0x30, &el(0x04, b"1.2\0"))].concat());
        assert_eq!(controls(&m), Err(BAD_CONTROL_OID));
    }

    #[test]
    fn hand_made_bind_request_decodes() {
        for id in [1, 127, 128, 300, i32::MAX] {
            let b = simple_bind_request(id, "cn=svc,dc=x", b"s3cret");
            let m = decode(&b);
            assert_eq!(m.msgid, id);
            let LdapOp::BindRequest(r) = m.op else {
                panic!()
            };
            assert_eq!(r.dn, "cn=svc,dc=x");
            assert_eq!(r.cred, LdapBindCred::Simple("s3cret".into()));
        }
    }

    #[test]
    fn result_and_abandon_are_read() {
        let reply = crate::proto::bind_response(
            4,
            &crate::proto::LdapError::new(LdapResultCode::InvalidCredentials, "no"),
            vec![],
        );
        assert_eq!(result_code(&reply).unwrap(), 49);
        let ab = encode(LdapMsg::new(5, LdapOp::AbandonRequest(300)));
        assert_eq!(abandon_target(&ab).unwrap(), 300);
    }

    fn extended(name: &str) -> Vec<u8> {
        encode(LdapMsg::new(
            9,
            LdapOp::ExtendedRequest(LdapExtendedRequest {
                name: name.into(),
                value: Some(b"v".to_vec()),
            }),
        ))
        .to_vec()
    }

    #[test]
    fn extended_oid_is_read() {
        let m = extended("1.3.6.1.4.1.4203.1.11.3");
        assert_eq!(extended_oid(&m).unwrap(), "1.3.6.1.4.1.4203.1.11.3");
        let env = crate::frame::peek(&m, 1 << 20).unwrap().unwrap();
        assert_eq!(check_request(env, &m), Ok(()));
        assert!(search_base(&m).is_err());
    }

    #[test]
    fn extended_requests_are_read_strictly() {
        const WHOAMI: &[u8] = b"1.3.6.1.4.1.4203.1.11.3";
        // Message 9: an ExtendedRequest with the given content.
        let request = |content: &[u8]| {
            el(
                0x30,
                &[&[0x02, 0x01, 0x09][..], &el(0x77, content)].concat(),
            )
        };
        let cases: Vec<(&str, Vec<u8>, Result<&str, FrameError>)> = vec![
            (
                "name",
                request(&el(0x80, WHOAMI)),
                Ok("1.3.6.1.4.1.4203.1.11.3"),
            ),
            (
                "name and value",
                request(&[el(0x80, WHOAMI), el(0x81, b"")].concat()),
                Ok("1.3.6.1.4.1.4203.1.11.3"),
            ),
            (
                "NUL-suffixed name",
                request(&el(0x80, &[WHOAMI, b"\0"].concat())),
                Err(BAD_EXTENDED),
            ),
            (
                "name with a space",
                request(&el(0x80, b"1.3.6.1.4.1.4203.1.11.1 ")),
                Err(BAD_EXTENDED),
            ),
            (
                "name with a leading zero",
                request(&el(0x80, b"1.3.6.1.4.1.4203.1.11.01")),
                Err(BAD_EXTENDED),
            ),
            ("empty name", request(&el(0x80, b"")), Err(BAD_EXTENDED)),
            // 389 takes the name under these tags too.
            (
                "name as OCTET STRING",
                request(&el(0x04, WHOAMI)),
                Err(BAD_EXTENDED),
            ),
            (
                "name as UTF8String",
                request(&el(0x0c, WHOAMI)),
                Err(BAD_EXTENDED),
            ),
            (
                "value tagged [2]",
                request(&[el(0x80, WHOAMI), el(0x82, b"")].concat()),
                Err(MALFORMED),
            ),
            (
                "element after the value",
                request(&[el(0x80, WHOAMI), el(0x81, b""), el(0x04, b"x")].concat()),
                Err(MALFORMED),
            ),
            ("no name", request(b""), Err(MALFORMED)),
        ];
        for (what, m, expected) in cases {
            assert_eq!(extended_oid(&m), expected, "{what}");
            let env = crate::frame::peek(&m, 1 << 20).unwrap().unwrap();
            assert_eq!(check_request(env, &m), expected.map(|_| ()), "{what}");
        }
    }

    #[test]
    fn truncated_or_trailing_garbage_is_malformed() {
        let m = search_msg("dc=x", vec![unknown("1.2.3")]);
        assert!(controls(&m[..m.len() - 1]).is_err());
        let mut junk = m.clone();
        junk[1] += 2;
        junk.extend_from_slice(&[0x04, 0x00]);
        assert!(controls(&junk).is_err());
        let env = crate::frame::peek(&junk, 1 << 20).unwrap().unwrap();
        assert!(check_request(env, &junk).is_err());
    }

    #[test]
    fn abandon_targets_and_paged_values_are_read_strictly() {
        let abandon = |content: &[u8]| {
            el(
                0x30,
                &[&[0x02, 0x01, 0x07][..], &el(0x50, content)].concat(),
            )
        };
        let check = |m: &[u8]| check_request(crate::frame::peek(m, 1 << 20).unwrap().unwrap(), m);
        assert_eq!(abandon_target(&abandon(&[5])), Ok(5));
        // Non-minimal, as liblber reads it too: the same number.
        assert_eq!(abandon_target(&abandon(&[0, 5])), Ok(5));
        assert_eq!(check(&abandon(&[0, 5])), Ok(()));
        for bad in [&[][..], &[0x80, 0, 0, 0], &[1, 0, 0, 0, 0]] {
            assert!(abandon_target(&abandon(bad)).is_err(), "{bad:?}");
            assert!(check(&abandon(bad)).is_err(), "{bad:?}");
        }
        let paged = |value: &[u8]| search_msg("dc=x", vec![unknown_with(OID_PAGED_RESULTS, value)]);
        let good = el(0x30, &[el(0x02, &[10]), el(0x04, b"7")].concat());
        assert_eq!(paged_cookie(&paged(&good)), Ok(Some(&b"7"[..])));
        assert_eq!(check(&paged(&good)), Ok(()));
        for bad in [
            el(0x30, &[el(0x02, &[10])].concat()),
            el(0x30, &[el(0x04, b"7"), el(0x02, &[10])].concat()),
            el(
                0x30,
                &[el(0x02, &[10]), el(0x04, b"7"), el(0x04, b"")].concat(),
            ),
            [
                el(0x30, &[el(0x02, &[10]), el(0x04, b"7")].concat()),
                vec![0],
            ]
            .concat(),
        ] {
            assert!(paged_cookie(&paged(&bad)).is_err(), "{bad:?}");
            assert!(check(&paged(&bad)).is_err(), "{bad:?}");
        }
    }
}
