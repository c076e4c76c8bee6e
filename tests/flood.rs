//! A flood (loopback only, bounded in count and time): 2,000 clients at once sending
//! garbage, connecting and saying nothing, trickling a message one byte at a time
//! (slowloris), announcing lengths past the limit or sending most of a large message and
//! stopping, and pipelining searches whose answers they never read — plus 200 more from
//! one address — while a well-behaved client keeps searching and binding through both
//! routes. Every one of its operations must succeed, and the proxy's memory stays under
//! a bound worked out from its limits.
//!
//! The limits at work: the connection table (`limits.max_connections` here 1,000, so the
//! flood overfills it and idle connections are asked to leave), the cap per address,
//! `limits.send_timeout` for clients that read nothing, `limits.request_timeout` for
//! messages never finished, `limits.max_outstanding` and the session's backpressure for
//! pipelined requests, and `limits.max_message_size`.
//!
//! A client that never reads its answers makes the proxy stop reading its backend
//! connection, and 389 then holds worker threads writing to it until `send_timeout`
//! ends the client (2 s here): the well-behaved client's slowest operations (a few
//! seconds) are those that waited for 389 then. They still succeed.

mod common;
mod harness;

use common::*;
use harness::*;
use ldap3_proto::proto::LdapSearchScope;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const PASSDB: &str = "alice:alice-pampw:duo\nerin:erin-pampw:csu\n";

/// How long the flood lasts while the well-behaved client works.
const FLOOD_FOR: Duration = Duration::from_secs(20);

const MAX_CONNECTIONS: usize = 1000;
const PER_ADDRESS: usize = 64;
const MAX_MESSAGE: usize = 65536;

/// The kinds of flood client, in the proportions of [`KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Bytes that are not LDAP.
    Garbage,
    /// Connects and sends nothing (waits for the proxy to close).
    Silent,
    /// A message header, then one byte every 300 ms.
    Slowloris,
    /// A length far past `limits.max_message_size`.
    Oversized,
    /// A length under the limit, most of the message, then nothing.
    BigPartial,
    /// Forty pipelined searches with a 4 KiB receive buffer, never read.
    NeverRead,
}

/// Of every 20 flood clients: 5 garbage, 5 silent, 3 slowloris, 2 oversized,
/// 2 big partial, 3 never-read.
const KINDS: [Kind; 20] = [
    Kind::Garbage,
    Kind::Silent,
    Kind::Slowloris,
    Kind::NeverRead,
    Kind::Garbage,
    Kind::Silent,
    Kind::Oversized,
    Kind::BigPartial,
    Kind::Garbage,
    Kind::Silent,
    Kind::Slowloris,
    Kind::NeverRead,
    Kind::Garbage,
    Kind::Silent,
    Kind::Oversized,
    Kind::BigPartial,
    Kind::Garbage,
    Kind::Silent,
    Kind::Slowloris,
    Kind::NeverRead,
];

#[derive(Default)]
struct FloodStats {
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    closed_by_proxy: AtomicUsize,
}

/// Every person with every attribute (about 17 KB of answer), message `id`.
fn big_search(id: i32) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut ldap3_proto::LdapCodec::default(),
        search(
            id,
            &people(),
            LdapSearchScope::OneLevel,
            "(objectClass=*)",
            &[],
        ),
        &mut out,
    )
    .unwrap();
    out.to_vec()
}

/// One flood client: up to three connections one after the other (a flood reconnects),
/// each doing what its kind does until the proxy closes it or the flood ends.
async fn flood_client(
    kind: Kind,
    from: IpAddr,
    proxy: SocketAddr,
    end: CancellationToken,
    stats: Arc<FloodStats>,
    connected: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) {
    for _ in 0..3 {
        if end.is_cancelled() {
            return;
        }
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            stats.connect_failed.fetch_add(1, Relaxed);
            return;
        };
        if kind == Kind::NeverRead {
            let _ = socket.set_recv_buffer_size(4096);
        }
        if socket.bind(SocketAddr::new(from, 0)).is_err() {
            stats.connect_failed.fetch_add(1, Relaxed);
            return;
        }
        let Ok(mut s) = socket.connect(proxy).await else {
            stats.connect_failed.fetch_add(1, Relaxed);
            continue;
        };
        stats.connected.fetch_add(1, Relaxed);
        if let Some(tx) = &connected {
            let _ = tx.send(());
        }
        let opening: Vec<u8> = match kind {
            Kind::Garbage => b"GET / HTTP/1.1\r\nHost: ldap\r\n\r\n\x00\xff\xfe garbage".to_vec(),
            Kind::Silent => Vec::new(),
            Kind::Slowloris => vec![0x30, 0x83, 0x00, 0xff, 0x00],
            Kind::Oversized => vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff],
            Kind::BigPartial => {
                // 60,000 bytes announced (under the 64 KiB limit), 30,000 sent.
                let mut v = vec![
                    0x30, 0x82, 0xea, 0x60, 0x02, 0x01, 0x01, 0x63, 0x82, 0xea, 0x5a,
                ];
                v.resize(30_000, b'x');
                v
            }
            // About 680 KB of answers: more than the session buffers for a client
            // (256 KiB) and the sockets hold, so the session stops reading its backend
            // connection.
            Kind::NeverRead => (1..=40).flat_map(big_search).collect(),
        };
        if s.write_all(&opening).await.is_err() {
            stats.closed_by_proxy.fetch_add(1, Relaxed);
            continue;
        }
        match kind {
            Kind::NeverRead => {
                end.cancelled().await;
                return;
            }
            Kind::Slowloris => loop {
                tokio::select! {
                    () = end.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(300)) => {
                        if s.write_all(b"x").await.is_err() {
                            stats.closed_by_proxy.fetch_add(1, Relaxed);
                            break;
                        }
                    }
                }
            },
            _ => {
                // Waits for the proxy to close (reading whatever notice it sends).
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        () = end.cancelled() => return,
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => {
                                stats.closed_by_proxy.fetch_add(1, Relaxed);
                                break;
                            }
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
    }
}

