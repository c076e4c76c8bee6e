//! Connection slots: which client connections the proxy holds, for whom, and which go
//! first when the table fills.
//!
//! - **A hard cap** (`limits.max_connections`): a connection beyond it is refused (busy).
//! - **Per source address** (`limits.max_connections_per_address`, the real client's
//!   behind a PROXY protocol balancer): one address cannot take the table.
//! - **Idle connections go first.** When more than [`HIGH_WATER_PERCENT`] of the table is
//!   in use, each new connection asks the idlest connections with nothing in progress to
//!   leave (the session drains: a Notice of Disconnection, unavailable, and a close):
//!   first those that never had anything in progress (connected and sent nothing, or
//!   only part of a message) once [`NEW_GRACE`] old, oldest first, then the others that
//!   have had nothing for [`MIN_IDLE`] at least, by how long ago they last had. A flood of connections that do nothing so never keeps a slot from a client that
//!   comes to do something, a client between two operations goes after every one of
//!   them, and a connection with a bind pending or a search running is never asked. One that has not
//!   left [`EVICT_GRACE`] after it was asked, and still has nothing in progress (its
//!   client does not read the notice), is closed (its session is dropped).
//!
//! Sessions report after each event whether anything is in progress ([`Activity`]);
//! the table reads that when it must choose.

use crate::metrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Above this share of `max_connections` in use, idle connections are asked to leave.
pub const HIGH_WATER_PERCENT: usize = 90;

/// A connection that has had something in progress is idle, for the table, only once it
/// has had nothing for this long: a client between two operations (its answer read, its
/// next request on the way) is never taken for idle, however loaded the machine.
pub const MIN_IDLE: Duration = Duration::from_secs(2);

/// A connection that never had anything in progress is idle, for the table, once it is
/// this old: its first request may be in the socket, its session not yet scheduled (a
/// flood keeps the runtime busy). A flood must come faster than `max_connections` per
/// second to fill the table with connections this young, and then the next is refused
/// (busy) rather than a client's request dropped.
pub const NEW_GRACE: Duration = Duration::from_secs(1);

/// How many connections a spike must have brought and taken away for
/// [`Slots::spike_passed`].
pub const SPIKE: usize = 256;

/// How long a connection asked to leave has before its socket is shut down.
pub const EVICT_GRACE: Duration = Duration::from_secs(2);

/// At most this many connections are asked to leave per new connection: enough to keep
/// up with a flood, few enough that one admission stays cheap.
const EVICT_BATCH: usize = 8;

/// What a session reports: whether anything is in progress now, and when something last
/// was (or when the connection was made, if nothing ever was). Written by the session
/// alone, read by the table.
pub struct Activity(AtomicU64);

/// Milliseconds since the first use of the table's clock; cheap to compare.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
}

const BUSY: u64 = 1;
const EVER_BUSY: u64 = 2;

impl Activity {
    fn new() -> Activity {
        Activity(AtomicU64::new(now_ms() << 2))
    }

    /// After an event on the session; `busy`: a bind is being decided, requests wait
    /// behind it, or relayed operations await their final response. Only time spent
    /// with something in progress counts as activity: a connection that trickles bytes
    /// of a message it never finishes, or sends nothing, stays as idle as when it came.
    pub fn report(&self, busy: bool) {
        let old = self.0.load(Relaxed);
        if !busy && old & BUSY == 0 {
            return;
        }
        let flags = if busy { BUSY | EVER_BUSY } else { EVER_BUSY };
        self.0.store(now_ms() << 2 | flags, Relaxed);
    }

    /// How idle the connection is, smallest idlest: connections that never had anything
    /// in progress first (oldest first), then the others by when they last had.
    fn idleness(&self) -> (bool, u64) {
        let v = self.0.load(Relaxed);
        (v & EVER_BUSY != 0, v >> 2)
    }

