//! `check-config`: everything [`Config::load`] validates (syntax, keys, values, filters,
//! readable files, each with its line), and what only the host can tell: that every
//! route's PAM service exists, that pam_duo in those services cannot fail open
//! ([`duo`]), and that secrets are not readable by every local user. With `--live`,
//! [`check_live`] also asks the directory.
//!
//! [`Config::load`] stops at the first error; this check goes on with what it can read
//! on its own (route filters, PAM services, the service password file), so one run
//! lists every error it can find.

use crate::backend::Backends;
use crate::config::{Config, ConfigError};
use crate::dircheck;
use crate::duo;
use crate::pam_service::{find_pam_service, missing_service_explanation, pam_service_dirs};
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// What `check-config` found. The configuration is usable when `errors` is empty.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// `file:line: message`, in file order.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Just the keys this check looks at, with their positions; everything else is ignored
/// here (Config::parse judges it).
#[derive(Deserialize)]
struct Lenient {
    backend: Option<LenientBackend>,
    tls: Option<LenientTls>,
    pam: Option<LenientPam>,
    #[serde(default)]
    route: Vec<LenientRoute>,
}

#[derive(Deserialize)]
struct LenientPam {
    duo_config_check: Option<toml::Value>,
}

#[derive(Deserialize)]
struct LenientBackend {
    service_password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct LenientTls {
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct LenientRoute {
    name: Option<Spanned<String>>,
    filter: Option<Spanned<String>>,
    pam_service: Option<Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Checks the configuration file at `path`, with PAM services in [`pam_service_dirs`].
pub fn check_config(path: &Path) -> CheckReport {
    let origin = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(source) => {
            return CheckReport {
                errors: vec![ConfigError::Read {
                    path: origin,
                    source,
                }
                .to_string()],
                warnings: Vec::new(),
            }
        }
    };
    check_text(&text, &origin, &pam_service_dirs())
}

/// As [`check_config`], for configuration text; `origin` names it in messages and PAM
/// services are looked for in `pam_dirs`.
pub fn check_text(text: &str, origin: &str, pam_dirs: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport::default();
    // (line, message): sorted by line at the end.
    let mut errors: Vec<(usize, String)> = Vec::new();
    let mut reported_line = None;
    let parsed = Config::parse(text, origin);
    if let Some(w) = parsed
        .as_ref()
        .ok()
        .and_then(crate::bind::forward_sasl_warning)
    {
        report.warnings.push(w);
    }
    if let Err(e) = parsed {
        let line = match &e {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => 0,
        };
        reported_line = Some(line);
        errors.push((line, e.to_string()));
    }
    // Without valid TOML there is nothing more to read.
    let Ok(lenient) = toml::from_str::<Lenient>(text) else {
        report.errors = errors.into_iter().map(|(_, m)| m).collect();
        return report;
    };
    let mut error = |line: usize, message: String| {
        if reported_line != Some(line) {
            errors.push((line, format!("{origin}:{line}: {message}")));
        }
    };

    // Only an explicit "warn" weakens the pam_duo check (a bad value is Config::parse's).
    let duo_warn_only = lenient
        .pam
        .as_ref()
        .and_then(|p| p.duo_config_check.as_ref())
        .and_then(toml::Value::as_str)
        == Some("warn");
    for (i, route) in lenient.route.iter().enumerate() {
        let name = route
            .name
            .as_ref()
            .map(|n| n.get_ref().trim().to_owned())
            .unwrap_or_else(|| format!("#{}", i + 1));
        if let Some(f) = &route.filter {
            if let Err(e) = crate::filter::parse(f.get_ref()) {
                error(
                    line_of(text, f.span().start),
                    format!(
                        "route '{name}': filter: '{}' is not an LDAP filter (RFC 4515): {e}",
                        f.get_ref()
                    ),
                );
            }
        }
        if let Some(s) = &route.pam_service {
            let service = s.get_ref().trim();
            let valid = !service.is_empty()
                && service
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            // An invalid name is Config::parse's to report.
            if valid && find_pam_service(service, pam_dirs).is_none() {
                error(
                    line_of(text, s.span().start),
                    format!(
                        "route '{name}': pam_service '{service}': {}",
                        missing_service_explanation(service, pam_dirs)
                    ),
                );
            } else if valid {
                let line = line_of(text, s.span().start);
                for problem in duo::check_routes([(name.as_str(), service)], pam_dirs) {
                    if duo_warn_only {
                        report.warnings.push(format!(
                            "{origin}:{line}: {problem} (pam.duo_config_check = \"warn\")"
                        ));
                    } else {
                        error(line, problem.to_string());
                    }
                }
            }
        }
    }

    let secrets = [
        lenient
            .backend
            .as_ref()
            .and_then(|b| b.service_password_file.as_ref())
            .map(|f| ("backend.service_password_file", f)),
        lenient
            .tls
            .as_ref()
            .and_then(|t| t.key.as_ref())
            .map(|f| ("tls.key", f)),
    ];
    for (key, file) in secrets.into_iter().flatten() {
        let line = line_of(text, file.span().start);
        let path = Path::new(file.get_ref());
        match std::fs::metadata(path) {
            Err(e) => error(line, format!("{key}: {}: {e}", path.display())),
            Ok(meta) => {
                let mode = meta.permissions().mode();
                if mode & 0o004 != 0 {
                    report.warnings.push(format!(
                        "{origin}:{line}: {key}: {} is readable by every local user (mode {:04o}): chmod o-r (0600, owned by the proxy's user)",
                        path.display(),
                        mode & 0o7777
                    ));
                }
            }
        }
    }

    errors.sort_by_key(|(line, _)| *line);
    report.errors = errors.into_iter().map(|(_, m)| m).collect();
    report
}

/// `check-config --live`: what only the directory can tell about a configuration that
/// loads — configured suffixes it lacks (under `missing_suffix = "error"`), the service
/// account's rights on the attributes the routes need, and password SASL mechanisms it
/// advertises (a warning). A directory that cannot be asked is an error here.
pub fn check_live(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report
                .errors
                .push(format!("cannot start the async runtime: {e}"));
            return report;
        }
    };
    let backends = Backends::default();
    runtime.block_on(async {
        if let Err(e) = crate::bind::check_suffixes(config, &backends).await {
            report.errors.push(format!("directory: {e}"));
        }
        match dircheck::run(config, &backends).await {
            Ok(warnings) => report
                .warnings
                .extend(warnings.into_iter().map(|w| format!("directory: {w}"))),
            Err(e) => report.errors.push(format!("directory: {e}")),
        }
    });
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
