//! The session's protocol core: every decision about one client connection, with no I/O.
//!
//! [`SessionState`] owns the connection's buffers. The shell ([`super::Session`]) reads
//! sockets into them, writes what they hold, and tells the core what happened (bytes
//! arrived, the backend connected or went away, a bind was decided, shutdown, an idle
//! tick); the core answers by filling the outgoing buffers and queueing [`Action`]s for
//! the shell to carry out (connect, decide a bind, swap backend connections). Whether the
//! shell may read from either side, hand the connection to TLS or close it, it asks the
//! core. Unit tests drive the core with byte fixtures in milliseconds.

use super::boundary::{ResponseStream, Step};
use super::policy;
use crate::bind::{self, FirstLook, Refusal, SimpleBind, Trail};
use crate::bind_request;
use crate::config::{Config, Identity};
use crate::frame::{self, op, Envelope, FrameError};
use crate::logsafe::Untrusted;
use crate::message;
use crate::metrics;
use crate::proto::{self, LdapError};
use crate::tls;
use bytes::{Bytes, BytesMut};
use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp, LdapResult, LdapResultCode};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Above this many buffered bytes for one direction, the session stops reading the side
/// that fills it.
pub const HIGH_WATER: usize = 256 * 1024;
/// How much room a read is given.
pub const READ_CHUNK: usize = 64 * 1024;
/// Requests held behind a pending bind: beyond this many, or this many bytes, the session
/// stops reading from the client until the bind is decided (backpressure).
const MAX_HELD: usize = 64;
const MAX_HELD_BYTES: usize = HIGH_WATER;
/// How much longer a request can get on a shared connection: a messageID of up to 4
/// content octets instead of 1, and a longer SEQUENCE header.
const MSGID_GROWTH: usize = 8;

/// Side effects the shell carries out, in order.
#[derive(Debug)]
pub enum Action {
    /// Open a backend connection for this session.
    Connect,
    /// Decide this bind ([`bind::authenticate`]); report with [`SessionState::bind_decided`].
    Decide { bind: SimpleBind, tls: bool },
    /// Drop the backend connection; its unfinished operations are abandoned, as a bind
    /// permits (RFC 4511 §4.2.1).
    RetireLink,
    /// Make the service-bound connection the decided bind brought the backend connection.
    InstallServiceLink,
    /// A failed bind the directory decided, charged to this attempt budget.
    ChargeFailure(String),
}

/// A decided bind, as the core sees it ([`bind::Outcome`] without the connection).
#[derive(Debug)]
pub enum Decision {
    Forward {
        reason: &'static str,
        budget: Option<String>,
    },
    Fail(Refusal),
    /// PAM said yes for the entry `dn`; the shell holds its service-bound connection.
    Bound {
        dn: String,
    },
}

/// The connection's phase: what may be read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// StartTLS was answered with success: nothing more is read from the client, and
    /// nothing more goes to it, until the TLS handshake (once the answer is written).
    Upgrading,
    /// The shell runs the TLS handshake.
    Handshaking,
    /// Shutdown was requested: no more requests are read; what is in progress finishes.
    Draining,
    /// Once what is queued for the client is written, the connection closes.
    Closing,
}

/// Who the session is, as far as the directory is concerned.
enum Auth {
    /// Anonymous, or bound by a bind the directory itself checked.
    Directory,
    /// Authenticated by PAM; requests run through the service-bound connection.
    Pam {
        dn: String,
        service: String,
        /// The Proxied Authorization control every relayed request carries, or `None`
        /// when requests run as the service account (`identity = "service"`).
        control: Option<Vec<u8>>,
    },
}

/// The bind the session is busy with, if any.
enum BindState {
    Idle,
    /// The shell is deciding it.
    Deciding(PendingBind),
    /// Decided, and the decision replaces the backend connection: it waits for the
    /// message being passed to the client to end (nothing may follow half a message).
    Decided(PendingBind, Decision, Trail),
    /// A new bind (first in `held`) waits for the next message boundary: to drop the
    /// service-bound connection, or for the answer to a bind the directory is deciding.
    Queued,
}

/// A bind the proxy is deciding itself.
struct PendingBind {
    msgid: i32,
    /// The proxy's own encoding of the request, relayed if the decision is to forward it.
    request: zeroize::Zeroizing<Vec<u8>>,
    /// The bind DN as the client spelled it, escaped for the log.
    dn: String,
    wants_authz_id: bool,
    wants_ppolicy: bool,
    started: Instant,
    /// The client abandoned it: the decision runs on, its answer is dropped.
    abandoned: bool,
}

/// A bind the directory decides; the proxy only reports it.
struct ForwardedBind {
    msgid: i32,
    /// Escaped for the log.
    dn: String,
    reason: &'static str,
    /// The attempt budget a failure is charged to, for a bind in the proxy's scope.
    budget: Option<String>,
    started: Instant,
}