    /// Whether the session had something in progress at its last report.
    pub fn busy(&self) -> bool {
        self.0.load(Relaxed) & BUSY != 0
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` connections are open and none is idle.
    Full,
    /// The source address holds `limits.max_connections_per_address` connections.
    PerAddress,
}

impl Refused {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "max_connections",
            Refused::PerAddress => "per_address",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Full => "too many client connections",
            Refused::PerAddress => "too many connections from this address",
        }
    }
}

/// The table.
pub struct Slots {
    max: usize,
    high_water: usize,
    /// [`MIN_IDLE`] in milliseconds.
    min_idle_ms: u64,
    /// [`NEW_GRACE`] in milliseconds.
    new_grace_ms: u64,
    table: Mutex<Table>,
    /// Cancelled at the end of the shutdown grace: every connection still open goes.
    force: CancellationToken,
    /// Told whenever a connection goes.
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct Table {
    /// Connections counted against the cap (those asked to leave no longer are).
    open: usize,
    /// Connections asked to leave that have not closed yet.
    leaving: usize,
    /// Counted connections per source address.
    by_source: HashMap<IpAddr, usize>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// The most connections open at once since [`Slots::spike_passed`] last said yes.
    peak: usize,
}

struct Conn {
    source: Option<IpAddr>,
    activity: Arc<Activity>,
    /// The session's shutdown: cancelled by the process's, or when asked to leave.
    stop: CancellationToken,
    evicted: CancellationToken,
}

/// One connection's place in the table, for as long as the connection lives.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Give to the session as its shutdown: cancelled at process shutdown or when the
    /// connection is asked to leave.
    pub stop: CancellationToken,
    evicted: CancellationToken,
    /// Give to the session to report to.
    pub activity: Arc<Activity>,
}

impl Slots {
    /// A table of `max` connections; sessions' shutdowns are children of `shutdown`.
    pub fn new(max: usize) -> Arc<Slots> {
        Slots::with_min_idle(max, MIN_IDLE, NEW_GRACE)
    }

    /// As [`Slots::new`], with another [`MIN_IDLE`] and [`NEW_GRACE`] (tests).
    pub fn with_min_idle(max: usize, min_idle: Duration, new_grace: Duration) -> Arc<Slots> {
        let high_water = (max * HIGH_WATER_PERCENT / 100).clamp(1, max.max(1));
        Arc::new(Slots {
            max,
            high_water,
            min_idle_ms: u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX),
            new_grace_ms: u64::try_from(new_grace.as_millis()).unwrap_or(u64::MAX),
            table: Mutex::new(Table::default()),
            force: CancellationToken::new(),
            released: tokio::sync::Notify::new(),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection just accepted, whose source is not known yet (a PROXY
    /// protocol header may name it): asks idle connections to leave when the table is
    /// nearly full; refused when it is full and none is idle.
    pub fn admit(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<Slot, Refused> {
        let mut t = self.table();
        if t.open >= self.high_water {
            let want = (t.open + 1 - self.high_water).min(EVICT_BATCH);
            self.evict(&mut t, want);
        }
        if t.open >= self.max {
            return Err(Refused::Full);
        }
        t.open += 1;
        t.peak = t.peak.max(t.open);
        let id = t.next_id;
        t.next_id += 1;
        let stop = shutdown.child_token();
        let evicted = CancellationToken::new();
        let activity = Arc::new(Activity::new());
        t.conns.insert(
            id,
            Conn {
                source: None,
                activity: Arc::clone(&activity),
                stop: stop.clone(),
                evicted: evicted.clone(),
            },
        );
        metrics::connection_slots(t.open, t.leaving);
        Ok(Slot {
            slots: Arc::clone(self),
            id,
            stop,
            evicted,
            activity,
        })
    }

    /// Asks up to `want` of the idlest connections with nothing in progress to leave.
    /// Those leaving no longer count against the cap or their address; at most
    /// `max_connections` may be leaving at once (each still holds a socket until it
    /// closes, so the process holds at most twice the cap).
    fn evict(&self, t: &mut Table, want: usize) {
        let room = self.max.saturating_sub(t.leaving);
        let want = want.min(room);
        if want == 0 {
            return;
        }
        let now = now_ms();
        let mut idle: Vec<((bool, u64), u64)> = t
            .conns
            .iter()
            .filter(|(_, c)| !c.evicted.is_cancelled() && !c.activity.busy())
            .map(|(id, c)| (c.activity.idleness(), *id))
            .filter(|((ever_busy, last), _)| now >= last + self.idle_after_ms(*ever_busy))
            .collect();
        if idle.len() > want {
            idle.select_nth_unstable(want - 1);
            idle.truncate(want);
        }
        for (_, id) in idle {
            let Some(c) = t.conns.get(&id) else { continue };
            c.evicted.cancel();
            c.stop.cancel();
            let source = c.source;
            t.open -= 1;
            t.leaving += 1;
            if let Some(s) = source {
                uncount(&mut t.by_source, s);
            }
            metrics::connection_evicted();
        }
    }

    /// Charges `slot` to its client's address (the real client's, behind a balancer);
    /// refused when the address already holds `per_address` connections.
    pub fn attribute(
        &self,
        slot: &Slot,
        source: IpAddr,
        per_address: usize,
    ) -> Result<(), Refused> {
        let source = source_of(source);
        let mut t = self.table();
        let Some(c) = t.conns.get(&slot.id) else {
            return Ok(());
        };
        if c.evicted.is_cancelled() {
            // Asked to leave while its header was being read: it no longer counts.
            return Ok(());
        }
        let n = t.by_source.get(&source).copied().unwrap_or(0);
        if n >= per_address {
            return Err(Refused::PerAddress);
        }
        t.by_source.insert(source, n + 1);
        if let Some(c) = t.conns.get_mut(&slot.id) {
            c.source = Some(source);
        }
        Ok(())
    }

    /// Connections counted against the cap now.
    pub fn open(&self) -> usize {
        self.table().open
    }

    /// How long with nothing in progress makes a connection idle, for the table:
    /// [`MIN_IDLE`] once it has had something in progress, [`NEW_GRACE`] before.
    fn idle_after_ms(&self, ever_busy: bool) -> u64 {
        if ever_busy {
            self.min_idle_ms
        } else {
            self.new_grace_ms
        }
    }

    /// Whether a spike of connections has come and gone since this last said yes: at
    /// least [`SPIKE`] more connections were open at once than are now, and now fewer
    /// than half as many. The memory their sessions used is then free.
    pub fn spike_passed(&self) -> bool {
        let mut t = self.table();
        let passed = t.peak >= t.open + SPIKE && t.open <= t.peak / 2;
        if passed {
            t.peak = t.open;
        }
        passed
    }

    /// Connections asked to leave that have not closed yet.
    pub fn leaving(&self) -> usize {
        self.table().leaving
    }

    /// How long until a connection with nothing in progress becomes idle enough to be
    /// asked to leave ([`NEW_GRACE`], [`MIN_IDLE`]); `None` when every connection is busy.
    pub fn next_idle(&self) -> Option<Duration> {
        let t = self.table();
        let now = now_ms();
        t.conns
            .values()
            .filter(|c| !c.evicted.is_cancelled() && !c.activity.busy())
            .map(|c| {
                let (ever_busy, last) = c.activity.idleness();
                (last + self.idle_after_ms(ever_busy)).saturating_sub(now)
            })
            .min()
            .map(Duration::from_millis)
    }

    /// Resolves when a connection has gone (or at once when one went since the last
    /// call): a refused admission may try again once those leaving have closed.
    pub async fn released(&self) {
        self.released.notified().await;
    }

    /// Closes every connection still open (the end of the shutdown grace): see
    /// [`Slot::watch`].
    pub fn force_all(&self) {
        self.force.cancel();
    }

    fn release(&self, id: u64) {
        let mut t = self.table();
        let Some(c) = t.conns.remove(&id) else { return };
        if c.evicted.is_cancelled() {
            t.leaving -= 1;
        } else {
            t.open -= 1;
            if let Some(s) = c.source {
                uncount(&mut t.by_source, s);
            }
        }
        metrics::connection_slots(t.open, t.leaving);
        drop(t);
        self.released.notify_one();
    }
}

impl Slot {
    /// Whether the connection was asked to leave.
    pub fn evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }

    /// Cancelled when the connection is asked to leave (then `stop` is too): the session
    /// tells its client why it goes.
    pub fn asked_to_leave(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// Resolves when the connection must be closed whatever its session is doing: it
    /// was asked to leave, [`EVICT_GRACE`] has passed, and it still has nothing in
    /// progress (its client does not read the notice); or the shutdown grace ended. Run
    /// it beside the session and drop the session when it resolves.
    pub async fn watch(&self) {
        let overstayed = async {
            self.evicted.cancelled().await;
            loop {
                tokio::time::sleep(EVICT_GRACE).await;
                if !self.activity.busy() {
                    break;
                }
            }
            metrics::connection_forced();
        };
        tokio::select! {
            () = overstayed => {}
            () = self.slots.force.cancelled() => {}
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.id);
    }
}

fn uncount(by_source: &mut HashMap<IpAddr, usize>, source: IpAddr) {
    if let Some(n) = by_source.get_mut(&source) {
        *n -= 1;
        if *n == 0 {
            by_source.remove(&source);
        }
    }
}

/// The address a connection is counted under: IPv4-mapped IPv6 as IPv4, IPv6 per /64
/// (a host normally holds a whole /64, so per address it could open connections without
/// end), as the PAM gate charges attempts.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_and_cap() {
        let slots = Slots::new(4);
        let stop = CancellationToken::new();
        let admit = || {
            let s = slots.admit(&stop).unwrap();
            // In progress: never asked to leave.
            s.activity.report(true);
            s
        };
        let a = admit();
        slots.attribute(&a, ip("10.0.0.1"), 2).unwrap();
        let b = admit();
        slots.attribute(&b, ip("10.0.0.1"), 2).unwrap();
        let c = admit();
        assert_eq!(
            slots.attribute(&c, ip("10.0.0.1"), 2),
            Err(Refused::PerAddress)
        );
        drop(c);
        drop(b);
        let d = admit();
        slots.attribute(&d, ip("10.0.0.1"), 2).unwrap();
        // IPv6 counts per /64.
        let e = admit();
        slots.attribute(&e, ip("2001:db8::1"), 1).unwrap();
        let f = admit();
        assert_eq!(
            slots.attribute(&f, ip("2001:db8::2"), 1),
            Err(Refused::PerAddress)
        );
        assert_eq!(slots.open(), 4);
        // Full, everyone busy: nothing to ask to leave.
        assert_eq!(slots.admit(&stop).err(), Some(Refused::Full));
        drop(f);
        assert_eq!(slots.open(), 3);
        assert!(![&a, &d, &e].iter().any(|s| s.evicted()));
    }

    #[test]
    fn the_idlest_connection_with_nothing_in_progress_leaves_first() {
        let slots = Slots::with_min_idle(10, Duration::ZERO, Duration::ZERO); // high water: 9
        let stop = CancellationToken::new();
        let held: Vec<Slot> = (0..9).map(|_| slots.admit(&stop).unwrap()).collect();
        for s in &held {
            s.activity.report(true);
        }
        // Two finish what they were doing; ties go to the older connection.
        held[3].activity.report(false);
        held[7].activity.report(false);
        let newcomer = slots.admit(&stop).unwrap();
        assert!(held[3].evicted() && held[3].stop.is_cancelled());
        assert!(!held[7].evicted() && !stop.is_cancelled());
        assert_eq!(slots.open(), 9);
        // The one leaving no longer counts; its slot is released once, when it goes.
        assert_eq!(slots.leaving(), 1);
        let mut held = held;
        drop(held.remove(3));
        assert_eq!((slots.open(), slots.leaving()), (9, 0));
        // A connection that never had anything in progress goes before one between
        // two operations, however recently it came.
        let second = slots.admit(&stop).unwrap();
        assert!(newcomer.evicted(), "the newcomer never did anything");
        assert!(!held[6].evicted() && !second.evicted());
        // Bytes of a message never finished are no activity.
        second.activity.report(false);
        let third = slots.admit(&stop).unwrap();
        assert!(second.evicted() && !held[6].evicted() && !third.evicted());
    }

    #[test]
    fn a_client_between_two_operations_is_not_idle() {
        let slots = Slots::with_min_idle(2, MIN_IDLE, Duration::ZERO); // high water: 1
        let stop = CancellationToken::new();
        let worked = slots.admit(&stop).unwrap();
        worked.activity.report(true);
        worked.activity.report(false);
        // Idle for less than MIN_IDLE: not asked to leave; the table is not full yet.
        let newcomer = slots.admit(&stop).unwrap();
        assert!(!worked.evicted());
        // A connection that never did anything is (here at once: no NEW_GRACE).
        let third = slots.admit(&stop).unwrap();
        assert!(newcomer.evicted() && !worked.evicted() && !third.evicted());
    }

    #[test]
    fn a_spike_is_seen_once_it_has_gone() {
        let slots = Slots::new(10 * SPIKE);
        let stop = CancellationToken::new();
        let mut held: Vec<Slot> = (0..2 * SPIKE)
            .map(|_| slots.admit(&stop).unwrap())
            .collect();
        assert!(!slots.spike_passed(), "still here");
        held.truncate(SPIKE + 1);
        assert!(!slots.spike_passed(), "more than half still here");
        held.truncate(SPIKE / 2);
        assert!(slots.spike_passed());
        assert!(!slots.spike_passed(), "once per spike");
        // A small one is no spike.
        let more: Vec<Slot> = (0..SPIKE - 1)
            .map(|_| slots.admit(&stop).unwrap())
            .collect();
        drop(more);
        assert!(!slots.spike_passed());
    }

    #[test]
    fn a_connection_just_made_is_not_idle() {
        let slots = Slots::new(2); // high water: 1
        let stop = CancellationToken::new();
        let first = slots.admit(&stop).unwrap();
        // Younger than NEW_GRACE: its first request may not have been read yet.
        let second = slots.admit(&stop).unwrap();
        assert!(!first.evicted());
        // The table is full: the next is refused rather than either asked to leave.
        assert_eq!(slots.admit(&stop).err(), Some(Refused::Full));
        assert!(!first.evicted() && !second.evicted());
    }

    #[test]
    fn process_shutdown_reaches_every_session() {
        let slots = Slots::new(2);
        let stop = CancellationToken::new();
        let a = slots.admit(&stop).unwrap();
        stop.cancel();
        assert!(a.stop.is_cancelled() && !a.evicted());
    }
}
