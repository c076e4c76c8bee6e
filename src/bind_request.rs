//! BindRequests, read completely or refused (DESIGN §7 "decide or refuse").
//!
//! 389 reads requests with liblber, which accepts more than one spelling of a request
//! (LDAPv2 binds, other tags for the name, extra elements, C strings cut at a NUL). A
//! bind the proxy forwards is therefore never the client's bytes: it is this module's
//! own encoding of what [`parse`] read, so the directory can only act on what the proxy
//! understood. Anything [`parse`] cannot read completely is refused.

use crate::ber::{self, Reader};
use crate::frame::{op, FrameError};
use crate::message::{self, Control};
use zeroize::Zeroizing;

/// How a bind authenticates.
#[derive(PartialEq, Eq)]
pub enum Credentials<'a> {
    /// Simple: the password (empty for an anonymous or unauthenticated bind).
    Simple(&'a [u8]),
    /// SASL: the mechanism as sent, and the credentials if any.
    Sasl {
        mechanism: &'a [u8],
        credentials: Option<&'a [u8]>,
    },
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Simple(_) => f.write_str("Simple(********)"),
            Credentials::Sasl { mechanism, .. } => f
                .debug_struct("Sasl")
                .field("mechanism", &String::from_utf8_lossy(mechanism))
                .finish_non_exhaustive(),
        }
    }
}

/// A BindRequest as the proxy read it.
#[derive(Debug, PartialEq, Eq)]
pub struct BindRequest<'a> {
    pub msgid: i32,
    pub version: i64,
    /// The name as sent: the client's spelling of a DN, not yet resolved.
    pub name: &'a [u8],
    pub credentials: Credentials<'a>,
    pub controls: Vec<Control<'a>>,
}

/// Reads a whole LDAPMessage holding a BindRequest (RFC 4511 §4.1.1, §4.2), strictly.
pub fn parse(msg: &[u8]) -> Result<BindRequest<'_>, FrameError> {
    let mut outer = Reader::new(msg);
    let envelope = outer.expect(0x30)?;
    outer.end()?;
    let mut body = Reader::new(envelope);
    let msgid = ber::integer(body.expect(0x02)?)?;
    let msgid = i32::try_from(msgid)
        .ok()
        .filter(|id| *id >= 0)
        .ok_or(FrameError::Malformed("bad messageID"))?;
    let mut req = Reader::new(body.expect(op::BIND_REQUEST)?);
    body.optional(0xa0)?;
    body.end()?;
    let controls = message::controls(msg)?;

    let version = ber::integer(req.expect(0x02)?)?;
    let name = req.expect(0x04)?;
    let auth = req.read()?;
    let credentials = match auth.tag {
        0x80 => Credentials::Simple(auth.content),
        0xa3 => {
            let mut sasl = Reader::new(auth.content);
            let mechanism = sasl.expect(0x04)?;
            let credentials = sasl.optional(0x04)?;
            sasl.end()?;
            Credentials::Sasl {
                mechanism,
                credentials,
            }
        }
        _ => return Err(FrameError::Malformed("unknown bind authentication choice")),
    };
    req.end()?;
    Ok(BindRequest {
        msgid,
        version,
        name,
        credentials,
        controls,
    })
}

impl BindRequest<'_> {
    /// Whether the request carries a control with this OID.
    pub fn has_control(&self, oid: &str) -> bool {
        self.controls.iter().any(|c| c.oid == oid)
    }

    /// The proxy's own encoding of this request (shortest lengths, the elements it read
    /// and nothing else), with `mechanism` in place of the SASL mechanism as sent.
    /// Wiped when dropped: it holds the password.
    pub fn encode(&self, mechanism: Option<&str>) -> Zeroizing<Vec<u8>> {
        let mut auth = Zeroizing::new(Vec::new());
        match &self.credentials {
            Credentials::Simple(password) => ber::write(&mut auth, 0x80, password),
            Credentials::Sasl {
                mechanism: sent,
                credentials,
            } => {
                let mut sasl = Zeroizing::new(Vec::new());
                ber::write(&mut sasl, 0x04, mechanism.map_or(*sent, str::as_bytes));
                if let Some(c) = credentials {
                    ber::write(&mut sasl, 0x04, c);
                }
                ber::write(&mut auth, 0xa3, &sasl);
            }
        }
        let mut req = Zeroizing::new(Vec::new());
        ber::write_integer(&mut req, self.version);
        ber::write(&mut req, 0x04, self.name);
        req.extend_from_slice(&auth);
        let mut body = Zeroizing::new(Vec::new());
        ber::write_integer(&mut body, i64::from(self.msgid));
        ber::write(&mut body, op::BIND_REQUEST, &req);
        if !self.controls.is_empty() {
            let mut list = Vec::new();
            for c in &self.controls {
                let mut one = Vec::new();
                ber::write(&mut one, 0x04, c.oid.as_bytes());
                if c.critical {
                    ber::write(&mut one, 0x01, &[0xff]);
                }
                if let Some(v) = c.value {
                    ber::write(&mut one, 0x04, v);
                }
                ber::write(&mut list, 0x30, &one);
            }
            ber::write(&mut body, 0xa0, &list);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 6));
        ber::write(&mut out, 0x30, &body);
        out
    }
}

