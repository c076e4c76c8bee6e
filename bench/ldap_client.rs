//! Load, latency and connection-count client of `bench/compare.sh`. Standard library only,
//! so the script builds it with plain `rustc -O` (no Cargo entry, no crates). It speaks
//! just enough LDAP (hand-made BER) for the bench workloads, and checks every answer.
//!
//!   ldap-client ops  --addr HOST:PORT --workload base|subtree|connop|login
//!                    [--threads 1] [--seconds 5] [--users 1000] [--user-pw-suffix -pampw]
//!   ldap-client hold --addr HOST:PORT --conns N --pid PID [--threads 4]
//!
//! `ops` runs THREADS loops of one workload operation for SECONDS and prints one line
//! `ops= rate= p50_us= p99_us= entries= errors= [first_error=]`; each thread has its own
//! users (uid=benchNNNN, NNNN ≡ thread mod THREADS) so that no two threads bind as the
//! same user at once. Workload operations (suffix dc=example,dc=com):
//!   base     base search of uid=benchNNNN,ou=People (all attributes), one connection per thread
//!   subtree  (cn=Bench User 1*) under ou=People (112 entries), one connection per thread
//!   connop   connect, simple bind as uid=benchNNNN (password benchNNNN-dirpw), search
//!            (uid=benchNNNN), unbind, close
//!   login    the web-app login: connect, bind as cn=grafana,ou=Services, search
//!            (uid=benchNNNN) for the DN, bind as it (password benchNNNN<user-pw-suffix>),
//!            search ou=Groups for (member=<DN>), unbind, close
//!
//! `hold` opens CONNS connections, waits until the server process PID has taken them all,
//! sends one search on each (all first, then reads the answers), closes them all and
//! waits until PID has let them go; it prints PID's VmRSS at each step.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PEOPLE: &str = "ou=People,dc=example,dc=com";
const GROUPS: &str = "ou=Groups,dc=example,dc=com";
const SERVICE_DN: &str = "cn=grafana,ou=Services,dc=example,dc=com";
const SERVICE_PW: &str = "grafana-pw";
const SUBTREE_PREFIX: &str = "Bench User 1";
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- BER encoding

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(tag);
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

fn int(tag: u8, v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
    // Keep a leading zero when the next byte has its top bit set (positive number).
    if skip > 0 && bytes[skip] & 0x80 != 0 {
        skip -= 1;
    }
    tlv(tag, &bytes[skip..])
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn message(id: u32, op: &[u8]) -> Vec<u8> {
    tlv(0x30, &cat(&[&int(0x02, id), op]))
}

fn bind(id: u32, dn: &str, password: &str) -> Vec<u8> {
    let op = tlv(
        0x60,
        &cat(&[
            &int(0x02, 3),
            &tlv(0x04, dn.as_bytes()),
            &tlv(0x80, password.as_bytes()),
        ]),
    );
    message(id, &op)
}

fn search(id: u32, base: &str, scope: u32, filter: &[u8], attrs: &[&str]) -> Vec<u8> {
    let attrs: Vec<u8> = attrs.iter().flat_map(|a| tlv(0x04, a.as_bytes())).collect();
    let op = tlv(
        0x63,
        &cat(&[
            &tlv(0x04, base.as_bytes()),
            &int(0x0a, scope),
            &int(0x0a, 0),
            &int(0x02, 0),
            &int(0x02, 0),
            &tlv(0x01, &[0]),
            filter,
            &tlv(0x30, &attrs),
        ]),
    );
    message(id, &op)
}

fn unbind(id: u32) -> Vec<u8> {
    message(id, &[0x42, 0x00])
}

fn equality(attr: &str, value: &str) -> Vec<u8> {
    tlv(
        0xa3,
        &cat(&[&tlv(0x04, attr.as_bytes()), &tlv(0x04, value.as_bytes())]),
    )
}

fn present(attr: &str) -> Vec<u8> {
    tlv(0x87, attr.as_bytes())
}

fn initial_substring(attr: &str, initial: &str) -> Vec<u8> {
    tlv(
        0xa4,
        &cat(&[
            &tlv(0x04, attr.as_bytes()),
            &tlv(0x30, &tlv(0x80, initial.as_bytes())),
        ]),
    )
}

// ---------------------------------------------------------------- BER reading

/// (tag, value start, value end) of the TLV at the front of `buf`, if it is complete.
fn tlv_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let first = buf[1] as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let k = first & 0x7f;
        if k == 0 || k > 4 || buf.len() < 2 + k {
            return None;
        }
        (
            buf[2..2 + k]
                .iter()
                .fold(0usize, |n, b| n << 8 | *b as usize),
            2 + k,
        )
    };
    (buf.len() >= header + len).then_some((buf[0], header, header + len))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One response: its protocolOp tag and the protocolOp's value.
