//! The LDAPMessage envelope: just enough BER to find where a message ends, its messageID
//! and its protocolOp tag. Relayed traffic is never decoded further, so controls and
//! operations the proxy does not know pass through byte for byte.

use crate::ber;

/// protocolOp tags (RFC 4511 §4.2–4.14, APPLICATION class).
pub mod op {
    pub const BIND_REQUEST: u8 = 0x60;
    pub const BIND_RESPONSE: u8 = 0x61;
    pub const UNBIND_REQUEST: u8 = 0x42;
    pub const SEARCH_REQUEST: u8 = 0x63;
    pub const SEARCH_RESULT_ENTRY: u8 = 0x64;
    pub const SEARCH_RESULT_DONE: u8 = 0x65;
    pub const SEARCH_RESULT_REFERENCE: u8 = 0x73;
    pub const MODIFY_REQUEST: u8 = 0x66;
    pub const MODIFY_RESPONSE: u8 = 0x67;
    pub const ADD_REQUEST: u8 = 0x68;
    pub const ADD_RESPONSE: u8 = 0x69;
    pub const DEL_REQUEST: u8 = 0x4a;
    pub const DEL_RESPONSE: u8 = 0x6b;
    pub const MODDN_REQUEST: u8 = 0x6c;
    pub const MODDN_RESPONSE: u8 = 0x6d;
    pub const COMPARE_REQUEST: u8 = 0x6e;
    pub const COMPARE_RESPONSE: u8 = 0x6f;
    pub const ABANDON_REQUEST: u8 = 0x50;
    pub const EXTENDED_REQUEST: u8 = 0x77;
    pub const EXTENDED_RESPONSE: u8 = 0x78;
    pub const INTERMEDIATE_RESPONSE: u8 = 0x79;

    /// The response tag that completes a request, or `None` for requests without a
    /// response (Unbind, Abandon) and tags that are not requests.
    pub fn response_to(request: u8) -> Option<u8> {
        Some(match request {
            BIND_REQUEST => BIND_RESPONSE,
            SEARCH_REQUEST => SEARCH_RESULT_DONE,
            MODIFY_REQUEST => MODIFY_RESPONSE,
            ADD_REQUEST => ADD_RESPONSE,
            DEL_REQUEST => DEL_RESPONSE,
            MODDN_REQUEST => MODDN_RESPONSE,
            COMPARE_REQUEST => COMPARE_RESPONSE,
            EXTENDED_REQUEST => EXTENDED_RESPONSE,
            _ => return None,
        })
    }

    /// Whether a response ends its operation (search entries, references and
    /// intermediate responses do not).
    pub fn is_final_response(tag: u8) -> bool {
        !matches!(
            tag,
            SEARCH_RESULT_ENTRY | SEARCH_RESULT_REFERENCE | INTERMEDIATE_RESPONSE
        )
    }

    /// A short name for logs and metrics labels.
    pub fn name(tag: u8) -> &'static str {
        match tag {
            BIND_REQUEST => "bind",
            UNBIND_REQUEST => "unbind",
            SEARCH_REQUEST => "search",
            MODIFY_REQUEST => "modify",
            ADD_REQUEST => "add",
            DEL_REQUEST => "delete",
            MODDN_REQUEST => "modrdn",
            COMPARE_REQUEST => "compare",
            ABANDON_REQUEST => "abandon",
            EXTENDED_REQUEST => "extended",
            _ => "other",
        }
    }
}

/// What the envelope of one LDAPMessage says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub msgid: i32,
    /// The protocolOp's BER tag byte.
    pub op: u8,
    /// Length of the whole message, header included.
    pub len: usize,
}

/// Why bytes cannot be an LDAPMessage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed LDAP message: {0}")]
    Malformed(&'static str),
}

impl From<ber::Malformed> for FrameError {
    fn from(m: ber::Malformed) -> Self {
        FrameError::Malformed(m.0)
    }
}