/// A SASL mechanism name as RFC 4422 §3.1 spells it (1–20 of `A-Z 0-9 - _`), upper-cased;
/// `None` for anything else (a NUL, spaces, other characters).
pub fn sasl_mechanism(sent: &[u8]) -> Option<String> {
    let ok = (1..=20).contains(&sent.len())
        && sent
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    ok.then(|| String::from_utf8_lossy(sent).to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode;
    use ldap3_proto::proto::{LdapBindCred, LdapBindRequest, LdapMsg, LdapOp, SaslCredentials};

    fn simple(dn: &str, pw: &str) -> Vec<u8> {
        encode(LdapMsg::new(
            7,
            LdapOp::BindRequest(LdapBindRequest {
                version: 3,
                dn: dn.into(),
                cred: LdapBindCred::Simple(pw.into()),
            }),
        ))
        .to_vec()
    }

    #[test]
    fn reads_a_simple_bind_and_encodes_it_back_byte_for_byte() {
        let m = simple("uid=a,dc=x", "pw");
        let b = parse(&m).unwrap();
        assert_eq!((b.msgid, b.version, b.name), (7, 3, &b"uid=a,dc=x"[..]));
        assert_eq!(b.credentials, Credentials::Simple(b"pw"));
        assert_eq!(&b.encode(None)[..], &m[..]);
    }

    #[test]
    fn reads_sasl_and_replaces_the_mechanism() {
        let m = encode(LdapMsg::new(
            2,
            LdapOp::BindRequest(LdapBindRequest {
                version: 3,
                dn: String::new(),
                cred: LdapBindCred::SASL(SaslCredentials {
                    mechanism: "external".into(),
                    credentials: vec![],
                }),
            }),
        ));
        let b = parse(&m).unwrap();
        let Credentials::Sasl { mechanism, .. } = b.credentials else {
            panic!("not SASL")
        };
        assert_eq!(sasl_mechanism(mechanism).as_deref(), Some("EXTERNAL"));
        let again = b.encode(Some("EXTERNAL"));
        let b2 = parse(&again).unwrap();
        assert!(matches!(
            b2.credentials,
            Credentials::Sasl {
                mechanism: b"EXTERNAL",
                ..
            }
        ));
    }

    #[test]
    fn odd_spellings_are_refused() {
        let m = simple("uid=a,dc=x", "pw");
        // Name tagged UTF8String instead of OCTET STRING.
        let mut utf8 = m.clone();
        let at = utf8.windows(2).position(|w| w == [0x04, 10]).unwrap();
        utf8[at] = 0x0c;
        // An extra element inside the BindRequest.
        let mut extra = m.clone();
        extra[1] += 2;
        extra[6] += 2;
        extra.extend_from_slice(&[0x04, 0x00]);
        // Constructed simple credentials.
        let mut constructed = m.clone();
        let n = constructed.len();
        constructed[n - 4] = 0xa0;
        // Trailing bytes after the message's SEQUENCE.
        let mut trailing = m.clone();
        trailing.push(0);
        for bad in [utf8, extra, constructed, trailing] {
            assert!(parse(&bad).is_err(), "{bad:02x?}");
        }
        assert!(parse(&m[..m.len() - 1]).is_err());
    }

    #[test]
    fn non_minimal_lengths_read_for_what_they_say() {
        // version 3 as a two-octet INTEGER, the name with a long-form length.
        let m = [
            0x30, 0x14, 0x02, 0x01, 0x01, 0x60, 0x0f, 0x02, 0x02, 0x00, 0x03, 0x04, 0x81, 0x04,
            b'c', b'n', b'=', b'a', 0x80, 0x02, b'p', b'w',
        ];
        let b = parse(&m).unwrap();
        assert_eq!((b.version, b.name), (3, &b"cn=a"[..]));
        let canonical = b.encode(None);
        assert!(canonical.len() < m.len());
        assert_eq!(parse(&canonical).unwrap(), b);
    }

    #[test]
    fn controls_are_read_strictly() {
        let ctl = |oid: &[u8], tail: &[u8]| {
            let mut c = vec![
                0x30,
                (2 + oid.len() + tail.len()) as u8,
                0x04,
                oid.len() as u8,
            ];
            c.extend_from_slice(oid);
            c.extend_from_slice(tail);
            let mut m = simple("uid=a,dc=x", "pw");
            m.push(0xa0);
            m.push(c.len() as u8);
            m.extend_from_slice(&c);
            m[1] += 2 + c.len() as u8;
            m
        };
        let good = ctl(b"2.16.840.1.113730.3.4.16", &[0x01, 0x01, 0xff]);
        let b = parse(&good).unwrap();
        assert_eq!(
            b.controls,
            vec![Control {
                oid: "2.16.840.1.113730.3.4.16",
                critical: true,
                value: None
            }]
        );
        assert_eq!(&b.encode(None)[..], &good[..]);
        for bad in [
            ctl(b"2.16.840.1.113730.3.4.16\0", &[]),
            ctl(b"2.16.840.01.113730", &[]),
            ctl(b"1", &[]),
            ctl(b"1.2", &[0x04, 0x00, 0x01, 0x01, 0xff]), // value before criticality
            ctl(b"1.2", &[0x04, 0x00, 0x04, 0x00]),       // two values
            ctl(b"1.2", &[0x01, 0x02, 0x00, 0xff]),       // two-octet BOOLEAN
        ] {
            assert!(parse(&bad).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn sasl_mechanism_names() {
        assert_eq!(
            sasl_mechanism(b"scram-sha-256").as_deref(),
            Some("SCRAM-SHA-256")
        );
        for bad in [
            &b""[..],
            b"PLAIN\0",
            b"PLAIN ",
            b"DIGEST MD5",
            b"ABCDEFGHIJKLMNOPQRSTU",
        ] {
            assert_eq!(sasl_mechanism(bad), None, "{bad:?}");
        }
    }
}
