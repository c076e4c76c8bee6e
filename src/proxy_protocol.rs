//! The PROXY protocol (HAProxy's, versions 1 and 2): a balancer in front of the proxy
//! starts each connection with a header naming the client it relays, so that PAM_RHOST,
//! the logs, the per-address limits and the per-address guard see the real client and
//! not the balancer.
//!
//! Only peers listed in `listen.proxy_protocol_from` may send one, and they must: a
//! trusted peer's connection without a valid header is closed, and so is a header from
//! anyone else (it is not LDAP: the session refuses its first byte as a protocol error).
//!
//! The header is read exactly, byte for byte of what it announces, so the client's first
//! LDAP (or TLS) bytes stay in the socket for the session.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted peer has to send its header. A balancer sends it with (or before)
/// the client's first bytes.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header is at most this long, CRLF included.
const V1_MAX: usize = 107;

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection from this client.
    Proxied(SocketAddr),
    /// The balancer speaking for itself (v2 LOCAL, e.g. a health check; v1 UNKNOWN; v2
    /// with an address family the proxy does not use): the connection's own peer is the
    /// client.
    Local,
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the PROXY protocol header ended")]
    Closed,
    #[error("no PROXY protocol header within {HEADER_TIMEOUT:?}")]
    TimedOut,
}

/// Reads one header (v1 or v2) from the start of `stream`, within [`HEADER_TIMEOUT`].
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, HeaderError> {
    tokio::time::timeout(HEADER_TIMEOUT, read(stream))
        .await
        .unwrap_or(Err(HeaderError::TimedOut))
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, HeaderError> {
    let mut start = [0u8; 6];
    exact(stream, &mut start).await?;
    if &start == b"PROXY " {
        let mut line = start.to_vec();
        // Byte by byte: nothing past the CRLF may be taken from the session.
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(HeaderError::Malformed("v1 header longer than 107 bytes"));
            }
            let mut b = [0u8; 1];
            exact(stream, &mut b).await?;
            line.push(b[0]);
        }
        return parse_v1(&line);
    }
    if start != V2_SIGNATURE[..6] {
        return Err(HeaderError::Missing);
    }
    let mut rest = [0u8; 10];
    exact(stream, &mut rest).await?;
    if rest[..6] != V2_SIGNATURE[6..] {
        return Err(HeaderError::Missing);
    }
    let (ver_cmd, family) = (rest[6], rest[7]);
    let len = usize::from(u16::from_be_bytes([rest[8], rest[9]]));
    let mut body = vec![0u8; len];
    exact(stream, &mut body).await?;
    parse_v2(ver_cmd, family, &body)
}