struct Response {
    op: u8,
    value: Vec<u8>,
}

impl Response {
    /// resultCode of an LDAPResult-shaped response (BindResponse, SearchResultDone, ...).
    fn code(&self) -> io::Result<u32> {
        match tlv_at(&self.value) {
            Some((0x0a, s, e)) => Ok(self.value[s..e]
                .iter()
                .fold(0u32, |n, b| n << 8 | *b as u32)),
            _ => Err(bad("response without a resultCode")),
        }
    }

    /// objectName of a SearchResultEntry.
    fn dn(&self) -> io::Result<String> {
        match tlv_at(&self.value) {
            Some((0x04, s, e)) => Ok(String::from_utf8_lossy(&self.value[s..e]).into_owned()),
            _ => Err(bad("entry without a DN")),
        }
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    next_id: u32,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            next_id: 1,
        })
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn receive(&mut self) -> io::Result<Response> {
        loop {
            if let Some((0x30, s, e)) = tlv_at(&self.buf[self.start..self.end]) {
                let msg = &self.buf[self.start + s..self.start + e];
                self.start += e;
                let (_, _, id_end) = tlv_at(msg).ok_or_else(|| bad("no messageID"))?;
                let (op, os, oe) = tlv_at(&msg[id_end..]).ok_or_else(|| bad("no protocolOp"))?;
                return Ok(Response {
                    op,
                    value: msg[id_end + os..id_end + oe].to_vec(),
                });
            }
            if self.end - self.start >= 2 && self.buf[self.start] != 0x30 {
                return Err(bad("not an LDAPMessage"));
            }
            // Make room: move the partial message to the front, grow for a large one.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.end += n;
        }
    }

    fn bind(&mut self, dn: &str, password: &str) -> io::Result<()> {
        let id = self.id();
        self.send(&bind(id, dn, password))?;
        let r = self.receive()?;
        match (r.op, r.code()?) {
            (0x61, 0) => Ok(()),
            (op, code) => Err(bad(&format!("bind as {dn}: op 0x{op:02x} result {code}"))),
        }
    }

    fn send_search(
        &mut self,
        base: &str,
        scope: u32,
        filter: &[u8],
        attrs: &[&str],
    ) -> io::Result<()> {
        let id = self.id();
        self.send(&search(id, base, scope, filter, attrs))
    }

    /// Reads a search's answers: the number of entries and the first entry's DN.
    fn search_result(&mut self) -> io::Result<(usize, Option<String>)> {
        let (mut entries, mut first) = (0, None);
        loop {
            let r = self.receive()?;
            match r.op {
                0x64 => {
                    if first.is_none() {
                        first = Some(r.dn()?);
                    }
                    entries += 1;
                }
                0x73 => {}
                0x65 => {
                    return match r.code()? {
                        0 => Ok((entries, first)),
                        code => Err(bad(&format!("search result {code}"))),
                    };
                }
                op => return Err(bad(&format!("unexpected op 0x{op:02x} in a search"))),
            }
        }
    }

    fn search(
        &mut self,
        base: &str,
        scope: u32,
        filter: &[u8],
        attrs: &[&str],
    ) -> io::Result<(usize, Option<String>)> {
        self.send_search(base, scope, filter, attrs)?;
        self.search_result()
    }

    fn unbind_close(mut self) -> io::Result<()> {
        let id = self.id();
        self.send(&unbind(id))?;
        let _ = self.stream.shutdown(Shutdown::Both);
        Ok(())
    }
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Base,
    Subtree,
    ConnOp,
    Login,
}

struct Settings {
    addr: SocketAddr,
    workload: Workload,
    users: u32,
    user_pw_suffix: String,
}

fn user_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

fn expect_one(got: (usize, Option<String>), what: &str) -> io::Result<String> {
    match got {
        (1, Some(dn)) => Ok(dn),
        (n, _) => Err(bad(&format!("{what}: {n} entries instead of 1"))),
    }
}