/// The soft limit on open files of this process (the proxy inherits it).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_flood_does_not_keep_a_well_behaved_client_out() {
    let limit = open_files_limit();
    assert!(
        limit >= 8192,
        "open files limit {limit}: the flood needs 8192 (tests/run.sh raises it; `ulimit -n 65536`)"
    );
    let pam = PamSetup::new(PASSDB);
    pam.set_duo_delay(1);
    let proxy = proxy_with_pam_env(
        &pam,
        &format!(
            r#"
[metrics]
listen = "127.0.0.1:0"

[limits]
max_connections = {MAX_CONNECTIONS}
max_connections_per_address = {PER_ADDRESS}
max_message_size = {MAX_MESSAGE}
send_timeout = "2s"
request_timeout = "2s"
max_outstanding = 8

{SITE_ROUTES}
"#
        ),
        &[("RUST_LOG", "info")],
    );
    let baseline = proxy.open_sockets();
    let sampler = Sampler::start(proxy.pid());

    // The flood, on its own runtime.
    let end = CancellationToken::new();
    let stats = Arc::new(FloodStats::default());
    let flood = {
        let (end, stats, addr) = (end.clone(), Arc::clone(&stats), proxy.addr);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                // First 200 from one address, past the per-address cap; the rest once
                // they have all connected (else the full table would refuse them first).
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                for _ in 0..200 {
                    let from = IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1));
                    let tx = Some(tx.clone());
                    tasks.spawn(flood_client(
                        Kind::Silent,
                        from,
                        addr,
                        end.clone(),
                        Arc::clone(&stats),
                        tx,
                    ));
                }
                drop(tx);
                for _ in 0..200 {
                    if rx.recv().await.is_none() {
                        break;
                    }
                }
                // 2,000 clients over 40 addresses (50 each, under the per-address cap).
                for i in 0..2000u32 {
                    let from = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1 + (i / 50) as u8));
                    let kind = KINDS[i as usize % KINDS.len()];
                    tasks.spawn(flood_client(
                        kind,
                        from,
                        addr,
                        end.clone(),
                        Arc::clone(&stats),
                        None,
                    ));
                }
                while tasks.join_next().await.is_some() {}
            });
        })
    };

    // The well-behaved client: a long-lived connection searching, new connections
    // binding through csu (a password) and duo (a 1 s push), from 127.0.0.1.
    let started = Instant::now();
    let searches = Mutex::new(Tally::default());
    let csu = Mutex::new(Tally::default());
    let duo = Mutex::new(Tally::default());
    let people = people();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut conn = None;
            while started.elapsed() < FLOOD_FOR {
                timed(&searches, || {
                    if conn.is_none() {
                        conn = Some(Wire::connect(None, proxy.addr)?);
                    }
                    let c = conn.as_mut().unwrap();
                    let r = c.search(&people, LdapSearchScope::OneLevel, "(uid=alice)");
                    match r {
                        Ok(1) => Ok(()),
                        Ok(n) => Err(format!("{n} entries")),
                        Err(e) => {
                            conn = None;
                            Err(e)
                        }
                    }
                });
            }
        });
        scope.spawn(|| {
            while started.elapsed() < FLOOD_FOR {
                timed(&csu, || {
                    let mut c = Wire::connect(None, proxy.addr)?;
                    c.bind(&user("erin"), "erin-pampw")?;
                    match c.search(&people, LdapSearchScope::OneLevel, "(uid=erin)")? {
                        1 => {}
                        n => return Err(format!("{n} entries")),
                    }
                    c.unbind();
                    Ok(())
                });
            }
        });
        scope.spawn(|| {
            while started.elapsed() < FLOOD_FOR {
                timed(&duo, || {
                    let mut c = Wire::connect(None, proxy.addr)?;
                    c.bind(&user("alice"), "alice-pampw")?;
                    let me = c.whoami()?;
                    if me != format!("dn:{}", user("alice")) {
                        return Err(format!("whoami: {me}"));
                    }
                    c.unbind();
                    Ok(())
                });
            }
        });
    });
    let during = proxy.metric("ldap_pam_proxy_connection_slots{state=\"open\"}");
    end.cancel();
    flood.join().unwrap();
    let (rss, threads) = sampler.stop();

    let (searches, csu, duo) = (
        searches.into_inner().unwrap(),
        csu.into_inner().unwrap(),
        duo.into_inner().unwrap(),
    );
    let refused = |reason: &str| {
        proxy
            .metric(&format!(
                "ldap_pam_proxy_connections_refused_total{{reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };
    let evicted = proxy
        .metric("ldap_pam_proxy_connections_evicted_total")
        .unwrap_or(0.0);
    let summary = format!(
        "{}; {}; {}; flood: {} connections ({} failed to connect, {} closed by the proxy), refused {} at the cap and {} per address, {} idle asked to leave, {} forced; slots open near the end {:?}; peak RSS {} MiB, {} threads",
        searches.summary("searches"),
        csu.summary("csu bind+search"),
        duo.summary("duo bind+whoami"),
        stats.connected.load(Relaxed),
        stats.connect_failed.load(Relaxed),
        stats.closed_by_proxy.load(Relaxed),
        refused("max_connections"),
        refused("per_address"),
        evicted,
        proxy.metric("ldap_pam_proxy_connections_forced_total").unwrap_or(0.0),
        during,
        rss >> 20,
        threads,
    );
    eprintln!("{summary}");
    if std::env::var_os("LPP_TRACE_OPS").is_some() {
        for line in proxy
            .log()
            .lines()
            .filter(|l| l.contains("backend") || l.contains("WARN") || l.contains("lost"))
            .take(60)
        {
            eprintln!("proxy: {line}");
        }
    }
    figures(
        "flood: 2,200 hostile clients (garbage, silent, slowloris, oversized, partial, never-read)",
        &format!(
            "searches {} ok p99 {:?} max {:?}; csu {} ok p99 {:?} max {:?}; duo {} ok p99 {:?} max {:?}",
            searches.ok,
            searches.p99(),
            searches.max(),
            csu.ok,
            csu.p99(),
            csu.max(),
            duo.ok,
            duo.p99(),
            duo.max()
        ),
        (rss, threads),
        &format!(
            "{} failed",
            searches.failed.len() + csu.failed.len() + duo.failed.len()
        ),
    );
    assert!(
        searches.failed.is_empty() && csu.failed.is_empty() && duo.failed.is_empty(),
        "{summary}"
    );
    assert!(searches.ok > 0 && csu.ok > 0 && duo.ok > 0, "{summary}");
    assert!(refused("per_address") > 0.0, "{summary}");
    // The table filled: idle connections were asked to leave, or (when none had been
    // idle long enough) new ones were refused at the cap.
    assert!(
        evicted > 0.0 || refused("max_connections") > 0.0,
        "the table never filled: {summary}"
    );
    // Memory: see MEMORY_BOUND.
    assert!(rss < memory_bound(), "{summary}");
    // Nothing stays behind: every flood connection closes. The shared service
    // connections of the PAM-bound sessions stay for the next (and the lookup pool's).
    let shared = proxy
        .metric("ldap_pam_proxy_shared_connections")
        .unwrap_or(0.0) as usize;
    assert!(
        eventually(Duration::from_secs(30), || proxy.open_sockets()
            <= baseline + 8 + shared),
        "{} sockets open after the flood, baseline {baseline}, {shared} shared",
        proxy.open_sockets()
    );
}

/// What the proxy's memory may reach, from its limits and the worst case per connection
/// the design documents (DESIGN §1, "Backpressure, bounded memory": about
/// 3 × `max_message_size` + 1 MiB), over every slot of the table, plus a base of 64 MiB
/// (the binary, the runtime, PAM under pam_wrapper: about 20 MiB idle): 1.2 GiB here. The
/// flood stays far below it (the figures print the peak): it is the bound the proxy
/// promises whatever the clients send, not a measurement.
fn memory_bound() -> u64 {
    let per_connection = 3 * MAX_MESSAGE as u64 + (1 << 20);
    (64 << 20) + MAX_CONNECTIONS as u64 * per_connection
}
