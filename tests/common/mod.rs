//! Test support: the real 389 DS instance the suite runs against (created by
//! `tests/run.sh` through `tests/ds/ds.sh`), the proxy binary started as a child
//! process, the OpenLDAP command-line clients, and a raw LDAP client for byte-level cases.
#![allow(dead_code)] // each test binary uses a different part of this module

use bytes::BytesMut;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapResultCode};
use ldap3_proto::LdapCodec;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};

/// The 389 DS instance of this test run, as `ds.sh create` described it in `ds.env`.
pub struct Directory {
    pub uri: String,
    pub port: u16,
    pub suffix: String,
    pub root_dn: String,
    pub root_pw: String,
    pub service_dn: String,
    pub service_pw_file: PathBuf,
}

/// The shared directory; panics with instructions when the suite was not started by
/// `tests/run.sh`.
pub fn directory() -> &'static Directory {
    static DS: OnceLock<Directory> = OnceLock::new();
    DS.get_or_init(|| {
        let path = std::env::var("LPP_DS_ENV").unwrap_or_else(|_| {
            panic!("LPP_DS_ENV is not set: run the suite with tests/run.sh, which creates the 389 DS instance")
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let vars: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('\'').trim_matches('"').to_owned()))
            .collect();
        let get = |k: &str| vars.get(k).cloned().unwrap_or_else(|| panic!("{path}: no {k}"));
        Directory {
            uri: get("DS_URI"),
            port: get("DS_PORT").parse().expect("DS_PORT"),
            suffix: get("DS_SUFFIX"),
            root_dn: get("DS_ROOT_DN"),
            root_pw: get("DS_ROOT_PW"),
            service_dn: get("DS_SERVICE_DN"),
            service_pw_file: get("DS_SERVICE_PW_FILE").into(),
        }
    })
}

/// A running proxy process; killed when dropped.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy in front of `backend_uri` with `extra` TOML appended to a minimal
    /// configuration.
    pub fn start(backend_uri: &str, extra: &str) -> Proxy {
        Proxy::start_config(&format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[backend]\nuris = [\"{backend_uri}\"]\nconnect_timeout = \"2s\"\n{extra}\n"
        ))
    }

    /// Starts the proxy in front of the test directory.
    pub fn in_front_of_389() -> Proxy {
        Proxy::start(&directory().uri, "")
    }

    /// Starts the proxy with a complete configuration text.
    pub fn start_config(config: &str) -> Proxy {
        Proxy::try_start(config, &[]).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    /// Starts the proxy in front of the test directory with its service account, under
    /// pam_wrapper with `pam`'s services; `extra` (TOML tables: `[bind]`, `[[route]]`, …)
    /// is appended to the `[backend]` table.
    pub fn with_pam(pam: &PamSetup, extra: &str) -> Proxy {
        Proxy::try_with_pam(pam, extra).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    /// As [`Proxy::with_pam`]; `Err` holds the log of a proxy that exited instead of listening.
    pub fn try_with_pam(pam: &PamSetup, extra: &str) -> Result<Proxy, String> {
        let ds = directory();
        let config = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[backend]\nuris = [\"{}\"]\nconnect_timeout = \"2s\"\nservice_dn = \"{}\"\nservice_password_file = \"{}\"\n\n{extra}\n",
            ds.uri,
            ds.service_dn,
            ds.service_pw_file.display()
        );
        // pam_wrapper copies the services to /tmp/pam.<c> when the process starts, with
        // an unlocked check-then-create: two processes starting at once can share (and
        // overwrite) one copy. So proxies under pam_wrapper start one at a time; the
        // copy is made before `main`, so it is done once the proxy reports listening.
        static START: Mutex<()> = Mutex::new(());
        let _one_at_a_time = START
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Proxy::try_start(&config, &pam.env())
    }

    /// Starts the proxy with a complete configuration text and extra environment; `Err`
    /// holds its log when it exits (or stays silent) instead of listening.
    pub fn try_start(config: &str, env: &[(&str, String)]) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ldap-pam-proxy"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proxy");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("address=")
                    .nth(1)
                    .filter(|_| line.contains("listening"))
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                remove_pam_wrapper_dir(child.id());
                let _ = reader.join();
                let text = log.lock().unwrap().clone();
                return Err(text);
            }
        };
        Ok(Proxy {
            child,
            addr,
            log,
            _dir: dir,
        })
    }

    /// The configuration file the proxy reads (again on SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("proxy.toml")
    }

    /// The address `[metrics] listen` bound, from the proxy's log.
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("metrics listening"))
            .unwrap_or_else(|| panic!("no metrics listener:\n{log}"));
        line.split("metrics=")
            .nth(1)
            .expect("metrics=")
            .trim()
            .parse()
            .expect("address")
    }

    /// GET `path` from the metrics listener: (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(self.metrics_addr()).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read metrics");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    }

    /// The value of the metric line that starts with `series` (name and labels), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn uri(&self) -> String {
        format!("ldap://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the proxy has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal to the proxy.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the proxy to exit on its own and returns whether it exited successfully.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<bool> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Number of TCP sockets the proxy process holds open (listener and clients included).
    pub fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("proc fd")
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|t| t.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pid = self.pid();
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_pam_wrapper_dir(pid);
    }
}