/// The session's connection to its backend, as far as the protocol goes.
enum Link {
    /// Not opened yet, or the last attempt failed; the next relayed operation opens it.
    Idle,
    Connecting,
    Up {
        /// Bound as the proxy's service account: only a PAM-bound session may use it.
        as_service: bool,
        /// A bind was relayed on it: the directory may hold it authenticated as someone.
        directory_bind: bool,
        responses: ResponseStream,
    },
}

/// Everything the session knows about its connection; see the module documentation.
pub struct SessionState {
    peer: SocketAddr,
    /// The configuration in force, asked again at each bind so a reload's routes apply
    /// from the next bind on.
    config_source: Box<dyn Fn() -> Arc<Config> + Send>,
    config: Arc<Config>,
    /// What the Notice of Disconnection says once a drain ends (shutdown, or asked to
    /// leave by the connection table).
    leaving_because: &'static str,
    /// The proxy has a certificate: StartTLS is possible.
    tls_available: bool,
    /// The client connection is protected by TLS.
    tls: bool,
    phase: Phase,
    auth: Auth,
    bind: BindState,
    /// Requests received while a bind is in progress, in order, and their total size.
    held: VecDeque<(Envelope, Bytes)>,
    held_bytes: usize,
    forwarded: Vec<ForwardedBind>,
    /// Relayed requests still waiting for their final response: messageID → request tag.
    outstanding: HashMap<i32, u8>,
    link: Link,
    from_client: BytesMut,
    to_client: BytesMut,
    /// Proxy-made messages waiting for the backend stream to reach a message boundary.
    local_pending: BytesMut,
    to_backend: BytesMut,
    from_backend: BytesMut,
    actions: VecDeque<Action>,
    last_activity: Instant,
    /// Since when the client has left a message unfinished (`limits.request_timeout`).
    partial_since: Option<Instant>,
}

impl SessionState {
    /// A new connection from `peer`; `config` is asked for the configuration in force.
    pub fn new(
        peer: SocketAddr,
        config: Box<dyn Fn() -> Arc<Config> + Send>,
        tls_available: bool,
        tls: bool,
    ) -> Self {
        SessionState {
            peer,
            config: config(),
            config_source: config,
            leaving_because: "the proxy is shutting down",
            tls_available,
            tls,
            phase: Phase::Open,
            auth: Auth::Directory,
            bind: BindState::Idle,
            held: VecDeque::new(),
            held_bytes: 0,
            forwarded: Vec::new(),
            outstanding: HashMap::new(),
            // Connecting while the client sends its first request: a short connection
            // (connect, bind, search, unbind) does not wait for a backend connect first.
            link: Link::Connecting,
            from_client: BytesMut::new(),
            to_client: BytesMut::new(),
            local_pending: BytesMut::new(),
            to_backend: BytesMut::new(),
            from_backend: BytesMut::new(),
            actions: VecDeque::from([Action::Connect]),
            last_activity: Instant::now(),
            partial_since: None,
        }
    }

    // ---- what the shell asks -------------------------------------------------------

    /// The next side effect to carry out.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes from the client go here; then call [`SessionState::client_data`].
    pub fn client_in(&mut self) -> &mut BytesMut {
        &mut self.from_client
    }

    /// Bytes for the client.
    pub fn client_out(&mut self) -> &mut BytesMut {
        &mut self.to_client
    }

    /// Bytes from the backend go here; then call [`SessionState::backend_data`].
    pub fn backend_in(&mut self) -> &mut BytesMut {
        &mut self.from_backend
    }

    /// Bytes for the backend.
    pub fn backend_out(&mut self) -> &mut BytesMut {
        &mut self.to_backend
    }

    /// Gives back the memory of every empty buffer: an idle connection holds none (the
    /// next read takes a chunk again), so RSS follows the traffic, not the number of
    /// connections that once had some.
    pub fn release_idle_buffers(&mut self) {
        for buf in [
            &mut self.from_client,
            &mut self.to_client,
            &mut self.local_pending,
            &mut self.to_backend,
            &mut self.from_backend,
        ] {
            if buf.is_empty() && buf.capacity() > 0 {
                *buf = BytesMut::new();
            }
        }
    }

    /// Whether the session may read more from the client: not while ending, upgrading,
    /// or while what it already read waits (backpressure). Relayed requests are bounded
    /// through the backend (its responses stop at HIGH_WATER); the second bound is for
    /// answers the proxy makes itself, which a client that never reads could pile up.
    pub fn may_read_client(&self) -> bool {
        self.phase == Phase::Open
            && self.to_backend.len() < HIGH_WATER
            && self.to_client.len() + self.local_pending.len() < 2 * HIGH_WATER
            && !self.reading_blocked()
    }

    /// Whether the session may read more from the backend. While StartTLS is being
    /// answered, backend messages wait (nothing but the handshake may follow that answer
    /// in the clear), except the rest of one already being passed on, which the answer
    /// waits for.
    pub fn may_read_backend(&self) -> bool {
        match &self.link {
            Link::Up { responses, .. } => {
                self.to_client.len() < HIGH_WATER
                    && !matches!(self.phase, Phase::Closing | Phase::Handshaking)
                    && (self.phase != Phase::Upgrading || responses.mid_message())
            }
            _ => false,
        }
    }

