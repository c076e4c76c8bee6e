//! TLS everywhere (DESIGN §4): LDAPS and StartTLS towards clients, ldaps:// and StartTLS
//! towards the directory, StartTLS's edge cases (RFC 4511 §4.14, RFC 4513 §3.1.1),
//! `listen.require_tls`, certificate reload on SIGHUP, client certificates, and a PAM
//! bind on a secure route.
//!
//! Certificates are made per test with the openssl command line (a CA and RSA
//! certificates for localhost and 127.0.0.1); clients verify them with that CA.

mod common;

use common::*;
use ldap3_proto::proto::{LdapExtendedRequest, LdapMsg, LdapOp, LdapResultCode, LdapSearchScope};
use ldap3_proto::LdapCodec;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::rustls;
use tokio_util::codec::{Decoder, Encoder};

const OID_STARTTLS: &str = "1.3.6.1.4.1.1466.20037";

// ---------------------------------------------------------------------------------------
// Certificates

/// A throwaway CA and the certificates it signs, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=ldap-pam-proxy TLS test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A certificate `<name>.crt` with its key `<name>.key` for localhost, 127.0.0.1
    /// and ::1 with `serial`; `usage` is `serverAuth` or `clientAuth`.
    fn issue(&self, name: &str, serial: u32, usage: &str) -> (PathBuf, PathBuf) {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
            ),
        )
        .expect("ext file");
        self.openssl(&[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial.to_string(),
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        (self.path(&crt), self.path(&key))
    }

    fn server(&self, name: &str, serial: u32) -> (PathBuf, PathBuf) {
        self.issue(name, serial, "serverAuth")
    }

    /// The `[tls]` table for a certificate.
    fn tls_table(cert: &Path, key: &Path, extra: &str) -> String {
        format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{extra}\n",
            cert.display(),
            key.display()
        )
    }
}

/// The DER of the first certificate in a PEM file.
fn der_of(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .expect("a PEM certificate")
        .to_vec()
}

/// A rustls client configuration trusting `ca`.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("PEM")).expect("CA");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

// ---------------------------------------------------------------------------------------
// The directory's TLS side and the proxy

/// A key of the test directory's `ds.env` (made by `ds.sh create --tls-port`).
fn ds_env(key: &str) -> String {
    let path = std::env::var("LPP_DS_ENV").expect("LPP_DS_ENV");
    let text = std::fs::read_to_string(&path).expect("ds.env");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("{path}: no {key} (create the instance with --tls-port)"))
}

/// A proxy with `[tls]` from `pki` (certificate `server`), an LDAPS listener, in front of
/// `backend` (`[backend]` lines in `backend_extra`), with `listen_extra` lines in
/// `[listen]` and `extra` tables at the end.
struct TlsProxy {
    proxy: Proxy,
    ldaps: SocketAddr,
}

impl TlsProxy {
    fn start(tls_table: &str, listen_extra: &str, backend_extra: &str, extra: &str) -> TlsProxy {
        let ds = directory();
        let proxy = Proxy::start_config(&format!(
            "[listen]\naddress = \"127.0.0.1:0\"\nldaps_address = \"127.0.0.1:0\"\n{listen_extra}\n\n[backend]\nuris = [\"{}\"]\nconnect_timeout = \"2s\"\n{backend_extra}\n\n{tls_table}\n{extra}\n",
            ds.uri
        ));
        let mut ldaps = None;
        let found = eventually(Duration::from_secs(10), || {
            ldaps = proxy.log().lines().find_map(|l| {
                l.split("ldaps=")
                    .nth(1)
                    .filter(|_| l.contains("LDAPS listening"))
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            });
            ldaps.is_some()
        });
        assert!(found, "no LDAPS listener:\n{}", proxy.log());
        TlsProxy {
            proxy,
            ldaps: ldaps.expect("ldaps address"),
        }
    }

    /// In front of the test directory with `pki`'s server certificate (serial 1).
    fn simple(pki: &Pki, listen_extra: &str) -> TlsProxy {
        let (cert, key) = pki.server("server", 1);
        TlsProxy::start(&Pki::tls_table(&cert, &key, ""), listen_extra, "", "")
    }

