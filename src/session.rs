//! One client connection: reads whole LDAP messages from the client, relays them to the
//! session's own backend connection, and streams the backend's responses back unchanged.
//!
//! All of a session's I/O runs in one task, driven by [`Session::poll_event`]: it writes
//! what is buffered in both directions, then reads from whichever side has room. Reading
//! stops on a side whose outgoing buffer is full, so a slow client slows its backend
//! connection down (backpressure) instead of making the proxy buffer without bound.
//!
//! TLS: an LDAPS session starts with the handshake; a plain one may ask for it with
//! StartTLS (RFC 4511 §4.14), which the proxy answers itself and then runs the handshake
//! on the same TCP connection. Either way the session then reads and writes a
//! [`ClientStream`] as before, with `tls` set.

use crate::backend::{BackendStream, Unreachable};
use crate::bind::{self, FirstLook, Outcome, Refusal, Trail};
use crate::bind_request;
use crate::config::{Config, Identity};
use crate::context::Shared;
use crate::frame::{self, op, Envelope, FrameError};
use crate::logsafe::Untrusted;
use crate::message;
use crate::metrics;
use crate::policy::{self, Action, OID_PROXY_AUTHZ_V2};
use crate::proto::{self, LdapError};
use crate::tls::{self, ClientStream, Stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp, LdapResult, LdapResultCode};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::{Accept, TlsAcceptor};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Above this many buffered bytes for one direction, the session stops reading the side
/// that fills it.
const HIGH_WATER: usize = 256 * 1024;
/// How much room a read is given.
const READ_CHUNK: usize = 64 * 1024;

/// Requests held behind a pending bind: beyond this many, or this many bytes, the session
/// stops reading from the client until the bind is decided (backpressure).
const MAX_HELD: usize = 64;
const MAX_HELD_BYTES: usize = HIGH_WATER;

type Connecting = Pin<Box<dyn Future<Output = Result<BackendStream, Unreachable>> + Send>>;
type Deciding = Pin<Box<dyn Future<Output = (Outcome, Trail)> + Send>>;

/// The client side of the session.
enum Client {
    Open(ClientStream),
    /// The TLS handshake on the client's TCP connection (LDAPS, or after StartTLS).
    Handshake {
        accept: Box<Accept<TcpStream>>,
        deadline: Pin<Box<Sleep>>,
    },
    /// Only while the stream moves from one state to the next.
    Gone,
}

/// Who the session is, as far as the directory is concerned.
enum Auth {
    /// Anonymous, or bound by a bind the directory itself checked on the session's own
    /// backend connection.
    Directory,
    /// Authenticated by PAM; the backend connection is bound as the service account.
    Pam {
        dn: String,
        service: String,
        /// The Proxied Authorization control every relayed request carries, or `None`
        /// when requests run as the service account (`identity = "service"`).
        control: Option<Vec<u8>>,
    },
}

/// What waits for the backend stream to reach a message boundary.
enum AtBoundary {
    /// A bind the proxy decided that replaces the backend connection: a PAM success
    /// (the session moves to its service-bound connection) or a refusal on a connection
    /// that a directory bind may have authenticated (the session must become anonymous).
    Decided(Outcome, Trail),
    /// A new bind (first in `held`) that drops the service-bound connection.
    Bind,
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
    deciding: Deciding,
}

/// The session's connection to its backend.
enum Link {
    /// Not opened yet, or the last attempt failed; the next relayed operation opens it.
    Idle,
    Connecting(Connecting),
    Up(Backend),
}

struct Backend {
    stream: BackendStream,
    /// Bound as the proxy's service account: only a PAM-bound session may use it.
    as_service: bool,
    /// A bind was relayed on it: the directory may hold it authenticated as someone.
    directory_bind: bool,
    _counted: metrics::BackendConnection,
    /// Bytes read from the backend and not yet passed to the client.
    inbuf: BytesMut,
    /// The response being streamed to the client and how many of its bytes are still to come.
    streaming: Option<(Envelope, usize)>,
}

