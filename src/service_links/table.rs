//! The bookkeeping of one shared service connection, without I/O: which of the
//! directory's messageIDs belongs to which session's request, and the rewriting both ways.
//!
//! Sessions choose their own messageIDs, so two sessions on one connection may use the
//! same; every request gets a messageID of the connection's own on the way out, and every
//! response its session's back on the way in. The only other place a messageID travels in
//! what a PAM-bound session may send is an Abandon's target (Cancel is refused by the
//! session policy), which is mapped the same way. The other state the directory keeps
//! per connection that a client can name is a paged-results cookie: a session may only
//! continue a paged search with a cookie the directory issued to that session.

use crate::frame::{self, op, FrameError};
use crate::message;
use crate::proto::{self, LdapError};
use ldap3_proto::proto::LdapResultCode;
use std::collections::HashMap;

/// A session's place on a shared connection.
pub type LeaseId = u64;

/// What becomes of one request a session sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Send this to the directory.
    Send(Vec<u8>),
    /// Nothing goes to the directory and nothing comes back (an Unbind: the session's
    /// leaving abandons what it left running; an Abandon of something already finished).
    Drop,
    /// The session gets this answer instead, as if from the directory.
    Answer(bytes::Bytes),
}

/// What becomes of one message the directory sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// This message, under the session's messageID, for the session.
    Deliver(LeaseId, Vec<u8>),
    /// An answer to nobody still waiting (a request abandoned, its session gone).
    Stray,
    /// An unsolicited notification (messageID 0): the directory is closing the
    /// connection for everyone on it.
    Unsolicited,
}

/// One request in progress on the connection.
#[derive(Debug, Clone, Copy)]
struct Op {
    lease: LeaseId,
    client_msgid: i32,
}

/// The messageIDs in use on one connection.
#[derive(Debug)]
pub struct Table {
    /// The next messageID to try. The service account's bind used 1.
    next: i32,
    /// The directory's messageID of each request in progress.
    ops: HashMap<i32, Op>,
    /// The same, by session and the session's messageID.
    by_client: HashMap<(LeaseId, i32), i32>,
    /// Which session each paged-results cookie the directory issued belongs to.
    cookies: HashMap<Vec<u8>, LeaseId>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            next: 2,
            ops: HashMap::new(),
            by_client: HashMap::new(),
            cookies: HashMap::new(),
        }
    }
}

impl Table {
    /// Requests in progress, all sessions together.
    pub fn in_progress(&self) -> usize {
        self.ops.len()
    }

    /// A messageID no request in progress uses (1 ..= 2^31 - 1, wrapping).
    fn fresh_id(&mut self) -> i32 {
        loop {
            let id = self.next;
            self.next = if id == i32::MAX { 1 } else { id + 1 };
            if !self.ops.contains_key(&id) {
                return id;
            }
        }
    }

    /// Rewrites one whole request message of session `lease` for the shared connection.
    pub fn outbound(&mut self, lease: LeaseId, msg: &[u8]) -> Result<Outbound, FrameError> {
        let env = frame::peek(msg, usize::MAX)?.ok_or(FrameError::Malformed("incomplete"))?;
        match env.op {
            op::UNBIND_REQUEST => Ok(Outbound::Drop),
            op::ABANDON_REQUEST => {
                let target = message::abandon_target(msg)?;
                let Some(id) = self.by_client.remove(&(lease, target)) else {
                    return Ok(Outbound::Drop);
                };
                // Whatever still comes for it is nobody's: the client no longer waits.
                self.ops.remove(&id);
                let own = self.fresh_id();
                Ok(Outbound::Send(message::abandon_request(own, id)))
            }
            request => {
                let Some(_) = op::response_to(request) else {
                    return Err(FrameError::Malformed("not a request"));
                };
                if self.by_client.contains_key(&(lease, env.msgid)) {
                    // RFC 4511 §4.1.1.1: a messageID in use is a protocol error; the
                    // directory would see two requests under different IDs.
                    return Err(FrameError::Malformed("messageID of a request in progress"));
                }
                if request == op::SEARCH_REQUEST {
                    if let Some(cookie) = message::paged_cookie(msg)? {
                        if !cookie.is_empty() && self.cookies.get(cookie) != Some(&lease) {
                            let err = LdapError::new(
                                LdapResultCode::UnwillingToPerform,
                                "paged results: the cookie was not issued to this connection",
                            );
                            return Ok(proto::result_for(env.msgid, request, &err)
                                .map_or(Outbound::Drop, Outbound::Answer));
                        }
                    }
                }
                let id = self.fresh_id();
                let rewritten = message::with_msgid(msg, id)?;
                self.ops.insert(
                    id,
                    Op {
                        lease,
                        client_msgid: env.msgid,
                    },
                );
                self.by_client.insert((lease, env.msgid), id);
                Ok(Outbound::Send(rewritten))
            }
        }
    }