async fn exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), HeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(_) => Err(HeaderError::Closed),
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `PROXY TCP6 …`, `PROXY UNKNOWN …\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Header, HeaderError> {
    let text = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_suffix("\r\n"))
        .ok_or(HeaderError::Malformed(
            "v1 header is not text ending in CRLF",
        ))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Header::Local),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| HeaderError::Malformed("v1 source address"))?;
            if ip.is_ipv4() != (*proto == "TCP4") {
                return Err(HeaderError::Malformed(
                    "v1 address does not match TCP4/TCP6",
                ));
            }
            let port = parse_port(sport)?;
            Ok(Header::Proxied(SocketAddr::new(ip, port)))
        }
        _ => Err(HeaderError::Malformed("v1 header fields")),
    }
}

/// A v1 port: decimal, no leading zeros, at most 65535.
fn parse_port(text: &str) -> Result<u16, HeaderError> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return Err(HeaderError::Malformed("v1 source port"));
    }
    text.parse()
        .map_err(|_| HeaderError::Malformed("v1 source port"))
}

/// The v2 header after its signature: version and command, family and protocol, and the
/// `len` bytes of addresses and TLVs (`body`).
pub fn parse_v2(ver_cmd: u8, family: u8, body: &[u8]) -> Result<Header, HeaderError> {
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 version"));
    }
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection; the address block is to be ignored.
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(HeaderError::Malformed("v2 command")),
    }
    match family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let a = body
                .get(..12)
                .ok_or(HeaderError::Malformed("v2 IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Ok(Header::Proxied(SocketAddr::new(ip.into(), port)))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let a = body
                .get(..36)
                .ok_or(HeaderError::Malformed("v2 IPv6 address block too short"))?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(Header::Proxied(SocketAddr::new(
                Ipv6Addr::from(src).into(),
                port,
            )))
        }
        // UNSPEC (or UDP, or unix sockets: nothing a TCP balancer relays to LDAP).
        0x00 => Ok(Header::Local),
        _ => Err(HeaderError::Malformed("v2 address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// Reads a header from `bytes` followed by "LDAP": the header and the bytes left.
    fn read_from(bytes: &[u8]) -> (Result<Header, HeaderError>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut a, mut b) = tokio::io::duplex(4096);
            a.write_all(bytes).await.unwrap();
            a.write_all(b"LDAP").await.unwrap();
            drop(a);
            let header = read_header(&mut b).await;
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).await.unwrap();
            (header, rest)
        })
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let (h, rest) = read_from(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 389\r\n");
        assert_eq!(h, Ok(Header::Proxied("192.0.2.7:51234".parse().unwrap())));
        assert_eq!(rest, b"LDAP", "nothing past the header is taken");
        let (h, _) = read_from(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 636\r\n");
        assert_eq!(
            h,
            Ok(Header::Proxied("[2001:db8::7]:4000".parse().unwrap()))
        );
        let (h, rest) = read_from(b"PROXY UNKNOWN\r\n");
        assert_eq!((h, rest.as_slice()), (Ok(Header::Local), &b"LDAP"[..]));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 389\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 0123 389\r\n",
            b"PROXY TCP5 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",
        ] {
            assert!(
                matches!(read_from(bad).0, Err(HeaderError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert_eq!(
            read_from(long.as_bytes()).0,
            Err(HeaderError::Malformed("v1 header longer than 107 bytes"))
        );
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 9, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&389u16.to_be_bytes());
        // A TLV (PP2_TYPE_ALPN) the proxy skips.
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let (h, rest) = read_from(&v2(1, 0x11, &body));
        assert_eq!(h, Ok(Header::Proxied("192.0.2.9:40000".parse().unwrap())));
        assert_eq!(rest, b"LDAP");

        let mut body6 = vec![0x20, 0x01, 0x0d, 0xb8];
        body6.extend_from_slice(&[0; 11]);
        body6.push(9);
        body6.extend_from_slice(&[0; 16]);
        body6.extend_from_slice(&5000u16.to_be_bytes());
        body6.extend_from_slice(&636u16.to_be_bytes());
        let (h, _) = read_from(&v2(1, 0x21, &body6));
        assert_eq!(
            h,
            Ok(Header::Proxied("[2001:db8::9]:5000".parse().unwrap()))
        );

        let (h, rest) = read_from(&v2(0, 0x00, &[]));
        assert_eq!((h, rest.as_slice()), (Ok(Header::Local), &b"LDAP"[..]));
        let (h, _) = read_from(&v2(1, 0x00, &[]));
        assert_eq!(h, Ok(Header::Local));
    }

    #[test]
    fn v2_malformed_missing_and_short() {
        assert!(matches!(
            read_from(&v2(1, 0x11, &[1, 2, 3])).0,
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            read_from(&v2(2, 0x11, &[0; 12])).0,
            Err(HeaderError::Malformed("v2 command"))
        ));
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(matches!(
            read_from(&bad_version).0,
            Err(HeaderError::Malformed("v2 version"))
        ));
        // An LDAP message (a BindRequest's first bytes) is no header.
        assert_eq!(
            read_from(&[0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07]).0,
            Err(HeaderError::Missing)
        );
        // A TLS ClientHello neither.
        assert_eq!(
            read_from(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).0,
            Err(HeaderError::Missing)
        );
        // Cut short: the stream ends inside the announced length.
        let mut cut = v2(1, 0x11, &[0; 12]);
        cut[15] = 200;
        assert_eq!(read_from(&cut).0, Err(HeaderError::Closed));
    }
}
