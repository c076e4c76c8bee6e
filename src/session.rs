//! One client connection: reads whole LDAP messages from the client, relays them to the
//! session's own backend connection, and streams the backend's responses back unchanged.
//!
//! All of a session's I/O runs in one task, driven by [`Session::poll_event`]: it writes
//! what is buffered in both directions, then reads from whichever side has room. Reading
//! stops on a side whose outgoing buffer is full, so a slow client slows its backend
//! connection down (backpressure) instead of making the proxy buffer without bound.

use crate::backend::{self, Unreachable};
use crate::config::Config;
use crate::frame::{self, op, Envelope, FrameError};
use crate::proto::{self, LdapError};
use bytes::{Buf, Bytes, BytesMut};
use ldap3_proto::proto::LdapResultCode;
use std::collections::HashMap;
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
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Above this many buffered bytes for one direction, the session stops reading the side
/// that fills it.
const HIGH_WATER: usize = 256 * 1024;
/// How much room a read is given.
const READ_CHUNK: usize = 64 * 1024;

type Connecting = Pin<Box<dyn Future<Output = Result<TcpStream, Unreachable>> + Send>>;

/// The session's connection to its backend.
enum Link {
    /// Not opened yet, or the last attempt failed; the next relayed operation opens it.
    Idle,
    Connecting(Connecting),
    Up(Backend),
}

struct Backend {
    stream: TcpStream,
    /// Bytes read from the backend and not yet passed to the client.
    inbuf: BytesMut,
    /// The response being streamed to the client and how many of its bytes are still to come.
    streaming: Option<(Envelope, usize)>,
}

/// Why the session is ending; decides what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Unbind, client gone, idle: close without a word.
    Quiet,
    /// A Notice of Disconnection has been queued; close once it is written.
    Noticed,
}

enum Event {
    ClientReadable,
    ClientGone(Option<io::Error>),
    BackendReadable,
    BackendGone(Option<io::Error>),
    Connected(Result<TcpStream, Unreachable>),
    ShutdownRequested,
    IdleCheck,
    /// Everything queued for the client is written and the session is ending.
    Finished,
}

/// State of one client connection.
pub struct Session {
    peer: SocketAddr,
    config: Arc<Config>,
    client: TcpStream,
    from_client: BytesMut,
    to_client: BytesMut,
    /// Proxy-made messages waiting for the backend stream to reach a message boundary.
    local_pending: BytesMut,
    to_backend: BytesMut,
    link: Link,
    /// Relayed requests still waiting for their final response: messageID → request tag.
    outstanding: HashMap<i32, u8>,
    ending: Option<Ending>,
    /// Shutdown was requested: read no more requests, finish what is outstanding.
    draining: bool,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    last_activity: Instant,
}

impl Session {
    /// A session for an accepted client connection.
    pub fn new(
        client: TcpStream,
        peer: SocketAddr,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Self {
        let idle = config
            .limits
            .idle_timeout
            .map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Session {
            peer,
            config,
            client,
            from_client: BytesMut::with_capacity(READ_CHUNK),
            to_client: BytesMut::new(),
            local_pending: BytesMut::new(),
            to_backend: BytesMut::new(),
            link: Link::Idle,
            outstanding: HashMap::new(),
            ending: None,
            draining: false,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            idle,
            last_activity: Instant::now(),
        }
    }

    /// Serves the client until it leaves, the backend goes away, or shutdown completes.
    pub async fn run(mut self) {
        tracing::debug!(peer = %self.peer, "client connected");
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
                Event::ShutdownRequested => {
                    self.draining = true;
                    self.end_if_drained();
                }
                Event::IdleCheck => self.idle_check(),
                Event::Finished => break,
            }
        }
        tracing::debug!(peer = %self.peer, "client connection closed");
    }

    /// Moves bytes as far as they go without blocking and reports the first thing that
    /// needs the session's attention.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Err(e) = ready_or_pending(poll_write_all(&mut self.client, &mut self.to_client, cx))
        {
            return Poll::Ready(Event::ClientGone(Some(e)));
        }
        if self.ending.is_some() {
            if !self.to_client.is_empty() {
                return Poll::Pending;
            }
            return match Pin::new(&mut self.client).poll_shutdown(cx) {
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
                if self.to_client.len() < HIGH_WATER {
                    b.inbuf.reserve(READ_CHUNK);
                    match poll_read_buf(Pin::new(&mut b.stream), cx, &mut b.inbuf) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Event::BackendGone(None)),
                        Poll::Ready(Ok(_)) => return Poll::Ready(Event::BackendReadable),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::BackendGone(Some(e))),
                        Poll::Pending => {}
                    }
                }
            }
        }

        if !self.draining {
            if self.to_backend.len() < HIGH_WATER {
                self.from_client.reserve(READ_CHUNK);
                match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.from_client) {
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
        while self.ending.is_none() {
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
        match env.op {
            op::UNBIND_REQUEST => {
                // Pass the Unbind on so the directory logs an orderly close.
                if let Link::Up(_) = self.link {
                    self.to_backend.extend_from_slice(&msg);
                }
                self.ending = Some(Ending::Quiet);
            }
            // Nothing to abandon on a backend connection that was never opened.
            op::ABANDON_REQUEST if matches!(self.link, Link::Idle) => {}
            _ => self.relay(env, &msg),
        }
    }

    fn relay(&mut self, env: Envelope, msg: &[u8]) {
        if op::response_to(env.op).is_some() {
            self.outstanding.insert(env.msgid, env.op);
        }
        self.to_backend.extend_from_slice(msg);
        if let Link::Idle = self.link {
            let config = Arc::clone(&self.config);
            self.link =
                Link::Connecting(Box::pin(
                    async move { backend::connect(&config.backend).await },
                ));
        }
    }

    fn connected(&mut self, result: Result<TcpStream, Unreachable>) {
        match result {
            Ok(stream) => {
                self.link = Link::Up(Backend {
                    stream,
                    inbuf: BytesMut::with_capacity(READ_CHUNK),
                    streaming: None,
                });
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
                }
                None => match frame::peek(&b.inbuf, usize::MAX) {
                    Ok(Some(env)) => b.streaming = Some((env, env.len)),
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
            self.ending = Some(Ending::Quiet);
        } else {
            self.disconnect(LdapError::new(
                LdapResultCode::Unavailable,
                "connection to the directory server was lost",
            ));
        }
    }

    fn protocol_error(&mut self, e: &FrameError) {
        tracing::info!(peer = %self.peer, "closing client connection: {e}");
        self.disconnect(LdapError::new(LdapResultCode::ProtocolError, e.to_string()));
    }

    /// Tells the client why it is being disconnected, then closes.
    fn disconnect(&mut self, why: LdapError) {
        if self.ending.is_none() {
            self.send_local(&proto::notice_of_disconnection(&why));
            self.ending = Some(Ending::Noticed);
        }
    }

    /// Queues a proxy-made message for the client at the next message boundary.
    fn send_local(&mut self, msg: &[u8]) {
        let mid_response = matches!(&self.link, Link::Up(b) if b.streaming.is_some());
        if mid_response {
            self.local_pending.extend_from_slice(msg);
        } else {
            self.to_client.extend_from_slice(msg);
        }
    }

    fn end_if_drained(&mut self) {
        if self.draining && self.outstanding.is_empty() {
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
        self.ending = Some(Ending::Quiet);
    }
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
