//! Configuration: one TOML file, deserialized strictly (`raw`) and validated section
//! by section (`validate`) into a [`Config`] that is valid by construction. Every error
//! names the file, the line and the key (`locator`).

mod locator;
mod raw;
mod validate;

use crate::dn::Dn;
use crate::secret::Password;
use ldap3_proto::proto::LdapFilter;
use locator::Locator;
use raw::RawConfig;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error, with the position and key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

/// The validated configuration the proxy runs with.
#[derive(Debug)]
pub struct Config {
    pub listen: ListenConfig,
    pub tls: Option<TlsConfig>,
    pub backend: BackendConfig,
    pub bind: BindConfig,
    pub pam: PamConfig,
    /// Routes in file order: the first that matches a bind DN decides its PAM service.
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub runtime: RuntimeConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as
    /// `info,ldap_pam_proxy::session=debug`); `RUST_LOG` overrides it.
    pub log_level: String,
}

/// Where clients connect.
#[derive(Debug)]
pub struct ListenConfig {
    /// The plain LDAP listener (StartTLS available when `[tls]` is configured).
    pub address: SocketAddr,
    /// The LDAPS listener; requires `[tls]`.
    pub ldaps_address: Option<SocketAddr>,
    /// Refuse every operation but StartTLS on a connection without TLS.
    pub require_tls: bool,
    /// Peers (balancers) whose connections on both listeners start with a PROXY protocol
    /// header (v1 or v2) naming the real client; empty: none. A connection from one of
    /// them without a header, or a header from anyone else, is closed.
    pub proxy_protocol_from: Vec<Network>,
}

/// An IP network written `address` or `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Reads `10.0.0.5`, `10.0.0.0/24`, `2001:db8::/64`; the host bits must be zero.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = addr.trim().parse().map_err(|_| {
            format!("'{text}' is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)")
        })?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0 to {bits}"))?,
        };
        let net = Network { address, prefix };
        if !net.contains(address) || net.masked(address) != address {
            return Err(format!("'{text}': address bits set past the prefix length"));
        }
        Ok(net)
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.address, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                self.masked(ip) == self.address
            }
            _ => false,
        }
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

/// The proxy's server certificate, for LDAPS and StartTLS. Files are read when the
/// listener starts and again on SIGHUP.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, server certificate first.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
    pub min_version: TlsVersion,
}

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The directory servers behind the proxy, tried in order.
#[derive(Debug)]
pub struct BackendConfig {
    pub uris: Vec<BackendUri>,
    pub connect_timeout: Duration,
    /// Upgrade `ldap://` backend connections with StartTLS.
    pub starttls: bool,
    /// PEM CA certificates that backend certificates must chain to (ldaps:// or StartTLS).
    pub ca: Option<PathBuf>,
    /// The account the proxy binds as for route lookups and proxied authorization;
    /// required when routes are configured.
    pub service: Option<ServiceAccount>,
    /// The directory's root DN: its binds are always forwarded.
    pub root_dn: Dn,
    /// Connections bound as the service account that PAM-bound sessions share
    /// (crate::service_links).
    pub shared_connections: usize,
}

/// The proxy's own directory account.
#[derive(Debug)]
pub struct ServiceAccount {
    pub dn: String,
    pub password: Password,
}

/// Global rules of the bind decision (DESIGN §2).
#[derive(Debug)]
pub struct BindConfig {
    /// When not empty, only binds at or under one of these are considered for PAM.
    pub include_suffixes: Vec<Dn>,
    /// Binds at or under these are always forwarded; exclude wins over include.
    pub exclude_suffixes: Vec<Dn>,
    pub missing_suffix: MissingSuffix,
    pub unmatched: Unmatched,
    pub identity: Identity,
    pub insecure: Insecure,
    /// SASL mechanisms forwarded to the directory, upper-cased; every other SASL bind
    /// gets authMethodNotSupported (DESIGN §7).
    pub forward_sasl: Vec<String>,
    /// How long the directory's answers about a bind DN that no route takes are reused;
    /// `None`: asked every time.
    pub lookup_cache: Option<Duration>,
}

/// What to do with a configured suffix the backend does not hold (389's pamMissingSuffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingSuffix {
    Error,
    Allow,
    Ignore,
}

/// A bind in scope that no route matches (or whose entry does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// The directory's own password check decides.
    Forward,
    /// invalidCredentials.
    Reject,
}

/// Whom relayed operations of a PAM-bound session run as in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    /// As the user, through the Proxied Authorization control on a service-bound connection.
    ProxyAuthz,
    /// As the service account.
    Service,
}

