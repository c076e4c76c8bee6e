//! One client connection: the I/O shell around the protocol core.
//!
//! `state::SessionState` decides everything about the connection without doing any
//! I/O; this shell owns the sockets, the TLS handshake, the timers and the futures that
//! open backend connections and decide binds. All of a session's I/O runs in one task,
//! driven by `Session::poll_event`: it writes what the core has buffered in both
//! directions, then reads from whichever side the core has room for (backpressure: a
//! slow client slows its backend connection down instead of making the proxy buffer),
//! and reports the first thing that happened to the core.
//!
//! - `state`: the core (phases, binds, held requests, relaying, StartTLS, endings).
//! - `boundary`: where the backend's response stream stands between messages.
//! - [`policy`]: what a PAM-bound session may relay.

mod boundary;
pub mod policy;
mod state;
#[cfg(test)]
mod tests;

use crate::backend::{BackendStream, Unreachable};
use crate::bind::{self, Outcome, Trail};
use crate::context::Shared;
use crate::service_links::Lease;
use crate::tls::{self, ClientStream, Stream};
use crate::{metrics, slots};
use bytes::{Buf, BufMut, BytesMut};
pub use state::HIGH_WATER;
use state::{Action, Decision, SessionState, READ_CHUNK};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::{Accept, TlsAcceptor};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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

/// The session's way to the directory.
enum Backend {
    /// A connection of its own (anonymous, or bound by a bind it relayed), counted in the
    /// metrics while it lives.
    Own {
        stream: BackendStream,
        _counted: metrics::BackendConnection,
    },
    /// Its place on a connection bound as the service account (a PAM-bound session).
    Shared(Lease),
}

impl Backend {
    fn own(stream: BackendStream) -> Self {
        Backend::Own {
            stream,
            _counted: metrics::BackendConnection::open(),
        }
    }

    /// Writes (or hands on) as much of `out` as goes now.
    fn poll_send(&mut self, out: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Backend::Own { stream, .. } => poll_write_all(stream, out, cx),
            Backend::Shared(lease) => lease.poll_send(out, cx),
        }
    }

    /// Reads what has come, at most one chunk; `Ok(0)` when the backend closed.
    fn poll_recv(&mut self, into: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self {
            Backend::Own { stream, .. } => read_chunk(stream, into, cx),
            Backend::Shared(lease) => lease.poll_recv(into, cx),
        }
    }
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
    /// The core's deadline came.
    Tick,
    /// Everything queued for the client is written and the session is ending.
    Finished,
}

/// One client connection.
pub struct Session {
    peer: SocketAddr,
    shared: Arc<Shared>,
    core: SessionState,
    client: Client,
    backend: Option<Backend>,
    connecting: Option<Connecting>,
    deciding: Option<Deciding>,
    /// The place on a shared service-bound connection of a PAM success, until the core
    /// installs it.
    service_link: Option<Lease>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The core's next deadline (idle, unfinished request), when one is armed.
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// Where the connection table reads whether this session is busy (crate::slots).
    activity: Option<Arc<slots::Activity>>,
    /// Cancelled with `shutdown` when the table asked this connection to leave.
    asked_to_leave: Option<CancellationToken>,
}

impl Session {
    /// A session for a client accepted on the plain listener.
    pub fn new(
        client: TcpStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        Session::with_client(
            Client::Open(Stream::Plain(client)),
            false,
            peer,
            shared,
            shutdown,
        )
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
        Session::with_client(handshake(acceptor, client), true, peer, shared, shutdown)
    }

    fn with_client(
        client: Client,
        tls: bool,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        let source = Arc::clone(&shared);
        let core = SessionState::new(
            peer,
            Box::new(move || source.config()),
            shared.tls.is_some(),
            tls,
        );
        let armed = core.next_deadline();
        let timer = Box::pin(tokio::time::sleep_until(
            armed.unwrap_or_else(Instant::now).into(),
        ));
        Session {
            peer,
            shared,
            core,
            client,
            backend: None,
            connecting: None,
            deciding: None,
            service_link: None,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            timer,
            armed,
            activity: None,
            asked_to_leave: None,
        }
    }

    /// The session holds `slot` of the connection table: it reports after each event
    /// whether anything is in progress (the table asks idle connections, never busy ones,
    /// to leave when it fills), and tells its client when it was asked to leave.
    pub fn in_slot(mut self, slot: &slots::Slot) -> Self {
        self.activity = Some(Arc::clone(&slot.activity));
        self.asked_to_leave = Some(slot.asked_to_leave());
        self
    }