    fn ldaps_uri(&self) -> String {
        format!("ldaps://{}", self.ldaps)
    }
}

/// Runs an OpenLDAP client that verifies the server against `ca`.
fn tool(tool: &str, uri: &str, args: &[&str], ca: &Path, env: &[(&str, &Path)]) -> Outcome {
    let mut vars: Vec<(&str, &std::ffi::OsStr)> = vec![("LDAPTLS_CACERT", ca.as_os_str())];
    vars.extend(env.iter().map(|(k, v)| (*k, v.as_os_str())));
    ldap_tool_env(tool, uri, args, None, &vars)
}

// ---------------------------------------------------------------------------------------
// A raw LDAP client that can upgrade to TLS

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Gone,
}

/// Like `RawClient`, over TCP or TLS, with StartTLS.
struct Conn {
    io: Io,
    buf: bytes::BytesMut,
    codec: LdapCodec,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            io: Io::Plain(stream),
            buf: bytes::BytesMut::new(),
            codec: LdapCodec::new(Some(64 << 20), None),
        }
    }

    /// LDAPS: TLS from the first byte.
    fn ldaps(addr: SocketAddr, ca: &Path) -> Conn {
        let mut c = Conn::connect(addr);
        c.handshake(ca).expect("LDAPS handshake");
        c
    }

    /// Runs the TLS handshake on the TCP connection.
    fn handshake(&mut self, ca: &Path) -> std::io::Result<()> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            panic!("not a plain connection");
        };
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(client_config(ca), name).expect("client");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        self.io = Io::Tls(Box::new(tls));
        Ok(())
    }

    /// The certificate the server presented.
    fn peer_certificate(&self) -> Vec<u8> {
        match &self.io {
            Io::Tls(t) => t
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .expect("peer certificate")
                .to_vec(),
            _ => panic!("no TLS"),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let r = match &mut self.io {
            Io::Plain(s) => s.write_all(bytes),
            Io::Tls(t) => t.write_all(bytes).and_then(|()| t.flush()),
            Io::Gone => panic!("connection gone"),
        };
        r.expect("write");
    }

    fn read(&mut self, chunk: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.io {
            Io::Plain(s) => s.read(chunk),
            Io::Tls(t) => t.read(chunk),
            Io::Gone => Ok(0),
        }
    }

    fn encode(&mut self, msg: LdapMsg) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        self.codec.encode(msg, &mut out).unwrap();
        out.to_vec()
    }

    fn send(&mut self, msg: LdapMsg) {
        let bytes = self.encode(msg);
        self.write(&bytes);
    }

    /// The next message, or `None` when the server closed the connection.
    fn recv(&mut self) -> Option<LdapMsg> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf).expect("decode") {
                return Some(m);
            }
            let mut chunk = [0u8; 65536];
            match self.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads until the server closes; true when it did within the read timeout.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return true
                }
                Err(_) => return false,
            }
        }
    }

    /// Sends StartTLS and returns the response's result code and name; on success the
    /// caller runs [`Conn::handshake`].
    fn start_tls(&mut self, msgid: i32) -> (LdapResultCode, Option<String>) {
        self.send(starttls(msgid));
        let m = self.recv().expect("StartTLS response");
        assert_eq!(m.msgid, msgid, "{m:?}");
        match m.op {
            LdapOp::ExtendedResponse(r) => (r.res.code, r.name),
            other => panic!("expected an extended response, got {other:?}"),
        }
    }

    /// StartTLS that must succeed, then the handshake.
    fn upgrade(&mut self, msgid: i32, ca: &Path) {
        let (code, name) = self.start_tls(msgid);
        assert_eq!(code, LdapResultCode::Success);
        assert_eq!(name.as_deref(), Some(OID_STARTTLS));
        self.handshake(ca).expect("handshake after StartTLS");
    }

    /// A base search of alice's entry; returns the result code and the entries' DNs.
    fn search_alice(&mut self, msgid: i32) -> (LdapResultCode, Vec<String>) {
        let alice = format!("uid=alice,{}", people());
        self.send(search(
            msgid,
            &alice,
            LdapSearchScope::Base,
            "(objectClass=*)",
            &["uid"],
        ));
        let mut dns = Vec::new();
        loop {
            let m = self.recv().expect("search answer");
            assert_eq!(m.msgid, msgid, "{m:?}");
            match m.op {
                LdapOp::SearchResultEntry(e) => dns.push(e.dn),
                LdapOp::SearchResultDone(r) => return (r.code, dns),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn bind(&mut self, msgid: i32, dn: &str, pw: &str) -> LdapResultCode {
        self.send(bind_request(msgid, dn, pw));
        match self.recv().expect("bind response").op {
            LdapOp::BindResponse(r) => r.res.code,
            other => panic!("expected a bind response, got {other:?}"),
        }
    }
}

fn starttls(msgid: i32) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::ExtendedRequest(LdapExtendedRequest {
            name: OID_STARTTLS.into(),
            value: None,
        }),
    )
}