/// A secure route's bind on a connection without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Insecure {
    /// confidentialityRequired, before PAM.
    Reject,
    /// 389's behaviour: the directory's own password check decides.
    Forward,
}

/// The PAM worker pool.
#[derive(Debug, Clone)]
pub struct PamConfig {
    pub workers: usize,
    pub queue: usize,
    /// Per entry and client address: attempts (transactions started, refusals behind one
    /// in flight) in any 60 s window (push-fatigue guard).
    pub max_attempts_per_minute: usize,
    /// How long a finished transaction stays joinable by an identical retry from the same
    /// client address.
    pub coalesce_grace: Duration,
    /// What a pam_duo configuration that would let users in on the password alone does
    /// to a start or reload (see [`crate::duo`]).
    pub duo_config_check: DuoConfigCheck,
}

/// `pam.duo_config_check`: the check of the pam_duo configuration files of route
/// services at start, reload and `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuoConfigCheck {
    /// A problem refuses the start (or the reload).
    Enforce,
    /// A problem is logged as a warning; the proxy runs anyway.
    Warn,
}

/// One `[[route]]`: which binds go to which PAM service, and how.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Evaluated by the backend on the bind DN's entry; `None` matches every DN in scope.
    pub filter: Option<LdapFilter>,
    pub pam_service: String,
    pub id_map: Vec<IdMap>,
    /// The attribute `entry` reads.
    pub id_attr: String,
    /// The attribute type `rdn` takes from the entry's RDN (lower case); an RDN without
    /// it yields no identity.
    pub rdn_attr: String,
    /// A failed PAM bind is handed to the directory's own password check.
    pub fallback: bool,
    /// PAM binds only over TLS.
    pub secure: bool,
    pub timeout: Duration,
    pub include_suffixes: Vec<Dn>,
    pub exclude_suffixes: Vec<Dn>,
    /// Splits `password<delim>passcode` for services that ask two questions.
    pub passcode_delimiter: Option<String>,
    /// Most PAM transactions of this route running at once; `None`: as many as workers.
    pub max_concurrent: Option<usize>,
    /// Remember successes this long, per client address (keyed hash, never the
    /// password); `None`: off.
    pub success_cache: Option<Duration>,
}

/// How the PAM identity is taken from a bind (389's pamIDMapMethod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdMap {
    /// The value of `rdn_attr` in the resolved entry's RDN.
    Rdn,
    /// The first value of `id_attr` in the entry.
    Entry,
    /// The whole DN.
    Dn,
}

/// One backend address, parsed from an `ldap://host[:port]` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUri {
    /// The URI as written, for diagnostics.
    pub uri: String,
    pub host: String,
    pub port: u16,
    /// `ldaps://`: TLS from the first byte.
    pub ldaps: bool,
}

/// Resource limits that protect the proxy and the directory from clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest LDAP message a client may send (389's nsslapd-maxbersize).
    pub max_message_size: usize,
    pub max_connections: usize,
    /// Client connections one source address may hold at once (the real client's, behind
    /// a PROXY protocol balancer).
    pub max_connections_per_address: usize,
    /// Close a client connection with no operation in progress after this long; `None` never.
    pub idle_timeout: Option<Duration>,
    /// A client that takes none of what the proxy sends it (it stopped reading, or its
    /// host vanished) for this long is disconnected by the kernel (TCP_USER_TIMEOUT);
    /// `None` never.
    pub send_timeout: Option<Duration>,
    /// How long in-flight operations may run after SIGTERM before connections are cut.
    pub shutdown_grace: Duration,
    /// How long a client may take to finish sending a message it has begun (a client
    /// that trickles bytes holds a connection and a buffer); `None` never.
    pub request_timeout: Option<Duration>,
    /// Relayed operations a connection may have in flight; beyond it the proxy stops
    /// reading from that client until answers come back.
    pub max_outstanding: usize,
    /// Response bytes a PAM-bound session may have waiting on a shared service connection
    /// before it is cut off (a client that does not read must not hold the others back).
    pub shared_queue: usize,
}

/// How the async runtime is built.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// 1 runs every session on one thread (the fastest relay measured here: no cross-thread
    /// wakeups); more spreads sessions over a multi-threaded runtime.
    pub worker_threads: usize,
}