/// pam_wrapper's private copy of the services, `/tmp/pam.<c>` with the owner's pid in
/// `pid`, is removed only by a process that exits normally; a killed proxy leaves it.
fn remove_pam_wrapper_dir(pid: u32) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 5 && n.starts_with("pam."))
            && std::fs::read_to_string(path.join("pid")).is_ok_and(|p| p.trim() == pid.to_string());
        if ours {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// An exclusive lock on a file, held by a `flock` child process (so it is released
/// when the test process dies, too). The `duo` test push waits for a shared lock on it.
pub struct Hold {
    child: Option<Child>,
}

impl Hold {
    fn take(path: &Path) -> Hold {
        std::fs::write(path, "").expect("hold file");
        // Not under pam_wrapper, even when the caller is.
        let mut child = Command::new("flock")
            .arg("-x")
            .arg(path)
            .args(["-c", "echo held; exec cat >/dev/null"])
            .env_remove("LD_PRELOAD")
            .env_remove("PAM_WRAPPER")
            .env_remove("PAM_WRAPPER_SERVICE_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock (util-linux)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read flock");
        assert_eq!(line.trim(), "held", "flock did not take the lock");
        Hold { child: Some(child) }
    }

    /// Lets every held push go on.
    pub fn release(mut self) {
        self.let_go();
    }

    fn let_go(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// What a command-line client did.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs an OpenLDAP client (`ldapsearch`, `ldapmodify`, …) with `-H uri` and `args`,
/// bounded by `timeout` so a hung connection fails the test instead of the suite.
pub fn ldap_tool(tool: &str, uri: &str, args: &[&str]) -> Outcome {
    ldap_tool_input(tool, uri, args, None)
}

/// As [`ldap_tool`], with `input` on the client's standard input.
pub fn ldap_tool_input(tool: &str, uri: &str, args: &[&str], input: Option<&str>) -> Outcome {
    ldap_tool_env(
        tool,
        uri,
        args,
        input,
        &[("LDAPTLS_REQCERT", "never".as_ref())],
    )
}

/// As [`ldap_tool_input`], with extra environment (e.g. `LDAPTLS_CACERT`).
pub fn ldap_tool_env(
    tool: &str,
    uri: &str,
    args: &[&str],
    input: Option<&str>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Outcome {
    let mut child = Command::new("timeout")
        .args(["30", tool, "-H", uri])
        .args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e} (run scripts/install-deps.sh)"));
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("wait");
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 124, "{tool} {args:?} timed out against {uri}");
    Outcome {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Arguments that bind as the Directory Manager.
pub fn as_root() -> Vec<String> {
    let ds = directory();
    vec![
        "-x".into(),
        "-D".into(),
        ds.root_dn.clone(),
        "-w".into(),
        ds.root_pw.clone(),
    ]
}

/// The DN of a sample user.
pub fn user(uid: &str) -> String {
    format!("uid={uid},ou=People,{}", directory().suffix)
}

/// The sample directory's people.
pub fn people() -> String {
    format!("ou=People,{}", directory().suffix)
}

/// Sends a simple bind as a sample user on a new connection, without waiting for the answer.
pub fn start_bind(proxy: &Proxy, uid: &str, pw: &str) -> RawClient {
    let mut c = RawClient::connect(proxy.addr);
    c.send(bind_request(1, &user(uid), pw));
    c
}

/// [`start_bind`] from another client address (a loopback address such as 127.0.0.2).
pub fn start_bind_from(proxy: &Proxy, local: &str, uid: &str, pw: &str) -> RawClient {
    let mut c = RawClient::connect_from(local.parse().expect("IP address"), proxy.addr);
    c.send(bind_request(1, &user(uid), pw));
    c
}

/// The result of the bind a [`start_bind`] connection is waiting for.
pub fn bind_result(c: &mut RawClient) -> LdapResultCode {
    match c.recv().expect("bind response").op {
        LdapOp::BindResponse(r) => r.res.code,
        other => panic!("expected a bind response, got {other:?}"),
    }
}

/// The entries a search through the `ldap3` crate returns, in a comparable form.
pub fn ldap3_entries(
    conn: &mut ldap3::LdapConn,
    base: &str,
    filter: &str,
    attrs: Vec<&str>,
) -> Vec<(String, std::collections::BTreeMap<String, Vec<String>>)> {
    let (entries, _) = conn
        .search(base, ldap3::Scope::Subtree, filter, attrs)
        .unwrap()
        .success()
        .unwrap();
    let mut v: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let e = ldap3::SearchEntry::construct(e);
            (e.dn, e.attrs.into_iter().collect())
        })
        .collect();
    v.sort();
    v
}

/// A subtree of the test directory a test made, removed (as Directory Manager) when
/// dropped.
pub struct Subtree(pub String);

impl Subtree {
    /// `ou=<name>,<suffix>` with `aci` (if any) and one internal user (posixAccount,
    /// `homeDirectory /home/<uid>`: the tests' duo route) per uid, without a directory
    /// password.
    pub fn create(name: &str, aci: Option<&str>, uids: &[String]) -> Subtree {
        let ds = directory();
        let base = format!("ou={name},{}", ds.suffix);
        let aci = aci.map(|a| format!("aci: {a}\n")).unwrap_or_default();
        let mut ldif = format!(
            "dn: {base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {name}\n{aci}\n"
        );
        for (i, uid) in uids.iter().enumerate() {
            ldif.push_str(&format!(
                "dn: uid={uid},{base}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n\
                 objectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
                 uidNumber: {}\ngidNumber: 10000\nhomeDirectory: /home/{uid}\n\n",
                60001 + i
            ));
        }
        let mut args = as_root();
        args.push("-a".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ldap_tool_input("ldapmodify", &ds.uri, &args, Some(&ldif));
        assert_eq!(out.code, 0, "{out:?}");
        Subtree(base)
    }

    /// The DN of the user `uid` in it.
    pub fn user(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.0)
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        let mut args = as_root();
        args.extend(["-r".to_owned(), self.0.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = ldap_tool("ldapdelete", &directory().uri, &args);
    }
}

/// The sample site's route filters: internal users, and external ones (home directories
/// `/home/user@institution`).
pub const INTERNAL: &str = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))";
pub const EXTERNAL: &str = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))";