fn alice_dn() -> String {
    format!("uid=alice,{}", people())
}

// ---------------------------------------------------------------------------------------
// Client side

/// `ldapsearch -ZZ` and `ldapwhoami` over LDAPS through the proxy, verifying the proxy's
/// certificate: the same answers as the directory gives directly.
#[test]
fn openldap_clients_over_starttls_and_ldaps() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "");
    let ds = directory();
    let people = people();
    let args = [
        "-x",
        "-LLL",
        "-b",
        &people,
        "-s",
        "one",
        "(uid=user0*)",
        "uid",
        "cn",
    ];
    let direct = ldap_tool("ldapsearch", &ds.uri, &args);
    assert_eq!(direct.code, 0, "{direct:?}");

    let mut zz = vec!["-ZZ"];
    zz.extend(args);
    let relayed = tool("ldapsearch", &p.proxy.uri(), &zz, &pki.ca(), &[]);
    assert_eq!(relayed.code, 0, "{relayed:?}");
    assert_eq!(relayed.stdout, direct.stdout);

    let relayed = tool("ldapsearch", &p.ldaps_uri(), &args, &pki.ca(), &[]);
    assert_eq!(relayed.code, 0, "{relayed:?}");
    assert_eq!(relayed.stdout, direct.stdout);

    let root = as_root();
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let who = tool("ldapwhoami", &p.ldaps_uri(), &root, &pki.ca(), &[]);
    assert_eq!(who.code, 0, "{who:?}");
    assert_eq!(who.stdout.trim(), "dn: cn=directory manager");
    let mut zz = vec!["-ZZ"];
    zz.extend(&root);
    let who = tool("ldapwhoami", &p.proxy.uri(), &zz, &pki.ca(), &[]);
    assert_eq!(who.code, 0, "{who:?}");
    assert_eq!(who.stdout.trim(), "dn: cn=directory manager");

    // The whole tree with operational attributes: many messages, streamed through TLS.
    let mut all = root.clone();
    all.extend(["-LLL", "-b", &ds.suffix, "(objectClass=*)", "*", "+"]);
    let direct = ldap_tool("ldapsearch", &ds.uri, &all);
    assert_eq!(direct.code, 0, "{direct:?}");
    let relayed = tool("ldapsearch", &p.ldaps_uri(), &all, &pki.ca(), &[]);
    assert_eq!(relayed, direct);
    let mut zz = vec!["-ZZ"];
    zz.extend(&all);
    assert_eq!(
        tool("ldapsearch", &p.proxy.uri(), &zz, &pki.ca(), &[]),
        direct
    );

    // A client that trusts another CA refuses the proxy.
    let other = Pki::new();
    let refused = tool("ldapwhoami", &p.ldaps_uri(), &["-x"], &other.ca(), &[]);
    assert_ne!(refused.code, 0, "{refused:?}");
    // And the proxy is still serving.
    let who = tool("ldapwhoami", &p.ldaps_uri(), &["-x"], &pki.ca(), &[]);
    assert_eq!(who.stdout.trim(), "anonymous", "{who:?}");
}