    /// Rewrites one whole message from the directory for the session it answers.
    pub fn inbound(&mut self, msg: &[u8]) -> Result<Inbound, FrameError> {
        let env = frame::peek(msg, usize::MAX)?.ok_or(FrameError::Malformed("incomplete"))?;
        if env.msgid == 0 {
            return Ok(Inbound::Unsolicited);
        }
        let Some(found) = self.ops.get(&env.msgid).copied() else {
            return Ok(Inbound::Stray);
        };
        if op::is_final_response(env.op) {
            self.ops.remove(&env.msgid);
            self.by_client.remove(&(found.lease, found.client_msgid));
            if env.op == op::SEARCH_RESULT_DONE {
                if let Some(cookie) = message::paged_cookie(msg)? {
                    if !cookie.is_empty() {
                        self.cookies.insert(cookie.to_vec(), found.lease);
                    }
                }
            }
        }
        Ok(Inbound::Deliver(
            found.lease,
            message::with_msgid(msg, found.client_msgid)?,
        ))
    }

    /// Session `lease` leaves the connection: Abandons for what it left running (a
    /// persistent search would otherwise run for nobody), and its cookies are void.
    pub fn release(&mut self, lease: LeaseId) -> Vec<Vec<u8>> {
        let ids: Vec<i32> = self
            .by_client
            .iter()
            .filter(|((l, _), _)| *l == lease)
            .map(|(_, id)| *id)
            .collect();
        self.by_client.retain(|(l, _), _| *l != lease);
        self.cookies.retain(|_, l| *l != lease);
        ids.into_iter()
            .map(|id| {
                self.ops.remove(&id);
                let own = self.fresh_id();
                message::abandon_request(own, id)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ber;

    /// A message: `SEQUENCE { INTEGER msgid, op, [controls] }`.
    fn message(msgid: i32, op: &[u8], controls: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        ber::write_integer(&mut body, i64::from(msgid));
        body.extend_from_slice(op);
        if !controls.is_empty() {
            ber::write(&mut body, 0xa0, &controls.concat());
        }
        let mut out = Vec::new();
        ber::write(&mut out, 0x30, &body);
        out
    }

    fn search(msgid: i32, cookie: Option<&[u8]>) -> Vec<u8> {
        let mut op = Vec::new();
        ber::write(&mut op, 0x04, b"dc=example,dc=com");
        ber::write(&mut op, 0x0a, &[2]);
        ber::write(&mut op, 0x0a, &[0]);
        ber::write_integer(&mut op, 0);
        ber::write_integer(&mut op, 0);
        ber::write(&mut op, 0x01, &[0]);
        ber::write(&mut op, 0x87, b"objectClass");
        ber::write(&mut op, 0x30, &[]);
        let mut whole = Vec::new();
        ber::write(&mut whole, op::SEARCH_REQUEST, &op);
        message(
            msgid,
            &whole,
            &cookie.map(paged).into_iter().collect::<Vec<_>>(),
        )
    }

    fn paged(cookie: &[u8]) -> Vec<u8> {
        let mut value = Vec::new();
        ber::write_integer(&mut value, 10);
        ber::write(&mut value, 0x04, cookie);
        let mut seq = Vec::new();
        ber::write(&mut seq, 0x30, &value);
        message::control(message::OID_PAGED_RESULTS, false, Some(&seq))
    }

    fn entry(msgid: i32) -> Vec<u8> {
        let mut op = Vec::new();
        ber::write(&mut op, 0x04, b"uid=a,dc=example,dc=com");
        ber::write(&mut op, 0x30, &[]);
        let mut whole = Vec::new();
        ber::write(&mut whole, op::SEARCH_RESULT_ENTRY, &op);
        message(msgid, &whole, &[])
    }

    fn done(msgid: i32, cookie: Option<&[u8]>) -> Vec<u8> {
        let whole = [op::SEARCH_RESULT_DONE, 7, 0x0a, 1, 0, 4, 0, 4, 0];
        message(
            msgid,
            &whole,
            &cookie.map(paged).into_iter().collect::<Vec<_>>(),
        )
    }

    fn sent(out: Outbound) -> Vec<u8> {
        match out {
            Outbound::Send(m) => m,
            other => panic!("not sent: {other:?}"),
        }
    }

    fn msgid(msg: &[u8]) -> i32 {
        frame::peek(msg, usize::MAX).unwrap().unwrap().msgid
    }

    #[test]
    fn two_sessions_with_the_same_message_ids_get_their_own_answers() {
        let mut t = Table::default();
        let a = sent(t.outbound(1, &search(5, None)).unwrap());
        let b = sent(t.outbound(2, &search(5, None)).unwrap());
        assert_ne!(msgid(&a), msgid(&b));
        // Everything but the messageID is as the session sent it.
        assert_eq!(
            a[a.len() - 40..],
            search(5, None)[search(5, None).len() - 40..]
        );
        assert_eq!(
            t.inbound(&entry(msgid(&b))).unwrap(),
            Inbound::Deliver(2, entry(5))
        );
        assert_eq!(
            t.inbound(&done(msgid(&a), None)).unwrap(),
            Inbound::Deliver(1, done(5, None))
        );
        // Finished: a late copy is nobody's, and the session may use 5 again.
        assert_eq!(t.inbound(&done(msgid(&a), None)).unwrap(), Inbound::Stray);
        assert_eq!(t.in_progress(), 1);
        sent(t.outbound(1, &search(5, None)).unwrap());
    }

    #[test]
    fn a_message_id_in_use_by_the_session_is_refused() {
        let mut t = Table::default();
        sent(t.outbound(1, &search(5, None)).unwrap());
        assert!(t.outbound(1, &search(5, None)).is_err());
    }

    #[test]
    fn abandon_names_the_connections_id_and_only_the_sessions_own_requests() {
        let mut t = Table::default();
        let mine = msgid(&sent(t.outbound(1, &search(7, None)).unwrap()));
        sent(t.outbound(2, &search(8, None)).unwrap());
        // Session 2 cannot abandon session 1's request, by either ID.
        let abandon = |target| message::abandon_request(9, target);
        assert_eq!(t.outbound(2, &abandon(7)).unwrap(), Outbound::Drop);
        assert_eq!(t.outbound(2, &abandon(mine)).unwrap(), Outbound::Drop);
        let out = sent(t.outbound(1, &abandon(7)).unwrap());
        assert_eq!(message::abandon_target(&out).unwrap(), mine);
        // What the directory still sends for it reaches nobody.
        assert_eq!(t.inbound(&entry(mine)).unwrap(), Inbound::Stray);
    }

    #[test]
    fn unbind_goes_nowhere_and_release_abandons_what_is_left() {
        let mut t = Table::default();
        let mut unbind = Vec::new();
        ber::write(&mut unbind, op::UNBIND_REQUEST, &[]);
        assert_eq!(
            t.outbound(1, &message(3, &unbind, &[])).unwrap(),
            Outbound::Drop
        );
        let running = msgid(&sent(t.outbound(1, &search(4, None)).unwrap()));
        let other = msgid(&sent(t.outbound(2, &search(4, None)).unwrap()));
        let abandons = t.release(1);
        assert_eq!(abandons.len(), 1);
        assert_eq!(message::abandon_target(&abandons[0]).unwrap(), running);
        assert_eq!(t.inbound(&entry(running)).unwrap(), Inbound::Stray);
        assert!(matches!(
            t.inbound(&entry(other)).unwrap(),
            Inbound::Deliver(2, _)
        ));
    }

    #[test]
    fn a_paged_cookie_continues_only_the_session_it_was_issued_to() {
        let mut t = Table::default();
        let first = msgid(&sent(t.outbound(1, &search(2, Some(b""))).unwrap()));
        assert!(matches!(
            t.inbound(&done(first, Some(b"0"))).unwrap(),
            Inbound::Deliver(1, _)
        ));
        // Another session naming that cookie is answered without the directory.
        match t.outbound(2, &search(6, Some(b"0"))).unwrap() {
            Outbound::Answer(reply) => {
                assert_eq!(msgid(&reply), 6);
                assert_eq!(message::result_code(&reply).unwrap(), 53);
            }
            other => panic!("{other:?}"),
        }
        // So is a cookie nobody was issued.
        assert!(matches!(
            t.outbound(1, &search(3, Some(b"1"))).unwrap(),
            Outbound::Answer(_)
        ));
        // The session it was issued to continues.
        sent(t.outbound(1, &search(3, Some(b"0"))).unwrap());
        // Once the session leaves, the cookie is nobody's.
        t.release(1);
        assert!(matches!(
            t.outbound(1, &search(4, Some(b"0"))).unwrap(),
            Outbound::Answer(_)
        ));
    }

    #[test]
    fn unsolicited_notifications_are_for_everyone() {
        let mut t = Table::default();
        let notice = [op::EXTENDED_RESPONSE, 7, 0x0a, 1, 52, 4, 0, 4, 0];
        assert_eq!(
            t.inbound(&message(0, &notice, &[])).unwrap(),
            Inbound::Unsolicited
        );
    }

    #[test]
    fn message_ids_wrap_past_those_in_use() {
        let mut t = Table {
            next: i32::MAX,
            ..Table::default()
        };
        assert_eq!(
            msgid(&sent(t.outbound(1, &search(1, None)).unwrap())),
            i32::MAX
        );
        assert_eq!(msgid(&sent(t.outbound(1, &search(2, None)).unwrap())), 1);
        t.next = i32::MAX;
        assert_eq!(msgid(&sent(t.outbound(1, &search(3, None)).unwrap())), 2);
    }
}
