//! Messages the proxy writes itself: results for requests it answers, and the Notice of
//! Disconnection. Built with ldap3_proto so their encoding is the crate's, not ours.
//!
//! Also the one spelling of a result code ([`code_name`], [`code_number`],
//! [`code_text`]) for logs, metrics labels, `explain` and diagnostics.

use crate::frame::op;
use bytes::{Bytes, BytesMut};
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp, LdapResult, LdapResultCode};
use ldap3_proto::{DisconnectionNotice, LdapCodec};
use tokio_util::codec::Encoder;

/// An error that becomes an LDAP result: it carries its result code and diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code_text(.code))]
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

/// A result code's name as RFC 4511 §4.1.9 (and the RFCs that added codes) writes it:
/// `invalidCredentials`, `unwillingToPerform`. The only spelling of a result code in logs,
/// metrics labels and the proxy's own diagnostics, so one grep finds them all.
pub fn code_name(code: &LdapResultCode) -> &'static str {
    use LdapResultCode as C;
    match code {
        C::Success => "success",
        C::OperationsError => "operationsError",
        C::ProtocolError => "protocolError",
        C::TimeLimitExceeded => "timeLimitExceeded",
        C::SizeLimitExceeded => "sizeLimitExceeded",
        C::CompareFalse => "compareFalse",
        C::CompareTrue => "compareTrue",
        C::AuthMethodNotSupported => "authMethodNotSupported",
        C::StrongerAuthRequired => "strongerAuthRequired",
        C::Referral => "referral",
        C::AdminLimitExceeded => "adminLimitExceeded",
        C::UnavailableCriticalExtension => "unavailableCriticalExtension",
        C::ConfidentialityRequired => "confidentialityRequired",
        C::SaslBindInProgress => "saslBindInProgress",
        C::NoSuchAttribute => "noSuchAttribute",
        C::UndefinedAttributeType => "undefinedAttributeType",
        C::InappropriateMatching => "inappropriateMatching",
        C::ConstraintViolation => "constraintViolation",
        C::AttributeOrValueExists => "attributeOrValueExists",
        C::InvalidAttributeSyntax => "invalidAttributeSyntax",
        C::NoSuchObject => "noSuchObject",
        C::AliasProblem => "aliasProblem",
        C::InvalidDNSyntax => "invalidDNSyntax",
        C::AliasDereferencingProblem => "aliasDereferencingProblem",
        C::InappropriateAuthentication => "inappropriateAuthentication",
        C::InvalidCredentials => "invalidCredentials",
        C::InsufficentAccessRights => "insufficientAccessRights",
        C::Busy => "busy",
        C::Unavailable => "unavailable",
        C::UnwillingToPerform => "unwillingToPerform",
        C::LoopDetect => "loopDetect",
        C::NamingViolation => "namingViolation",
        C::ObjectClassViolation => "objectClassViolation",
        C::NotAllowedOnNonLeaf => "notAllowedOnNonLeaf",
        C::NotALlowedOnRDN => "notAllowedOnRDN",
        C::EntryAlreadyExists => "entryAlreadyExists",
        C::ObjectClassModsProhibited => "objectClassModsProhibited",
        C::AffectsMultipleDSAs => "affectsMultipleDSAs",
        C::VirtualListViewError => "virtualListViewError",
        C::Other => "other",
        C::Canceled => "canceled",
        C::NoSuchOperation => "noSuchOperation",
        C::TooLate => "tooLate",
        C::CannotCancel => "cannotCancel",
        C::AssertionFailed => "assertionFailed",
        C::AuthorizationError => "authorizationDenied",
        C::EsyncRefreshRequired => "e-syncRefreshRequired",
    }
}

/// A result code's number on the wire (`invalidCredentials` is 49).
pub fn code_number(code: &LdapResultCode) -> u32 {
    // The enum's discriminants are the protocol's numbers, all below 2^31.
    code.clone() as u32
}

/// A result code for people: `invalidCredentials (49)`.
pub fn code_text(code: &LdapResultCode) -> String {
    format!("{} ({})", code_name(code), code_number(code))
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
    fn result_codes_have_one_spelling() {
        assert_eq!(
            code_name(&LdapResultCode::InvalidCredentials),
            "invalidCredentials"
        );
        assert_eq!(code_number(&LdapResultCode::InvalidCredentials), 49);
        assert_eq!(
            code_text(&LdapResultCode::InsufficentAccessRights),
            "insufficientAccessRights (50)"
        );
        assert_eq!(code_number(&LdapResultCode::EsyncRefreshRequired), 4096);
        assert_eq!(
            LdapError::new(LdapResultCode::Busy, "too many").to_string(),
            "busy (51): too many"
        );
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