/// The `ldap3` crate over LDAPS and over StartTLS sees what it sees directly.
#[test]
fn rust_client_over_ldaps_and_starttls() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "");
    let ds = directory();
    let read = |uri: &str, settings: ldap3::LdapConnSettings| {
        let mut conn = ldap3::LdapConn::with_settings(settings, uri).expect("connect");
        conn.simple_bind(&ds.root_dn, &ds.root_pw)
            .unwrap()
            .success()
            .unwrap();
        let v = ldap3_entries(
            &mut conn,
            &people(),
            "(homeDirectory=/home/*@*)",
            vec!["uid", "mail"],
        );
        conn.unbind().unwrap();
        v
    };
    let direct = read(&ds.uri, ldap3::LdapConnSettings::new());
    assert_eq!(direct.len(), 3, "{direct:?}");
    let tls = || ldap3::LdapConnSettings::new().set_config(client_config(&pki.ca()));
    assert_eq!(read(&p.ldaps_uri(), tls()), direct, "LDAPS");
    assert_eq!(
        read(&p.proxy.uri(), tls().set_starttls(true)),
        direct,
        "StartTLS"
    );
}

/// StartTLS while an operation is outstanding: operationsError, and the connection goes
/// on in the clear; once nothing is outstanding, StartTLS works on the same connection.
#[test]
fn starttls_with_outstanding_operation_gets_operations_error() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "");
    let mut c = Conn::connect(p.proxy.addr);
    // A persistent search never ends by itself: it stays outstanding.
    let ps = persistent_search(
        1,
        &format!("ou=Groups,{}", directory().suffix),
        LdapSearchScope::Subtree,
        "(objectClass=groupOfNames)",
        &["cn"],
    );
    c.send(ps);
    let (code, name) = c.start_tls(2);
    assert_eq!(code, LdapResultCode::OperationsError);
    assert_eq!(name.as_deref(), Some(OID_STARTTLS));
    // Still usable in the clear.
    let (code, dns) = c.search_alice(3);
    assert_eq!(code, LdapResultCode::Success);
    assert_eq!(dns, [alice_dn()]);
    // Abandoned, the persistent search is no longer outstanding.
    c.send(LdapMsg::new(4, LdapOp::AbandonRequest(1)));
    c.upgrade(5, &pki.ca());
    let (code, dns) = c.search_alice(6);
    assert_eq!(code, LdapResultCode::Success);
    assert_eq!(dns, [alice_dn()]);
}

/// StartTLS on a connection that already has TLS (after StartTLS, or LDAPS):
/// operationsError, and the TLS connection goes on.
#[test]
fn starttls_twice_gets_operations_error() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "");
    let mut c = Conn::connect(p.proxy.addr);
    c.upgrade(1, &pki.ca());
    assert_eq!(c.start_tls(2).0, LdapResultCode::OperationsError);
    assert_eq!(c.search_alice(3).0, LdapResultCode::Success);

    let mut c = Conn::ldaps(p.ldaps, &pki.ca());
    assert_eq!(c.start_tls(1).0, LdapResultCode::OperationsError);
    let (code, dns) = c.search_alice(2);
    assert_eq!(code, LdapResultCode::Success);
    assert_eq!(dns, [alice_dn()]);
}

/// Without `[tls]` the proxy does not support TLS: protocolError (RFC 4511 §4.14.2),
/// and the connection goes on in the clear.
#[test]
fn starttls_without_tls_config_gets_protocol_error() {
    let proxy = Proxy::in_front_of_389();
    let mut c = Conn::connect(proxy.addr);
    let (code, name) = c.start_tls(1);
    assert_eq!(code, LdapResultCode::ProtocolError);
    assert_eq!(name.as_deref(), Some(OID_STARTTLS));
    assert_eq!(c.search_alice(2).0, LdapResultCode::Success);
    // `-ZZ` insists and fails; `-Z` goes on in the clear.
    let pki = Pki::new();
    let zz = tool("ldapwhoami", &proxy.uri(), &["-ZZ", "-x"], &pki.ca(), &[]);
    assert_ne!(zz.code, 0, "{zz:?}");
    let z = tool("ldapwhoami", &proxy.uri(), &["-Z", "-x"], &pki.ca(), &[]);
    assert_eq!(z.code, 0, "{z:?}");
    assert_eq!(z.stdout.trim(), "anonymous");
}