/// One workload operation; returns the entries received. `conn` is the thread's
/// persistent connection (base, subtree).
fn operation(s: &Settings, conn: &mut Option<Conn>, uid: &str) -> io::Result<usize> {
    match s.workload {
        Workload::Base | Workload::Subtree => {
            if conn.is_none() {
                *conn = Some(Conn::open(s.addr)?);
            }
            let c = conn.as_mut().expect("connection");
            let got = if s.workload == Workload::Base {
                c.search(&user_dn(uid), 0, &present("objectClass"), &[])
            } else {
                c.search(PEOPLE, 2, &initial_substring("cn", SUBTREE_PREFIX), &[])
            };
            match got {
                Ok((0, _)) => Err(bad("no entries")),
                Ok((n, _)) => Ok(n),
                Err(e) => {
                    *conn = None; // reconnect next time
                    Err(e)
                }
            }
        }
        Workload::ConnOp => {
            let mut c = Conn::open(s.addr)?;
            c.bind(&user_dn(uid), &format!("{uid}-dirpw"))?;
            expect_one(
                c.search(PEOPLE, 2, &equality("uid", uid), &[])?,
                "user search",
            )?;
            c.unbind_close()?;
            Ok(1)
        }
        Workload::Login => {
            let mut c = Conn::open(s.addr)?;
            c.bind(SERVICE_DN, SERVICE_PW)?;
            let dn = expect_one(
                c.search(PEOPLE, 2, &equality("uid", uid), &["1.1"])?,
                "user search",
            )?;
            c.bind(&dn, &format!("{uid}{}", s.user_pw_suffix))?;
            let (groups, _) = c.search(GROUPS, 2, &equality("member", &dn), &["cn"])?;
            if groups == 0 {
                return Err(bad("the user is in no group"));
            }
            c.unbind_close()?;
            Ok(1 + groups)
        }
    }
}

struct ThreadResult {
    latencies_us: Vec<u32>,
    entries: u64,
    errors: u64,
    first_error: Option<String>,
}

fn run_thread(
    s: &Settings,
    thread: u32,
    threads: u32,
    start: &Barrier,
    seconds: f64,
) -> ThreadResult {
    let mut rng = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(thread) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let per_thread = (s.users / threads).max(1);
    let mut conn = None;
    let mut r = ThreadResult {
        latencies_us: Vec::new(),
        entries: 0,
        errors: 0,
        first_error: None,
    };
    if matches!(s.workload, Workload::Base | Workload::Subtree) {
        match Conn::open(s.addr) {
            Ok(c) => conn = Some(c),
            Err(e) => r.first_error = Some(format!("connect: {e}")),
        }
    }
    start.wait();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let n = (next() % u64::from(per_thread)) as u32 * threads + thread + 1;
        let uid = format!("bench{n:04}");
        let t = Instant::now();
        match operation(s, &mut conn, &uid) {
            Ok(entries) => {
                r.latencies_us
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                r.entries += entries as u64;
            }
            Err(e) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(e.to_string());
                }
                if r.errors > 1000 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    r
}

