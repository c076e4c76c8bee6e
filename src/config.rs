//! Configuration: one TOML file, deserialized strictly and validated into a [`Config`]
//! that is valid by construction. Every error names the file, the line and the key.

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
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub backend: BackendConfig,
    pub limits: Limits,
    pub runtime: RuntimeConfig,
}

/// Where clients connect.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub address: SocketAddr,
}

/// The directory servers behind the proxy, tried in order.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub uris: Vec<BackendUri>,
    pub connect_timeout: Duration,
    /// DN the proxy binds as for route lookups and proxied authorization.
    pub service_dn: Option<String>,
    pub service_password_file: Option<PathBuf>,
}

/// One backend address, parsed from an `ldap://host[:port]` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUri {
    /// The URI as written, for diagnostics.
    pub uri: String,
    pub host: String,
    pub port: u16,
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
    backend: RawBackend,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    runtime: RawRuntime,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    uris: Spanned<Vec<Spanned<String>>>,
    connect_timeout: Option<Spanned<String>>,
    service_dn: Option<String>,
    service_password_file: Option<Spanned<String>>,
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

        let address = raw.listen.address.get_ref().parse().map_err(|e| {
            at.error(
                &raw.listen.address,
                format!("listen.address: {e} (expected host:port, e.g. 127.0.0.1:1389)"),
            )
        })?;

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
        let connect_timeout = at.duration(
            raw.backend.connect_timeout.as_ref(),
            "backend.connect_timeout",
            Duration::from_secs(5),
        )?;
        let service_password_file = raw
            .backend
            .service_password_file
            .as_ref()
            .map(|p| PathBuf::from(p.get_ref()));

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
            listen: ListenConfig { address },
            backend: BackendConfig {
                uris,
                connect_timeout,
                service_dn: raw.backend.service_dn,
                service_password_file,
            },
            limits: Limits {
                max_message_size,
                max_connections,
                idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
                shutdown_grace,
            },
            runtime: RuntimeConfig { worker_threads },
        })
    }
}

impl BackendUri {
    fn parse(uri: &str) -> Result<BackendUri, String> {
        let rest = match uri.split_once("://") {
            Some(("ldap", rest)) => rest,
            Some((scheme @ ("ldaps" | "ldapi"), _)) => {
                return Err(format!(
                    "{scheme}:// backends are not supported yet; use ldap://"
                ))
            }
            _ => return Err(format!("'{uri}' is not an ldap:// URI")),
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
        assert!(
            err("[listen]\naddress = \"nowhere\"\n[backend]\nuris=[\"ldap://x\"]")
                .contains("listen.address")
        );
        assert!(
            err("[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris=[]").contains("at least one")
        );
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