/// Bytes sent after the StartTLS request, before the handshake, are a protocol
/// violation: Notice of Disconnection and close, never read as if protected.
#[test]
fn bytes_after_starttls_close_the_connection() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "");
    let mut c = Conn::connect(p.proxy.addr);
    let mut both = c.encode(starttls(1));
    let alice = alice_dn();
    both.extend(c.encode(search(
        2,
        &alice,
        LdapSearchScope::Base,
        "(objectClass=*)",
        &[],
    )));
    c.write(&both);
    let m = c.recv().expect("notice");
    assert_eq!(
        notice_code(&m),
        Some(LdapResultCode::ProtocolError),
        "{m:?}"
    );
    assert!(c.closed());
    // Not a crash: the proxy still serves.
    let mut c = Conn::connect(p.proxy.addr);
    c.upgrade(1, &pki.ca());
    assert_eq!(c.search_alice(2).0, LdapResultCode::Success);
}

/// `listen.require_tls`: on a clear connection everything but StartTLS gets
/// confidentialityRequired (13), binds included; after StartTLS, and over LDAPS, all works.
#[test]
fn require_tls_refuses_clear_operations() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "require_tls = true");
    let ds = directory();
    let mut c = Conn::connect(p.proxy.addr);
    assert_eq!(c.search_alice(1).0, LdapResultCode::ConfidentialityRequired);
    assert_eq!(
        c.bind(2, &ds.root_dn, &ds.root_pw),
        LdapResultCode::ConfidentialityRequired
    );
    c.send(whoami_request(3));
    let m = c.recv().expect("whoami answer");
    let LdapOp::ExtendedResponse(r) = m.op else {
        panic!("{m:?}")
    };
    assert_eq!(r.res.code, LdapResultCode::ConfidentialityRequired);
    c.upgrade(4, &pki.ca());
    assert_eq!(c.bind(5, &ds.root_dn, &ds.root_pw), LdapResultCode::Success);
    let (code, dns) = c.search_alice(6);
    assert_eq!(code, LdapResultCode::Success);
    assert_eq!(dns, [alice_dn()]);

    let clear = ldap_tool(
        "ldapsearch",
        &p.proxy.uri(),
        &["-x", "-b", "", "-s", "base"],
    );
    assert_eq!(clear.code, 13, "{clear:?}");
    let zz = tool(
        "ldapsearch",
        &p.proxy.uri(),
        &["-ZZ", "-x", "-LLL", "-b", &alice_dn(), "-s", "base", "uid"],
        &pki.ca(),
        &[],
    );
    assert_eq!(zz.code, 0, "{zz:?}");
    let ldaps = tool(
        "ldapsearch",
        &p.ldaps_uri(),
        &["-x", "-LLL", "-b", &alice_dn(), "-s", "base", "uid"],
        &pki.ca(),
        &[],
    );
    assert_eq!(ldaps.code, 0, "{ldaps:?}");
    assert_eq!(zz.stdout, ldaps.stdout);
}

/// With `client_ca`, LDAPS and StartTLS need a client certificate that CA signed.
#[test]
fn client_certificates_when_client_ca_is_set() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server", 1);
    let (ccert, ckey) = pki.issue("client", 2, "clientAuth");
    let extra = format!("client_ca = \"{}\"", pki.ca().display());
    let p = TlsProxy::start(&Pki::tls_table(&cert, &key, &extra), "", "", "");
    let without = tool("ldapwhoami", &p.ldaps_uri(), &["-x"], &pki.ca(), &[]);
    assert_ne!(without.code, 0, "{without:?}");
    let with = [
        ("LDAPTLS_CERT", ccert.as_path()),
        ("LDAPTLS_KEY", ckey.as_path()),
    ];
    let ok = tool("ldapwhoami", &p.ldaps_uri(), &["-x"], &pki.ca(), &with);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(ok.stdout.trim(), "anonymous");
    let ok = tool(
        "ldapwhoami",
        &p.proxy.uri(),
        &["-ZZ", "-x"],
        &pki.ca(),
        &with,
    );
    assert_eq!(ok.code, 0, "{ok:?}");
}

