//! Shared service connections: the few backend connections, bound as the service
//! account, that every PAM-bound session relays through (docs/DESIGN.md §10).
//!
//! A PAM-bound session's identity travels with each request (the proxy's Proxied
//! Authorization control), so its requests need no connection of their own: a session
//! takes a [`Lease`] on one of `backend.shared_connections` connections, and
//! [`table::Table`] gives its requests messageIDs of the connection's own and its
//! responses back their session's. 10,000 PAM-bound clients so cost the directory a
//! handful of connections and no bind each, as OpenLDAP's lloadd multiplexes clients.
//!
//! One reader task per connection hands each response, whole, to its session's inbox and
//! never waits for a session: a session that does not read fast enough only fills its
//! own inbox, and one whose inbox passes `limits.shared_queue` is cut off (its requests
//! abandoned, its client told the directory is unavailable) rather than slowing the
//! others. Requests go out through one writer task per connection; each session may have
//! at most [`HIGH_WATER`] bytes of requests waiting for it, so a session cannot queue
//! more than the directory takes.

pub mod table;

use crate::backend::{BackendStream, Backends, ServiceBindError};
use crate::config::Config;
use crate::frame;
use crate::metrics;
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use table::{Inbound, LeaseId, Outbound, Table};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Request bytes one session may have waiting for the writer: what the session core
/// itself buffers for the backend before it stops reading its client.
const HIGH_WATER: usize = crate::session::HIGH_WATER;

/// How much of a session's inbox one poll moves into its buffer.
const RECV_CHUNK: usize = 64 << 10;

/// The longest message the directory may send on a shared connection: the connection is
/// dropped rather than buffer more for one message.
const MAX_RESPONSE: usize = 256 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One place for a connection; whoever opens it holds the lock meanwhile.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// The shared service connections of a running proxy.
pub struct ServiceLinks {
    backends: Arc<Backends>,
    slots: Mutex<Vec<Slot>>,
    next: AtomicUsize,
}

