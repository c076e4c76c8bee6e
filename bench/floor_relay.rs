//! The floor relay of `bench/compare.sh`: the least an LDAP frame relay in front of 389
//! can cost on this machine, to compare the proxy's relay with.
//!
//!   floor-relay LISTEN BACKEND [LISTEN BACKEND ...]     (e.g. 127.0.0.1:20001 127.0.0.1:20000)
//!
//! One current_thread tokio runtime. Each accepted client gets its own backend
//! connection, opened at accept time (before the client's first request is read), and
//! two pumps: each reads into a buffer, finds the complete BER frames (LDAPMessage
//! SEQUENCEs) at its front and writes all of them with one write. Nothing is decoded
//! beyond the frame headers. A buffer exists only while bytes are in flight (an idle
//! session holds none). When one side ends, the other side's write half is shut down.
//! Not part of the proxy: a measuring stick only.

use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Largest frame accepted (389's default nsslapd-maxbersize is 2 MiB; results are larger).
const MAX_FRAME: usize = 64 << 20;
const BUFFER: usize = 16 * 1024;

/// Length of the complete frame at the front of `buf`; `Ok(None)` when more bytes are
/// needed, `Err` when the bytes are not an LDAPMessage.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] != 0x30 {
        return Err(());
    }
    let first = buf[1] as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let k = first & 0x7f;
        if k == 0 || k > 4 {
            return Err(());
        }
        if buf.len() < 2 + k {
            return Ok(None);
        }
        (
            buf[2..2 + k]
                .iter()
                .fold(0usize, |n, b| n << 8 | *b as usize),
            2 + k,
        )
    };
    if len > MAX_FRAME {
        return Err(());
    }
    Ok((buf.len() >= header + len).then_some(header + len))
}

/// Copies whole frames from `from` to `to` until either side ends, then shuts `to` down.
/// A buffer is held only while bytes are in flight: an idle session keeps none.
async fn pump(from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let mut buf = BytesMut::new();
    'relay: loop {
        if from.readable().await.is_err() {
            break;
        }
        if buf.capacity() - buf.len() < BUFFER / 4 {
            buf.reserve(BUFFER);
        }
        match from.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                continue;
            }
            Err(_) => break,
        }
        let mut end = 0;
        loop {
            match frame_len(&buf[end..]) {
                Ok(Some(n)) => end += n,
                Ok(None) => break,
                Err(()) => break 'relay,
            }
        }
        if end > 0 {
            // Every complete frame already buffered goes out in one write.
            if to.write_all(&buf[..end]).await.is_err() {
                break;
            }
            if end == buf.len() {
                buf = BytesMut::new();
            } else {
                buf.advance(end);
            }
        }
    }
    let _ = to.shutdown().await;
}

async fn session(client: TcpStream, backend: SocketAddr) {
    let Ok(server) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write),
        pump(server_read, client_write)
    );
}

async fn serve(listener: TcpListener, backend: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(session(client, backend));
            }
            Err(e) => {
                // Out of file descriptors, typically: wait instead of spinning.
                eprintln!("floor-relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A listening socket with a backlog for bursts of connections (tokio's bind uses 128).
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() % 2 != 0 {
        eprintln!("usage: floor-relay LISTEN BACKEND [LISTEN BACKEND ...]");
        std::process::exit(2);
    }
    let parse = |s: &String| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("floor-relay: bad address {s}: {e}");
            std::process::exit(2)
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for pair in args.chunks(2) {
            let (listen, backend) = (parse(&pair[0]), parse(&pair[1]));
            let listener = listen_on(listen).unwrap_or_else(|e| {
                eprintln!("floor-relay: cannot listen on {listen}: {e}");
                std::process::exit(1)
            });
            eprintln!("floor-relay: {listen} -> {backend}");
            tokio::spawn(serve(listener, backend));
        }
        std::future::pending::<()>().await
    })
}