    /// Serves the client until it leaves, the backend goes away, or shutdown completes.
    pub async fn run(mut self) {
        tracing::debug!(peer = %self.peer, "client connected");
        // Counted until the session ends or is dropped (the connection table closes a
        // connection that overstays by dropping its session).
        let _counted = metrics::ClientConnection::open();
        loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::ClientReadable => self.core.client_data(Instant::now()),
                Event::ClientGone(err) => {
                    if let Some(e) = err {
                        tracing::debug!(peer = %self.peer, "client connection error: {e}");
                    }
                    break;
                }
                Event::BackendReadable => self.core.backend_data(),
                Event::BackendGone(err) => {
                    self.backend = None;
                    self.core.backend_lost(err.map(|e| e.to_string()));
                }
                Event::Connected(result) => {
                    self.connecting = None;
                    let result = match result {
                        Ok(stream) => {
                            self.backend = Some(Backend::own(stream));
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    self.core.connected(result);
                }
                Event::StartTlsAnswered => self.begin_handshake(),
                Event::Handshaken(Ok(stream)) => {
                    let (_, conn) = stream.get_ref();
                    tracing::debug!(
                        peer = %self.peer,
                        version = ?conn.protocol_version(),
                        suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
                        "TLS established"
                    );
                    self.client = Client::Open(Stream::Tls(stream));
                    self.core.tls_established(Instant::now());
                }
                Event::Handshaken(Err(e)) => {
                    tracing::info!(peer = %self.peer, "TLS handshake failed: {e}");
                    break;
                }
                Event::BindDecided(outcome, trail) => {
                    self.deciding = None;
                    let decision = match outcome {
                        Outcome::Forward { reason, budget } => Decision::Forward { reason, budget },
                        Outcome::Fail(refusal) => Decision::Fail(refusal),
                        Outcome::Bound { link, dn } => {
                            self.service_link = Some(link);
                            Decision::Bound { dn }
                        }
                    };
                    self.core.bind_decided(decision, trail);
                }
                Event::ShutdownRequested => {
                    let evicted = self
                        .asked_to_leave
                        .as_ref()
                        .is_some_and(CancellationToken::is_cancelled);
                    self.core.shutdown(if evicted {
                        "the proxy has too many connections: idle ones are closed to make room (reconnect when needed)"
                    } else {
                        "the proxy is shutting down"
                    });
                }
                Event::Tick => {
                    self.armed = self.core.tick(Instant::now());
                    if let Some(at) = self.armed {
                        self.timer.as_mut().reset(at.into());
                    }
                }
                Event::Finished => {
                    self.discard_unread();
                    break;
                }
            }
            self.carry_out();
            self.rearm();
            if let Some(a) = &self.activity {
                a.report(self.core.busy());
            }
        }
        self.core.finish();
        tracing::debug!(peer = %self.peer, "client connection closed");
    }

    /// Brings the timer forward when the core's next deadline came nearer (a request
    /// begun and not finished). A later deadline waits for the timer to fire: re-arming
    /// only then keeps the cost of a read to one comparison.
    fn rearm(&mut self) {
        if let Some(at) = self.core.next_deadline() {
            if self.armed.map_or(true, |armed| at < armed) {
                self.armed = Some(at);
                self.timer.as_mut().reset(at.into());
            }
        }
    }

    /// Carries out what the core asked for, in order.
    fn carry_out(&mut self) {
        while let Some(action) = self.core.next_action() {
            match action {
                Action::Connect => {
                    let config = self.shared.config();
                    let backends = Arc::clone(&self.shared.backends);
                    self.connecting =
                        Some(Box::pin(
                            async move { backends.connect(&config.backend).await },
                        ));
                }
                Action::Decide { bind, tls } => {
                    let shared = Arc::clone(&self.shared);
                    let config = shared.config();
                    let client = self.peer.ip();
                    self.deciding = Some(Box::pin(async move {
                        bind::authenticate_unless_cut(&shared, &config, bind, client, tls).await
                    }));
                }
                Action::RetireLink => {
                    self.backend = None;
                    self.connecting = None;
                }
                Action::InstallServiceLink => {
                    self.backend = self.service_link.take().map(Backend::Shared);
                }
                Action::ChargeFailure(key) => self.shared.pam.charge_failure(&key, self.peer.ip()),
            }
        }
        // A PAM success nobody waits for any more (abandoned) is not installed.
        self.service_link = None;
    }