impl ServiceLinks {
    /// No connection yet: each is opened when a session first needs it.
    pub fn new(backends: Arc<Backends>) -> Self {
        ServiceLinks {
            backends,
            slots: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// A place on one of the shared connections of the configuration `config`, opening
    /// (and binding) that connection if it is not open. Connections of an earlier
    /// configuration serve the sessions they have until those leave, and no new ones.
    ///
    /// # Errors
    /// The connection could not be opened or bound as the service account.
    pub async fn lease(&self, config: &Arc<Config>) -> Result<Lease, ServiceBindError> {
        let n = config.backend.shared_connections;
        let slot = {
            let mut slots = lock(&self.slots);
            slots.truncate(n);
            slots.resize_with(n, Default::default);
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            Arc::clone(&slots[i])
        };
        // One connect at a time per slot: the others wait for it and share it.
        let mut conn = slot.lock().await;
        if let Some(lease) = conn.as_ref().and_then(|c| c.lease(config)) {
            return Ok(lease);
        }
        let stream = self.backends.connect_as_service(&config.backend).await?;
        let opened = Conn::start(stream, config);
        let lease = opened.lease(config);
        *conn = Some(opened);
        lease.ok_or_else(|| ServiceBindError::Io("the connection closed at once".into()))
    }
}

/// One shared connection: held by the pool and by its sessions' leases; when the last
/// goes, its tasks stop and the connection closes.
struct Conn {
    link: Arc<Link>,
    config: Weak<Config>,
    to_send: mpsc::UnboundedSender<Outgoing>,
    _stop: DropGuard,
}

/// What the tasks of a connection share with its handle.
struct Link {
    state: Mutex<LinkState>,
    /// `limits.shared_queue` of the configuration that opened it.
    queue_limit: usize,
}

struct LinkState {
    table: Table,
    inboxes: HashMap<LeaseId, Arc<Inbox>>,
    next_lease: LeaseId,
    /// Why the connection is no longer usable, once it is not.
    closed: Option<String>,
}

impl LinkState {
    /// Session `lease` leaves the connection: what it left running is abandoned (the
    /// writer outlives every lease, so the sends cannot fail while anyone listens).
    fn release(&mut self, lease: LeaseId, to_send: &mpsc::UnboundedSender<Outgoing>) {
        self.inboxes.remove(&lease);
        for abandon in self.table.release(lease) {
            let _ = to_send.send(Outgoing {
                msg: abandon,
                from: None,
            });
        }
    }
}

/// A message for the writer, and the session to credit once it is written.
struct Outgoing {
    msg: Vec<u8>,
    from: Option<Arc<Inbox>>,
}

impl Conn {
    /// Starts the reader and writer tasks of a connection bound as the service account.
    fn start(stream: BackendStream, config: &Arc<Config>) -> Arc<Conn> {
        let link = Arc::new(Link {
            state: Mutex::new(LinkState {
                table: Table::default(),
                inboxes: HashMap::new(),
                next_lease: 1,
                closed: None,
            }),
            queue_limit: config.limits.shared_queue,
        });
        let stop = CancellationToken::new();
        let (to_send, outgoing) = mpsc::unbounded_channel();
        let (rd, wr) = tokio::io::split(stream);
        let counted = metrics::SharedConnection::open();
        tokio::spawn(read_loop(
            Arc::clone(&link),
            rd,
            to_send.clone(),
            stop.clone(),
        ));
        tokio::spawn(write_loop(
            Arc::clone(&link),
            wr,
            outgoing,
            stop.clone(),
            counted,
        ));
        Arc::new(Conn {
            link,
            config: Arc::downgrade(config),
            to_send,
            _stop: stop.drop_guard(),
        })
    }

    /// A new lease, unless the connection is closed or belongs to another configuration.
    fn lease(self: &Arc<Self>, config: &Arc<Config>) -> Option<Lease> {
        if !Weak::ptr_eq(&self.config, &Arc::downgrade(config)) {
            return None;
        }
        let mut st = lock(&self.link.state);
        if st.closed.is_some() {
            return None;
        }
        let id = st.next_lease;
        st.next_lease += 1;
        let inbox = Arc::new(Inbox::default());
        st.inboxes.insert(id, Arc::clone(&inbox));
        Some(Lease {
            conn: Arc::clone(self),
            id,
            inbox,
            _counted: metrics::SharedSession::open(),
        })
    }
}

/// A session's place on a shared connection. Dropping it abandons what the session left
/// running there.
pub struct Lease {
    conn: Arc<Conn>,
    id: LeaseId,
    inbox: Arc<Inbox>,
    _counted: metrics::SharedSession,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Hands the whole messages in `out` to the connection as far as the session's share
    /// of the writer allows; `Ready(Ok)` once `out` is empty, `Ready(Err)` when the
    /// connection is gone or cut this session off.
    pub fn poll_send(&mut self, out: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !out.is_empty() {
            {
                let mut inbox = lock(&self.inbox.state);
                if let Some(why) = &inbox.closed {
                    return Poll::Ready(Err(io::Error::other(why.clone())));
                }
                if inbox.unsent >= HIGH_WATER {
                    inbox.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            // The session core only ever queues whole messages.
            let len = match frame::peek(out, usize::MAX) {
                Ok(Some(env)) if env.len <= out.len() => env.len,
                _ => return Poll::Ready(Err(io::Error::other("incomplete request"))),
            };
            let msg = out.split_to(len);
            self.send(&msg)?;
        }
        Poll::Ready(Ok(()))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let mut st = lock(&self.conn.link.state);
        if let Some(why) = &st.closed {
            return Err(io::Error::other(why.clone()));
        }
        match st.table.outbound(self.id, msg) {
            Ok(Outbound::Send(rewritten)) => {
                lock(&self.inbox.state).unsent += rewritten.len();
                // The writer outlives every lease of its connection.
                let _ = self.conn.to_send.send(Outgoing {
                    msg: rewritten,
                    from: Some(Arc::clone(&self.inbox)),
                });
                Ok(())
            }
            Ok(Outbound::Drop) => Ok(()),
            Ok(Outbound::Answer(reply)) => {
                self.inbox.push(reply.to_vec(), usize::MAX);
                Ok(())
            }
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Moves responses for this session into `into`: `Ready(Ok(n))` with the bytes
    /// moved, `Ready(Err)` once the connection is gone and nothing is left.
    pub fn poll_recv(
        &mut self,
        into: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut inbox = lock(&self.inbox.state);
        let mut moved = 0;
        while moved < RECV_CHUNK {
            let Some(msg) = inbox.queue.pop_front() else {
                break;
            };
            inbox.bytes -= msg.len();
            moved += msg.len();
            into.extend_from_slice(&msg);
        }
        if moved > 0 {
            return Poll::Ready(Ok(moved));
        }
        if let Some(why) = &inbox.closed {
            return Poll::Ready(Err(io::Error::other(why.clone())));
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.conn.link.state).release(self.id, &self.conn.to_send);
    }
}

/// What waits for one session, both ways.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    /// Responses, whole, under the session's messageIDs.
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Request bytes handed to the writer and not written yet.
    unsent: usize,
    waker: Option<Waker>,
    closed: Option<String>,
}

impl Inbox {
    /// Queues `msg` for the session unless that takes its queue past `limit` (a queue
    /// that is empty always takes one message): `false` then.
    fn push(&self, msg: Vec<u8>, limit: usize) -> bool {
        let mut st = lock(&self.state);
        if st.bytes > 0 && st.bytes + msg.len() > limit {
            return false;
        }
        st.bytes += msg.len();
        st.queue.push_back(msg);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        true
    }

    fn written(&self, len: usize) {
        let mut st = lock(&self.state);
        let was_full = st.unsent >= HIGH_WATER;
        st.unsent -= len;
        if was_full && st.unsent < HIGH_WATER {
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }

    /// Closes the inbox and frees what waits in it: the client does not read, so it would
    /// hold that memory until its connection ends. (What the session already took is
    /// whole messages; the notice follows them.)
    fn cut(&self, why: &str) {
        let mut st = lock(&self.state);
        st.queue = VecDeque::new();
        st.bytes = 0;
        drop(st);
        self.close(why);
    }

    fn close(&self, why: &str) {
        let mut st = lock(&self.state);
        st.closed.get_or_insert_with(|| why.to_owned());
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

impl Link {
    /// The connection is unusable: every session on it is told why.
    fn close(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            tracing::warn!("shared service connection closed: {why}");
            st.closed = Some(why.to_owned());
        }
        for inbox in st.inboxes.values() {
            inbox.close(why);
        }
    }

    /// Hands one whole message from the directory to its session.
    fn deliver(&self, msg: &[u8], to_send: &mpsc::UnboundedSender<Outgoing>) -> Result<(), String> {
        let mut st = lock(&self.state);
        match st.table.inbound(msg) {
            Ok(Inbound::Deliver(lease, m)) => {
                let Some(inbox) = st.inboxes.get(&lease).cloned() else {
                    return Ok(());
                };
                if !inbox.push(m, self.queue_limit) {
                    // The session does not read: it goes, not the connection's pace.
                    st.release(lease, to_send);
                    metrics::shared_session_cut();
                    inbox.cut("the client reads its responses too slowly (limits.shared_queue)");
                }
                Ok(())
            }
            Ok(Inbound::Stray) => Ok(()),
            Ok(Inbound::Unsolicited) => Err("the directory sent a notice of disconnection".into()),
            Err(e) => Err(format!("the directory sent a malformed message: {e}")),
        }
    }
}

async fn read_loop(
    link: Arc<Link>,
    mut rd: ReadHalf<BackendStream>,
    to_send: mpsc::UnboundedSender<Outgoing>,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(RECV_CHUNK);
    let why = loop {
        let read = tokio::select! {
            read = rd.read_buf(&mut buf) => read,
            () = stop.cancelled() => return,
        };
        match read {
            Ok(0) => break "the directory closed the connection".to_owned(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
        let mut failed = None;
        while failed.is_none() {
            match frame::peek(&buf, MAX_RESPONSE) {
                Ok(Some(env)) if buf.len() >= env.len => {
                    let msg = buf.split_to(env.len);
                    failed = link.deliver(&msg, &to_send).err();
                }
                Ok(_) => break,
                Err(e) => failed = Some(format!("the directory sent a malformed message: {e}")),
            }
        }
        if let Some(why) = failed {
            break why;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(RECV_CHUNK);
        }
    };
    link.close(&why);
    // The writer stops too: nothing sent now would be answered.
    stop.cancel();
}

async fn write_loop(
    link: Arc<Link>,
    mut wr: WriteHalf<BackendStream>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
    _counted: metrics::SharedConnection,
) {
    loop {
        let next = tokio::select! {
            // What is queued (a leaving session's Abandons) goes before a stop.
            biased;
            next = outgoing.recv() => next,
            () = stop.cancelled() => None,
        };
        let Some(out) = next else {
            break;
        };
        let written = wr.write_all(&out.msg).await;
        if let Some(inbox) = &out.from {
            inbox.written(out.msg.len());
        }
        if let Err(e) = written {
            link.close(&format!("write failed: {e}"));
            stop.cancel();
            return;
        }
    }
    // Nobody uses the connection any more: an orderly close for the directory's log.
    let unbind = [0x30, 0x05, 0x02, 0x01, 0x01, 0x42, 0x00];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = wr.write_all(&unbind).await;
        let _ = wr.shutdown().await;
    })
    .await;
}
