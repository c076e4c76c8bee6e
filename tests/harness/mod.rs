//! Support for the bad-day tests (floods, failing backends and PAM modules, a balancer,
//! restarts): throwaway users in the shared directory, clients that record what they saw,
//! and the proxy's resource use sampled from /proc.
#![allow(dead_code)] // each test binary uses a different part of this module

use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An `ou` of throwaway posixAccount users in the shared directory, removed when dropped.
pub struct Users {
    pub base: String,
    pub uids: Vec<String>,
}

impl Users {
    /// `count` users `<prefix><n>` under a new `ou`; `external` gives them the
    /// `/home/<uid>@colostate.edu` home directory the csu route takes, else the duo one.
    pub fn create(prefix: &str, count: usize, external: bool) -> Users {
        let ds = directory();
        let ou = unique(prefix);
        let base = format!("ou={ou},{}", ds.suffix);
        let mut ldif =
            format!("dn: {base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n");
        let uids: Vec<String> = (0..count).map(|n| format!("{prefix}{n:04}")).collect();
        for (n, uid) in uids.iter().enumerate() {
            let home = if external {
                format!("/home/{uid}@colostate.edu")
            } else {
                format!("/home/{uid}")
            };
            ldif.push_str(&format!(
                "dn: uid={uid},{base}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n\
                 objectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
                 uidNumber: {}\ngidNumber: 10000\nhomeDirectory: {home}\n\n",
                70000 + n
            ));
        }
        let mut args = as_root();
        args.push("-a".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ldap_tool_input("ldapmodify", &ds.uri, &args, Some(&ldif));
        assert_eq!(out.code, 0, "{out:?}");
        Users { base, uids }
    }

    pub fn dn(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.base)
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let mut args = as_root();
        args.extend(["-r".to_owned(), self.base.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = ldap_tool("ldapdelete", &directory().uri, &args);
    }
}

/// What one kind of operation of a well-behaved client saw: successes, failures (with
/// what went wrong) and latencies.
#[derive(Default)]
pub struct Tally {
    pub ok: usize,
    pub failed: Vec<String>,
    latencies: Vec<Duration>,
}

impl Tally {
    pub fn record(&mut self, took: Duration, result: Result<(), String>) {
        self.latencies.push(took);
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => self.failed.push(e),
        }
    }

    /// The 99th percentile latency (nearest rank).
    pub fn p99(&self) -> Duration {
        percentile(&self.latencies, 99)
    }

    pub fn max(&self) -> Duration {
        self.latencies.iter().max().copied().unwrap_or_default()
    }

    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: {} ok, {} failed, p99 {:?}, max {:?}{}",
            self.ok,
            self.failed.len(),
            self.p99(),
            self.max(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(" (first failure: {})", self.failed[0])
            }
        )
    }
}

pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
    v[rank - 1]
}

/// The resident memory and thread count of a process, sampled every 100 ms until stopped;
/// keeps the peaks.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new((0, 0)));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peaks));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, threads)) = rss_and_threads(pid) {
                    let mut peaks = p.lock().unwrap();
                    peaks.0 = peaks.0.max(rss);
                    peaks.1 = peaks.1.max(threads);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// (peak RSS in bytes, peak thread count) so far.
    pub fn peaks(&self) -> (u64, u64) {
        *self.peaks.lock().unwrap()
    }

    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peaks()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `VmRSS` (bytes) and `Threads` of a process, while it lives.
