//! Where libpam finds a service's file, and what it does when there is none: the
//! checks of route services (`check-config`, `explain`, the pam_duo check) look where
//! libpam will.

use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
    use super::*;

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
