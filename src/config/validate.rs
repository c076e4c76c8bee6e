//! One function per section of the file: each turns its raw table into the checked
//! settings, with the defaults, or refuses it naming the line and key.
//! [`super::Config::parse`] calls them in file order, so the first error reported is
//! the first in the file's usual layout.

use super::locator::Locator;
use super::raw::{
    RawBackend, RawBind, RawLimits, RawListen, RawLog, RawMetrics, RawPam, RawRoute, RawRuntime,
    RawTls,
};
use super::{
    BackendConfig, BackendUri, BindConfig, ConfigError, DuoConfigCheck, IdMap, Identity, Insecure,
    Limits, ListenConfig, MissingSuffix, Network, PamConfig, Route, RuntimeConfig, ServiceAccount,
    TlsConfig, TlsVersion, Unmatched, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_MESSAGE_SIZE,
};
use crate::dn::Dn;
use crate::secret::Password;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// `[listen]`; `tls` says whether the file has a `[tls]` section, which LDAPS and
/// `require_tls` need.
pub(super) fn listen(
    at: &Locator,
    raw: &RawListen,
    tls: bool,
) -> Result<ListenConfig, ConfigError> {
    let address = at.socket(&raw.address, "listen.address")?;
    let ldaps_address = match &raw.ldaps_address {
        Some(a) => Some(at.socket(a, "listen.ldaps_address")?),
        None => None,
    };
    if !tls {
        if let Some(a) = &raw.ldaps_address {
            return Err(at.error(
                a,
                "listen.ldaps_address needs a [tls] section (certificate and key)",
            ));
        }
        if let Some(r) = raw.require_tls.as_ref().filter(|r| *r.get_ref()) {
            return Err(at.error(
                r,
                "listen.require_tls needs a [tls] section: clients could never get TLS",
            ));
        }
    }
    let proxy_protocol_from = raw
        .proxy_protocol_from
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Network::parse(n.get_ref())
                .map_err(|m| at.error(n, format!("listen.proxy_protocol_from[{i}]: {m}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ListenConfig {
        address,
        ldaps_address,
        require_tls: raw.require_tls.as_ref().is_some_and(|r| *r.get_ref()),
        proxy_protocol_from,
    })
}

/// `[tls]`: its files must be readable now.
pub(super) fn tls(at: &Locator, raw: Option<&RawTls>) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(t) = raw else {
        return Ok(None);
    };
    Ok(Some(TlsConfig {
        certificate: at.readable(&t.certificate, "tls.certificate")?,
        key: at.readable(&t.key, "tls.key")?,
        client_ca: match &t.client_ca {
            Some(c) => Some(at.readable(c, "tls.client_ca")?),
            None => None,
        },
        min_version: t.min_version.unwrap_or(TlsVersion::Tls12),
    }))
}