    /// The StartTLS answer is all the shell still has to write before the handshake.
    pub fn ready_for_handshake(&self) -> bool {
        self.phase == Phase::Upgrading && self.local_pending.is_empty()
    }

    /// The connection ends once [`SessionState::client_out`] is written.
    pub fn closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// Whether shutdown was asked for (the shell stops watching for it).
    pub fn draining(&self) -> bool {
        self.phase == Phase::Draining
    }

    /// The one answer to "is anything in progress?": a bind being decided or waiting,
    /// requests held behind it, or relayed requests without their final response. StartTLS
    /// needs it false, shutdown waits for it, and an idle connection is one where it is
    /// false.
    pub fn busy(&self) -> bool {
        !matches!(self.bind, BindState::Idle)
            || !self.held.is_empty()
            || !self.outstanding.is_empty()
    }

    // ---- what the shell reports ----------------------------------------------------

    /// Handles every complete request the client has sent.
    pub fn client_data(&mut self, now: Instant) {
        self.last_activity = now;
        self.take_requests();
        if self.from_client.is_empty() {
            self.partial_since = None;
        } else if self.partial_since.is_none() && !self.reading_blocked() {
            // What is left is the start of a message: the client has until the request
            // timeout to finish it. (Whole requests left unread by backpressure do not
            // count: the proxy is the one not reading.)
            self.partial_since = Some(now);
        }
    }

    /// Passes on what the backend sent.
    pub fn backend_data(&mut self) {
        self.take_responses();
    }

