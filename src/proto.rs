//! Messages the proxy writes itself: results for requests it answers, and the Notice of
//! Disconnection. Built with ldap3_proto so their encoding is the crate's, not ours.

use crate::frame::op;
use bytes::{Bytes, BytesMut};
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp, LdapResult, LdapResultCode};
use ldap3_proto::{DisconnectionNotice, LdapCodec};
use tokio_util::codec::Encoder;

/// An error that becomes an LDAP result: it carries its result code and diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct LdapError {
    pub code: LdapResultCode,
    pub message: String,
}

impl LdapError {
    /// Success, with an empty diagnostic.
    pub fn success() -> Self {
        LdapError::new(LdapResultCode::Success, "")
    }

    pub fn new(code: LdapResultCode, message: impl Into<String>) -> Self {
        LdapError {
            code,
            message: message.into(),
        }
    }
}

/// Encodes a message for the wire.
pub fn encode(msg: LdapMsg) -> Bytes {
    let mut buf = BytesMut::new();
    // Encoding into memory has no I/O that could fail.
    LdapCodec::default()
        .encode(msg, &mut buf)
        .expect("encoding an LDAP message into memory cannot fail");
    buf.freeze()
}

/// The result message answering a request with protocolOp tag `request`, or `None` for
/// requests that take no response (Unbind, Abandon) or tags that are not requests.
pub fn result_for(msgid: i32, request: u8, err: &LdapError) -> Option<Bytes> {
    let res = result(err);
    let op = match op::response_to(request)? {
        op::BIND_RESPONSE => LdapOp::BindResponse(ldap3_proto::proto::LdapBindResponse {
            res,
            saslcreds: None,
        }),
        op::SEARCH_RESULT_DONE => LdapOp::SearchResultDone(res),
        op::MODIFY_RESPONSE => LdapOp::ModifyResponse(res),
        op::ADD_RESPONSE => LdapOp::AddResponse(res),
        op::DEL_RESPONSE => LdapOp::DelResponse(res),
        op::MODDN_RESPONSE => LdapOp::ModifyDNResponse(res),
        op::COMPARE_RESPONSE => LdapOp::CompareResult(res),
        _ => LdapOp::ExtendedResponse(LdapExtendedResponse {
            res,
            name: None,
            value: None,
        }),
    };
    Some(encode(LdapMsg::new(msgid, op)))
}

/// A BindResponse with `code`, `message` and response controls.
pub fn bind_response(msgid: i32, err: &LdapError, controls: Vec<LdapControl>) -> Bytes {
    encode(LdapMsg::new_with_ctrls(
        msgid,
        LdapOp::BindResponse(ldap3_proto::proto::LdapBindResponse {
            res: result(err),
            saslcreds: None,
        }),
        controls,
    ))
}

/// An ExtendedResponse without a responseName (as for WhoAmI and Password Modify).
pub fn extended_response(msgid: i32, err: &LdapError, value: Option<Vec<u8>>) -> Bytes {
    encode(LdapMsg::new(
        msgid,
        LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: result(err),
            name: None,
            value,
        }),
    ))
}

/// A response control the crate does not model, with its value bytes.
pub fn response_control(oid: &str, value: &[u8]) -> LdapControl {
    LdapControl::Unknown {
        oid: oid.to_owned(),
        criticality: false,
        value: Some(value.to_vec()),
    }
}

fn result(err: &LdapError) -> LdapResult {
    LdapResult {
        code: err.code.clone(),
        matcheddn: String::new(),
        message: err.message.clone(),
        referral: Vec::new(),
    }
}

/// A Notice of Disconnection (RFC 4511 §4.4.1): the last thing sent before the proxy
/// closes a client connection.
pub fn notice_of_disconnection(err: &LdapError) -> Bytes {
    encode(DisconnectionNotice::gen_response(
        err.code.clone(),
        &err.message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use ldap3_proto::LdapCodec;
    use tokio_util::codec::Decoder;

    fn decode(b: &Bytes) -> LdapMsg {
        LdapCodec::default()
            .decode(&mut BytesMut::from(&b[..]))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn results_match_their_requests() {
        let err = LdapError::new(LdapResultCode::Unavailable, "backend down");
        for req in [
            op::BIND_REQUEST,
            op::SEARCH_REQUEST,
            op::MODIFY_REQUEST,
            op::ADD_REQUEST,
            op::DEL_REQUEST,
            op::MODDN_REQUEST,
            op::COMPARE_REQUEST,
            op::EXTENDED_REQUEST,
        ] {
            let b = result_for(7, req, &err).unwrap();
            let env = frame::peek(&b, 1 << 20).unwrap().unwrap();
            assert_eq!(Some(env.op), op::response_to(req));
            assert_eq!(env.msgid, 7);
            assert_eq!(env.len, b.len());
        }
        assert!(result_for(7, op::ABANDON_REQUEST, &err).is_none());
        assert!(result_for(7, op::UNBIND_REQUEST, &err).is_none());
    }

    #[test]
    fn notice_is_unsolicited_extended_response() {
        let b = notice_of_disconnection(&LdapError::new(LdapResultCode::ProtocolError, "bad"));
        let m = decode(&b);
        assert_eq!(m.msgid, 0);
        let LdapOp::ExtendedResponse(r) = m.op else {
            panic!("not an extended response")
        };
        assert_eq!(r.name.as_deref(), Some("1.3.6.1.4.1.1466.20036"));
        assert_eq!(r.res.code, LdapResultCode::ProtocolError);
    }
}
