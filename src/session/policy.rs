//! What a PAM-bound session does with each request (DESIGN §2 step 10, §7): pure
//! decisions on the request's bytes, carried out by the session.
//!
//! After a PAM bind the session's backend connection is bound as the proxy's service
//! account, which holds the `proxy` right on the whole suffix. Each relayed request
//! carries the proxy's Proxied Authorization v2 control (`dn:<user>`, critical, first in
//! the list) so that 389 applies the user's rights. Whatever could make 389 act as
//! anyone but the user is answered here instead of relayed:
//!
//! - **Client proxied authorization** (v1 `2.16.840.1.113730.3.4.12`, v2 `…18`):
//!   insufficientAccessRights (50). 389 honours the *first* v2 control, but a v1 control
//!   anywhere in the list wins over every v2 control (measured on 389 2.3.1), so putting
//!   the proxy's control first is not enough on its own.
//! - **Controls: an allow-list.** A control not listed in [`ALLOWED_CONTROLS`] is refused
//!   with unavailableCriticalExtension (12), critical or not: silently dropping a
//!   non-critical control would change what the client asked for without telling it.
//!   Every listed control asks 389 to shape or filter what the user's own operation
//!   returns; none names an identity (Get Effective Rights, 1.3.6.1.4.1.42.2.27.9.5.2,
//!   takes an authzId and is therefore not listed), so under the proxy's control 389
//!   evaluates each of them as the user:
//!   - paged results (1.2.840.113556.1.4.319), server-side sort (1.2.840.113556.1.4.473),
//!     VLV (2.16.840.1.113730.3.4.9): paging and ordering of the entries the user's
//!     search returns; 389 checks access per entry as for a plain search (sorted and
//!     VLV results measured identical to the user's direct bind).
//!   - persistent search (2.16.840.1.113730.3.4.3) and content sync
//!     (1.3.6.1.4.1.4203.1.9.1.1): later changes are sent through the same per-entry
//!     access check, as the user (psearch measured: the user's attributes only; 389 2.3
//!     ships the content sync plugin disabled).
//!   - ManageDsaIT (2.16.840.1.113730.3.4.2): referral objects read as ordinary entries;
//!     access control still applies.
//!   - assertion (1.3.6.1.1.12), matched values (1.2.826.0.1.3344810.2.3): conditions and
//!     value filters on the user's own operation (389 2.3 does not implement them: it
//!     refuses them when critical and ignores them otherwise).
//!   - pre-read and post-read (1.3.6.1.1.13.1, 1.3.6.1.1.13.2): the entry the user's
//!     update touched, filtered by the user's read rights (measured: an attribute only the
//!     service account may read is left out, as for the user's direct bind).
//!   - subtree delete (1.2.840.113556.1.4.805): the user's delete rights decide (not
//!     implemented by 389 2.3).
//!   - password policy request (1.3.6.1.4.1.42.2.27.8.5.1): asks only for warnings in
//!     the response.
//!   - don't-use-copy (1.3.6.1.1.22): a hint about replicas (not implemented by 389 2.3).
//! - **Extended operations: an allow-list.** WhoAmI is answered by the proxy (389 would
//!   name the service account); Password Modify gets unwillingToPerform (53), as 389 would
//!   change the service account's password; Cancel (1.3.6.1.1.8) gets 53 too: it names a
//!   messageID inside its value, and on a shared connection (crate::service_links) the
//!   session's messageIDs are not the directory's (Abandon, which the proxy maps, does
//!   the same job). Everything else, whose handler in 389 may act as the connection's
//!   bound identity, gets 53.
//! - **Public reads.** The root DSE (empty base, base scope) and the subschema entry are
//!   relayed without the control: they are public, and 389 shows nothing of them under
//!   proxied authorization. Abandon is relayed without the control: it has no identity
//!   to apply (the shared connection maps the messageID it names).
//! - **Unknown operations** (a protocolOp tag that is no LDAP request a bound session may
//!   send) end the connection with protocolError rather than reach 389 as the service
//!   account.
//!
//! The request's controls and extended name must read strictly as numeric OIDs
//! ([`message::controls`], [`message::extended_oid`]); anything else is a protocol
//! error, whatever the session's earlier checks found.