/// Reads the envelope at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed to see the messageID and protocolOp tag;
/// the message itself may still be incomplete (compare `buf.len()` with [`Envelope::len`]).
/// A message longer than `limit` is refused as soon as its length is known.
pub fn peek(buf: &[u8], limit: usize) -> Result<Option<Envelope>, FrameError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    if tag != 0x30 {
        return Err(FrameError::Malformed("not a SEQUENCE"));
    }
    let Some((body_len, header)) = ber::length(&buf[1..])? else {
        return Ok(None);
    };
    let header = header + 1;
    let len = header
        .checked_add(body_len)
        .ok_or(FrameError::Malformed("length overflow"))?;
    if len > limit {
        return Err(FrameError::TooLarge { size: len, limit });
    }
    let body = &buf[header..];
    let avail = body.len().min(body_len);
    let body = &body[..avail];

    // messageID: INTEGER (0 .. 2^31-1), at most 4 content octets.
    if body.len() < 2 {
        return incomplete_or(avail, body_len, "message too short");
    }
    if body[0] != 0x02 {
        return Err(FrameError::Malformed("messageID is not an INTEGER"));
    }
    let id_len = body[1] as usize;
    if id_len == 0 || id_len > 4 {
        return Err(FrameError::Malformed("bad messageID length"));
    }
    if body.len() < 2 + id_len + 1 {
        return incomplete_or(avail, body_len, "message too short");
    }
    let id_bytes = &body[2..2 + id_len];
    if id_bytes[0] & 0x80 != 0 {
        return Err(FrameError::Malformed("negative messageID"));
    }
    let msgid = id_bytes
        .iter()
        .fold(0i32, |acc, b| (acc << 8) | i32::from(*b));
    Ok(Some(Envelope {
        msgid,
        op: body[2 + id_len],
        len,
    }))
}

/// Asks for more bytes unless the message is already complete, in which case it is
/// truncated inside its own envelope.
fn incomplete_or(
    avail: usize,
    body_len: usize,
    what: &'static str,
) -> Result<Option<Envelope>, FrameError> {
    if avail >= body_len {
        Err(FrameError::Malformed(what))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An anonymous bind request, messageID 1.
    const BIND: &[u8] = &[
        0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00,
    ];

    #[test]
    fn whole_message() {
        let e = peek(BIND, 1024).unwrap().unwrap();
        assert_eq!(
            e,
            Envelope {
                msgid: 1,
                op: op::BIND_REQUEST,
                len: BIND.len()
            }
        );
    }

    #[test]
    fn every_prefix_asks_for_more_or_knows_the_envelope() {
        for cut in 0..BIND.len() {
            match peek(&BIND[..cut], 1024).unwrap() {
                None => assert!(cut < 6, "cut {cut}"),
                Some(e) => assert_eq!(e.len, BIND.len()),
            }
        }
    }

    #[test]
    fn long_form_length_and_multibyte_id() {
        let mut m = vec![0x30, 0x82, 0x01, 0x00, 0x02, 0x03, 0x01, 0x00, 0x00, 0x63];
        m.resize(4 + 256, 0);
        let e = peek(&m, 1 << 20).unwrap().unwrap();
        assert_eq!((e.msgid, e.op, e.len), (65536, op::SEARCH_REQUEST, 260));
    }

    #[test]
    fn too_large_is_refused_from_the_header_alone() {
        let m = [0x30, 0x84, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            peek(&m, 2 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_envelopes() {
        let bad: &[&[u8]] = &[
            &[0x04, 0x00],                         // not a SEQUENCE
            &[0x30, 0x80],                         // indefinite length
            &[0x30, 0x85, 1, 1, 1, 1, 1],          // 5 length octets
            &[0x30, 0x03, 0x04, 0x01, 0x01],       // messageID not INTEGER
            &[0x30, 0x03, 0x02, 0x00, 0x60],       // empty messageID
            &[0x30, 0x04, 0x02, 0x01, 0xff, 0x60], // negative messageID
            &[0x30, 0x02, 0x02, 0x01],             // no protocolOp within the message
            &[0x30, 0x03, 0x02, 0x05, 0x01],       // messageID of 5 octets
        ];
        for m in bad {
            assert!(
                matches!(peek(m, 1024), Err(FrameError::Malformed(_))),
                "{m:02x?}"
            );
        }
    }

    #[test]
    fn response_mapping() {
        assert_eq!(
            op::response_to(op::SEARCH_REQUEST),
            Some(op::SEARCH_RESULT_DONE)
        );
        assert_eq!(op::response_to(op::ABANDON_REQUEST), None);
        assert!(!op::is_final_response(op::SEARCH_RESULT_ENTRY));
        assert!(op::is_final_response(op::EXTENDED_RESPONSE));
    }
}