/// `min_version = "1.3"`: a TLS 1.2 client is refused, a TLS 1.3 one served.
#[test]
fn min_version_refuses_older_clients() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server", 1);
    let p = TlsProxy::start(
        &Pki::tls_table(&cert, &key, "min_version = \"1.3\""),
        "",
        "",
        "",
    );
    let handshake = |version: &'static rustls::SupportedProtocolVersion| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der_of(&pki.ca()).into()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tcp = TcpStream::connect(p.ldaps).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok::<_, std::io::Error>(conn.protocol_version())
    };
    assert!(handshake(&rustls::version::TLS12).is_err());
    assert_eq!(
        handshake(&rustls::version::TLS13).unwrap(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

/// A client that opens an LDAPS connection and never speaks is dropped after the
/// handshake timeout (10 s), not kept forever.
#[test]
fn silent_ldaps_client_is_dropped() {
    let pki = Pki::new();
    let p = TlsProxy::simple(&pki, "");
    let start = Instant::now();
    let mut c = Conn::connect(p.ldaps);
    // `closed` gives up after the connection's read timeout: true means the proxy closed.
    assert!(c.closed(), "still open after {:?}", start.elapsed());
    // Not before the handshake timeout: a slow client is given its 10 s.
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(8), "closed after only {took:?}");
}

// ---------------------------------------------------------------------------------------
// Certificate reload

/// SIGHUP loads a new certificate for new connections; established ones go on with the
/// old one; a broken file (or a key that does not match) is refused and the current
/// certificate stays.
#[test]
fn sighup_reloads_the_certificate() {
    let pki = Pki::new();
    let (cert1, key1) = pki.server("one", 1);
    let (cert2, key2) = pki.server("two", 2);
    let (cert3, _) = pki.server("three", 3);
    let live_cert = pki.path("live.crt");
    let live_key = pki.path("live.key");
    std::fs::copy(&cert1, &live_cert).unwrap();
    std::fs::copy(&key1, &live_key).unwrap();
    let p = TlsProxy::start(&Pki::tls_table(&live_cert, &live_key, ""), "", "", "");
    let reloads = |p: &TlsProxy, what: &str| p.proxy.log().matches(what).count();

    let mut a = Conn::ldaps(p.ldaps, &pki.ca());
    assert_eq!(a.peer_certificate(), der_of(&cert1));
    let mut b = Conn::connect(p.proxy.addr);
    b.upgrade(1, &pki.ca());
    assert_eq!(b.peer_certificate(), der_of(&cert1));

    // A new certificate and key.
    std::fs::copy(&cert2, &live_cert).unwrap();
    std::fs::copy(&key2, &live_key).unwrap();
    p.proxy.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || reloads(
            &p,
            "configuration reloaded"
        ) == 1),
        "{}",
        p.proxy.log()
    );
    let mut c = Conn::ldaps(p.ldaps, &pki.ca());
    assert_eq!(c.peer_certificate(), der_of(&cert2));
    let mut d = Conn::connect(p.proxy.addr);
    d.upgrade(1, &pki.ca());
    assert_eq!(d.peer_certificate(), der_of(&cert2));
    // The connections made before go on.
    assert_eq!(a.search_alice(1).0, LdapResultCode::Success);
    assert_eq!(b.search_alice(2).0, LdapResultCode::Success);

    // A broken certificate file: refused, the current certificate stays.
    std::fs::write(&live_cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    p.proxy.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || reloads(&p, "reload refused")
            == 1),
        "{}",
        p.proxy.log()
    );
    // A certificate whose key is not the one in the key file: refused too.
    std::fs::copy(&cert3, &live_cert).unwrap();
    p.proxy.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || reloads(&p, "reload refused")
            == 2),
        "{}",
        p.proxy.log()
    );
    let mut e = Conn::ldaps(p.ldaps, &pki.ca());
    assert_eq!(e.peer_certificate(), der_of(&cert2));
    assert_eq!(e.search_alice(1).0, LdapResultCode::Success);
    for conn in [&mut a, &mut b, &mut c, &mut d] {
        let (code, dns) = conn.search_alice(9);
        assert_eq!(code, LdapResultCode::Success);
        assert_eq!(dns, [alice_dn()]);
    }
    assert_eq!(reloads(&p, "configuration reloaded"), 1);
}