use crate::dn::Dn;
use crate::frame::{op, Envelope, FrameError};
use crate::message;
use crate::proto::LdapError;
use ldap3_proto::proto::LdapResultCode;

/// Proxied Authorization v1 (draft-weltman-ldapv3-proxy-04).
pub const OID_PROXY_AUTHZ_V1: &str = "2.16.840.1.113730.3.4.12";
/// Proxied Authorization v2 (RFC 4370).
pub const OID_PROXY_AUTHZ_V2: &str = "2.16.840.1.113730.3.4.18";
/// "Who am I?" (RFC 4532).
pub const OID_WHOAMI: &str = "1.3.6.1.4.1.4203.1.11.3";
/// Password Modify (RFC 3062).
pub const OID_PASSWD_MODIFY: &str = "1.3.6.1.4.1.4203.1.11.1";
/// Cancel (RFC 3909).
pub const OID_CANCEL: &str = "1.3.6.1.1.8";

/// Request controls a PAM-bound session may send, with their names (see the module
/// documentation for why each is safe under proxied authorization).
pub const ALLOWED_CONTROLS: &[(&str, &str)] = &[
    ("1.2.840.113556.1.4.319", "paged results"),
    ("1.2.840.113556.1.4.473", "server-side sort"),
    ("2.16.840.1.113730.3.4.9", "virtual list view"),
    ("2.16.840.1.113730.3.4.3", "persistent search"),
    ("1.3.6.1.4.1.4203.1.9.1.1", "content synchronization"),
    ("2.16.840.1.113730.3.4.2", "ManageDsaIT"),
    ("1.3.6.1.1.12", "assertion"),
    ("1.3.6.1.1.13.1", "pre-read"),
    ("1.3.6.1.1.13.2", "post-read"),
    ("1.2.840.113556.1.4.805", "subtree delete"),
    ("1.2.826.0.1.3344810.2.3", "matched values"),
    ("1.3.6.1.4.1.42.2.27.8.5.1", "password policy"),
    ("1.3.6.1.1.22", "don't use copy"),
];

/// The PAM-bound user a session acts for.
#[derive(Debug, Clone, Copy)]
pub struct PamUser<'a> {
    /// The user's DN, as the directory resolved it at the bind.
    pub dn: &'a str,
    /// The PAM service that authenticated the user.
    pub service: &'a str,
    /// The proxy's Proxied Authorization control (DER), or `None` when requests run as
    /// the service account (`identity = "service"`).
    pub control: Option<&'a [u8]>,
}

/// What the session does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Relay the request exactly as the client sent it.
    Relay,
    /// Relay this message instead: the request with the proxy's control first.
    RelayRewritten(Vec<u8>),
    /// Answer a WhoAmI with this authzId.
    WhoAmI(String),
    /// Answer with this result (requests without a response get no answer).
    Refuse(LdapError),
    /// End the connection with a Notice of Disconnection (protocolError).
    ProtocolError(FrameError),
}

/// Decides what a PAM-bound session does with `msg`, whose envelope is `env`.
///
/// Binds, unbinds and StartTLS are the session's own business and should not come
/// here; should one come, it is refused like any other request this policy does not
/// allow (a bind or unbind as protocolError, StartTLS as unwillingToPerform).
pub fn decide(env: Envelope, msg: &[u8], user: &PamUser<'_>) -> Action {
    decide_request(env, msg, user).unwrap_or_else(Action::ProtocolError)
}

