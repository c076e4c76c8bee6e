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

/// Where PAM looks for service files, in order: `$PAM_WRAPPER_SERVICE_DIR` when
/// pam_wrapper is on (`PAM_WRAPPER=1`: the tests and the demo run PAM that way), else
/// `/etc/pam.d` and then the vendor directory `/usr/lib/pam.d` (Debian's libpam reads
/// both). pam_wrapper ignores the directory variable unless `PAM_WRAPPER=1`, and so does
/// this: otherwise the checks would read files libpam never reads.
pub fn pam_service_dirs() -> Vec<PathBuf> {
    pam_service_dirs_for(
        std::env::var_os("PAM_WRAPPER").as_deref(),
        std::env::var_os("PAM_WRAPPER_SERVICE_DIR").as_deref(),
    )
}

fn pam_service_dirs_for(
    wrapper: Option<&std::ffi::OsStr>,
    service_dir: Option<&std::ffi::OsStr>,
) -> Vec<PathBuf> {
    match (wrapper, service_dir) {
        (Some(on), Some(d)) if on == "1" && !d.is_empty() => vec![PathBuf::from(d)],
        _ => vec![PathBuf::from("/etc/pam.d"), PathBuf::from("/usr/lib/pam.d")],
    }
}

/// The file PAM reads for `service` in `dirs` (see [`pam_service_dirs`]), if there is
/// one. Linux-PAM lower-cases the service name before it looks.
pub fn find_pam_service(service: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let name = service.to_ascii_lowercase();
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file())
}

/// Why a missing PAM service matters: Linux-PAM does not fail on one.
pub fn missing_service_explanation(service: &str, dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let other = dirs
        .first()
        .map(|d| d.join("other").display().to_string())
        .unwrap_or_else(|| "/etc/pam.d/other".into());
    format!(
        "no PAM service file '{}' in {}. Linux-PAM does not refuse a missing service: it silently uses {other}, which on Debian includes common-auth, i.e. the local Unix accounts — binds on this route would be checked against local passwords instead of '{service}'",
        service.to_ascii_lowercase(),
        shown.join(" or ")
    )
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

    #[test]
    fn pam_wrapper_dir_only_when_pam_wrapper_is_on() {
        let dir = Some(std::ffi::OsStr::new("/tmp/services"));
        let system = [PathBuf::from("/etc/pam.d"), PathBuf::from("/usr/lib/pam.d")];
        assert_eq!(
            pam_service_dirs_for(Some("1".as_ref()), dir),
            [PathBuf::from("/tmp/services")]
        );
        assert_eq!(pam_service_dirs_for(None, dir), system);
        assert_eq!(pam_service_dirs_for(Some("0".as_ref()), dir), system);
        assert_eq!(pam_service_dirs_for(Some("1".as_ref()), None), system);
    }

    #[test]
    fn explanation_names_the_fallback() {
        let m = missing_service_explanation("Duo", &[PathBuf::from("/etc/pam.d")]);
        assert!(m.contains("'duo'"), "{m}");
        assert!(m.contains("/etc/pam.d/other"), "{m}");
        assert!(m.contains("local Unix accounts"), "{m}");
    }
}