/// `limits.max_connections_per_address` by default: a sixteenth of the default table, so
/// that one address cannot take it, and far above what one sssd or web application host
/// opens.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// 389 DS's default nsslapd-maxbersize.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 2 * 1024 * 1024;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = Locator { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|e| at.syntax(&e))?;
        // Section by section, in the order of a usual file, so that the first error
        // reported is the first a reader meets.
        let listen = validate::listen(&at, &raw.listen, raw.tls.is_some())?;
        let tls = validate::tls(&at, raw.tls.as_ref())?;
        let backend = validate::backend(&at, &raw.backend)?;
        let bind = validate::bind(&at, &raw.bind)?;
        let pam = validate::pam(&at, &raw.pam)?;
        let routes = validate::routes(&at, &raw.route, backend.service.is_some())?;
        let limits = validate::limits(&at, &raw.limits)?;
        let runtime = validate::runtime(&at, &raw.runtime)?;
        let log_level = validate::log(&at, &raw.log)?;
        let metrics_listen = validate::metrics(&at, &raw.metrics)?;
        Ok(Config {
            listen,
            tls,
            backend,
            bind,
            pam,
            routes,
            limits,
            runtime,
            metrics_listen,
            log_level,
        })
    }
}

/// Parses durations written as `500ms`, `30s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 500ms, 30s, 2m, 1h)"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("'{text}': unit must be ms, s, m or h")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
address = "127.0.0.1:1389"

[backend]
uris = ["ldap://127.0.0.1:3389"]
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.limits.max_message_size, 2 * 1024 * 1024);
        assert_eq!(c.backend.uris[0].port, 3389);
        assert_eq!(c.backend.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(900)));
        assert_eq!(c.limits.send_timeout, Some(Duration::from_secs(15)));
        assert_eq!(c.limits.max_connections_per_address, 256);
        assert!(c.listen.proxy_protocol_from.is_empty());
        assert_eq!(c.runtime.worker_threads, 1);
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = err(&format!("{MINIMAL}\n[limits]\nmax_mesage_size = 10\n"));
        assert!(e.starts_with("t.toml:9:"), "{e}");
        assert!(e.contains("max_mesage_size"), "{e}");
    }

    #[test]
    fn bad_uri_names_index_and_line() {
        let e = err("[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris = [\n \"ldap://a:1\",\n \"http://b\"]\n");
        assert!(e.starts_with("t.toml:6: backend.uris[1]"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let with = |extra: &str| err(&format!("{MINIMAL}{extra}"));
        assert!(with("[limits]\nmax_message_size = 0\n").contains("positive"));
        assert!(with("[limits]\nidle_timeout = \"5 parsecs\"\n").contains("unit"));
        assert!(with("[log]\nlevel = \"loud\"\n").contains("log.level"));
        assert!(Config::parse(
            &format!("{MINIMAL}[log]\nlevel = \"warn,ldap_pam_proxy::session=debug\"\n"),
            "t"
        )
        .is_ok());
        assert!(
            err("[listen]\naddress = \"nowhere\"\n[backend]\nuris=[\"ldap://x\"]")
                .contains("listen.address")
        );
        assert!(
            err("[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris=[]").contains("at least one")
        );
    }

    #[test]
    fn duo_config_check_defaults_to_enforce() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.pam.duo_config_check, DuoConfigCheck::Enforce);
        let c = Config::parse(
            &format!("{MINIMAL}[pam]\nduo_config_check = \"warn\"\n"),
            "t",
        )
        .unwrap();
        assert_eq!(c.pam.duo_config_check, DuoConfigCheck::Warn);
        let e = err(&format!("{MINIMAL}[pam]\nduo_config_check = \"off\"\n"));
        assert!(e.starts_with("t.toml:8:") && e.contains("enforce"), "{e}");
    }

    #[test]
    fn uris_parse() {
        let u = BackendUri::parse("ldap://[::1]:3389/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3389));
        assert_eq!(
            BackendUri::parse("ldap://dir.example.org").unwrap().port,
            389
        );
        assert!(BackendUri::parse("ldap://h:99999").is_err());
        assert!(BackendUri::parse("ldap://h/dc=x").is_err());
    }

    #[test]
    fn networks() {
        let n = Network::parse("10.1.2.0/24").unwrap();
        assert!(n.contains("10.1.2.77".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.77".parse().unwrap()));
        assert!(!n.contains("10.1.3.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let one = Network::parse("127.0.0.1").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Network::parse("2001:db8::/64")
            .unwrap()
            .contains("2001:db8::5".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));
        for bad in ["10.1.2.1/24", "10.0.0.0/33", "host", "10.0.0.0/", "::/129"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
        let e = err(
            "[listen]\naddress = \"127.0.0.1:1\"\nproxy_protocol_from = [\"10.0.0.1/8\"]\n[backend]\nuris = [\"ldap://x\"]\n",
        );
        assert!(
            e.starts_with("t.toml:3: listen.proxy_protocol_from[0]"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("s").is_err());
    }
}
