//! The configuration file as written: serde types that mirror its tables, strict about
//! unknown keys, with the span of every value an error may need to point at.
//! [`super::validate`] turns them into the checked [`super::Config`].

use super::{DuoConfigCheck, IdMap, Identity, Insecure, MissingSuffix, TlsVersion, Unmatched};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: RawListen,
    pub tls: Option<RawTls>,
    pub backend: RawBackend,
    #[serde(default)]
    pub bind: RawBind,
    #[serde(default)]
    pub pam: RawPam,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<Spanned<String>>,
}

/// `[metrics]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Option<Spanned<String>>,
}

/// `[bind]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBind {
    pub include_suffixes: Option<Vec<Spanned<String>>>,
    pub exclude_suffixes: Option<Vec<Spanned<String>>>,
    pub missing_suffix: Option<MissingSuffix>,
    pub unmatched: Option<Unmatched>,
    pub identity: Option<Identity>,
    pub insecure: Option<Insecure>,
    pub forward_sasl: Option<Vec<Spanned<String>>>,
    pub lookup_cache: Option<Spanned<String>>,
}

/// `[pam]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPam {
    pub workers: Option<Spanned<i64>>,
    pub queue: Option<Spanned<i64>>,
    pub max_attempts_per_minute: Option<Spanned<i64>>,
    pub coalesce_grace: Option<Spanned<String>>,
    pub duo_config_check: Option<DuoConfigCheck>,
}

/// One `[[route]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: Spanned<String>,
    pub filter: Option<Spanned<String>>,
    pub pam_service: Spanned<String>,
    pub id_map: Option<Spanned<Vec<IdMap>>>,
    pub id_attr: Option<Spanned<String>>,
    pub rdn_attr: Option<Spanned<String>>,
    #[serde(default)]
    pub fallback: bool,
    pub secure: Option<bool>,
    pub timeout: Option<Spanned<String>>,
    pub include_suffixes: Option<Vec<Spanned<String>>>,
    pub exclude_suffixes: Option<Vec<Spanned<String>>>,
    pub passcode_delimiter: Option<Spanned<String>>,
    pub max_concurrent: Option<Spanned<i64>>,
    pub success_cache: Option<Spanned<String>>,
}

/// `[listen]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub address: Spanned<String>,
    pub ldaps_address: Option<Spanned<String>>,
    pub require_tls: Option<Spanned<bool>>,
    pub proxy_protocol_from: Option<Vec<Spanned<String>>>,
}

/// `[tls]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub certificate: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    pub min_version: Option<TlsVersion>,
}

/// `[backend]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub uris: Spanned<Vec<Spanned<String>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub service_dn: Option<Spanned<String>>,
    pub service_password_file: Option<Spanned<String>>,
    pub root_dn: Option<Spanned<String>>,
    pub shared_connections: Option<Spanned<i64>>,
    #[serde(default)]
    pub starttls: bool,
    pub ca: Option<Spanned<String>>,
}

/// `[limits]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_message_size: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_address: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub max_outstanding: Option<Spanned<i64>>,
    pub shared_queue: Option<Spanned<i64>>,
}

/// `[runtime]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub worker_threads: Option<Spanned<i64>>,
}