/// A `[[route]]` for clear connections (`secure = false`: the tests run without TLS);
/// `extra` holds more `key = value` lines.
pub fn route(name: &str, filter: Option<&str>, service: &str, extra: &str) -> String {
    let filter = filter.map_or(String::new(), |f| format!("filter = \"{f}\"\n"));
    format!(
        "[[route]]\nname = \"{name}\"\n{filter}pam_service = \"{service}\"\nsecure = false\n{extra}\n"
    )
}

/// [`SITE_ROUTES`], owned.
pub fn site_routes() -> String {
    SITE_ROUTES.to_owned()
}

/// A proxy under pam_wrapper and its PAM state. (Field order: the proxy stops first.)
pub struct PamBench {
    pub proxy: Proxy,
    pub pam: PamSetup,
}

impl PamBench {
    /// PAM users from `passdb` (pam_matrix lines); `config`: `[bind]`, `[pam]`,
    /// `[metrics]` and `[[route]]` tables.
    pub fn new(passdb: &str, config: &str) -> PamBench {
        let pam = PamSetup::new(passdb);
        PamBench {
            proxy: Proxy::with_pam(&pam, config),
            pam,
        }
    }

    pub fn uri(&self) -> String {
        self.proxy.uri()
    }

    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.proxy.addr)
    }

    pub fn pushes(&self) -> Vec<String> {
        self.pam.pushes()
    }
}