/// `[backend]`: the URIs, TLS to them, the service account (its password file is read
/// now) and the root DN.
pub(super) fn backend(at: &Locator, raw: &RawBackend) -> Result<BackendConfig, ConfigError> {
    if raw.uris.get_ref().is_empty() {
        return Err(at.error(&raw.uris, "backend.uris: at least one URI is required"));
    }
    let uris = raw
        .uris
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            BackendUri::parse(u.get_ref())
                .map_err(|m| at.error(u, format!("backend.uris[{i}]: {m}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ca = match &raw.ca {
        Some(c) => Some(at.readable(c, "backend.ca")?),
        None => None,
    };
    if ca.is_none() && (raw.starttls || uris.iter().any(|u| u.ldaps)) {
        return Err(at.error(
            &raw.uris,
            "backend.ca is required for ldaps:// or starttls: backend certificates are always verified",
        ));
    }
    let connect_timeout = at.duration(
        raw.connect_timeout.as_ref(),
        "backend.connect_timeout",
        Duration::from_secs(5),
    )?;
    let service = match (&raw.service_dn, &raw.service_password_file) {
        (Some(dn), Some(file)) => {
            at.dn(dn, "backend.service_dn")?;
            Some(ServiceAccount {
                dn: dn.get_ref().clone(),
                password: read_secret(Path::new(file.get_ref()))
                    .map_err(|m| at.error(file, format!("backend.service_password_file: {m}")))?,
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
    let root_dn = match &raw.root_dn {
        Some(d) => at.dn(d, "backend.root_dn")?,
        None => Dn::parse("cn=Directory Manager").map_err(|_| at.whole("root DN"))?,
    };
    // 389 runs at most nsslapd-maxthreadsperconn (5) operations of one connection at a
    // time: 8 connections let 40 run, more than its worker threads.
    let shared_connections = at.positive(
        raw.shared_connections.as_ref(),
        "backend.shared_connections",
        8,
    )?;
    Ok(BackendConfig {
        uris,
        connect_timeout,
        starttls: raw.starttls,
        ca,
        service,
        root_dn,
        shared_connections,
    })
}

/// `[bind]`: the global rules of the bind decision.
pub(super) fn bind(at: &Locator, raw: &RawBind) -> Result<BindConfig, ConfigError> {
    let lookup_cache = at.duration(
        raw.lookup_cache.as_ref(),
        "bind.lookup_cache",
        Duration::from_secs(5),
    )?;
    Ok(BindConfig {
        lookup_cache: (!lookup_cache.is_zero()).then_some(lookup_cache),
        include_suffixes: at.dns(raw.include_suffixes.as_deref(), "bind.include_suffixes")?,
        exclude_suffixes: match raw.exclude_suffixes.as_deref() {
            Some(list) => at.dns(Some(list), "bind.exclude_suffixes")?,
            None => vec![Dn::parse("cn=config").map_err(|_| at.whole("cn=config"))?],
        },
        missing_suffix: raw.missing_suffix.unwrap_or(MissingSuffix::Ignore),
        unmatched: raw.unmatched.unwrap_or(Unmatched::Forward),
        identity: raw.identity.unwrap_or(Identity::ProxyAuthz),
        insecure: raw.insecure.unwrap_or(Insecure::Reject),
        forward_sasl: match &raw.forward_sasl {
            Some(list) => list
                .iter()
                .map(|m| {
                    crate::bind_request::sasl_mechanism(m.get_ref().as_bytes()).ok_or_else(|| {
                        at.error(
                            m,
                            "bind.forward_sasl: not a SASL mechanism name (RFC 4422: 1-20 of A-Z 0-9 - _)",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            None => vec!["EXTERNAL".to_owned(), "GSSAPI".to_owned()],
        },
    })
}

/// `[pam]`: the worker pool and the guards in front of it.
pub(super) fn pam(at: &Locator, raw: &RawPam) -> Result<PamConfig, ConfigError> {
    Ok(PamConfig {
        workers: at.positive(raw.workers.as_ref(), "pam.workers", 64)?,
        queue: at.positive(raw.queue.as_ref(), "pam.queue", 1024)?,
        max_attempts_per_minute: at.positive(
            raw.max_attempts_per_minute.as_ref(),
            "pam.max_attempts_per_minute",
            10,
        )?,
        coalesce_grace: at.duration(
            raw.coalesce_grace.as_ref(),
            "pam.coalesce_grace",
            Duration::from_secs(10),
        )?,
        duo_config_check: raw.duo_config_check.unwrap_or(DuoConfigCheck::Enforce),
    })
}

/// Every `[[route]]`, in file order, with unique names; `service` says whether
/// `[backend]` has the service account that route lookups run as.
pub(super) fn routes(
    at: &Locator,
    raw: &[Spanned<RawRoute>],
    service: bool,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for spanned in raw {
        let route = route(at, spanned)?;
        if routes.iter().any(|r| r.name == route.name) {
            return Err(at.error(
                &spanned.get_ref().name,
                format!("route '{}': duplicate name", route.name),
            ));
        }
        routes.push(route);
    }
    if let (Some(first), false) = (raw.first(), service) {
        return Err(at.error(
            first,
            "routes need backend.service_dn and backend.service_password_file: the proxy reads bind DNs' entries as that account",
        ));
    }
    Ok(routes)
}

/// One `[[route]]`.
fn route(at: &Locator, spanned: &Spanned<RawRoute>) -> Result<Route, ConfigError> {
    let raw = spanned.get_ref();
    let name = raw.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err(at.error(&raw.name, "route.name must not be empty"));
    }
    let key = |k: &str| format!("route '{name}': {k}");
    let filter = match &raw.filter {
        None => None,
        Some(f) => Some(crate::filter::parse(f.get_ref()).map_err(|e| {
            at.error(
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
        return Err(at.error(
            &raw.pam_service,
            format!(
                "{}: '{service}' is not a PAM service name",
                key("pam_service")
            ),
        ));
    }
    let id_map = match &raw.id_map {
        Some(m) if m.get_ref().is_empty() => {
            return Err(at.error(
                m,
                format!("{}: list at least one of rdn, entry, dn", key("id_map")),
            ))
        }
        Some(m) => m.get_ref().clone(),
        None => vec![IdMap::Rdn],
    };
    let id_attr = match &raw.id_attr {
        Some(a) if a.get_ref().trim().is_empty() => {
            return Err(at.error(a, format!("{}: must not be empty", key("id_attr"))))
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
            return Err(at.error(
                a,
                format!("{}: not an attribute type name", key("rdn_attr")),
            ))
        }
        Some(a) => a.get_ref().to_ascii_lowercase(),
        None => "uid".to_owned(),
    };
    let passcode_delimiter = match &raw.passcode_delimiter {
        Some(d) if d.get_ref().is_empty() => {
            return Err(at.error(
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
        timeout: at.duration(
            raw.timeout.as_ref(),
            &key("timeout"),
            Duration::from_secs(120),
        )?,
        include_suffixes: at.dns(raw.include_suffixes.as_deref(), &key("include_suffixes"))?,
        exclude_suffixes: at.dns(raw.exclude_suffixes.as_deref(), &key("exclude_suffixes"))?,
        passcode_delimiter,
        max_concurrent: match &raw.max_concurrent {
            Some(_) => Some(at.positive(raw.max_concurrent.as_ref(), &key("max_concurrent"), 1)?),
            None => None,
        },
        success_cache: match &raw.success_cache {
            Some(d) => Some(at.duration(Some(d), &key("success_cache"), Duration::ZERO)?)
                .filter(|d| !d.is_zero()),
            None => None,
        },
        name,
    })
}

/// A PAM-bound client may be this far behind the directory (bytes of responses it has
/// not read) before the proxy cuts it off: far more than a client that reads at all
/// falls behind, little enough that a few thousand slow ones fit in memory.
const DEFAULT_SHARED_QUEUE: usize = 16 << 20;

/// `[limits]`.
pub(super) fn limits(at: &Locator, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let max_message_size = at.positive(
        raw.max_message_size.as_ref(),
        "limits.max_message_size",
        DEFAULT_MAX_MESSAGE_SIZE,
    )?;
    let max_connections =
        at.positive(raw.max_connections.as_ref(), "limits.max_connections", 4096)?;
    let max_connections_per_address = at.positive(
        raw.max_connections_per_address.as_ref(),
        "limits.max_connections_per_address",
        DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    )?;
    // Long enough for the connections sssd and web apps keep (sssd replaces its own after
    // 15 min, ldap_connection_expire_timeout); a flood of idle connections is reclaimed
    // sooner, when the table fills (crate::slots).
    let idle_timeout = at.duration(
        raw.idle_timeout.as_ref(),
        "limits.idle_timeout",
        Duration::from_secs(15 * 60),
    )?;
    // A client that stops reading makes the proxy stop reading its backend connection,
    // and 389 then holds worker threads writing to it (measured: 20 such connections
    // straight at 389 held a base search for 18 s). This bounds how long; a client that
    // reads, however slowly, never has its window shut this long.
    let send_timeout = at.duration(
        raw.send_timeout.as_ref(),
        "limits.send_timeout",
        Duration::from_secs(15),
    )?;
    let shutdown_grace = at.duration(
        raw.shutdown_grace.as_ref(),
        "limits.shutdown_grace",
        Duration::from_secs(30),
    )?;
    let request_timeout = at.duration(
        raw.request_timeout.as_ref(),
        "limits.request_timeout",
        Duration::from_secs(30),
    )?;
    let max_outstanding =
        at.positive(raw.max_outstanding.as_ref(), "limits.max_outstanding", 256)?;
    let shared_queue = at.positive(
        raw.shared_queue.as_ref(),
        "limits.shared_queue",
        DEFAULT_SHARED_QUEUE,
    )?;
    Ok(Limits {
        max_message_size,
        max_connections,
        max_connections_per_address,
        idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
        send_timeout: (!send_timeout.is_zero()).then_some(send_timeout),
        shutdown_grace,
        request_timeout: (!request_timeout.is_zero()).then_some(request_timeout),
        max_outstanding,
        shared_queue,
    })
}

/// `[runtime]`.
pub(super) fn runtime(at: &Locator, raw: &RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    Ok(RuntimeConfig {
        worker_threads: at.positive(raw.worker_threads.as_ref(), "runtime.worker_threads", 1)?,
    })
}

/// `[log]`: the level, or a tracing filter of `target=level` directives.
pub(super) fn log(at: &Locator, raw: &RawLog) -> Result<String, ConfigError> {
    let Some(l) = &raw.level else {
        return Ok("info".to_owned());
    };
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
    Ok(text.to_owned())
}

/// `[metrics]`: where the endpoint listens, if anywhere.
pub(super) fn metrics(at: &Locator, raw: &RawMetrics) -> Result<Option<SocketAddr>, ConfigError> {
    match &raw.listen {
        Some(a) => Ok(Some(at.socket(a, "metrics.listen")?)),
        None => Ok(None),
    }
}

impl BackendUri {
    /// `ldap://host[:port]` or `ldaps://host[:port]`, nothing after the server.
    pub(super) fn parse(uri: &str) -> Result<BackendUri, String> {
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