    /// The backend connection asked for by [`Action::Connect`] is up, or could not be
    /// opened (`Err` says why).
    pub fn connected(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.link = Link::Up {
                    as_service: false,
                    // A bind relayed before the connection was up travels in `to_backend`.
                    directory_bind: !self.forwarded.is_empty(),
                    responses: ResponseStream::default(),
                };
            }
            Err(why) => {
                // Answer everything that was waiting for this connection; the next
                // request tries again.
                self.link = Link::Idle;
                self.to_backend.clear();
                let err = LdapError::new(LdapResultCode::Unavailable, why);
                let mut waiting: Vec<_> = self.outstanding.drain().collect();
                waiting.sort_unstable();
                for (msgid, request) in waiting {
                    if let Some(reply) = proto::result_for(msgid, request, &err) {
                        self.send_local(&reply);
                    }
                }
                self.log_unanswered_binds();
                self.end_if_drained();
            }
        }
    }

    /// The backend connection failed or closed.
    pub fn backend_lost(&mut self, why: Option<String>) {
        let mid_message = self.mid_response();
        match why {
            Some(e) => tracing::warn!(peer = %self.peer, "backend connection failed: {e}"),
            None => tracing::info!(peer = %self.peer, "backend closed the connection"),
        }
        self.link = Link::Idle;
        self.from_backend.clear();
        self.log_unanswered_binds();
        if mid_message {
            // A half-sent response cannot be followed by a valid message.
            self.phase = Phase::Closing;
        } else {
            self.disconnect(LdapError::new(
                LdapResultCode::Unavailable,
                "connection to the directory server was lost",
            ));
        }
    }

    /// The bind asked for by [`Action::Decide`] is decided.
    pub fn bind_decided(&mut self, decision: Decision, trail: Trail) {
        let replaces_link = match decision {
            Decision::Bound { .. } => true,
            Decision::Fail(_) => self.link_has_identity(),
            Decision::Forward { .. } => false,
        };
        let p = match std::mem::replace(&mut self.bind, BindState::Idle) {
            BindState::Deciding(p) | BindState::Decided(p, ..) => p,
            other => {
                self.bind = other;
                return;
            }
        };
        if replaces_link && self.mid_response() {
            // Requests stay held behind the bind until the swap.
            self.bind = BindState::Decided(p, decision, trail);
            return;
        }
        let env = Envelope {
            msgid: p.msgid,
            op: op::BIND_REQUEST,
            len: p.request.len(),
        };
        match decision {
            Decision::Forward { reason, budget } => {
                if !p.abandoned {
                    self.forward_bind(env, &p.request, p.dn.clone(), reason, budget);
                }
            }
            Decision::Fail(refusal) => {
                log_bind(
                    self.peer,
                    &p.dn,
                    &trail,
                    &refusal.err.code,
                    p.started,
                    p.abandoned,
                );
                // A refused bind leaves the session anonymous, whoever it was before
                // (RFC 4511 §4.2.1): the connection a directory bind authenticated goes.
                if replaces_link && !self.retire_link() {
                    return;
                }
                if !p.abandoned {
                    self.send_local(&bind_refusal(p.msgid, &refusal, p.wants_ppolicy));
                }
            }
            Decision::Bound { dn } => {
                log_bind(
                    self.peer,
                    &p.dn,
                    &trail,
                    &LdapResultCode::Success,
                    p.started,
                    p.abandoned,
                );
                if !self.retire_link() {
                    return;
                }
                // When abandoned, nobody is waiting for this session to become the user.
                if !p.abandoned {
                    self.become_pam_user(p, dn, &trail);
                }
            }
        }
        self.release_held();
        // Shutdown may have been waiting for this bind.
        self.end_if_drained();
    }

    /// A PAM success: the session relays through the service-bound connection, as the
    /// entry `dn`, and the client is told.
    fn become_pam_user(&mut self, p: PendingBind, dn: String, trail: &Trail) {
        self.actions.push_back(Action::InstallServiceLink);
        self.link = Link::Up {
            as_service: true,
            directory_bind: false,
            responses: ResponseStream::default(),
        };
        let authz = format!("dn:{dn}");
        self.auth = Auth::Pam {
            dn,
            service: trail.service.clone().unwrap_or_default(),
            control: (self.config.bind.identity == Identity::ProxyAuthz).then(|| {
                message::control(policy::OID_PROXY_AUTHZ_V2, true, Some(authz.as_bytes()))
            }),
        };
        let controls = if p.wants_authz_id {
            vec![proto::response_control(
                bind::OID_AUTHZID_RESPONSE,
                authz.as_bytes(),
            )]
        } else {
            Vec::new()
        };
        self.send_local(&proto::bind_response(
            p.msgid,
            &LdapError::success(),
            controls,
        ));
    }

    /// The shell started the TLS handshake after writing the StartTLS answer.
    pub fn handshake_started(&mut self) {
        self.phase = Phase::Handshaking;
    }

    /// The TLS handshake succeeded: the session goes on under TLS.
    pub fn tls_established(&mut self, now: Instant) {
        self.tls = true;
        self.phase = Phase::Open;
        self.last_activity = now;
        // Backend messages that arrived during the upgrade go out now, under TLS.
        self.take_responses();
    }

    /// The StartTLS answer cannot be followed by a handshake: end the connection.
    pub fn close(&mut self) {
        self.phase = Phase::Closing;
    }

    /// Shutdown, or the connection table asked this connection to leave: read no more
    /// requests, finish what is in progress, then a Notice of Disconnection saying `why`.
    pub fn shutdown(&mut self, why: &'static str) {
        self.leaving_because = why;
        match self.phase {
            Phase::Open => self.phase = Phase::Draining,
            // Nothing is in progress (StartTLS required it), and a notice in the clear
            // cannot follow a StartTLS success.
            Phase::Upgrading => self.phase = Phase::Closing,
            _ => {}
        }
        self.end_if_drained();
    }

    /// When [`SessionState::tick`] should next run: the earlier of the idle deadline and
    /// the deadline of a message the client has begun; `None` when neither applies.
    pub fn next_deadline(&self) -> Option<Instant> {
        let limits = &self.config.limits;
        let idle = limits.idle_timeout.map(|t| self.last_activity + t);
        let partial = self
            .partial_since
            .zip(limits.request_timeout)
            .map(|(since, t)| since + t);
        match (idle, partial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired: ends a connection whose client left a message unfinished past
    /// `limits.request_timeout`, or that has been idle for `limits.idle_timeout` with
    /// nothing in progress. Returns when to look again.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        let limits = &self.config.limits;
        if let Some((since, timeout)) = self.partial_since.zip(limits.request_timeout) {
            if now >= since + timeout {
                tracing::info!(peer = %self.peer, "closing client connection: a request not completed within {timeout:?}");
                self.disconnect(LdapError::new(
                    LdapResultCode::ProtocolError,
                    format!("the request was not completed within {timeout:?}"),
                ));
                return None;
            }
        }
        if let Some(timeout) = limits.idle_timeout {
            if now >= self.last_activity + timeout && !self.busy() && self.from_client.is_empty() {
                tracing::info!(peer = %self.peer, "closing idle client connection");
                self.phase = Phase::Closing;
                return None;
            }
        }
        // Never sooner than 100 ms: a busy connection past its idle deadline is looked at
        // again, not spun on.
        self.next_deadline()
            .map(|d| d.max(now + Duration::from_millis(100)))
    }

    /// The connection ended: a bind still being decided runs on (its PAM transaction
    /// cannot be cancelled, and a retry of the same bind joins it).
    pub fn finish(&mut self) {
        if let BindState::Deciding(p) | BindState::Decided(p, ..) =
            std::mem::replace(&mut self.bind, BindState::Idle)
        {
            if !p.abandoned {
                metrics::bind_abandoned();
                tracing::info!(client = %self.peer, dn = %p.dn, "bind left pending: client disconnected");
            }
        }
    }

    // ---- requests ------------------------------------------------------------------

    fn take_requests(&mut self) {
        let limit = self.config.limits.max_message_size;
        while matches!(self.phase, Phase::Open | Phase::Draining) && !self.reading_blocked() {
            let env = match frame::peek(&self.from_client, limit) {
                Ok(Some(env)) if self.from_client.len() >= env.len => env,
                Ok(_) => return,
                Err(e) => return self.protocol_error(&e),
            };
            let msg = self.from_client.split_to(env.len).freeze();
            self.on_request(env, msg);
        }
    }

    fn on_request(&mut self, env: Envelope, msg: Bytes) {
        // Whatever the proxy cannot read exactly is refused before anything acts on it
        // or relays it (DESIGN §7).
        if let Err(e) = message::check_request(env, &msg) {
            return self.protocol_error(&e);
        }
        if env.op == op::EXTENDED_REQUEST
            && message::extended_oid(&msg).is_ok_and(|oid| oid == tls::OID_STARTTLS)
        {
            // Never held behind a bind: a pending bind makes it fail at once.
            return self.start_tls(env);
        }
        if matches!(self.bind, BindState::Idle) && self.held.is_empty() {
            return self.dispatch(env, msg);
        }
        // A bind is in progress: later requests wait for its outcome (RFC 4511 §4.2.1),
        // except those that concern the wait itself.
        match env.op {
            op::UNBIND_REQUEST => self.phase = Phase::Closing,
            op::ABANDON_REQUEST => self.abandon_while_binding(env, msg),
            _ => self.hold(env, msg, false),
        }
    }

    fn hold(&mut self, env: Envelope, msg: Bytes, first: bool) {
        self.held_bytes += msg.len();
        if first {
            self.held.push_front((env, msg));
        } else {
            self.held.push_back((env, msg));
        }
    }

    /// The session takes no more requests for now: as many are held behind a bind as it
    /// may hold, or as many relayed ones are in flight as `limits.max_outstanding` allows.
    fn reading_blocked(&self) -> bool {
        self.held.len() >= MAX_HELD
            || self.held_bytes >= MAX_HELD_BYTES
            || self.outstanding.len() >= self.config.limits.max_outstanding
    }

    fn dispatch(&mut self, env: Envelope, msg: Bytes) {
        if !self.tls && self.config.listen.require_tls {
            match env.op {
                op::UNBIND_REQUEST => {}
                // Nothing can be outstanding to abandon on this connection.
                op::ABANDON_REQUEST => return,
                _ => {
                    return self.reply(
                        env,
                        &LdapError::new(
                            LdapResultCode::ConfidentialityRequired,
                            "this server requires TLS: use LDAPS or StartTLS first",
                        ),
                    )
                }
            }
        }
        match env.op {
            op::UNBIND_REQUEST => {
                // Passed on so the directory logs an orderly close.
                if let Link::Up { .. } = self.link {
                    self.to_backend.extend_from_slice(&msg);
                }
                self.phase = Phase::Closing;
            }
            // Nothing to abandon on a backend connection that was never opened.
            op::ABANDON_REQUEST if matches!(self.link, Link::Idle) => {}
            op::BIND_REQUEST if self.mid_response() && self.on_service_link() => {
                self.hold(env, msg, true);
                self.bind = BindState::Queued;
            }
            // A bind the directory is still deciding: the next waits for its answer. RFC
            // 4511 §4.2.1 forbids sending one before, but a client that does must not lose
            // the first answer to a decision that drops the connection it comes on.
            op::BIND_REQUEST if !self.forwarded.is_empty() => {
                self.hold(env, msg, true);
                self.bind = BindState::Queued;
            }
            op::BIND_REQUEST => self.bind(env, msg),
            _ => match &self.auth {
                Auth::Directory => self.relay(env, &msg),
                Auth::Pam { .. } => self.relay_for_pam_user(env, msg),
            },
        }
    }

    /// Runs requests held behind a bind that has now been decided, until one of them is
    /// itself a bind the proxy must decide; then reads on.
    fn release_held(&mut self) {
        while matches!(self.bind, BindState::Idle) && self.phase != Phase::Closing {
            let Some((env, msg)) = self.held.pop_front() else {
                // Requests left unread while the queue was full.
                return self.take_requests();
            };
            self.held_bytes -= msg.len();
            self.dispatch(env, msg);
        }
    }

    fn abandon_while_binding(&mut self, env: Envelope, msg: Bytes) {
        let Ok(target) = message::abandon_target(&msg) else {
            return;
        };
        if let BindState::Deciding(p) | BindState::Decided(p, ..) = &mut self.bind {
            if p.msgid == target {
                if !p.abandoned {
                    metrics::bind_abandoned();
                    tracing::info!(client = %self.peer, dn = %p.dn, "bind abandoned by the client; its PAM transaction continues");
                }
                p.abandoned = true;
                return;
            }
        }
        if let Some(i) = self.held.iter().position(|(e, _)| e.msgid == target) {
            if let Some((_, m)) = self.held.remove(i) {
                self.held_bytes -= m.len();
            }
        } else if !matches!(self.link, Link::Idle) {
            self.relay(env, &msg);
        }
    }

    /// Every bind starts by returning the session to anonymous (RFC 4511 §4.2.1). The
    /// proxy then reads the whole request: what it cannot read is refused, what is not
    /// its to decide goes to the directory in the proxy's own encoding, and a simple bind
    /// with a name and a password is decided by the proxy (DESIGN §2, §7).
    fn bind(&mut self, env: Envelope, msg: Bytes) {
        self.auth = Auth::Directory;
        // Never let an unauthenticated or directory-bound session run as the service
        // account: drop that connection.
        if self.on_service_link() && !self.retire_link() {
            return;
        }
        let request = match bind_request::parse(&msg) {
            Ok(r) => r,
            Err(e) => return self.protocol_error(&e),
        };
        self.config = (self.config_source)();
        // Only ever logged: escaped once, here (DESIGN §7, logs are data).
        let dn = Untrusted::new(request.name).to_string();
        let mut pending = PendingBind {
            msgid: env.msgid,
            request: request.encode(None),
            dn,
            wants_authz_id: false,
            wants_ppolicy: request.has_control(bind::OID_PPOLICY),
            started: Instant::now(),
            abandoned: false,
        };
        match bind::first_look(&self.config, &request, self.tls) {
            FirstLook::Forward { reason, mechanism } => {
                let canonical = request.encode(mechanism.as_deref());
                self.forward_bind(env, &canonical, pending.dn, reason, None);
            }
            // Decided already; it still goes the way of every decided bind, so the
            // session is reset the same way.
            FirstLook::Refuse(err) => {
                self.bind = BindState::Deciding(pending);
                self.bind_decided(Decision::Fail(err.into()), Trail::default());
            }
            FirstLook::Decide(simple) => {
                pending.wants_authz_id = simple.wants_authz_id;
                self.bind = BindState::Deciding(pending);
                self.actions.push_back(Action::Decide {
                    bind: simple,
                    tls: self.tls,
                });
            }
        }
    }

    /// Relays a bind for the directory to decide; its result is logged as it passes back.
    fn forward_bind(
        &mut self,
        env: Envelope,
        msg: &[u8],
        dn: String,
        reason: &'static str,
        budget: Option<String>,
    ) {
        metrics::bind_forwarded(reason);
        self.forwarded.push(ForwardedBind {
            msgid: env.msgid,
            dn,
            reason,
            budget,
            started: Instant::now(),
        });
        self.relay(env, msg);
        if let Link::Up { directory_bind, .. } = &mut self.link {
            *directory_bind = true;
        }
    }

    /// Relays a PAM-bound user's request so the directory applies the user's rights,
    /// answering itself what the directory would answer for the service account instead
    /// (DESIGN §2 step 10; the rules are in [`policy`]).
    fn relay_for_pam_user(&mut self, env: Envelope, msg: Bytes) {
        let Auth::Pam {
            dn,
            service,
            control,
        } = &self.auth
        else {
            return self.relay(env, &msg);
        };
        let user = policy::PamUser {
            dn,
            service,
            control: control.as_deref(),
        };
        match policy::decide(env, &msg, &user) {
            policy::Action::Relay => self.relay_shared(env, &msg),
            policy::Action::RelayRewritten(rewritten) => self.relay_shared(env, &rewritten),
            policy::Action::WhoAmI(authzid) => {
                let reply = proto::extended_response(
                    env.msgid,
                    &LdapError::success(),
                    Some(authzid.into_bytes()),
                );
                self.send_local(&reply);
            }
            policy::Action::Refuse(err) => {
                tracing::info!(peer = %self.peer, op = op::name(env.op), "request refused: {}", err.message);
                self.reply(env, &err);
            }
            policy::Action::ProtocolError(e) => self.protocol_error(&e),
        }
    }

    /// Relays a PAM-bound session's request on its shared connection, unless what the
    /// proxy adds (its control, a longer messageID) takes it past the directory's message
    /// limit, which `limits.max_message_size` mirrors (389's nsslapd-maxbersize): 389
    /// closes a connection that sends a message over its limit, and this one is every
    /// PAM-bound session's.
    fn relay_shared(&mut self, env: Envelope, msg: &[u8]) {
        if op::response_to(env.op).is_some() && self.outstanding.contains_key(&env.msgid) {
            // RFC 4511 §4.1.1.1; on a shared connection the two could not be told apart.
            return self.protocol_error(&FrameError::Malformed(
                "messageID of a request still in progress",
            ));
        }
        if msg.len() + MSGID_GROWTH > self.config.limits.max_message_size {
            tracing::info!(peer = %self.peer, op = op::name(env.op), bytes = msg.len(), "request refused: too large with the proxy's control");
            return self.reply(
                env,
                &LdapError::new(
                    LdapResultCode::AdminLimitExceeded,
                    format!(
                        "request too large: with the proxy's authorization control it exceeds {} bytes",
                        self.config.limits.max_message_size
                    ),
                ),
            );
        }
        self.relay(env, msg);
    }

    fn relay(&mut self, env: Envelope, msg: &[u8]) {
        metrics::relayed(env.op);
        if op::response_to(env.op).is_some() {
            self.outstanding.insert(env.msgid, env.op);
        } else if env.op == op::ABANDON_REQUEST {
            // The client no longer waits for it (a persistent search, for one, would
            // otherwise count as outstanding forever and block StartTLS).
            if let Ok(target) = message::abandon_target(msg) {
                self.outstanding.remove(&target);
            }
        }
        self.to_backend.extend_from_slice(msg);
        if let Link::Idle = self.link {
            self.link = Link::Connecting;
            self.actions.push_back(Action::Connect);
        }
    }

    /// StartTLS (RFC 4511 §4.14, RFC 4513 §3.1.1). Refusals leave the connection as it
    /// was: protocolError when the proxy has no certificate ("does not support TLS ...
    /// by current configuration"), operationsError when TLS is already established or
    /// other operations are outstanding. Bytes sent after the request, before the
    /// handshake, are a protocol violation: they could only be read in the clear as if
    /// they had been protected, so the connection is closed.
    fn start_tls(&mut self, env: Envelope) {
        let refusal = if !self.tls_available {
            Some(LdapError::new(
                LdapResultCode::ProtocolError,
                "StartTLS is not available: the proxy has no TLS certificate configured",
            ))
        } else if self.tls {
            Some(LdapError::new(
                LdapResultCode::OperationsError,
                "TLS is already established on this connection",
            ))
        } else if self.busy() {
            Some(LdapError::new(
                LdapResultCode::OperationsError,
                "StartTLS while other operations are outstanding",
            ))
        } else {
            None
        };
        if let Some(err) = refusal {
            tracing::debug!(peer = %self.peer, "StartTLS refused: {}", err.message);
            return self.send_local(&starttls_response(env.msgid, &err));
        }
        if !self.from_client.is_empty() {
            tracing::info!(peer = %self.peer, "closing client connection: data sent after StartTLS, before the TLS handshake");
            return self.disconnect(LdapError::new(
                LdapResultCode::ProtocolError,
                "data sent after the StartTLS request before the TLS handshake",
            ));
        }
        self.send_local(&starttls_response(env.msgid, &LdapError::success()));
        self.phase = Phase::Upgrading;
    }

    // ---- responses -----------------------------------------------------------------

    /// Passes complete or partial backend responses to the client, keeping track of
    /// message boundaries so proxy-made messages never land inside one.
    fn take_responses(&mut self) {
        loop {
            let Link::Up { responses, .. } = &mut self.link else {
                return;
            };
            // After a StartTLS answer, the next message goes out under TLS.
            if !responses.mid_message() && self.phase == Phase::Upgrading {
                return;
            }
            match responses.step(&mut self.from_backend, &mut self.to_client) {
                Ok(Step::Began(env)) => {
                    if env.op == op::BIND_RESPONSE {
                        self.forwarded_bind_answered(env);
                    }
                }
                Ok(Step::Passed) => {}
                Ok(Step::Ended(env)) => {
                    if op::is_final_response(env.op)
                        && self.outstanding.remove(&env.msgid).is_some()
                        && self.outstanding.len() + 1 == self.config.limits.max_outstanding
                    {
                        // Room again: requests left unread at the limit go now.
                        self.take_requests();
                    }
                    if !self.local_pending.is_empty() {
                        self.to_client
                            .extend_from_slice(&self.local_pending.split());
                    }
                    if matches!(self.bind, BindState::Decided(..) | BindState::Queued) {
                        return self.reached_boundary();
                    }
                }
                Ok(Step::Wait) => break,
                Err(e) => {
                    tracing::error!(peer = %self.peer, "backend sent a malformed message: {e}");
                    return self.disconnect(LdapError::new(
                        LdapResultCode::Unavailable,
                        "backend sent a malformed message",
                    ));
                }
            }
        }
        self.end_if_drained();
    }

    /// A BindResponse begins: when it answers a forwarded bind, log it, and charge a
    /// refused guess to its attempt budget.
    fn forwarded_bind_answered(&mut self, env: Envelope) {
        let Some(i) = self.forwarded.iter().position(|f| f.msgid == env.msgid) else {
            return;
        };
        let code = self
            .from_backend
            .get(..env.len)
            .and_then(|m| message::result_code(m).ok());
        let f = self.forwarded.remove(i);
        // invalidCredentials: a guess the directory refused.
        if let (Some(key), Some(49)) = (f.budget.clone(), code) {
            self.actions.push_back(Action::ChargeFailure(key));
        }
        log_forwarded_bind(self.peer, &f, code);
    }

    /// The backend stream is between messages: do what waited for that, then pass on
    /// what is already buffered.
    fn reached_boundary(&mut self) {
        match std::mem::replace(&mut self.bind, BindState::Idle) {
            BindState::Decided(p, decision, trail) => {
                self.bind = BindState::Deciding(p);
                self.bind_decided(decision, trail);
            }
            BindState::Queued => self.release_held(),
            other => self.bind = other,
        }
        self.take_responses();
    }

    // ---- the backend connection ------------------------------------------------------

    /// Part of a backend response has gone to the client and the rest has not.
    fn mid_response(&self) -> bool {
        matches!(&self.link, Link::Up { responses, .. } if responses.mid_message())
    }

    fn on_service_link(&self) -> bool {
        matches!(
            &self.link,
            Link::Up {
                as_service: true,
                ..
            }
        )
    }

    /// Whether the directory may hold the backend connection authenticated as someone:
    /// the service account, or whoever a relayed bind named.
    fn link_has_identity(&self) -> bool {
        matches!(&self.link, Link::Up { as_service, directory_bind, .. } if *as_service || *directory_bind)
    }

    /// Drops the backend connection so another can take its place. Callers wait for a
    /// message boundary first; should one not have, a half-sent response cannot be
    /// followed by any valid message, so the client connection is closed instead and
    /// `false` returned.
    fn retire_link(&mut self) -> bool {
        let mid_response = self.mid_response();
        if !matches!(self.link, Link::Idle) {
            self.actions.push_back(Action::RetireLink);
        }
        self.link = Link::Idle;
        self.outstanding.clear();
        self.to_backend.clear();
        self.from_backend.clear();
        self.log_unanswered_binds();
        if mid_response {
            tracing::info!(peer = %self.peer, "closing: a bind replaced the backend connection in the middle of a response");
            self.phase = Phase::Closing;
        }
        !mid_response
    }

    /// Forwarded binds whose answers will never come: their log lines say so rather
    /// than go missing.
    fn log_unanswered_binds(&mut self) {
        for f in std::mem::take(&mut self.forwarded) {
            log_forwarded_bind(self.peer, &f, None);
        }
    }

    // ---- answers and endings ---------------------------------------------------------

    /// Answers a request with `err` in the response type that request takes.
    fn reply(&mut self, env: Envelope, err: &LdapError) {
        if let Some(reply) = proto::result_for(env.msgid, env.op, err) {
            self.send_local(&reply);
        }
    }

    /// Queues a proxy-made message for the client at the next message boundary.
    fn send_local(&mut self, msg: &[u8]) {
        if self.mid_response() {
            self.local_pending.extend_from_slice(msg);
        } else {
            self.to_client.extend_from_slice(msg);
        }
    }

    fn protocol_error(&mut self, e: &FrameError) {
        tracing::info!(peer = %self.peer, "closing client connection: {e}");
        self.disconnect(LdapError::new(LdapResultCode::ProtocolError, e.to_string()));
    }

    /// Tells the client why it is being disconnected, then closes.
    fn disconnect(&mut self, why: LdapError) {
        if self.phase != Phase::Closing {
            self.send_local(&proto::notice_of_disconnection(&why));
            self.phase = Phase::Closing;
        }
    }

    fn end_if_drained(&mut self) {
        if self.phase == Phase::Draining && !self.busy() {
            self.disconnect(LdapError::new(
                LdapResultCode::Unavailable,
                self.leaving_because,
            ));
        }
    }
}