/// The sample site's routes without TLS (`secure = false`): `duo` for internal users,
/// `csu` for external ones (home directories `/home/*@*`).
pub const SITE_ROUTES: &str = r#"[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
secure = false

[[route]]
name = "csu"
filter = "(&(objectClass=posixAccount)(homeDirectory=/home/*@*))"
pam_service = "csu"
secure = false
"#;

/// Entries a test added (DNs leaf first), deleted as the Directory Manager when the guard
/// goes, however the test ends.
pub struct Entries(pub Vec<String>);

impl Entries {
    /// Adds `ldif` as the Directory Manager (`ldapadd`); `dns` are its entries.
    pub fn add(ldif: &str, dns: Vec<String>) -> Entries {
        let root = as_root();
        let root: Vec<&str> = root.iter().map(String::as_str).collect();
        let out = ldap_tool_input("ldapadd", &directory().uri, &root, Some(ldif));
        assert_eq!(out.code, 0, "ldapadd: {out:?}\n{ldif}");
        Entries(dns)
    }
}

impl Drop for Entries {
    fn drop(&mut self) {
        let root = as_root();
        let mut args: Vec<&str> = root.iter().map(String::as_str).collect();
        args.extend(self.0.iter().map(String::as_str));
        ldap_tool("ldapdelete", &directory().uri, &args);
    }
}

/// A simple bind as `dn` on a new connection, without waiting for the answer.
pub fn start_bind_dn(proxy: &Proxy, dn: &str, pw: &str) -> RawClient {
    let mut c = RawClient::connect(proxy.addr);
    c.send(bind_request(1, dn, pw));
    c
}

/// A unique name for entries a test creates, so tests never see each other's writes.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Polls `cond` until it holds or `limit` passes; for conditions that settle
/// asynchronously (sockets closing), not for timing assertions.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal synchronous LDAP client over a raw socket, for cases where the bytes on
/// the wire matter: malformed input, pipelining, abandon, notices of disconnection.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    codec: LdapCodec,
}

