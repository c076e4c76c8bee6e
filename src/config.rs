//! Configuration: one TOML file, deserialized strictly and validated into a [`Config`]
//! that is valid by construction. Every error names the file, the line and the key.

use crate::dn::Dn;
use crate::secret::Password;
use ldap3_proto::proto::LdapFilter;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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
    /// Close a client connection with no operation in progress after this long; `None` never.
    pub idle_timeout: Option<Duration>,
    /// How long in-flight operations may run after SIGTERM before connections are cut.
    pub shutdown_grace: Duration,
}

/// How the async runtime is built.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// 1 runs every session on one thread (the fastest relay measured here: no cross-thread
    /// wakeups); more spreads sessions over a multi-threaded runtime.
    pub worker_threads: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListen,
    tls: Option<RawTls>,
    backend: RawBackend,
    #[serde(default)]
    bind: RawBind,
    #[serde(default)]
    pam: RawPam,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBind {
    include_suffixes: Option<Vec<Spanned<String>>>,
    exclude_suffixes: Option<Vec<Spanned<String>>>,
    missing_suffix: Option<MissingSuffix>,
    unmatched: Option<Unmatched>,
    identity: Option<Identity>,
    insecure: Option<Insecure>,
    forward_sasl: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPam {
    workers: Option<Spanned<i64>>,
    queue: Option<Spanned<i64>>,
    max_attempts_per_minute: Option<Spanned<i64>>,
    coalesce_grace: Option<Spanned<String>>,
    duo_config_check: Option<DuoConfigCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    filter: Option<Spanned<String>>,
    pam_service: Spanned<String>,
    id_map: Option<Spanned<Vec<IdMap>>>,
    id_attr: Option<Spanned<String>>,
    rdn_attr: Option<Spanned<String>>,
    #[serde(default)]
    fallback: bool,
    secure: Option<bool>,
    timeout: Option<Spanned<String>>,
    include_suffixes: Option<Vec<Spanned<String>>>,
    exclude_suffixes: Option<Vec<Spanned<String>>>,
    passcode_delimiter: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<i64>>,
    success_cache: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Spanned<String>,
    ldaps_address: Option<Spanned<String>>,
    require_tls: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    min_version: Option<TlsVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    uris: Spanned<Vec<Spanned<String>>>,
    connect_timeout: Option<Spanned<String>>,
    service_dn: Option<Spanned<String>>,
    service_password_file: Option<Spanned<String>>,
    root_dn: Option<Spanned<String>>,
    #[serde(default)]
    starttls: bool,
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_size: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    worker_threads: Option<Spanned<i64>>,
}

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
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| at.line_of(s.start));
            ConfigError::Invalid {
                path: origin.to_owned(),
                line,
                message: e.message().to_owned(),
            }
        })?;

        let address = at.socket(&raw.listen.address, "listen.address")?;
        let ldaps_address = match &raw.listen.ldaps_address {
            Some(a) => Some(at.socket(a, "listen.ldaps_address")?),
            None => None,
        };
        let tls = match &raw.tls {
            Some(t) => Some(TlsConfig {
                certificate: at.readable(&t.certificate, "tls.certificate")?,
                key: at.readable(&t.key, "tls.key")?,
                client_ca: match &t.client_ca {
                    Some(c) => Some(at.readable(c, "tls.client_ca")?),
                    None => None,
                },
                min_version: t.min_version.unwrap_or(TlsVersion::Tls12),
            }),
            None => None,
        };
        if tls.is_none() {
            if let Some(a) = &raw.listen.ldaps_address {
                return Err(at.error(
                    a,
                    "listen.ldaps_address needs a [tls] section (certificate and key)",
                ));
            }
            if let Some(r) = raw.listen.require_tls.as_ref().filter(|r| *r.get_ref()) {
                return Err(at.error(
                    r,
                    "listen.require_tls needs a [tls] section: clients could never get TLS",
                ));
            }
        }

        if raw.backend.uris.get_ref().is_empty() {
            return Err(at.error(
                &raw.backend.uris,
                "backend.uris: at least one URI is required",
            ));
        }
        let uris = raw
            .backend
            .uris
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, u)| {
                BackendUri::parse(u.get_ref())
                    .map_err(|m| at.error(u, format!("backend.uris[{i}]: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ca = match &raw.backend.ca {
            Some(c) => Some(at.readable(c, "backend.ca")?),
            None => None,
        };
        if ca.is_none() && (raw.backend.starttls || uris.iter().any(|u| u.ldaps)) {
            return Err(at.error(
                &raw.backend.uris,
                "backend.ca is required for ldaps:// or starttls: backend certificates are always verified",
            ));
        }
        let connect_timeout = at.duration(
            raw.backend.connect_timeout.as_ref(),
            "backend.connect_timeout",
            Duration::from_secs(5),
        )?;
        let service = match (&raw.backend.service_dn, &raw.backend.service_password_file) {
            (Some(dn), Some(file)) => {
                at.dn(dn, "backend.service_dn")?;
                Some(ServiceAccount {
                    dn: dn.get_ref().clone(),
                    password: read_secret(Path::new(file.get_ref())).map_err(|m| {
                        at.error(file, format!("backend.service_password_file: {m}"))
                    })?,
                })
            }
            (None, None) => None,
            (Some(dn), None) => {
                return Err(at.error(
                    dn,
                    "backend.service_password_file is required with service_dn",
                ))
            }
            (None, Some(f)) => {
                return Err(at.error(
                    f,
                    "backend.service_dn is required with service_password_file",
                ))
            }
        };
        let root_dn = match &raw.backend.root_dn {
            Some(d) => at.dn(d, "backend.root_dn")?,
            None => Dn::parse("cn=Directory Manager").map_err(|_| at.whole("root DN"))?,
        };

        let bind = BindConfig {
            include_suffixes: at.dns(
                raw.bind.include_suffixes.as_deref(),
                "bind.include_suffixes",
            )?,
            exclude_suffixes: match raw.bind.exclude_suffixes.as_deref() {
                Some(list) => at.dns(Some(list), "bind.exclude_suffixes")?,
                None => vec![Dn::parse("cn=config").map_err(|_| at.whole("cn=config"))?],
            },
            missing_suffix: raw.bind.missing_suffix.unwrap_or(MissingSuffix::Ignore),
            unmatched: raw.bind.unmatched.unwrap_or(Unmatched::Forward),
            identity: raw.bind.identity.unwrap_or(Identity::ProxyAuthz),
            insecure: raw.bind.insecure.unwrap_or(Insecure::Reject),
            forward_sasl: match &raw.bind.forward_sasl {
                Some(list) => list
                    .iter()
                    .map(|m| {
                        crate::bind_request::sasl_mechanism(m.get_ref().as_bytes()).ok_or_else(
                            || {
                                at.error(
                                    m,
                                    "bind.forward_sasl: not a SASL mechanism name (RFC 4422: 1-20 of A-Z 0-9 - _)",
                                )
                            },
                        )
                    })
                    .collect::<Result<_, _>>()?,
                None => vec!["EXTERNAL".to_owned(), "GSSAPI".to_owned()],
            },
        };
        let pam = PamConfig {
            workers: at.positive(raw.pam.workers.as_ref(), "pam.workers", 64)?,
            queue: at.positive(raw.pam.queue.as_ref(), "pam.queue", 1024)?,
            max_attempts_per_minute: at.positive(
                raw.pam.max_attempts_per_minute.as_ref(),
                "pam.max_attempts_per_minute",
                10,
            )?,
            coalesce_grace: at.duration(
                raw.pam.coalesce_grace.as_ref(),
                "pam.coalesce_grace",
                Duration::from_secs(10),
            )?,
            duo_config_check: raw.pam.duo_config_check.unwrap_or(DuoConfigCheck::Enforce),
        };
        let mut routes: Vec<Route> = Vec::with_capacity(raw.route.len());
        for spanned in &raw.route {
            let route = at.route(spanned)?;
            if routes.iter().any(|r| r.name == route.name) {
                return Err(at.error(
                    &spanned.get_ref().name,
                    format!("route '{}': duplicate name", route.name),
                ));
            }
            routes.push(route);
        }
        if let (Some(first), None) = (raw.route.first(), &service) {
            return Err(at.error(
                first,
                "routes need backend.service_dn and backend.service_password_file: the proxy reads bind DNs' entries as that account",
            ));
        }

        let max_message_size = at.positive(
            raw.limits.max_message_size.as_ref(),
            "limits.max_message_size",
            DEFAULT_MAX_MESSAGE_SIZE,
        )?;
        let max_connections = at.positive(
            raw.limits.max_connections.as_ref(),
            "limits.max_connections",
            4096,
        )?;
        let idle_timeout = at.duration(
            raw.limits.idle_timeout.as_ref(),
            "limits.idle_timeout",
            Duration::ZERO,
        )?;
        let shutdown_grace = at.duration(
            raw.limits.shutdown_grace.as_ref(),
            "limits.shutdown_grace",
            Duration::from_secs(30),
        )?;
        let worker_threads = at.positive(
            raw.runtime.worker_threads.as_ref(),
            "runtime.worker_threads",
            1,
        )?;

        Ok(Config {
            listen: ListenConfig {
                address,
                ldaps_address,
                require_tls: raw
                    .listen
                    .require_tls
                    .as_ref()
                    .is_some_and(|r| *r.get_ref()),
            },
            tls,
            backend: BackendConfig {
                uris,
                connect_timeout,
                starttls: raw.backend.starttls,
                ca,
                service,
                root_dn,
            },
            bind,
            pam,
            routes,
            limits: Limits {
                max_message_size,
                max_connections,
                idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
                shutdown_grace,
            },
            runtime: RuntimeConfig { worker_threads },
            log_level: match &raw.log.level {
                Some(l) => {
                    let text = l.get_ref().trim();
                    let known = ["error", "warn", "info", "debug", "trace", "off"];
                    let directive_ok = text.split(',').all(|d| {
                        let level = d.rsplit('=').next().unwrap_or("").trim();
                        known.contains(&level.to_ascii_lowercase().as_str())
                    });
                    if text.is_empty() || !directive_ok {
                        return Err(at.error(
                            l,
                            format!("log.level: '{text}': use error, warn, info, debug or trace (or target=level, comma-separated)"),
                        ));
                    }
                    text.to_owned()
                }
                None => "info".to_owned(),
            },
            metrics_listen: match &raw.metrics.listen {
                Some(a) => Some(at.socket(a, "metrics.listen")?),
                None => None,
            },
        })
    }
}

impl BackendUri {
    fn parse(uri: &str) -> Result<BackendUri, String> {
        let (ldaps, rest) = match uri.split_once("://") {
            Some(("ldap", rest)) => (false, rest),
            Some(("ldaps", rest)) => (true, rest),
            Some(("ldapi", _)) => {
                return Err("ldapi:// backends are not supported; use ldap:// or ldaps://".into())
            }
            _ => return Err(format!("'{uri}' is not an ldap:// or ldaps:// URI")),
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') || hostport.contains('?') {
            return Err(format!(
                "'{uri}': a backend URI names a server only (no DN or options)"
            ));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{uri}': unclosed '[' in IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(format!("'{uri}': missing host"));
        }
        let port = match port {
            None if ldaps => 636,
            None => 389,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{uri}': bad port '{p}'"))?,
        };
        Ok(BackendUri {
            uri: uri.to_owned(),
            host: host.to_owned(),
            port,
            ldaps,
        })
    }
}

/// Turns spans into line numbers for error messages.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line: self.line_of(at.span().start),
            message: message.into(),
        }
    }

    /// An error about the file as a whole (line 1).
    fn whole(&self, what: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line: 1,
            message: format!("internal default {what} does not parse"),
        }
    }

    fn socket(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|e| {
            self.error(
                value,
                format!("{key}: {e} (expected ip:port, e.g. 127.0.0.1:1389)"),
            )
        })
    }

    /// A file path that must be readable now.
    fn readable(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(value.get_ref());
        std::fs::File::open(&path)
            .map(|_| path)
            .map_err(|e| self.error(value, format!("{key}: {}: {e}", value.get_ref())))
    }

    fn dn(&self, value: &Spanned<String>, key: &str) -> Result<Dn, ConfigError> {
        Dn::parse(value.get_ref())
            .map_err(|e| self.error(value, format!("{key}: '{}': {e}", value.get_ref())))
    }

    fn dns(&self, list: Option<&[Spanned<String>]>, key: &str) -> Result<Vec<Dn>, ConfigError> {
        list.unwrap_or_default()
            .iter()
            .map(|d| self.dn(d, key))
            .collect()
    }

    fn route(&self, spanned: &Spanned<RawRoute>) -> Result<Route, ConfigError> {
        let raw = spanned.get_ref();
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.error(&raw.name, "route.name must not be empty"));
        }
        let key = |k: &str| format!("route '{name}': {k}");
        let filter = match &raw.filter {
            None => None,
            Some(f) => Some(crate::filter::parse(f.get_ref()).map_err(|e| {
                self.error(
                    f,
                    format!(
                        "{}: '{}' is not an LDAP filter (RFC 4515): {e}",
                        key("filter"),
                        f.get_ref()
                    ),
                )
            })?),
        };
        let service = raw.pam_service.get_ref().trim().to_owned();
        if service.is_empty()
            || !service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(self.error(
                &raw.pam_service,
                format!(
                    "{}: '{service}' is not a PAM service name",
                    key("pam_service")
                ),
            ));
        }
        let id_map = match &raw.id_map {
            Some(m) if m.get_ref().is_empty() => {
                return Err(self.error(
                    m,
                    format!("{}: list at least one of rdn, entry, dn", key("id_map")),
                ))
            }
            Some(m) => m.get_ref().clone(),
            None => vec![IdMap::Rdn],
        };
        let id_attr = match &raw.id_attr {
            Some(a) if a.get_ref().trim().is_empty() => {
                return Err(self.error(a, format!("{}: must not be empty", key("id_attr"))))
            }
            Some(a) => a.get_ref().trim().to_owned(),
            None => "uid".to_owned(),
        };
        let rdn_attr = match &raw.rdn_attr {
            Some(a)
                if a.get_ref().is_empty()
                    || !a
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
            {
                return Err(self.error(
                    a,
                    format!("{}: not an attribute type name", key("rdn_attr")),
                ))
            }
            Some(a) => a.get_ref().to_ascii_lowercase(),
            None => "uid".to_owned(),
        };
        let passcode_delimiter = match &raw.passcode_delimiter {
            Some(d) if d.get_ref().is_empty() => {
                return Err(self.error(
                    d,
                    format!("{}: must not be empty", key("passcode_delimiter")),
                ))
            }
            other => other.as_ref().map(|d| d.get_ref().clone()),
        };
        Ok(Route {
            filter,
            pam_service: service,
            id_map,
            id_attr,
            rdn_attr,
            fallback: raw.fallback,
            secure: raw.secure.unwrap_or(true),
            timeout: self.duration(
                raw.timeout.as_ref(),
                &key("timeout"),
                Duration::from_secs(120),
            )?,
            include_suffixes: self
                .dns(raw.include_suffixes.as_deref(), &key("include_suffixes"))?,
            exclude_suffixes: self
                .dns(raw.exclude_suffixes.as_deref(), &key("exclude_suffixes"))?,
            passcode_delimiter,
            max_concurrent: match &raw.max_concurrent {
                Some(_) => {
                    Some(self.positive(raw.max_concurrent.as_ref(), &key("max_concurrent"), 1)?)
                }
                None => None,
            },
            success_cache: match &raw.success_cache {
                Some(d) => Some(self.duration(Some(d), &key("success_cache"), Duration::ZERO)?)
                    .filter(|d| !d.is_zero()),
                None => None,
            },
            name,
        })
    }

    fn duration(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        value.map_or(Ok(default), |v| {
            parse_duration(v.get_ref()).map_err(|m| self.error(v, format!("{key}: {m}")))
        })
    }

    fn positive(
        &self,
        value: Option<&Spanned<i64>>,
        key: &str,
        default: usize,
    ) -> Result<usize, ConfigError> {
        value.map_or(Ok(default), |v| {
            usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| self.error(v, format!("{key}: must be a positive integer")))
        })
    }
}

/// Reads a secret from a file: the whole content less one trailing newline.
fn read_secret(path: &Path) -> Result<Password, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Password::from_vec(bytes))
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
        assert!(c.limits.idle_timeout.is_none());
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
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("s").is_err());
    }
}