fn cmd_ops(opts: &HashMap<String, String>) -> Result<(), String> {
    let workload = match opt(opts, "workload")?.as_str() {
        "base" => Workload::Base,
        "subtree" => Workload::Subtree,
        "connop" => Workload::ConnOp,
        "login" => Workload::Login,
        w => return Err(format!("unknown workload {w}")),
    };
    let threads: u32 = num(opts, "threads", 1)?;
    let seconds: f64 = num(opts, "seconds", 5.0)?;
    let settings = Arc::new(Settings {
        addr: addr(opts)?,
        workload,
        users: num(opts, "users", 1000)?,
        user_pw_suffix: opts
            .get("user-pw-suffix")
            .cloned()
            .unwrap_or_else(|| "-pampw".into()),
    });
    if threads == 0 || settings.users < threads {
        return Err("need 1 <= threads <= users".into());
    }
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, start) = (settings.clone(), start.clone());
            std::thread::spawn(move || run_thread(&s, t, threads, &start, seconds))
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let results: Vec<ThreadResult> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let ops = lat.len();
    let pct = |p: f64| {
        if ops == 0 {
            0
        } else {
            lat[((ops as f64 * p) as usize).min(ops - 1)]
        }
    };
    let entries: u64 = results.iter().map(|r| r.entries).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    print!(
        "ops={ops} seconds={elapsed:.2} rate={:.1} p50_us={} p99_us={} entries={:.1} errors={errors}",
        ops as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        if ops == 0 { 0.0 } else { entries as f64 / ops as f64 }
    );
    if let Some(e) = results.iter().find_map(|r| r.first_error.clone()) {
        print!(" first_error={:?}", e);
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------- hold

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until PID's descriptor count satisfies `done` and then stays put for 0.5 s
/// (at most `limit`); returns the count.
fn settle(pid: u32, limit: Duration, done: impl Fn(usize) -> bool) -> usize {
    let t0 = Instant::now();
    let (mut last, mut since) = (fds(pid), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let n = fds(pid);
        if n != last {
            last = n;
            since = Instant::now();
        }
        if (done(n) && since.elapsed() >= Duration::from_millis(500)) || t0.elapsed() >= limit {
            return n;
        }
    }
}

fn cmd_hold(opts: &HashMap<String, String>) -> Result<(), String> {
    let addr = addr(opts)?;
    let conns: usize = num(opts, "conns", 10_000)?;
    let pid: u32 = num(opts, "pid", 0)?;
    let threads: usize = num(opts, "threads", 4)?;
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err("--pid: no such process".into());
    }
    let fds_before = fds(pid);
    let rss_before = status_kb(pid, "VmRSS:");

    // Connect: THREADS threads, each its share, one after another.
    let t0 = Instant::now();
    let groups: Vec<Vec<Conn>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let share = conns / threads + usize::from(t < conns % threads);
                    let mut mine = Vec::with_capacity(share);
                    for _ in 0..share {
                        match Conn::open(addr) {
                            Ok(c) => mine.push(c),
                            Err(e) => {
                                eprintln!("ldap-client: connect: {e}");
                                break;
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let connected: usize = groups.iter().map(Vec::len).sum();
    let connect_s = t0.elapsed().as_secs_f64();
    // The server has taken them once its descriptor count has grown by about one per
    // client (two for a relay that connects to its backend at accept time) and stays put.
    let fds_held = settle(pid, Duration::from_secs(60), |n| {
        n + 16 >= fds_before + connected
    });
    let rss_idle = status_kb(pid, "VmRSS:");

    // One search on each: all sent first, then all answers read.
    let t1 = Instant::now();
    let results: Vec<(Vec<Conn>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(t, mut mine)| {
                scope.spawn(move || {
                    let mut errors = 0;
                    let mut ok = vec![true; mine.len()];
                    for (i, c) in mine.iter_mut().enumerate() {
                        let uid = format!("bench{:04}", (i * threads + t) % 1000 + 1);
                        if c.send_search(PEOPLE, 2, &equality("uid", &uid), &[])
                            .is_err()
                        {
                            ok[i] = false;
                        }
                    }
                    for (i, c) in mine.iter_mut().enumerate() {
                        if !ok[i] || !matches!(c.search_result(), Ok((1, _))) {
                            errors += 1;
                        }
                    }
                    (mine, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let search_s = t1.elapsed().as_secs_f64();
    let errors: usize = results.iter().map(|(_, e)| e).sum();
    let rss_active = status_kb(pid, "VmRSS:");

    // Leave: unbind and close all, then wait for the server to let them go.
    let t2 = Instant::now();
    for (mine, _) in results {
        for c in mine {
            let _ = c.unbind_close();
        }
    }
    let fds_after = settle(pid, Duration::from_secs(30), |n| n <= fds_before + 2);
    let leave_s = t2.elapsed().as_secs_f64();
    let rss_after = status_kb(pid, "VmRSS:");
    println!(
        "conns={connected} connect_s={connect_s:.2} search_s={search_s:.2} rate={:.0} errors={errors} leave_s={leave_s:.2} \
         rss_before_kb={rss_before} rss_idle_kb={rss_idle} rss_active_kb={rss_active} rss_after_kb={rss_after} \
         hwm_kb={} fds_before={fds_before} fds_held={fds_held} fds_after={fds_after}",
        connected as f64 / search_s,
        status_kb(pid, "VmHWM:"),
    );
    if connected < conns {
        return Err(format!("only {connected} of {conns} connections opened"));
    }
    Ok(())
}

// ---------------------------------------------------------------- command line

fn opt(opts: &HashMap<String, String>, key: &str) -> Result<String, String> {
    opts.get(key)
        .cloned()
        .ok_or_else(|| format!("--{key} is required"))
}

fn num<T: std::str::FromStr>(
    opts: &HashMap<String, String>,
    key: &str,
    default: T,
) -> Result<T, String> {
    match opts.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("--{key}: not a number: {v}")),
    }
}

fn addr(opts: &HashMap<String, String>) -> Result<SocketAddr, String> {
    let a = opt(opts, "addr")?;
    a.to_socket_addrs()
        .ok()
        .and_then(|mut i| i.next())
        .ok_or_else(|| format!("--addr: bad address {a}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: ldap-client ops|hold --addr HOST:PORT [--key value ...] (see the source's header)";
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut opts = HashMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        match (k.strip_prefix("--"), it.next()) {
            (Some(k), Some(v)) => {
                opts.insert(k.to_string(), v.clone());
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    let result = match cmd.as_str() {
        "ops" => cmd_ops(&opts),
        "hold" => cmd_hold(&opts),
        _ => Err(usage.to_string()),
    };
    if let Err(e) = result {
        eprintln!("ldap-client: {e}");
        std::process::exit(1);
    }
}