impl RawClient {
    pub fn connect(addr: impl std::net::ToSocketAddrs) -> RawClient {
        RawClient::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects with a receive buffer of `bytes` (`SO_RCVBUF`, set before connecting, so
    /// the kernel does not grow it): what the server can have in flight to a client that
    /// does not read is then bounded by this and the server's own send buffer.
    pub fn connect_with_rcvbuf(addr: SocketAddr, bytes: usize) -> RawClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        RawClient::over(socket.into())
    }

    /// The receive buffer the kernel gave this connection (`SO_RCVBUF`).
    pub fn rcvbuf(&self) -> usize {
        socket2::SockRef::from(&self.stream)
            .recv_buffer_size()
            .expect("SO_RCVBUF")
    }

    /// Reads once from the socket (what has arrived, at most 64 KiB, blocking until
    /// something has) into the buffer messages are decoded from; 0 when the server
    /// closed.
    pub fn read_chunk(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Bytes read from the socket and not decoded yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether the server has sent anything not read yet, looked at without waiting.
    pub fn has_data_now(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        let ready = match self.stream.peek(&mut byte) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("peek: {e}"),
        };
        self.stream.set_nonblocking(false).expect("blocking");
        ready
    }

    /// Connects from the local address `local` (any port), to be "another client
    /// address": every 127.0.0.0/8 address is the loopback interface on Linux.
    pub fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> RawClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(local, 0).into())
            .unwrap_or_else(|e| panic!("bind {local}: {e}"));
        socket.connect(&addr.into()).expect("connect");
        RawClient::over(socket.into())
    }

    fn over(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
            codec: LdapCodec::new(Some(64 << 20), None),
        }
    }

    /// The client's end of the connection (as the server logs it: `client=<addr>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Another handle on the socket, e.g. to write from a thread while this one reads.
    pub fn stream_clone(&self) -> TcpStream {
        self.stream.try_clone().expect("clone stream")
    }

    /// The next message within `limit`, without panicking on what a hostile or broken
    /// server may send.
    pub fn recv_within(&mut self, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(m)) => return Received::Msg(m),
                Ok(None) => {}
                Err(e) => return Received::Undecodable(format!("{e:?}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::TimedOut;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            let read = self.stream.read(&mut chunk);
            self.stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            match read {
                Ok(0) => return Received::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Received::Closed
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Received::TimedOut
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Writes `bytes`; false when the server has already closed the connection.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    pub fn send(&mut self, msg: LdapMsg) {
        let mut out = BytesMut::new();
        self.codec.encode(msg, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next message, or `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<LdapMsg> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf).expect("decode") {
                return Some(m);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads until the server closes; true when it did within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn simple_bind(&mut self, msgid: i32, dn: &str, pw: &str) -> LdapResultCode {
        self.send(bind_request(msgid, dn, pw));
        match self.recv().expect("bind response").op {
            LdapOp::BindResponse(r) => r.res.code,
            other => panic!("expected a bind response, got {other:?}"),
        }
    }

    /// Sends `msg` and reads up to its final response: returns the entries, references
    /// and intermediate responses before it, and the final response itself.
    pub fn exchange(&mut self, msg: LdapMsg) -> (Vec<LdapMsg>, LdapMsg) {
        let msgid = msg.msgid;
        self.send(msg);
        self.answer(msgid)
    }

    /// Reads the answer to the request `msgid` already sent, as [`RawClient::exchange`];
    /// panics if a message for another request comes first.
    pub fn answer(&mut self, msgid: i32) -> (Vec<LdapMsg>, LdapMsg) {
        let mut before = Vec::new();
        loop {
            let m = self
                .recv()
                .unwrap_or_else(|| panic!("connection closed before the answer to {msgid}"));
            assert!(notice_code(&m).is_none(), "notice of disconnection: {m:?}");
            assert_eq!(m.msgid, msgid, "answer to another request: {m:?}");
            match m.op {
                LdapOp::SearchResultEntry(_)
                | LdapOp::SearchResultReference(_)
                | LdapOp::IntermediateResponse(_) => before.push(m),
                _ => return (before, m),
            }
        }
    }
}

/// What [`RawClient::recv_within`] got.
#[derive(Debug)]
pub enum Received {
    Msg(LdapMsg),
    /// The server closed the connection (or reset it).
    Closed,
    TimedOut,
    /// Bytes that are not an LDAP message ldap3_proto can read.
    Undecodable(String),
}

/// The resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// BER by hand, for requests no well-behaved encoder would produce: every length and tag
/// form a lenient decoder (389's liblber) may accept.
pub mod ber {
    /// How a length is written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Len {
        /// Short form below 128, else the fewest long-form octets (DER).
        Minimal,
        /// Long form with this many length octets (at least as many as the value needs;
        /// more are leading zeros: valid BER, not DER).
        Long(u8),
        /// Indefinite form (0x80), contents closed by an end-of-contents (00 00).
        Indefinite,
    }

    /// The length octets of `n` written as `form` (`Indefinite` gives 0x80 alone).
    pub fn len(n: usize, form: Len) -> Vec<u8> {
        let needed = (usize::BITS - n.leading_zeros()).div_ceil(8).max(1) as usize;
        match form {
            Len::Minimal if n < 0x80 => vec![n as u8],
            Len::Minimal => len(n, Len::Long(needed as u8)),
            Len::Long(k) => {
                let k = (k as usize).max(needed);
                assert!(k < 0x7f, "{k} length octets");
                let mut out = vec![0x80 | k as u8];
                for i in (0..k).rev() {
                    out.push(if i < std::mem::size_of::<usize>() {
                        (n >> (8 * i)) as u8
                    } else {
                        0
                    });
                }
                out
            }
            Len::Indefinite => vec![0x80],
        }
    }

    /// A TLV with a DER length.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        tlv_as(tag, content, Len::Minimal)
    }

    /// A TLV with the length written as `form`.
    pub fn tlv_as(tag: u8, content: &[u8], form: Len) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(len(content.len(), form));
        out.extend_from_slice(content);
        if form == Len::Indefinite {
            out.extend_from_slice(&[0, 0]);
        }
        out
    }

    /// The minimal two's-complement content octets of an INTEGER.
    pub fn int(n: i64) -> Vec<u8> {
        let bytes = n.to_be_bytes();
        let mut start = 0;
        while start < 7
            && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
                || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
        {
            start += 1;
        }
        bytes[start..].to_vec()
    }

    /// An LDAPMessage: messageID, protocolOp (complete TLV) and optional controls
    /// (the content of the `[0]` Controls element).
    pub fn message(msgid: i32, op: &[u8], controls: Option<&[u8]>) -> Vec<u8> {
        let mut body = tlv(0x02, &int(msgid.into()));
        body.extend_from_slice(op);
        if let Some(c) = controls {
            body.extend(tlv(0xa0, c));
        }
        tlv(0x30, &body)
    }

    /// A simple BindRequest protocolOp (DER).
    pub fn simple_bind_op(version: i64, dn: &[u8], password: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x02, &int(version));
        body.extend(tlv(0x04, dn));
        body.extend(tlv(0x80, password));
        tlv(0x60, &body)
    }

    /// A SASL BindRequest protocolOp (DER); `credentials` absent when `None`.
    pub fn sasl_bind_op(dn: &[u8], mechanism: &[u8], credentials: Option<&[u8]>) -> Vec<u8> {
        let mut sasl = tlv(0x04, mechanism);
        if let Some(c) = credentials {
            sasl.extend(tlv(0x04, c));
        }
        let mut body = tlv(0x02, &int(3));
        body.extend(tlv(0x04, dn));
        body.extend(tlv(0xa3, &sasl));
        tlv(0x60, &body)
    }

    /// A Control (DER): criticality written only when `Some`.
    pub fn control(oid: &[u8], critical: Option<bool>, value: Option<&[u8]>) -> Vec<u8> {
        let mut body = tlv(0x04, oid);
        if let Some(c) = critical {
            body.extend(tlv(0x01, &[if c { 0xff } else { 0 }]));
        }
        if let Some(v) = value {
            body.extend(tlv(0x04, v));
        }
        tlv(0x30, &body)
    }

    /// A simple bind as a whole message (DER).
    pub fn simple_bind(msgid: i32, dn: &str, password: &str) -> Vec<u8> {
        message(
            msgid,
            &simple_bind_op(3, dn.as_bytes(), password.as_bytes()),
            None,
        )
    }

    /// A subtree search of `base` for `(cn=<value_len × 'x'>)`, attribute `cn`: a
    /// request of about `value_len` bytes that no directory entry answers.
    pub fn large_search(msgid: i32, base: &str, value_len: usize) -> Vec<u8> {
        let mut filter = tlv(0x04, b"cn");
        filter.extend(tlv(0x04, &vec![b'x'; value_len]));
        let mut body = tlv(0x04, base.as_bytes());
        body.extend(tlv(0x0a, &[2])); // scope: subtree
        body.extend(tlv(0x0a, &[0])); // derefAliases: never
        body.extend(tlv(0x02, &[0])); // sizeLimit
        body.extend(tlv(0x02, &[0])); // timeLimit
        body.extend(tlv(0x01, &[0])); // typesOnly
        body.extend(tlv(0xa3, &filter)); // equalityMatch
        body.extend(tlv(0x30, &tlv(0x04, b"cn")));
        message(msgid, &tlv(0x63, &body), None)
    }
}

/// A simple BindRequest.
pub fn bind_request(msgid: i32, dn: &str, pw: &str) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::BindRequest(ldap3_proto::proto::LdapBindRequest {
            version: 3,
            dn: dn.into(),
            cred: ldap3_proto::proto::LdapBindCred::Simple(pw.into()),
        }),
    )
}

/// A "Who am I?" extended request (RFC 4532).
pub fn whoami_request(msgid: i32) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::ExtendedRequest(ldap3_proto::proto::LdapExtendedRequest {
            name: "1.3.6.1.4.1.4203.1.11.3".into(),
            value: None,
        }),
    )
}

/// The result code of a Notice of Disconnection, if `msg` is one.
pub fn notice_code(msg: &LdapMsg) -> Option<LdapResultCode> {
    match &msg.op {
        LdapOp::ExtendedResponse(r)
            if msg.msgid == 0 && r.name.as_deref() == Some("1.3.6.1.4.1.1466.20036") =>
        {
            Some(r.res.code.clone())
        }
        _ => None,
    }
}

/// The directory's base search request for `base` with `filter` and `attrs`.
pub fn search(
    msgid: i32,
    base: &str,
    scope: ldap3_proto::proto::LdapSearchScope,
    filter: &str,
    attrs: &[&str],
) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::SearchRequest(ldap3_proto::proto::LdapSearchRequest {
            base: base.into(),
            scope,
            aliases: ldap3_proto::proto::LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter: ldap_pam_proxy::filter::parse(filter).expect("filter"),
            attrs: attrs.iter().map(|a| a.to_string()).collect(),
        }),
    )
}

/// A persistent search (389's psearch control): entries that change under `base` from
/// now on, every change type, with entry change notifications; it never ends by itself.
pub fn persistent_search(
    msgid: i32,
    base: &str,
    scope: ldap3_proto::proto::LdapSearchScope,
    filter: &str,
    attrs: &[&str],
) -> LdapMsg {
    let mut ps = search(msgid, base, scope, filter, attrs);
    // PersistentSearch ::= SEQUENCE { changeTypes 15, changesOnly TRUE, returnECs TRUE }
    ps.ctrl.push(ldap3_proto::control::LdapControl::Unknown {
        oid: "2.16.840.1.113730.3.4.3".into(),
        criticality: true,
        value: Some(vec![
            0x30, 0x09, 0x02, 0x01, 0x0f, 0x01, 0x01, 0xff, 0x01, 0x01, 0xff,
        ]),
    });
    ps
}

pub fn path_of(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub const PAM_WRAPPER_LIB: &str = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so";

/// PAM under pam_wrapper for a proxy: the test services of `pam.d/test/` rendered into
/// a temporary directory, their pam_matrix passdb, and the state directory the `duo`
/// service's script writes its pushes to. One per proxy, so push counts are its own.
pub struct PamSetup {
    root: PathBuf,
    /// Removes `root` when the setup that made it goes.
    _owned: Option<tempfile::TempDir>,
}

impl PamSetup {
    /// `passdb` holds pam_matrix lines, `user:password:service`.
    pub fn new(passdb: &str) -> PamSetup {
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = PamSetup {
            root: dir.path().to_owned(),
            _owned: Some(dir),
        };
        std::fs::create_dir(setup.services()).expect("mkdir services");
        std::fs::create_dir(setup.state()).expect("mkdir state");
        setup.write_state("passdb", passdb);
        setup.write_state("passcodes", "");
        let passdb = setup.state().join("passdb");
        for entry in std::fs::read_dir(path_of("pam.d/test")).expect("pam.d/test") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path)
                .expect("template")
                .replace("@PASSDB@", &passdb.to_string_lossy())
                .replace("@STATE@", &setup.state().to_string_lossy())
                .replace("@SCRIPTS@", &path_of("tests/pam").to_string_lossy());
            std::fs::write(setup.services().join(path.file_name().unwrap()), text)
                .expect("service");
        }
        setup
    }

    /// A setup another process made at `root` (see [`PamSetup::root`]).
    pub fn existing(root: PathBuf) -> PamSetup {
        PamSetup { root, _owned: None }
    }

    /// Where the services and the state live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of PAM services (`PAM_WRAPPER_SERVICE_DIR`).
    pub fn services(&self) -> PathBuf {
        self.root.join("services")
    }

    /// The state directory (`@STATE@` in the templates).
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Writes a file of the state directory (e.g. `passcodes`, `user:passcode:service`).
    pub fn write_state(&self, name: &str, text: &str) {
        std::fs::write(self.state().join(name), text).expect("state file");
    }

    /// How long each `duo` transaction waits after recording its push.
    pub fn set_duo_delay(&self, seconds: u32) {
        self.write_state("duo-delay", &seconds.to_string());
    }

    /// Holds every `duo` push (started now or later) after it is recorded, until the
    /// returned [`Hold`] is released or dropped: the test, not the clock, decides when
    /// the "phone" answers. A push recorded in [`PamSetup::pushes`] is then provably
    /// pending.
    pub fn hold(&self) -> Hold {
        Hold::take(&self.state().join("duo-hold"))
    }

    /// One line per `duo` transaction started so far: `<PAM user> <PAM rhost>`.
    pub fn pushes(&self) -> Vec<String> {
        std::fs::read_to_string(self.state().join("duo-pushes"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The environment that runs a process under pam_wrapper with these services.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", PAM_WRAPPER_LIB.to_owned()),
            ("PAM_WRAPPER", "1".to_owned()),
            (
                "PAM_WRAPPER_SERVICE_DIR",
                self.services().to_string_lossy().into_owned(),
            ),
        ]
    }
}