fn decide_request(env: Envelope, msg: &[u8], user: &PamUser<'_>) -> Result<Action, FrameError> {
    if !matches!(
        env.op,
        op::SEARCH_REQUEST
            | op::MODIFY_REQUEST
            | op::ADD_REQUEST
            | op::DEL_REQUEST
            | op::MODDN_REQUEST
            | op::COMPARE_REQUEST
            | op::EXTENDED_REQUEST
            | op::ABANDON_REQUEST
    ) {
        return Err(FrameError::Malformed(
            "not a request this connection may send",
        ));
    }
    let controls = message::controls(msg)?;
    if controls
        .iter()
        .any(|c| c.oid == OID_PROXY_AUTHZ_V1 || c.oid == OID_PROXY_AUTHZ_V2)
    {
        return Ok(refuse(
            LdapResultCode::InsufficentAccessRights,
            "proxied authorization is not available to this connection".into(),
        ));
    }
    if let Some(c) = controls
        .iter()
        .find(|c| !ALLOWED_CONTROLS.iter().any(|(oid, _)| *oid == c.oid))
    {
        return Ok(refuse(
            LdapResultCode::UnavailableCriticalExtension,
            format!(
                "control {} is not available to PAM-authenticated connections",
                c.oid
            ),
        ));
    }
    match env.op {
        op::ABANDON_REQUEST => Ok(Action::Relay),
        op::SEARCH_REQUEST => {
            let (base, scope) = message::search_base(msg)?;
            if is_public_base(base, scope) {
                Ok(Action::Relay)
            } else {
                as_user(msg, user)
            }
        }
        op::EXTENDED_REQUEST => match message::extended_oid(msg)? {
            OID_WHOAMI => Ok(Action::WhoAmI(format!("dn:{}", user.dn))),
            OID_PASSWD_MODIFY => Ok(refuse(
                LdapResultCode::UnwillingToPerform,
                format!("password is managed by PAM service {}", user.service),
            )),
            // Its value names a messageID, which on a shared connection is the session's,
            // not the directory's (crate::service_links): Abandon does the same job.
            OID_CANCEL => Ok(refuse(
                LdapResultCode::UnwillingToPerform,
                "Cancel is not available to PAM-authenticated connections: use Abandon".into(),
            )),
            other => Ok(refuse(
                LdapResultCode::UnwillingToPerform,
                format!(
                    "extended operation {other} is not available to PAM-authenticated connections"
                ),
            )),
        },
        _ => as_user(msg, user),
    }
}

/// The request as the directory must run it for the user.
fn as_user(msg: &[u8], user: &PamUser<'_>) -> Result<Action, FrameError> {
    Ok(match user.control {
        Some(control) => Action::RelayRewritten(message::with_control(msg, control)?),
        None => Action::Relay,
    })
}

fn refuse(code: LdapResultCode, message: String) -> Action {
    Action::Refuse(LdapError::new(code, message))
}