pub fn rss_and_threads(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// Runs `op` and records how long it took and whether it worked.
pub fn timed(tally: &Mutex<Tally>, op: impl FnOnce() -> Result<(), String>) {
    let start = Instant::now();
    let result = op();
    if std::env::var_os("LPP_TRACE_OPS").is_some()
        && (start.elapsed() > Duration::from_millis(300) || result.is_err())
    {
        eprintln!(
            "slow op at {:?} took {:?}: {result:?}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                % 1000.0,
            start.elapsed()
        );
    }
    tally.lock().unwrap().record(start.elapsed(), result);
}

/// One line of the figures table, printed for the report (`cargo test -- --nocapture`).
pub fn figures(fault: &str, clients: &str, peaks: (u64, u64), lost: &str) {
    eprintln!(
        "FIGURES | {fault} | {clients} | {} MiB / {} threads | {lost} |",
        peaks.0 / (1 << 20),
        peaks.1
    );
}

/// A well-behaved LDAP client whose every step returns what went wrong instead of
/// panicking: connect, bind, search, WhoAmI, each bounded by [`Wire::LIMIT`], so a hang
/// is a recorded failure, not a stuck test.
pub struct Wire {
    stream: std::net::TcpStream,
    buf: bytes::BytesMut,
    codec: ldap3_proto::LdapCodec,
    next_id: i32,
}

impl Wire {
    pub const LIMIT: Duration = Duration::from_secs(60);

    /// Connects to `addr` from the local address `from` (`None`: any).
    pub fn connect(
        from: Option<std::net::IpAddr>,
        addr: std::net::SocketAddr,
    ) -> Result<Wire, String> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = from {
            socket
                .bind(&std::net::SocketAddr::new(ip, 0).into())
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        socket
            .connect_timeout(&addr.into(), Self::LIMIT)
            .map_err(|e| format!("connect: {e}"))?;
        let stream: std::net::TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Self::LIMIT))
            .map_err(|e| e.to_string())?;
        Ok(Wire {
            stream,
            buf: bytes::BytesMut::new(),
            codec: ldap3_proto::LdapCodec::new(Some(64 << 20), None),
            next_id: 1,
        })
    }

    fn send(&mut self, op: ldap3_proto::proto::LdapOp) -> Result<i32, String> {
        use std::io::Write;
        use tokio_util::codec::Encoder;
        let id = self.next_id;
        self.next_id += 1;
        let mut out = bytes::BytesMut::new();
        self.codec
            .encode(ldap3_proto::proto::LdapMsg::new(id, op), &mut out)
            .map_err(|e| format!("encode: {e:?}"))?;
        self.stream
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))?;
        Ok(id)
    }

    fn recv(&mut self) -> Result<ldap3_proto::proto::LdapMsg, String> {
        use std::io::Read;
        use tokio_util::codec::Decoder;
        loop {
            if let Some(m) = self
                .codec
                .decode(&mut self.buf)
                .map_err(|e| format!("undecodable answer: {e:?}"))?
            {
                if let Some(code) = notice_code(&m) {
                    return Err(format!("notice of disconnection: {code:?}"));
                }
                return Ok(m);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// A simple bind; `Ok` only for success.
    pub fn bind(&mut self, dn: &str, pw: &str) -> Result<(), String> {
        match self.bind_code(dn, pw)? {
            ldap3_proto::proto::LdapResultCode::Success => Ok(()),
            other => Err(format!("bind {dn}: {other:?}")),
        }
    }

    /// A simple bind's result code.
    pub fn bind_code(
        &mut self,
        dn: &str,
        pw: &str,
    ) -> Result<ldap3_proto::proto::LdapResultCode, String> {
        self.bind_answer(dn, pw).map(|(code, _)| code)
    }

    /// A simple bind's result code and diagnostic message.
    pub fn bind_answer(
        &mut self,
        dn: &str,
        pw: &str,
    ) -> Result<(ldap3_proto::proto::LdapResultCode, String), String> {
        let id = self.send(bind_request(0, dn, pw).op)?;
        let m = self.recv()?;
        match m.op {
            ldap3_proto::proto::LdapOp::BindResponse(r) if m.msgid == id => {
                Ok((r.res.code, r.res.message))
            }
            other => Err(format!("expected a bind response, got {other:?}")),
        }
    }

    /// A search; `Ok(entries)` when it ends in success.
    pub fn search(
        &mut self,
        base: &str,
        scope: ldap3_proto::proto::LdapSearchScope,
        filter: &str,
    ) -> Result<usize, String> {
        let id = self.send(search(0, base, scope, filter, &["uid"]).op)?;
        let mut entries = 0;
        loop {
            let m = self.recv()?;
            if m.msgid != id {
                return Err(format!("answer to another request: {m:?}"));
            }
            match m.op {
                ldap3_proto::proto::LdapOp::SearchResultEntry(_) => entries += 1,
                ldap3_proto::proto::LdapOp::SearchResultDone(r)
                    if r.code == ldap3_proto::proto::LdapResultCode::Success =>
                {
                    return Ok(entries)
                }
                ldap3_proto::proto::LdapOp::SearchResultDone(r) => {
                    return Err(format!("search {base} {filter}: {:?}", r.code))
                }
                _ => {}
            }
        }
    }

    /// WhoAmI: the authorization identity.
    pub fn whoami(&mut self) -> Result<String, String> {
        let id = self.send(whoami_request(0).op)?;
        let m = self.recv()?;
        match m.op {
            ldap3_proto::proto::LdapOp::ExtendedResponse(r) if m.msgid == id => {
                Ok(String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            }
            other => Err(format!("expected a WhoAmI response, got {other:?}")),
        }
    }

    pub fn unbind(mut self) {
        let _ = self.send(ldap3_proto::proto::LdapOp::UnbindRequest);
    }
}

/// As `Proxy::with_pam`, with extra environment for the proxy (e.g. `RUST_LOG=info`: a
/// flood at debug level writes more log than the test's reader takes in, and a proxy
/// blocked on its stderr pipe measures the pipe, not the proxy).
pub fn proxy_with_pam_env(pam: &PamSetup, extra: &str, env: &[(&str, &str)]) -> Proxy {
    proxy_with(pam, "", extra, env)
}

/// A proxy in front of the test directory with its service account, under pam_wrapper
/// with `pam`'s services: `listen` is added to the `[listen]` table, `extra` (tables)
/// after `[backend]`, `env` to its environment.
pub fn proxy_with(pam: &PamSetup, listen: &str, extra: &str, env: &[(&str, &str)]) -> Proxy {
    let ds = directory();
    let config = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n{listen}\n\n[backend]\nuris = [\"{}\"]\nconnect_timeout = \"2s\"\nservice_dn = \"{}\"\nservice_password_file = \"{}\"\n\n{extra}\n",
        ds.uri,
        ds.service_dn,
        ds.service_pw_file.display()
    );
    let mut vars = pam.env();
    vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Proxy::try_start(&config, &vars).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
}

/// A free TCP port on 127.0.0.1 (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up): a port handed out for binding 0
    // is also what outgoing connections use, so a flood of client connections elsewhere
    // on the machine can take it before 389 binds it. Checked on all interfaces, as 389
    // listens.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999")
}

/// One 389 DS instance this test created with `tests/ds/ds.sh`.
pub struct Instance {
    pub name: String,
    pub port: u16,
    pub uri: String,
    pub statedir: std::path::PathBuf,
}

impl Instance {
    /// The value of `key` in the instance's `ds.env`.
    pub fn env(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.statedir.join("ds.env")).expect("ds.env");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('\'').to_owned())
            .unwrap_or_else(|| panic!("no {key} in ds.env"))
    }

    /// `ds.sh stop`: SIGTERM (SIGKILL after 10 s).
    pub fn stop(&self) {
        ds_sh(&["stop", &self.name]);
    }

    /// `ds.sh start`: returns once the root DSE answers.
    pub fn start(&self) {
        ds_sh(&["start", &self.name]);
    }

    /// The number of `dn:` lines a search of `base` (base scope) returns, asked directly.
    pub fn has(&self, base: &str) -> bool {
        let out = ldap_tool(
            "ldapsearch",
            &self.uri,
            &["-x", "-LLL", "-b", base, "-s", "base", "1.1"],
        );
        out.code == 0 && out.stdout.contains("dn:")
    }
}