/// The BindResponse of a refused bind, with the controls 389 adds in the same case.
fn bind_refusal(msgid: i32, refusal: &Refusal, wants_ppolicy: bool) -> Bytes {
    let mut controls = Vec::new();
    if refusal.pw_expired {
        controls.push(proto::response_control(bind::OID_PW_EXPIRED, b"0"));
    }
    if refusal.account_locked && wants_ppolicy {
        // PasswordPolicyResponseValue { error [1] accountLocked(1) }
        controls.push(proto::response_control(
            bind::OID_PPOLICY,
            &[0x30, 0x03, 0x81, 0x01, 0x01],
        ));
    }
    proto::bind_response(msgid, &refusal.err, controls)
}

/// The StartTLS response: an ExtendedResponse named like the request (RFC 4511 §4.14.2).
fn starttls_response(msgid: i32, err: &LdapError) -> Bytes {
    proto::encode(LdapMsg::new(
        msgid,
        LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: LdapResult {
                code: err.code.clone(),
                matcheddn: String::new(),
                message: err.message.clone(),
                referral: Vec::new(),
            },
            name: Some(tls::OID_STARTTLS.to_owned()),
            value: None,
        }),
    ))
}

/// One line per bind the directory decided (`code` as it answered).
fn log_forwarded_bind(peer: SocketAddr, f: &ForwardedBind, code: Option<u32>) {
    // No answer (the connection went first): "-"; a code the proxy has no name for: "?".
    let result = code.map_or("-", |c| {
        LdapResultCode::try_from(i64::from(c)).map_or("?", |c| proto::code_name(&c))
    });
    tracing::info!(
        client = %peer,
        dn = %f.dn,
        route = "-",
        service = "-",
        result,
        code = code.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        ms = f.started.elapsed().as_millis() as u64,
        detail = %format!("forwarded: {}", f.reason),
        "bind"
    );
}

/// One line per bind the proxy decided: never the password.
fn log_bind(
    peer: SocketAddr,
    dn: &str,
    trail: &Trail,
    code: &LdapResultCode,
    started: Instant,
    abandoned: bool,
) {
    let route = trail.route.as_deref().unwrap_or("-");
    metrics::bind_decided(route, code, started.elapsed().as_secs_f64());
    // The DN comes escaped; what the directory and PAM said is escaped here.
    tracing::info!(
        client = %peer,
        dn = %dn,
        entry = %Untrusted::new(trail.entry.as_deref().unwrap_or("-")),
        route,
        service = trail.service.as_deref().unwrap_or("-"),
        result = proto::code_name(code),
        code = proto::code_number(code),
        ms = started.elapsed().as_millis() as u64,
        abandoned,
        detail = %Untrusted::new(trail.detail.as_deref().unwrap_or("")),
        "bind"
    );
}