/// The root DSE (base scope) and the subschema entry.
fn is_public_base(base: &[u8], scope: u8) -> bool {
    if base.is_empty() {
        return scope == 0;
    }
    std::str::from_utf8(base)
        .ok()
        .and_then(|b| Dn::parse(b).ok())
        .is_some_and(|d| d.to_string() == "cn=schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    // ldap3_proto names its own WhoAmI constant too.
    use super::OID_WHOAMI;
    use crate::frame;
    use crate::message::Control;
    use crate::proto::encode;
    use ldap3_proto::control::LdapControl;
    use ldap3_proto::proto::*;

    const ALICE: &str = "uid=alice,ou=People,dc=example,dc=com";
    const BOB: &str = "uid=bob,ou=People,dc=example,dc=com";

    fn proxy_control() -> Vec<u8> {
        message::control(
            OID_PROXY_AUTHZ_V2,
            true,
            Some(format!("dn:{ALICE}").as_bytes()),
        )
    }

    /// Runs the policy for `msg` as alice, with or without the proxy's control.
    fn decide_as_alice(msg: &[u8], control: Option<&[u8]>) -> Action {
        let env = frame::peek(msg, 1 << 20).unwrap().unwrap();
        assert_eq!(env.len, msg.len());
        let user = PamUser {
            dn: ALICE,
            service: "duo",
            control,
        };
        decide(env, msg, &user)
    }

    fn search(base: &str, scope: LdapSearchScope) -> LdapOp {
        LdapOp::SearchRequest(LdapSearchRequest {
            base: base.into(),
            scope,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter: LdapFilter::Present("objectClass".into()),
            attrs: vec!["mail".into()],
        })
    }

    fn people_search() -> LdapOp {
        search("ou=People,dc=example,dc=com", LdapSearchScope::Subtree)
    }

    fn extended(name: &str) -> LdapOp {
        LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: name.into(),
            value: None,
        })
    }

    fn ctl(oid: &str, critical: bool, value: Option<&[u8]>) -> Vec<u8> {
        message::control(oid, critical, value)
    }

    /// `op` as message 5 with `controls` (complete DER Controls, in order).
    fn with_controls(op: LdapOp, controls: &[impl AsRef<[u8]>]) -> Vec<u8> {
        with_controls_raw(&plain(op), controls)
    }

    fn plain(op: LdapOp) -> Vec<u8> {
        encode(LdapMsg::new(5, op)).to_vec()
    }

    /// A control element: a SEQUENCE around `content`, whatever that holds.
    fn raw_control(content: &[u8]) -> Vec<u8> {
        octets(0x30, content)
    }

    /// A BER element.
    fn octets(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        push_len(&mut v, bytes.len());
        v.extend_from_slice(bytes);
        v
    }

    /// An ExtendedRequest whose requestName is exactly `name`.
    fn extended_raw(name: &[u8]) -> Vec<u8> {
        let op = octets(0x77, &octets(0x80, name));
        let mut body = vec![0x02, 0x01, 0x05];
        body.extend_from_slice(&op);
        octets(0x30, &body)
    }

    fn code(a: &Action) -> Option<LdapResultCode> {
        match a {
            Action::Refuse(e) => Some(e.code.clone()),
            _ => None,
        }
    }

    #[derive(Debug)]
    enum Expect {
        Relay,
        Rewritten,
        WhoAmI,
        Refused(LdapResultCode, &'static str),
        Protocol,
    }

    fn check(what: &str, msg: &[u8], expect: Expect) {
        let control = proxy_control();
        let got = decide_as_alice(msg, Some(&control));
        match (&expect, &got) {
            (Expect::Relay, Action::Relay) => {}
            (Expect::Rewritten, Action::RelayRewritten(m)) => {
                // The proxy's control comes first, then the client's, unchanged.
                let cs = message::controls(m).unwrap();
                assert_eq!(
                    cs[0],
                    Control {
                        oid: OID_PROXY_AUTHZ_V2,
                        critical: true,
                        value: Some(format!("dn:{ALICE}").as_bytes()),
                    },
                    "{what}"
                );
                assert_eq!(&cs[1..], &message::controls(msg).unwrap()[..], "{what}");
                assert_eq!(
                    cs.iter().filter(|c| c.oid == OID_PROXY_AUTHZ_V2).count(),
                    1,
                    "{what}"
                );
            }
            (Expect::WhoAmI, Action::WhoAmI(id)) => assert_eq!(id, &format!("dn:{ALICE}")),
            (Expect::Refused(c, text), Action::Refuse(e)) => {
                assert_eq!(&e.code, c, "{what}: {e:?}");
                assert!(e.message.contains(text), "{what}: {e:?}");
            }
            (Expect::Protocol, Action::ProtocolError(_)) => {}
            _ => panic!("{what}: expected {expect:?}, got {got:?}"),
        }
    }

    #[test]
    fn every_rule() {
        use Expect::*;
        use LdapResultCode::*;
        const PA2: &str = OID_PROXY_AUTHZ_V2;
        const PA1: &str = OID_PROXY_AUTHZ_V1;
        let bob = format!("dn:{BOB}");
        let bob = bob.as_bytes();
        let paged = ctl(
            "1.2.840.113556.1.4.319",
            false,
            Some(&[0x30, 0x05, 0x02, 0x01, 0x05, 0x04, 0x00]),
        );
        let psearch = ctl(
            "2.16.840.1.113730.3.4.3",
            true,
            Some(&[
                0x30, 0x09, 0x02, 0x01, 0x0f, 0x01, 0x01, 0xff, 0x01, 0x01, 0xff,
            ]),
        );
        let ger = ctl(
            "1.3.6.1.4.1.42.2.27.9.5.2",
            false,
            Some(b"dn:cn=Directory Manager"),
        );
        let pa2_nul = raw_control(
            &[
                octets(0x04, &[PA2.as_bytes(), b"\0"].concat()),
                vec![0x01, 0x01, 0xff],
                octets(0x04, bob),
            ]
            .concat(),
        );
        let whoami_nul = extended_raw(b"1.3.6.1.4.1.4203.1.11.3\0");
        let passwd_nul = extended_raw(b"1.3.6.1.4.1.4203.1.11.1\0");
        let add = plain(LdapOp::AddRequest(LdapAddRequest {
            dn: "cn=x,dc=example,dc=com".into(),
            attributes: vec![],
        }));
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            // Ordinary requests run as the user.
            ("search", plain(people_search()), Rewritten),
            ("add", add, Rewritten),
            ("delete", plain(LdapOp::DelRequest(BOB.into())), Rewritten),
            (
                "compare",
                plain(LdapOp::CompareRequest(LdapCompareRequest {
                    dn: BOB.into(),
                    atype: "mail".into(),
                    val: b"bob@example.com".to_vec(),
                })),
                Rewritten,
            ),
            (
                "modify",
                plain(LdapOp::ModifyRequest(LdapModifyRequest {
                    dn: ALICE.into(),
                    changes: vec![],
                })),
                Rewritten,
            ),
            (
                "modrdn",
                plain(LdapOp::ModifyDNRequest(LdapModifyDNRequest {
                    dn: ALICE.into(),
                    newrdn: "uid=alicia".into(),
                    deleteoldrdn: true,
                    new_superior: None,
                })),
                Rewritten,
            ),
            // Public reads and Abandon go as they came.
            ("root DSE", plain(search("", LdapSearchScope::Base)), Relay),
            (
                "root DSE, one level",
                plain(search("", LdapSearchScope::OneLevel)),
                Rewritten,
            ),
            (
                "schema",
                plain(search("cn=schema", LdapSearchScope::Base)),
                Relay,
            ),
            (
                "schema, other spelling",
                plain(search(" CN = Schema ", LdapSearchScope::Base)),
                Relay,
            ),
            (
                "schema with a NUL",
                plain(search(
                    "cn=schema\0,dc=example,dc=com",
                    LdapSearchScope::Base,
                )),
                Rewritten,
            ),
            (
                "below the schema",
                plain(search("cn=x,cn=schema", LdapSearchScope::Base)),
                Rewritten,
            ),
            ("abandon", plain(LdapOp::AbandonRequest(3)), Relay),
            // Allow-listed controls pass, after the proxy's.
            (
                "paged results",
                with_controls(people_search(), &[&paged]),
                Rewritten,
            ),
            (
                "persistent search",
                with_controls(people_search(), &[&psearch]),
                Rewritten,
            ),
            (
                "paged results on the root DSE",
                with_controls(search("", LdapSearchScope::Base), &[&paged]),
                Relay,
            ),
            (
                "every allowed control",
                with_controls(
                    people_search(),
                    &ALLOWED_CONTROLS
                        .iter()
                        .map(|(o, _)| ctl(o, true, None))
                        .collect::<Vec<_>>(),
                ),
                Rewritten,
            ),
            // Client proxied authorization, in any position or number.
            (
                "v2",
                with_controls(people_search(), &[ctl(PA2, true, Some(bob))]),
                Refused(InsufficentAccessRights, "proxied authorization"),
            ),
            (
                "v2 non-critical",
                with_controls(people_search(), &[ctl(PA2, false, Some(bob))]),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            (
                "v1",
                with_controls(
                    people_search(),
                    &[ctl(
                        PA1,
                        true,
                        Some(&octets(0x30, &octets(0x04, BOB.as_bytes()))),
                    )],
                ),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            (
                "v2 after an allowed control",
                with_controls(people_search(), &[paged.clone(), ctl(PA2, true, Some(bob))]),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            (
                "v2 twice",
                with_controls(
                    people_search(),
                    &[ctl(PA2, true, Some(bob)), ctl(PA2, true, Some(bob))],
                ),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            (
                "v2 on the root DSE",
                with_controls(
                    search("", LdapSearchScope::Base),
                    &[ctl(PA2, true, Some(bob))],
                ),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            (
                "v2 on WhoAmI",
                with_controls(extended(OID_WHOAMI), &[ctl(PA2, true, Some(bob))]),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            (
                "v2 on Abandon",
                with_controls(LdapOp::AbandonRequest(3), &[ctl(PA2, true, Some(bob))]),
                Refused(InsufficentAccessRights, "proxied"),
            ),
            // Controls off the allow-list: refused, critical or not, naming the OID.
            (
                "GER",
                with_controls(people_search(), &[&ger]),
                Refused(
                    UnavailableCriticalExtension,
                    "control 1.3.6.1.4.1.42.2.27.9.5.2 ",
                ),
            ),
            (
                "unknown critical",
                with_controls(people_search(), &[ctl("1.2.3.4", true, None)]),
                Refused(UnavailableCriticalExtension, "control 1.2.3.4 "),
            ),
            (
                "unknown after allowed",
                with_controls(
                    people_search(),
                    &[paged.clone(), ctl("1.2.3.4", false, None)],
                ),
                Refused(UnavailableCriticalExtension, "1.2.3.4"),
            ),
            (
                "authzid request off a bind",
                with_controls(
                    people_search(),
                    &[ctl("2.16.840.1.113730.3.4.16", false, None)],
                ),
                Refused(UnavailableCriticalExtension, "2.16.840.1.113730.3.4.16"),
            ),
            // Controls the proxy cannot read exactly.
            (
                "NUL-suffixed v2",
                with_controls_raw(&plain(people_search()), &[&pa2_nul]),
                Protocol,
            ),
            (
                "NUL-suffixed v2 after paged",
                with_controls_raw(&plain(people_search()), &[paged.clone(), pa2_nul]),
                Protocol,
            ),
            (
                "v2 with a leading zero",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(&octets(0x04, b"2.16.840.1.113730.3.4.018"))],
                ),
                Protocol,
            ),
            (
                "v2 with a space",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(&octets(0x04, b"2.16.840.1.113730.3.4.18 "))],
                ),
                Protocol,
            ),
            (
                "uppercase letters",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(&octets(0x04, b"1.2.840.113556.1.4.3A9"))],
                ),
                Protocol,
            ),
            (
                "empty OID",
                with_controls_raw(&plain(people_search()), &[raw_control(&octets(0x04, b""))]),
                Protocol,
            ),
            (
                "v2 nested inside an allowed control",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(
                        &[
                            octets(0x04, b"1.2.840.113556.1.4.319"),
                            ctl(PA2, true, Some(bob)),
                        ]
                        .concat(),
                    )],
                ),
                Protocol,
            ),
            (
                "extra element after the value",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(
                        &[
                            octets(0x04, b"1.2.840.113556.1.4.319"),
                            octets(0x04, b""),
                            octets(0x04, b""),
                        ]
                        .concat(),
                    )],
                ),
                Protocol,
            ),
            (
                "criticality of two octets",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(
                        &[
                            octets(0x04, b"1.2.840.113556.1.4.319"),
                            octets(0x01, &[0, 1]),
                        ]
                        .concat(),
                    )],
                ),
                Protocol,
            ),
            (
                "criticality empty",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(
                        &[octets(0x04, b"1.2.840.113556.1.4.319"), octets(0x01, &[])].concat(),
                    )],
                ),
                Protocol,
            ),
            (
                "criticality as INTEGER",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(
                        &[octets(0x04, b"1.2.840.113556.1.4.319"), octets(0x02, &[1])].concat(),
                    )],
                ),
                Protocol,
            ),
            (
                "OID as UTF8String",
                with_controls_raw(
                    &plain(people_search()),
                    &[raw_control(
                        &[octets(0x0c, PA2.as_bytes()), octets(0x04, bob)].concat(),
                    )],
                ),
                Protocol,
            ),
            // Extended operations.
            ("WhoAmI", plain(extended(OID_WHOAMI)), WhoAmI),
            (
                "WhoAmI with paged results",
                with_controls(extended(OID_WHOAMI), &[&paged]),
                WhoAmI,
            ),
            (
                "Password Modify",
                plain(extended(OID_PASSWD_MODIFY)),
                Refused(UnwillingToPerform, "password is managed by PAM service duo"),
            ),
            (
                "Cancel",
                plain(extended(OID_CANCEL)),
                Refused(UnwillingToPerform, "use Abandon"),
            ),
            (
                "StartTLS",
                plain(extended("1.3.6.1.4.1.1466.20037")),
                Refused(
                    UnwillingToPerform,
                    "extended operation 1.3.6.1.4.1.1466.20037 ",
                ),
            ),
            (
                "389 replication",
                plain(extended("2.16.840.1.113730.3.5.12")),
                Refused(UnwillingToPerform, "2.16.840.1.113730.3.5.12"),
            ),
            ("NUL-suffixed WhoAmI", whoami_nul, Protocol),
            ("NUL-suffixed Password Modify", passwd_nul, Protocol),
            (
                "Password Modify with a leading zero",
                extended_raw(b"1.3.6.1.4.1.4203.1.11.01"),
                Protocol,
            ),
            (
                "Password Modify with a space",
                extended_raw(b" 1.3.6.1.4.1.4203.1.11.1"),
                Protocol,
            ),
            ("empty request name", extended_raw(b""), Protocol),
            // Not requests a bound session sends here.
            (
                "bind",
                plain(LdapOp::BindRequest(LdapBindRequest {
                    version: 3,
                    dn: String::new(),
                    cred: LdapBindCred::Simple(String::new()),
                })),
                Protocol,
            ),
            ("unbind", plain(LdapOp::UnbindRequest), Protocol),
            (
                "a response",
                plain(LdapOp::DelResponse(LdapResult {
                    code: LdapResultCode::Success,
                    matcheddn: String::new(),
                    message: String::new(),
                    referral: vec![],
                })),
                Protocol,
            ),
            (
                "unknown tag",
                vec![0x30, 0x05, 0x02, 0x01, 0x05, 0x57, 0x00],
                Protocol,
            ),
        ];
        for (what, msg, expect) in cases {
            check(what, &msg, expect);
        }
    }

    /// `msg` with `controls` (raw bytes, not necessarily valid) as its controls element.
    fn with_controls_raw(msg: &[u8], controls: &[impl AsRef<[u8]>]) -> Vec<u8> {
        let header = if msg[1] < 0x80 {
            2
        } else {
            2 + usize::from(msg[1] & 0x7f)
        };
        let ctrls: Vec<u8> = controls.iter().flat_map(|c| c.as_ref().to_vec()).collect();
        let mut body = msg[header..].to_vec();
        body.push(0xa0);
        push_len(&mut body, ctrls.len());
        body.extend_from_slice(&ctrls);
        let mut out = vec![0x30];
        push_len(&mut out, body.len());
        out.extend_from_slice(&body);
        out
    }

    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
    }

    #[test]
    fn service_identity_relays_without_a_control() {
        let control: Option<&[u8]> = None;
        for op in [people_search(), LdapOp::DelRequest(BOB.into())] {
            assert_eq!(decide_as_alice(&plain(op), control), Action::Relay);
        }
        // The other rules hold all the same.
        assert_eq!(
            decide_as_alice(&plain(extended(OID_WHOAMI)), control),
            Action::WhoAmI(format!("dn:{ALICE}"))
        );
        assert_eq!(
            code(&decide_as_alice(
                &plain(extended(OID_PASSWD_MODIFY)),
                control
            )),
            Some(LdapResultCode::UnwillingToPerform)
        );
        let pa = with_controls(
            people_search(),
            &[ctl(OID_PROXY_AUTHZ_V2, true, Some(b"dn:"))],
        );
        assert_eq!(
            code(&decide_as_alice(&pa, control)),
            Some(LdapResultCode::InsufficentAccessRights)
        );
    }

    #[test]
    fn the_allow_list_is_well_formed() {
        for (oid, name) in ALLOWED_CONTROLS {
            assert!(message::is_numeric_oid(oid.as_bytes()), "{name}");
            assert!(
                ![
                    OID_PROXY_AUTHZ_V1,
                    OID_PROXY_AUTHZ_V2,
                    "1.3.6.1.4.1.42.2.27.9.5.2"
                ]
                .contains(oid),
                "{name}"
            );
        }
    }

    #[test]
    fn ldap3_proto_controls_pass_the_strict_reader() {
        // What a client library encodes must read back the same.
        let m = encode(LdapMsg::new_with_ctrls(
            5,
            people_search(),
            vec![
                LdapControl::SimplePagedResults {
                    size: 10,
                    cookie: vec![],
                },
                LdapControl::ManageDsaIT { criticality: true },
            ],
        ))
        .to_vec();
        assert!(matches!(
            decide_as_alice(&m, Some(&proxy_control())),
            Action::RelayRewritten(_)
        ));
    }
}