/// Runs `tests/ds/ds.sh` with `args`; panics with its output when it fails.
pub fn ds_sh(args: &[&str]) {
    let out = std::process::Command::new(path_of("tests/ds/ds.sh"))
        .args(args)
        .output()
        .expect("tests/ds/ds.sh");
    assert!(
        out.status.success(),
        "ds.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two 389 DS instances of their own, suppliers in multi-supplier replication, created
/// for one test and removed when dropped (`ds.sh create` twice in parallel, then
/// `ds.sh replicate`: about 20 to 40 s).
pub struct ReplicatedPair {
    pub a: Instance,
    pub b: Instance,
    _dir: tempfile::TempDir,
}

impl ReplicatedPair {
    pub fn create() -> ReplicatedPair {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |tag: &str| Instance {
            name: format!("lpprepl{}{tag}", std::process::id()),
            port: 0,
            uri: String::new(),
            statedir: dir.path().join(tag),
        };
        let (mut a, mut b) = (make("a"), make("b"));
        let children: Vec<_> = [&mut a, &mut b]
            .into_iter()
            .map(|i| {
                i.port = free_port();
                i.uri = format!("ldap://127.0.0.1:{}", i.port);
                std::process::Command::new(path_of("tests/ds/ds.sh"))
                    .args(["create", &i.name, &i.port.to_string()])
                    .arg(&i.statedir)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("tests/ds/ds.sh create")
            })
            .collect();
        // Made now, so a failure below still removes both instances.
        let pair = ReplicatedPair { a, b, _dir: dir };
        for child in children {
            let out = child.wait_with_output().expect("ds.sh create");
            assert!(
                out.status.success(),
                "ds.sh create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ds_sh(&[
            "replicate",
            &pair.a.statedir.to_string_lossy(),
            &pair.b.statedir.to_string_lossy(),
        ]);
        pair
    }
}

impl Drop for ReplicatedPair {
    fn drop(&mut self) {
        for i in [&self.a, &self.b] {
            let _ = std::process::Command::new(path_of("tests/ds/ds.sh"))
                .args(["remove", &i.name])
                .output();
        }
    }
}

/// The `hang` test service's transactions (tests/pam/hang.sh): each waits, inside libpam,
/// until the test releases them all. Made before the proxy starts; whatever still waits
/// is released when this is dropped, so no pam_exec child outlives the test.
pub struct Hangs {
    state: std::path::PathBuf,
}

impl Hangs {
    pub fn new(pam: &PamSetup) -> Hangs {
        let fifo = pam.state().join("hang.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        Hangs { state: pam.state() }
    }

    /// Transactions that reached the module so far.
    pub fn count(&self) -> usize {
        std::fs::read_to_string(self.state.join("hangs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Lets every waiting transaction go on (it then fails). Only call while some wait,
    /// or it blocks until one does.
    pub fn release(&self) {
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(self.state.join("hang.fifo"))
                .expect("open hang.fifo"),
        );
    }
}

impl Hangs {
    /// Lets go whatever waits now, without waiting for anything to: returns whether
    /// something did.
    pub fn release_waiting(&self) -> bool {
        // Non-blocking: fails at once when nobody waits.
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(self.state.join("hang.fifo"))
            .is_ok()
    }
}

impl Drop for Hangs {
    fn drop(&mut self) {
        self.release_waiting();
    }
}

/// Stops traffic threads when dropped, so a failed assertion ends a test instead of
/// leaving them running.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
