//! Byte-level reading and rewriting of whole relayed LDAP messages: the few facts the
//! session needs about a request (its controls, a search base, an extended operation's
//! OID) and adding the Proxied Authorization control, without decoding the rest, so
//! everything the proxy does not touch stays byte for byte as the client sent it.

use crate::frame::FrameError;

/// One BER element: its tag byte and content.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// Bytes the whole element takes.
    len: usize,
}

const MALFORMED: FrameError = FrameError::Malformed("bad element inside the message");

/// Reads the complete element at the start of `buf` (single-octet tags, definite lengths).
fn tlv(buf: &[u8]) -> Result<Tlv<'_>, FrameError> {
    let (&tag, rest) = buf.split_first().ok_or(MALFORMED)?;
    if tag & 0x1f == 0x1f {
        return Err(MALFORMED);
    }
    let (&first, rest) = rest.split_first().ok_or(MALFORMED)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(MALFORMED);
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    let end = hdr.checked_add(len).ok_or(MALFORMED)?;
    if buf.len() < end {
        return Err(MALFORMED);
    }
    Ok(Tlv {
        tag,
        content: &buf[hdr..end],
        len: end,
    })
}

fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The parts of an LDAPMessage: messageID and protocolOp elements, and the content of
/// the controls element if present.
struct Parts<'a> {
    id_and_op: &'a [u8],
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
        op,
        controls,
    })
}

/// The OIDs of the controls a message carries.
pub fn control_oids(msg: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut oids = Vec::new();
    let Some(mut rest) = parts(msg)?.controls else {
        return Ok(oids);
    };
    while !rest.is_empty() {
        let control = tlv(rest)?;
        let oid = tlv(control.content)?;
        if oid.tag != 0x04 {
            return Err(MALFORMED);
        }
        oids.push(oid.content);
        rest = &rest[control.len..];
    }
    Ok(oids)
}

/// `msg` with `control` (a complete DER Control) appended to its controls.
pub fn with_control(msg: &[u8], control: &[u8]) -> Result<Vec<u8>, FrameError> {
    let p = parts(msg)?;
    let existing = p.controls.unwrap_or_default();
    let controls_len = existing.len() + control.len();
    let mut controls = Vec::with_capacity(controls_len + 6);
    push_header(&mut controls, 0xa0, controls_len);
    controls.extend_from_slice(existing);
    controls.extend_from_slice(control);
    let body_len = p.id_and_op.len() + controls.len();
    let mut out = Vec::with_capacity(body_len + 6);
    push_header(&mut out, 0x30, body_len);
    out.extend_from_slice(p.id_and_op);
    out.extend_from_slice(&controls);
    Ok(out)
}

/// A DER-encoded control.
pub fn control(oid: &str, critical: bool, value: Option<&[u8]>) -> Vec<u8> {
    let mut inner = Vec::new();
    push_header(&mut inner, 0x04, oid.len());
    inner.extend_from_slice(oid.as_bytes());
    if critical {
        inner.extend_from_slice(&[0x01, 0x01, 0xff]);
    }
    if let Some(v) = value {
        push_header(&mut inner, 0x04, v.len());
        inner.extend_from_slice(v);
    }
    let mut out = Vec::with_capacity(inner.len() + 6);
    push_header(&mut out, 0x30, inner.len());
    out.extend_from_slice(&inner);
    out
}

/// A simple BindRequest, encoded by hand so the password is only ever in a buffer that
/// is wiped when dropped.
pub fn simple_bind_request(msgid: i32, dn: &str, password: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let id = msgid.to_be_bytes();
    let skip = id.iter().take_while(|b| **b == 0).count().min(3);
    let id = &id[skip..];
    let id = if id[0] & 0x80 != 0 {
        [&[0u8][..], id].concat()
    } else {
        id.to_vec()
    };
    let mut op = zeroize::Zeroizing::new(Vec::with_capacity(dn.len() + password.len() + 16));
    op.extend_from_slice(&[0x02, 0x01, 0x03]);
    push_header(&mut op, 0x04, dn.len());
    op.extend_from_slice(dn.as_bytes());
    push_header(&mut op, 0x80, password.len());
    op.extend_from_slice(password);
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(op.len() + 16));
    push_header(&mut body, 0x02, id.len());
    body.extend_from_slice(&id);
    push_header(&mut body, 0x60, op.len());
    body.extend_from_slice(&op);
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(body.len() + 6));
    push_header(&mut out, 0x30, body.len());
    out.extend_from_slice(&body);
    out
}

/// How a BindRequest authenticates.
#[derive(Debug, PartialEq, Eq)]
pub enum BindAuth<'a> {
    Simple(&'a [u8]),
    /// SASL or an authentication choice LDAP does not define.
    Other,
}