enum Event {
    ClientReadable,
    ClientGone(Option<io::Error>),
    BackendReadable,
    BackendGone(Option<io::Error>),
    Connected(Result<BackendStream, Unreachable>),
    /// The StartTLS success response is written: time for the handshake.
    StartTlsAnswered,
    /// The TLS handshake ended.
    Handshaken(io::Result<Box<tokio_rustls::server::TlsStream<TcpStream>>>),
    BindDecided(Outcome, Trail),
    ShutdownRequested,
    IdleCheck,
    /// Everything queued for the client is written and the session is ending.
    Finished,
}

/// State of one client connection.
pub struct Session {
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// The configuration this session follows: taken when it starts, and again at each
    /// bind so a reload's routes apply from the next bind on.
    config: Arc<Config>,
    client: Client,
    /// The client connection is protected by TLS.
    tls: bool,
    /// StartTLS was answered with success: read nothing more from the client until the
    /// handshake, which starts once that answer is written.
    upgrading: bool,
    auth: Auth,
    pending: Option<PendingBind>,
    /// Binds relayed for the directory to decide, each logged when its answer passes.
    forwarded: Vec<ForwardedBind>,
    /// Requests received while a bind is pending, in order, and their total size.
    held: VecDeque<(Envelope, Bytes)>,
    held_bytes: usize,
    /// Work that replaces the backend connection, waiting for the response being passed
    /// to the client to end: nothing may follow half a message.
    at_boundary: Option<AtBoundary>,
    from_client: BytesMut,
    to_client: BytesMut,
    /// Proxy-made messages waiting for the backend stream to reach a message boundary.
    local_pending: BytesMut,
    to_backend: BytesMut,
    link: Link,
    /// Relayed requests still waiting for their final response: messageID → request tag.
    outstanding: HashMap<i32, u8>,
    /// The session is ending: once what is queued for the client is written (a Notice of
    /// Disconnection, if one was due), the connection closes.
    closing: bool,
    /// Shutdown was requested: read no more requests, finish what is outstanding.
    draining: bool,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    last_activity: Instant,
}

impl Session {
    /// A session for a client accepted on the plain listener.
    pub fn new(
        client: TcpStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        Session::with_client(Client::Open(Stream::Plain(client)), peer, shared, shutdown)
    }

    /// A session for a client accepted on the LDAPS listener: the TLS handshake comes
    /// first, bounded by [`tls::HANDSHAKE_TIMEOUT`].
    pub fn new_ldaps(
        client: TcpStream,
        acceptor: &TlsAcceptor,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        Session::with_client(handshake(acceptor, client), peer, shared, shutdown)
    }

    fn with_client(
        client: Client,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        let config = shared.config();
        let idle = config
            .limits
            .idle_timeout
            .map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Session {
            peer,
            shared,
            config,
            client,
            tls: false,
            upgrading: false,
            auth: Auth::Directory,
            pending: None,
            forwarded: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            at_boundary: None,
            from_client: BytesMut::with_capacity(READ_CHUNK),
            to_client: BytesMut::new(),
            local_pending: BytesMut::new(),
            to_backend: BytesMut::new(),
            link: Link::Idle,
            outstanding: HashMap::new(),
            closing: false,
            draining: false,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            idle,
            last_activity: Instant::now(),
        }
    }