// ---------------------------------------------------------------------------------------
// Backend side

/// Runs `ldapsearch` as the Directory Manager straight against 389 and through `proxy`.
fn same_as_direct(proxy: &Proxy) {
    let ds = directory();
    let mut args = as_root();
    args.extend(
        ["-LLL", "-b", &ds.suffix, "(objectClass=*)", "*", "+"]
            .iter()
            .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let direct = ldap_tool("ldapsearch", &ds.uri, &args);
    let relayed = ldap_tool("ldapsearch", &proxy.uri(), &args);
    assert_eq!(direct.code, 0, "{direct:?}");
    assert_eq!(relayed, direct, "proxy differs from 389:\n{}", proxy.log());
    assert!(direct.stdout.contains("uid=user040,ou=People"));
}

/// Backend connections over StartTLS (`ldap://` + `backend.starttls`) and over
/// `ldaps://`, verified against the directory's CA: the relay gives what 389 gives.
#[test]
fn backend_over_starttls_and_ldaps_matches_direct() {
    let ca = ds_env("DS_CA");
    let starttls = Proxy::start(
        &directory().uri,
        &format!("starttls = true\nca = \"{ca}\"\n"),
    );
    same_as_direct(&starttls);
    assert!(
        starttls.log().contains("backend TLS established"),
        "{}",
        starttls.log()
    );

    let ldaps = Proxy::start(&ds_env("DS_LDAPS_URI"), &format!("ca = \"{ca}\"\n"));
    same_as_direct(&ldaps);
    assert!(ldaps.log().contains("backend TLS established"));

    // The host name is checked too: `localhost` is in the directory's certificate.
    let port = ds_env("DS_TLS_PORT");
    let by_name = Proxy::start(
        &format!("ldaps://localhost:{port}"),
        &format!("ca = \"{ca}\"\n"),
    );
    let out = ldap_tool("ldapwhoami", &by_name.uri(), &["-x"]);
    assert_eq!(out.stdout.trim(), "anonymous", "{out:?}");
}

/// A backend whose certificate does not chain to `backend.ca` is not used: the client
/// gets unavailable naming the backend and the reason.
#[test]
fn backend_with_untrusted_certificate_is_refused() {
    let pki = Pki::new();
    let uri = ds_env("DS_LDAPS_URI");
    let proxy = Proxy::start(&uri, &format!("ca = \"{}\"\n", pki.ca().display()));
    let out = ldap_tool("ldapsearch", &proxy.uri(), &["-x", "-b", "", "-s", "base"]);
    assert_eq!(out.code, 52, "{out:?}");
    assert!(out.stderr.contains(&uri), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("certificate"), "{out:?}");

    // StartTLS likewise.
    let proxy = Proxy::start(
        &directory().uri,
        &format!("starttls = true\nca = \"{}\"\n", pki.ca().display()),
    );
    let out = ldap_tool("ldapsearch", &proxy.uri(), &["-x", "-b", "", "-s", "base"]);
    assert_eq!(out.code, 52, "{out:?}");
}

// ---------------------------------------------------------------------------------------
// PAM over TLS

fn pam_passdb() -> String {
    "alice:alice-pampw:duo\nbob:bob-pampw:duo\n".to_owned()
}

/// A PAM bind on a secure route (the default): over StartTLS it succeeds, in the clear it
/// gets confidentialityRequired before PAM is asked. A StartTLS sent while a PAM bind is
/// pending gets operationsError.
#[test]
fn pam_bind_over_tls_on_secure_route() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server", 1);
    let pam = PamSetup::new(&pam_passdb());
    let extra = format!(
        "{}\n[[route]]\nname = \"slow-clear\"\nfilter = \"(uid=bob)\"\npam_service = \"duo\"\nsecure = false\n\n[[route]]\nname = \"internal\"\nfilter = \"(objectClass=posixAccount)\"\npam_service = \"duo\"\n",
        Pki::tls_table(&cert, &key, "")
    );
    let proxy = Proxy::with_pam(&pam, &extra);
    let alice = alice_dn();
    let args = ["-x", "-D", &alice, "-w", "alice-pampw"];
    let mut zz = vec!["-ZZ"];
    zz.extend(args);
    let ok = tool("ldapwhoami", &proxy.uri(), &zz, &pki.ca(), &[]);
    assert_eq!(ok.code, 0, "{ok:?}\n{}", proxy.log());
    assert_eq!(ok.stdout.trim(), format!("dn:{alice}"));
    assert_eq!(pam.pushes().len(), 1, "{:?}", pam.pushes());

    let clear = tool("ldapwhoami", &proxy.uri(), &args, &pki.ca(), &[]);
    assert_eq!(clear.code, 13, "{clear:?}");
    assert_eq!(pam.pushes().len(), 1, "no PAM call for a clear bind");

    // bob's route is not secure and his push is held: StartTLS while the bind is pending
    // in PAM gets operationsError, and the bind still completes.
    let hold = pam.hold();
    let mut c = Conn::connect(proxy.addr);
    c.send(bind_request(
        1,
        &format!("uid=bob,{}", people()),
        "bob-pampw",
    ));
    assert!(
        eventually(Duration::from_secs(15), || pam.pushes().len() == 2),
        "bob's push: {:?}",
        pam.pushes()
    );
    assert_eq!(c.start_tls(2).0, LdapResultCode::OperationsError);
    hold.release();
    let m = c.recv().expect("bind response");
    let LdapOp::BindResponse(r) = m.op else {
        panic!("{m:?}")
    };
    assert_eq!(r.res.code, LdapResultCode::Success);
    // Nothing outstanding now: StartTLS works, and the session is still bob.
    c.upgrade(3, &pki.ca());
    c.send(whoami_request(4));
    let m = c.recv().expect("whoami");
    let LdapOp::ExtendedResponse(r) = m.op else {
        panic!("{m:?}")
    };
    assert_eq!(r.res.code, LdapResultCode::Success);
    assert_eq!(
        r.value.as_deref(),
        Some(format!("dn:uid=bob,{}", people()).as_bytes())
    );
}