/// The parts of a BindRequest the bind decision needs.
#[derive(Debug, PartialEq, Eq)]
pub struct BindShape<'a> {
    pub version: u8,
    pub dn: &'a [u8],
    pub auth: BindAuth<'a>,
}

/// Reads a BindRequest at byte level: passwords are octet strings and need not be UTF-8,
/// so no decoder that insists on text may stand between a bind and its decision.
pub fn bind_request(msg: &[u8]) -> Result<BindShape<'_>, FrameError> {
    let op = parts(msg)?.op;
    let version = tlv(op.content)?;
    let name = tlv(&op.content[version.len..])?;
    let auth = tlv(&op.content[version.len + name.len..])?;
    if op.tag != 0x60 || version.tag != 0x02 || version.content.len() != 1 || name.tag != 0x04 {
        return Err(MALFORMED);
    }
    Ok(BindShape {
        version: version.content[0],
        dn: name.content,
        auth: match auth.tag {
            0x80 => BindAuth::Simple(auth.content),
            _ => BindAuth::Other,
        },
    })
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
    if op.tag != 0x50 || op.content.is_empty() || op.content.len() > 4 {
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

/// An extended request's OID.
pub fn extended_oid(msg: &[u8]) -> Result<&[u8], FrameError> {
    let op = parts(msg)?.op;
    let name = tlv(op.content)?;
    if name.tag != 0x80 {
        return Err(MALFORMED);
    }
    Ok(name.content)
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

    #[test]
    fn adds_a_control_where_there_was_none() {
        let m = search_msg("ou=People,dc=example,dc=com", vec![]);
        let pa = control("2.16.840.1.113730.3.4.18", true, Some(b"dn:uid=a,dc=x"));
        let out = with_control(&m, &pa).unwrap();
        let d = decode(&out);
        assert_eq!(d.ctrl.len(), 1);
        assert_eq!(
            control_oids(&out).unwrap(),
            vec![&b"2.16.840.1.113730.3.4.18"[..]]
        );
        // Everything else is untouched.
        let mut orig = decode(&m);
        orig.ctrl = d.ctrl.clone();
        assert_eq!(orig, d);
    }

    #[test]
    fn appends_to_existing_controls_and_grows_long_lengths() {
        let long_base = format!("cn={},dc=x", "a".repeat(300));
        let m = search_msg(&long_base, vec![unknown("1.2.3")]);
        let out = with_control(&m, &control("1.2.4", false, None)).unwrap();
        assert_eq!(
            control_oids(&out).unwrap(),
            vec![&b"1.2.3"[..], &b"1.2.4"[..]]
        );
        let (base, scope) = search_base(&out).unwrap();
        assert_eq!((base, scope), (long_base.as_bytes(), 1));
        assert_eq!(decode(&out).ctrl.len(), 2);
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
    fn bind_and_abandon_are_read() {
        let b = simple_bind_request(4, "uid=a,dc=x", &[0xff, 0x00, 0x41]);
        let shape = bind_request(&b).unwrap();
        assert_eq!(
            shape,
            BindShape {
                version: 3,
                dn: b"uid=a,dc=x",
                auth: BindAuth::Simple(&[0xff, 0x00, 0x41])
            }
        );
        let sasl = encode(LdapMsg::new(
            1,
            LdapOp::BindRequest(LdapBindRequest {
                version: 3,
                dn: String::new(),
                cred: LdapBindCred::SASL(SaslCredentials {
                    mechanism: "EXTERNAL".into(),
                    credentials: vec![],
                }),
            }),
        ));
        assert_eq!(bind_request(&sasl).unwrap().auth, BindAuth::Other);
        let reply = crate::proto::bind_response(
            4,
            &crate::proto::LdapError::new(LdapResultCode::InvalidCredentials, "no"),
            vec![],
        );
        assert_eq!(result_code(&reply).unwrap(), 49);
        let ab = encode(LdapMsg::new(5, LdapOp::AbandonRequest(300)));
        assert_eq!(abandon_target(&ab).unwrap(), 300);
    }

    #[test]
    fn extended_oid_is_read() {
        let m = encode(LdapMsg::new(
            9,
            LdapOp::ExtendedRequest(LdapExtendedRequest {
                name: "1.3.6.1.4.1.4203.1.11.3".into(),
                value: None,
            }),
        ));
        assert_eq!(extended_oid(&m).unwrap(), b"1.3.6.1.4.1.4203.1.11.3");
        assert!(search_base(&m).is_err());
    }

    #[test]
    fn truncated_or_trailing_garbage_is_malformed() {
        let m = search_msg("dc=x", vec![unknown("1.2.3")]);
        assert!(control_oids(&m[..m.len() - 1]).is_err());
        let mut junk = m.clone();
        junk[1] += 2;
        junk.extend_from_slice(&[0x04, 0x00]);
        assert!(control_oids(&junk).is_err());
    }
}