    /// Moves bytes as far as they go without blocking and reports the first thing that
    /// needs the session's attention.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let client = match &mut self.client {
            Client::Open(stream) => stream,
            Client::Handshake { accept, deadline } => {
                // Nothing else happens meanwhile: nothing is in progress (StartTLS
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
        match poll_write_all(client, self.core.client_out(), cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientGone(Some(e))),
            Poll::Ready(Ok(())) if self.core.ready_for_handshake() => {
                return Poll::Ready(Event::StartTlsAnswered);
            }
            _ => {}
        }
        if self.core.closing() {
            // What the backend still has to get (an Unbind, so the directory logs an
            // orderly close) goes if it can go now; the client does not wait for it.
            if let Some(b) = &mut self.backend {
                let _ = b.poll_send(self.core.backend_out(), cx);
            }
            if !self.core.client_out().is_empty() {
                return Poll::Pending;
            }
            return match Pin::new(client).poll_shutdown(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Event::Finished),
            };
        }

        if let Some(fut) = &mut self.connecting {
            if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                return Poll::Ready(Event::Connected(result));
            }
        }
        if let Some(b) = &mut self.backend {
            if let Poll::Ready(Err(e)) = b.poll_send(self.core.backend_out(), cx) {
                return Poll::Ready(Event::BackendGone(Some(e)));
            }
            if self.core.may_read_backend() {
                match b.poll_recv(self.core.backend_in(), cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Event::BackendGone(None)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Event::BackendReadable),
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::BackendGone(Some(e))),
                    Poll::Pending => {}
                }
            }
        }

        if let Some(fut) = &mut self.deciding {
            if let Poll::Ready((outcome, trail)) = fut.as_mut().poll(cx) {
                return Poll::Ready(Event::BindDecided(outcome, trail));
            }
        }

        if self.core.may_read_client() {
            match read_chunk(client, self.core.client_in(), cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ClientGone(None)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Event::ClientReadable),
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientGone(Some(e))),
                Poll::Pending => {}
            }
        }
        if !self.core.draining() && self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::ShutdownRequested);
        }
        if self.armed.is_some() && self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Tick);
        }
        // Nothing to do until the next readiness: the session waits without buffers.
        self.core.release_idle_buffers();
        Poll::Pending
    }

    /// Throws away what the client sent and the session will not read. Closing a socket
    /// with unread input makes the kernel reset the connection, and a reset discards what
    /// the client has not read yet: the last answers and the Notice of Disconnection that
    /// says why. Only what has already arrived: nothing waits for more.
    fn discard_unread(&self) {
        let tcp = match &self.client {
            Client::Open(Stream::Plain(tcp)) => tcp,
            Client::Open(Stream::Tls(tls)) => tls.get_ref().0,
            _ => return,
        };
        // Straight from the socket (non-blocking): tokio's own try_read trusts readiness
        // it last saw, and the session stopped asking for that.
        let socket = socket2::SockRef::from(tcp);
        let mut sink = [0u8; 4096];
        while matches!(std::io::Read::read(&mut &*socket, &mut sink), Ok(n) if n > 0) {}
    }

    /// The StartTLS answer is written: the handshake runs on the same TCP connection.
    fn begin_handshake(&mut self) {
        let acceptor = self.shared.tls.as_ref().map(|t| t.acceptor());
        match (std::mem::replace(&mut self.client, Client::Gone), acceptor) {
            (Client::Open(Stream::Plain(tcp)), Some(acceptor)) => {
                self.client = handshake(&acceptor, tcp);
                self.core.handshake_started();
            }
            // Cannot happen (StartTLS was accepted only on a plain connection with TLS
            // configured); ending the session is the safe answer.
            (other, _) => {
                self.client = other;
                self.core.close();
            }
        }
    }
}

/// Starts the TLS handshake on `tcp`, with its deadline.
fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> Client {
    Client::Handshake {
        accept: Box::new(acceptor.accept(tcp)),
        deadline: Box::pin(tokio::time::sleep(tls::HANDSHAKE_TIMEOUT)),
    }
}

/// Reads at most one chunk, whatever capacity the buffer kept from earlier traffic: the
/// core's high-water marks bound what is buffered.
fn read_chunk<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(READ_CHUNK);
    poll_read_buf(Pin::new(stream), cx, &mut buf.limit(READ_CHUNK))
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