/// Route lookups and the service-bound connection of a PAM-bound session go over TLS
/// to the directory too (`backend.starttls`).
#[test]
fn pam_bind_with_backend_over_starttls() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server", 1);
    let pam = PamSetup::new(&pam_passdb());
    let ca = ds_env("DS_CA");
    let extra = format!(
        "starttls = true\nca = \"{ca}\"\n\n{}\n[[route]]\nname = \"internal\"\nfilter = \"(objectClass=posixAccount)\"\npam_service = \"duo\"\n",
        Pki::tls_table(&cert, &key, "")
    );
    let proxy = Proxy::with_pam(&pam, &extra);
    let alice = alice_dn();
    let ok = tool(
        "ldapsearch",
        &proxy.uri(),
        &[
            "-ZZ",
            "-x",
            "-D",
            &alice,
            "-w",
            "alice-pampw",
            "-LLL",
            "-b",
            &alice,
            "-s",
            "base",
            "mail",
        ],
        &pki.ca(),
        &[],
    );
    assert_eq!(ok.code, 0, "{ok:?}\n{}", proxy.log());
    // mail is readable by self only: the search ran as alice, over the TLS backend.
    assert!(ok.stdout.contains("mail: "), "{ok:?}");
    assert_eq!(pam.pushes().len(), 1);
}