    /// Serves the client until it leaves, the backend goes away, or shutdown completes.
    pub async fn run(mut self) {
        tracing::debug!(peer = %self.peer, "client connected");
        metrics::client_connection(1.0);
        loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::ClientReadable => self.take_requests(),
                Event::ClientGone(err) => {
                    if let Some(e) = err {
                        tracing::debug!(peer = %self.peer, "client connection error: {e}");
                    }
                    break;
                }
                Event::BackendReadable => self.take_responses(),
                Event::BackendGone(err) => self.backend_lost(err),
                Event::Connected(result) => self.connected(result),
                Event::StartTlsAnswered => self.begin_handshake(),
                Event::Handshaken(Ok(stream)) => self.handshaken(stream),
                Event::Handshaken(Err(e)) => {
                    tracing::info!(peer = %self.peer, "TLS handshake failed: {e}");
                    break;
                }
                Event::BindDecided(outcome, trail) => self.bind_decided(outcome, trail),
                Event::ShutdownRequested => {
                    self.draining = true;
                    self.end_if_drained();
                }
                Event::IdleCheck => self.idle_check(),
                Event::Finished => break,
            }
        }
        if let Some(p) = self.pending.take().filter(|p| !p.abandoned) {
            // Its PAM transaction runs on; a retry of the same bind joins it.
            metrics::bind_abandoned();
            tracing::info!(client = %self.peer, dn = %p.dn, "bind left pending: client disconnected");
        }
        metrics::client_connection(-1.0);
        tracing::debug!(peer = %self.peer, "client connection closed");
    }

    /// Moves bytes as far as they go without blocking and reports the first thing that
    /// needs the session's attention.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let client = match &mut self.client {
            Client::Open(stream) => stream,
            Client::Handshake { accept, deadline } => {
                // Nothing else happens meanwhile: no operation is outstanding (StartTLS
                // requires it) and the deadline bounds the wait.
                if let Poll::Ready(result) = Pin::new(accept.as_mut()).poll(cx) {
                    return Poll::Ready(Event::Handshaken(result.map(Box::new)));
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Handshaken(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no handshake within {:?}", tls::HANDSHAKE_TIMEOUT),
                    ))));
                }
                return Poll::Pending;
            }
            Client::Gone => return Poll::Ready(Event::Finished),
        };
        match poll_write_all(client, &mut self.to_client, cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientGone(Some(e))),
            Poll::Ready(Ok(()))
                if self.upgrading && !self.closing && self.local_pending.is_empty() =>
            {
                return Poll::Ready(Event::StartTlsAnswered);
            }
            _ => {}
        }
        if self.closing {
            if !self.to_client.is_empty() {
                return Poll::Pending;
            }
            return match Pin::new(client).poll_shutdown(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Event::Finished),
            };
        }

        match &mut self.link {
            Link::Idle => {}
            Link::Connecting(fut) => {
                if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Event::Connected(result));
                }
            }
            Link::Up(b) => {
                if let Err(e) =
                    ready_or_pending(poll_write_all(&mut b.stream, &mut self.to_backend, cx))
                {
                    return Poll::Ready(Event::BackendGone(Some(e)));
                }
                // While StartTLS is being answered, backend messages wait (nothing but
                // the handshake may follow that answer in the clear), except the rest of
                // one already being passed on, which the answer waits for.
                if self.to_client.len() < HIGH_WATER && (!self.upgrading || b.streaming.is_some()) {
                    b.inbuf.reserve(READ_CHUNK);
                    // At most one chunk, whatever capacity the buffer kept from earlier
                    // traffic: the high-water marks bound what is buffered.
                    match poll_read_buf(
                        Pin::new(&mut b.stream),
                        cx,
                        &mut (&mut b.inbuf).limit(READ_CHUNK),
                    ) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Event::BackendGone(None)),
                        Poll::Ready(Ok(_)) => return Poll::Ready(Event::BackendReadable),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::BackendGone(Some(e))),
                        Poll::Pending => {}
                    }
                }
            }
        }

        if let Some(p) = &mut self.pending {
            if let Poll::Ready((outcome, trail)) = p.deciding.as_mut().poll(cx) {
                return Poll::Ready(Event::BindDecided(outcome, trail));
            }
        }

        if !self.draining {
            // Relayed requests are bounded through the backend (its responses stop at
            // HIGH_WATER); the second bound is for answers the proxy makes itself, which
            // a client that never reads could otherwise pile up.
            if self.to_backend.len() < HIGH_WATER
                && self.to_client.len() + self.local_pending.len() < 2 * HIGH_WATER
                && !self.upgrading
                && self.held.len() < MAX_HELD
                && self.held_bytes < MAX_HELD_BYTES
            {
                self.from_client.reserve(READ_CHUNK);
                match poll_read_buf(
                    Pin::new(client),
                    cx,
                    &mut (&mut self.from_client).limit(READ_CHUNK),
                ) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Event::ClientGone(None)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Event::ClientReadable),
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientGone(Some(e))),
                    Poll::Pending => {}
                }
            }
            if self.shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::ShutdownRequested);
            }
        }
        if let Some((_, sleep)) = &mut self.idle {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::IdleCheck);
            }
        }
        Poll::Pending
    }

    /// Handles every complete request the client has sent.
    fn take_requests(&mut self) {
        self.last_activity = Instant::now();
        let limit = self.config.limits.max_message_size;
        while !self.closing && !self.upgrading && !self.holding_full() {
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
        if env.op == op::EXTENDED_REQUEST && is_starttls(&msg) {
            // Never held behind a bind: a pending bind makes it fail at once.
            return self.start_tls(env);
        }
        if self.pending.is_none() && self.held.is_empty() {
            return self.dispatch(env, msg);
        }
        // A bind is pending: later requests wait for its outcome (RFC 4511 §4.2.1),
        // except those that concern the wait itself.
        match env.op {
            op::UNBIND_REQUEST => self.closing = true,
            op::ABANDON_REQUEST => self.abandon_while_pending(env, msg),
            _ => {
                self.held_bytes += msg.len();
                self.held.push_back((env, msg));
            }
        }
    }

    /// As many requests are held behind a pending bind as a session may hold: read no
    /// more from the client until the bind is decided.
    fn holding_full(&self) -> bool {
        self.held.len() >= MAX_HELD || self.held_bytes >= MAX_HELD_BYTES
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
                // Pass the Unbind on so the directory logs an orderly close.
                if let Link::Up(_) = self.link {
                    self.to_backend.extend_from_slice(&msg);
                }
                self.closing = true;
            }
            // Nothing to abandon on a backend connection that was never opened.
            op::ABANDON_REQUEST if matches!(self.link, Link::Idle) => {}
            op::BIND_REQUEST if self.mid_response() && self.on_service_link() => {
                self.held_bytes += msg.len();
                self.held.push_front((env, msg));
                self.at_boundary = Some(AtBoundary::Bind);
            }
            op::BIND_REQUEST => self.bind(env, msg),
            _ => match &self.auth {
                Auth::Directory => self.relay(env, &msg),
                Auth::Pam { .. } => self.relay_for_pam_user(env, msg),
            },
        }
    }

    /// Runs requests held behind a bind that has now been decided, until one of them is
    /// itself a bind the proxy must decide.
    fn release_held(&mut self) {
        while self.pending.is_none() && self.at_boundary.is_none() && !self.closing {
            let Some((env, msg)) = self.held.pop_front() else {
                // Requests left unread while the queue was full.
                return self.take_requests();
            };
            self.held_bytes -= msg.len();
            self.dispatch(env, msg);
        }
    }

    fn abandon_while_pending(&mut self, env: Envelope, msg: Bytes) {
        let Ok(target) = message::abandon_target(&msg) else {
            return;
        };
        if let Some(p) = self.pending.as_mut().filter(|p| p.msgid == target) {
            if !p.abandoned {
                metrics::bind_abandoned();
                tracing::info!(client = %self.peer, dn = %p.dn, "bind abandoned by the client; its PAM transaction continues");
            }
            p.abandoned = true;
        } else if let Some(i) = self.held.iter().position(|(e, _)| e.msgid == target) {
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
        if matches!(&self.link, Link::Up(b) if b.as_service) {
            // Never let an unauthenticated or directory-bound session run as the
            // service account: drop that connection (its unfinished operations are
            // abandoned, as a bind permits).
            if !self.retire_link() {
                return;
            }
        }
        let request = match bind_request::parse(&msg) {
            Ok(r) => r,
            Err(e) => return self.protocol_error(&e),
        };
        self.config = self.shared.config();
        let config = Arc::clone(&self.config);
        // Only ever logged: escaped once, here (DESIGN §7, logs are data).
        let dn = Untrusted::new(request.name).to_string();
        let (deciding, wants_authz_id, wants_ppolicy): (Deciding, _, _) =
            match bind::first_look(&config, &request, self.tls) {
                FirstLook::Forward { reason, mechanism } => {
                    let canonical = request.encode(mechanism.as_deref());
                    return self.forward_bind(env, &canonical, dn, reason, None);
                }
                // Decided already; it still goes the way of every decided bind, so the
                // session is reset the same way.
                FirstLook::Refuse(err) => (
                    Box::pin(std::future::ready((
                        Outcome::Fail(err.into()),
                        Trail::default(),
                    ))),
                    false,
                    request.has_control(bind::OID_PPOLICY),
                ),
                FirstLook::Decide(bind) => {
                    let shared = Arc::clone(&self.shared);
                    let (client, tls) = (self.peer.ip(), self.tls);
                    let wants = (bind.wants_authz_id, bind.wants_ppolicy);
                    (
                        Box::pin(async move {
                            bind::authenticate(
                                &config,
                                &shared.lookup,
                                &shared.pam,
                                bind,
                                client,
                                tls,
                            )
                            .await
                        }),
                        wants.0,
                        wants.1,
                    )
                }
            };
        self.pending = Some(PendingBind {
            msgid: env.msgid,
            request: request.encode(None),
            dn,
            wants_authz_id,
            wants_ppolicy,
            started: Instant::now(),
            abandoned: false,
            deciding,
        });
    }

    /// Whether the directory may hold the session's backend connection authenticated as
    /// someone: the service account, or whoever a relayed bind named.
    fn link_has_identity(&self) -> bool {
        matches!(&self.link, Link::Up(b) if b.as_service || b.directory_bind)
    }

    fn bind_decided(&mut self, outcome: Outcome, trail: Trail) {
        let replaces_link = match outcome {
            Outcome::Bound { .. } => true,
            Outcome::Fail(_) => self.link_has_identity(),
            Outcome::Forward { .. } => false,
        };
        if replaces_link && self.mid_response() {
            // Requests stay held behind the bind until the swap; its decision is made.
            if let Some(p) = &mut self.pending {
                p.deciding = Box::pin(std::future::pending());
            }
            self.at_boundary = Some(AtBoundary::Decided(outcome, trail));
            return;
        }
        let Some(p) = self.pending.take() else {
            return;
        };
        let env = Envelope {
            msgid: p.msgid,
            op: op::BIND_REQUEST,
            len: p.request.len(),
        };
        match outcome {
            Outcome::Forward { reason, budget } => {
                if !p.abandoned {
                    self.forward_bind(env, &p.request, p.dn.clone(), reason, budget);
                }
            }
            Outcome::Fail(refusal) => {
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
            Outcome::Bound { link, dn } => {
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
                if p.abandoned {
                    // Nobody is waiting for this session to become the user.
                    return self.release_held();
                }
                let identity = self.config.bind.identity;
                let authz = format!("dn:{dn}");
                self.link = Link::Up(Backend::new(link, true));
                self.auth = Auth::Pam {
                    dn,
                    service: trail.service.clone().unwrap_or_default(),
                    control: (identity == Identity::ProxyAuthz).then(|| {
                        message::control(OID_PROXY_AUTHZ_V2, true, Some(authz.as_bytes()))
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
        }
        self.release_held();
    }

    /// Part of a backend response has gone to the client and the rest has not.
    fn mid_response(&self) -> bool {
        matches!(&self.link, Link::Up(b) if b.streaming.is_some())
    }

    fn on_service_link(&self) -> bool {
        matches!(&self.link, Link::Up(b) if b.as_service)
    }

    /// The backend stream is between messages: do what waited for that, then pass on
    /// what is already buffered.
    fn reached_boundary(&mut self) {
        match self.at_boundary.take() {
            Some(AtBoundary::Decided(outcome, trail)) => self.bind_decided(outcome, trail),
            Some(AtBoundary::Bind) => self.release_held(),
            None => {}
        }
        self.take_responses();
    }

    /// Drops the backend connection so another can take its place; its unfinished
    /// operations are abandoned, as a bind permits (RFC 4511 §4.2.1). Callers wait for a
    /// message boundary first ([`AtBoundary`]); should one not have, a half-sent
    /// response cannot be followed by any valid message, so the client connection is
    /// closed instead and `false` returned.
    fn retire_link(&mut self) -> bool {
        let mid_response = self.mid_response();
        self.link = Link::Idle;
        self.outstanding.clear();
        self.to_backend.clear();
        // Their answers will never come; say so in the log rather than lose the lines.
        for f in std::mem::take(&mut self.forwarded) {
            log_forwarded_bind(self.peer, &f, None);
        }
        if mid_response {
            tracing::info!(peer = %self.peer, "closing: a bind replaced the backend connection in the middle of a response");
            self.closing = true;
        }
        !mid_response
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
        if let Link::Up(b) = &mut self.link {
            b.directory_bind = true;
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
            Action::Relay => self.relay(env, &msg),
            Action::RelayRewritten(rewritten) => self.relay(env, &rewritten),
            Action::WhoAmI(authzid) => {
                let reply = proto::extended_response(
                    env.msgid,
                    &LdapError::success(),
                    Some(authzid.into_bytes()),
                );
                self.send_local(&reply);
            }
            Action::Refuse(err) => {
                tracing::info!(peer = %self.peer, op = op::name(env.op), "request refused: {}", err.message);
                self.reply(env, &err);
            }
            Action::ProtocolError(e) => self.protocol_error(&e),
        }
    }

    /// Answers a request with `err` in the response type that request takes.
    fn reply(&mut self, env: Envelope, err: &LdapError) {
        if let Some(reply) = proto::result_for(env.msgid, env.op, err) {
            self.send_local(&reply);
        }
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
            let config = Arc::clone(&self.config);
            let backends = Arc::clone(&self.shared.backends);
            self.link =
                Link::Connecting(Box::pin(
                    async move { backends.connect(&config.backend).await },
                ));
        }
    }

    fn connected(&mut self, result: Result<BackendStream, Unreachable>) {
        match result {
            Ok(stream) => {
                let mut backend = Backend::new(stream, false);
                // A bind relayed before the connection was up travels in `to_backend`.
                backend.directory_bind = !self.forwarded.is_empty();
                self.link = Link::Up(backend);
            }
            Err(e) => {
                // Answer everything that was waiting for this connection; the next
                // request tries again.
                self.link = Link::Idle;
                self.to_backend.clear();
                let err = LdapError::new(LdapResultCode::Unavailable, e.to_string());
                let mut waiting: Vec<_> = self.outstanding.drain().collect();
                waiting.sort_unstable();
                for (msgid, request) in waiting {
                    if let Some(reply) = proto::result_for(msgid, request, &err) {
                        self.send_local(&reply);
                    }
                }
                self.end_if_drained();
            }
        }
    }

    /// Passes complete or partial backend responses to the client, keeping track of
    /// message boundaries so proxy-made messages never land inside one.
    fn take_responses(&mut self) {
        let Link::Up(b) = &mut self.link else {
            return;
        };
        loop {
            match b.streaming {
                Some((env, remaining)) => {
                    let n = remaining.min(b.inbuf.len());
                    if n == 0 {
                        return;
                    }
                    self.to_client.extend_from_slice(&b.inbuf[..n]);
                    b.inbuf.advance(n);
                    if n < remaining {
                        b.streaming = Some((env, remaining - n));
                        return;
                    }
                    b.streaming = None;
                    if op::is_final_response(env.op) {
                        self.outstanding.remove(&env.msgid);
                    }
                    if !self.local_pending.is_empty() {
                        self.to_client
                            .extend_from_slice(&self.local_pending.split());
                    }
                    if self.at_boundary.is_some() {
                        return self.reached_boundary();
                    }
                }
                // After a StartTLS answer, the next message goes out under TLS.
                None if self.upgrading => return,
                None => match frame::peek(&b.inbuf, usize::MAX) {
                    Ok(Some(env)) => {
                        if env.op == op::BIND_RESPONSE {
                            if let Some(i) =
                                self.forwarded.iter().position(|f| f.msgid == env.msgid)
                            {
                                let code = b
                                    .inbuf
                                    .get(..env.len)
                                    .and_then(|m| message::result_code(m).ok());
                                let f = self.forwarded.remove(i);
                                // invalidCredentials: a guess the directory refused.
                                if let (Some(key), Some(49)) = (&f.budget, code) {
                                    self.shared.pam.charge_failure(key, self.peer.ip());
                                }
                                log_forwarded_bind(self.peer, &f, code);
                            }
                        }
                        b.streaming = Some((env, env.len));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(peer = %self.peer, "backend sent a malformed message: {e}");
                        return self.disconnect(LdapError::new(
                            LdapResultCode::Unavailable,
                            "backend sent a malformed message",
                        ));
                    }
                },
            }
        }
        self.end_if_drained();
    }

    fn backend_lost(&mut self, err: Option<io::Error>) {
        let streaming = matches!(&self.link, Link::Up(b) if b.streaming.is_some());
        match err {
            Some(e) => tracing::warn!(peer = %self.peer, "backend connection failed: {e}"),
            None => tracing::info!(peer = %self.peer, "backend closed the connection"),
        }
        self.link = Link::Idle;
        if streaming {
            // A half-sent response cannot be followed by a valid message.
            self.closing = true;
        } else {
            self.disconnect(LdapError::new(
                LdapResultCode::Unavailable,
                "connection to the directory server was lost",
            ));
        }
    }

    /// StartTLS (RFC 4511 §4.14, RFC 4513 §3.1.1). Refusals leave the connection as it
    /// was: protocolError when the proxy has no certificate ("does not support TLS ...
    /// by current configuration"), operationsError when TLS is already established or
    /// other operations are outstanding. Bytes sent after the request, before the
    /// handshake, are a protocol violation: they could only be read in the clear as if
    /// they had been protected, so the connection is closed.
    fn start_tls(&mut self, env: Envelope) {
        let refusal = if self.shared.tls.is_none() {
            Some(LdapError::new(
                LdapResultCode::ProtocolError,
                "StartTLS is not available: the proxy has no TLS certificate configured",
            ))
        } else if self.tls {
            Some(LdapError::new(
                LdapResultCode::OperationsError,
                "TLS is already established on this connection",
            ))
        } else if self.pending.is_some() || !self.held.is_empty() || !self.outstanding.is_empty() {
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
        self.upgrading = true;
    }

    /// The StartTLS answer is written: the handshake runs on the same TCP connection.
    fn begin_handshake(&mut self) {
        self.upgrading = false;
        let acceptor = self.shared.tls.as_ref().map(|t| t.acceptor());
        match (std::mem::replace(&mut self.client, Client::Gone), acceptor) {
            (Client::Open(Stream::Plain(tcp)), Some(acceptor)) => {
                self.client = handshake(&acceptor, tcp);
            }
            // Cannot happen (StartTLS was accepted only on a plain connection with TLS
            // configured); ending the session is the safe answer.
            (other, _) => {
                self.client = other;
                self.closing = true;
            }
        }
    }

    fn handshaken(&mut self, stream: Box<tokio_rustls::server::TlsStream<TcpStream>>) {
        let (_, conn) = stream.get_ref();
        tracing::debug!(
            peer = %self.peer,
            version = ?conn.protocol_version(),
            suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
            "TLS established"
        );
        self.client = Client::Open(Stream::Tls(stream));
        self.tls = true;
        self.last_activity = Instant::now();
        // Backend messages that arrived during the upgrade go out now, under TLS.
        self.take_responses();
    }

    fn protocol_error(&mut self, e: &FrameError) {
        tracing::info!(peer = %self.peer, "closing client connection: {e}");
        self.disconnect(LdapError::new(LdapResultCode::ProtocolError, e.to_string()));
    }

    /// Tells the client why it is being disconnected, then closes.
    fn disconnect(&mut self, why: LdapError) {
        if !self.closing {
            self.send_local(&proto::notice_of_disconnection(&why));
            self.closing = true;
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

    fn end_if_drained(&mut self) {
        if self.draining && self.outstanding.is_empty() {
            if self.upgrading {
                // A notice in the clear cannot follow a StartTLS success.
                self.closing = true;
                return;
            }
            self.disconnect(LdapError::new(
                LdapResultCode::Unavailable,
                "the proxy is shutting down",
            ));
        }
    }

    fn idle_check(&mut self) {
        let Some((timeout, sleep)) = &mut self.idle else {
            return;
        };
        let deadline = self.last_activity + *timeout;
        if Instant::now() < deadline || !self.outstanding.is_empty() {
            // Re-arming only when the timer fires keeps the per-read cost to one clock read.
            let next = deadline.max(Instant::now() + Duration::from_millis(100));
            sleep.as_mut().reset(next.into());
            return;
        }
        tracing::info!(peer = %self.peer, "closing idle client connection");
        self.closing = true;
    }
}

impl Backend {
    fn new(stream: BackendStream, as_service: bool) -> Self {
        Backend {
            stream,
            as_service,
            directory_bind: false,
            _counted: metrics::BackendConnection::open(),
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            streaming: None,
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

/// Starts the TLS handshake on `tcp`, with its deadline.
fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> Client {
    Client::Handshake {
        accept: Box::new(acceptor.accept(tcp)),
        deadline: Box::pin(tokio::time::sleep(tls::HANDSHAKE_TIMEOUT)),
    }
}

/// Whether an ExtendedRequest is StartTLS.
fn is_starttls(msg: &[u8]) -> bool {
    message::extended_oid(msg).is_ok_and(|oid| oid == tls::OID_STARTTLS)
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
    tracing::info!(
        client = %peer,
        dn = %f.dn,
        route = "-",
        service = "-",
        result = code.map_or_else(|| "?".to_owned(), |c| c.to_string()),
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
        result = ?code,
        ms = started.elapsed().as_millis() as u64,
        abandoned,
        detail = %Untrusted::new(trail.detail.as_deref().unwrap_or("")),
        "bind"
    );
}

/// Writes as much of `buf` as the stream takes now; `Ready(Err)` on a failed or closed
/// stream, `Ready(Ok)` when `buf` is empty, `Pending` when the stream is full.
fn poll_write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !buf.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, buf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => buf.advance(n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Pin::new(stream).poll_flush(cx)
}

/// Errors matter now; a write that is still pending will wake the task later.
fn ready_or_pending(p: Poll<io::Result<()>>) -> io::Result<()> {
    match p {
        Poll::Ready(Err(e)) => Err(e),
        _ => Ok(()),
    }
}
