//! pam_duo must not fail open. When pam_duo cannot read its configuration file, when that
//! file is readable by group or others, or when a line of it is rejected, pam_duo returns
//! PAM_SUCCESS — a login on the password alone — unless `failmode = secure` was read
//! before the problem (duo_unix `pam_duo.c`, `lib/duo.c`, `lib/ini.c`). So at start, on
//! reload and in `check-config`, every route's PAM service is followed through its
//! includes to each pam_duo `auth` line, and the file that line reads is checked.
//!
//! What counts as a problem ([`ConfProblem`]):
//! - the proxy's user cannot read the file (pam_duo runs in the proxy's process);
//! - the file has any group or others permission bit (pam_duo refuses read bits; any
//!   other bit is one `chmod` away from that);
//! - the `failmode` in force at the end is not `secure`;
//! - a line before `failmode = secure` that some pam_duo version may reject (anything but
//!   comments, sections and the settings every version accepts): pam_duo stops at such
//!   a line with the failmode read so far, `safe`.

use crate::config::{Config, DuoConfigCheck};
use crate::logsafe::Untrusted;
use crate::pam_service;
use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// pam_duo's built-in configuration file in Duo's own builds; Debian's `libpam-duo`
/// uses `/etc/security/pam_duo.conf`. Without `conf=` the check reads the default out
/// of the installed module when it can find it, and falls back to this.
pub const DEFAULT_CONF: &str = "/etc/duo/pam_duo.conf";

/// Linux-PAM gives up after this many nested includes (PAM_SUBSTACK_MAX_LEVEL).
const MAX_INCLUDE_DEPTH: usize = 16;

/// pam_duo reads its file with `fgets` into 200 bytes: a longer line becomes several.
const INI_LINE: usize = 199;

/// Settings every pam_duo version accepts whatever their value: they cannot stop the
/// parse before `failmode` is read.
const ALWAYS_ACCEPTED: &[&str] = &[
    "ikey",
    "skey",
    "host",
    "cafile",
    "http_proxy",
    "groups",
    "group",
    "pushinfo",
    "noverify",
    "prompts",
    "autopush",
];

/// One pam_duo `auth` line of a service's stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuoModule {
    /// The PAM file the line is in (the service's own, or one it includes).
    pub pam_file: PathBuf,
    /// Its line number (the first physical line of a continued one).
    pub line: usize,
    /// The configuration file pam_duo reads: the last `conf=` argument, or the default.
    pub conf: PathBuf,
    /// Whether `conf` was given with `conf=`.
    pub explicit: bool,
}

/// Why a pam_duo configuration file lets users in on the password alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfProblem {
    #[error("the proxy's user cannot read it ({0}); pam_duo then lets everyone in on the password alone")]
    Unreadable(String),
    #[error("it is not a regular file; pam_duo cannot read it and then lets everyone in on the password alone")]
    NotAFile,
    #[error("mode {mode:04o} gives group or others access; pam_duo refuses such a file and then lets everyone in on the password alone: chmod 0600, owned by the proxy's user")]
    Permissions { mode: u32 },
    #[error("it does not set failmode = secure, so pam_duo lets everyone in on the password alone when Duo cannot be asked or the file has an error: add failmode = secure as the first setting of [duo]")]
    NoSecureFailmode,
    #[error("failmode = {value} is in force; use failmode = secure, or pam_duo lets everyone in on the password alone when Duo cannot be asked or the file has an error")]
    Failmode { value: String },
    #[error("line {line} ({what}) comes before failmode = secure: pam_duo stops reading at the first line it rejects and then uses failmode = safe, letting everyone in on the password alone; put failmode = secure first")]
    BeforeFailmode { line: usize, what: String },
}

/// A route whose PAM service runs pam_duo with a configuration that fails open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuoProblem {
    pub route: String,
    pub service: String,
    pub module: DuoModule,
    pub problem: ConfProblem,
}

impl fmt::Display for DuoProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route '{}': PAM service '{}' runs pam_duo ({}:{}) with {}{}: {}",
            self.route,
            self.service,
            self.module.pam_file.display(),
            self.module.line,
            self.module.conf.display(),
            if self.module.explicit {
                ""
            } else {
                " (its default: no conf= argument)"
            },
            self.problem
        )
    }
}

/// The pam_duo problems of `routes` (route name, PAM service), PAM services looked up in
/// `dirs` (see [`pam_service::pam_service_dirs`]). A missing service is followed as Linux-PAM
/// does: through `other`.
pub fn check_routes<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    dirs: &[PathBuf],
) -> Vec<DuoProblem> {
    let mut problems = Vec::new();
    for (route, service) in routes {
        for module in duo_modules(service, dirs) {
            if let Err(problem) = check_conf(&module.conf) {
                problems.push(DuoProblem {
                    route: route.to_owned(),
                    service: service.to_owned(),
                    module,
                    problem,
                });
            }
        }
    }
    problems
}

/// At start and on reload: the pam_duo check of `config`'s routes. `Err` lists the
/// problems under `duo_config_check = "enforce"`; under `"warn"` they are logged.
pub fn apply(config: &Config) -> Result<(), String> {
    let dirs = pam_service::pam_service_dirs();
    let problems = check_routes(
        config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.pam_service.as_str())),
        &dirs,
    );
    if problems.is_empty() {
        return Ok(());
    }
    match config.pam.duo_config_check {
        DuoConfigCheck::Enforce => Err(format!(
            "{} (pam.duo_config_check = \"warn\" would only warn)",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )),
        DuoConfigCheck::Warn => {
            for p in &problems {
                tracing::warn!("{p} (pam.duo_config_check = \"warn\")");
            }
            Ok(())
        }
    }
}

/// Every pam_duo line in the `auth` stack of `service`, following `@include`, and the
/// `include` and `substack` controls, in stack order.
pub fn duo_modules(service: &str, dirs: &[PathBuf]) -> Vec<DuoModule> {
    let file = pam_service::find_pam_service(service, dirs)
        .or_else(|| pam_service::find_pam_service("other", dirs));
    let mut found = Vec::new();
    if let Some(file) = file {
        follow(&file, dirs, 0, &mut found);
    }
    found
}

/// Collects the pam_duo `auth` lines of the PAM file at `path`. A file that cannot be
/// read is skipped: libpam, running as the same user, cannot read it either and then
/// refuses the whole service.
fn follow(path: &Path, dirs: &[PathBuf], depth: usize, found: &mut Vec<DuoModule>) {
    if depth >= MAX_INCLUDE_DEPTH {
        return;
    }
    let Ok(text) = std::fs::read(path) else {
        return;
    };
    for (line, tokens) in pam_lines(&String::from_utf8_lossy(&text)) {
        let Some(first) = tokens.first() else {
            continue;
        };
        if first.eq_ignore_ascii_case("@include") {
            if let Some(target) = tokens.get(1).and_then(|t| include_path(t, dirs)) {
                follow(&target, dirs, depth + 1, found);
            }
            continue;
        }
        // "-auth": the same, but a missing module is skipped silently.
        let kind = first.strip_prefix('-').unwrap_or(first);
        if !kind.eq_ignore_ascii_case("auth") {
            continue;
        }
        let (Some(control), Some(module)) = (tokens.get(1), tokens.get(2)) else {
            continue;
        };
        if control.eq_ignore_ascii_case("include") || control.eq_ignore_ascii_case("substack") {
            if let Some(target) = include_path(module, dirs) {
                follow(&target, dirs, depth + 1, found);
            }
            continue;
        }
        let is_duo = Path::new(module.as_str())
            .file_name()
            .is_some_and(|n| n == "pam_duo.so");
        if !is_duo {
            continue;
        }
        // pam_duo takes the last conf= it is given.
        let conf = tokens
            .get(3..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find_map(|a| a.strip_prefix("conf="));
        found.push(DuoModule {
            pam_file: path.to_owned(),
            line,
            conf: conf.map_or_else(|| default_conf(module), PathBuf::from),
            explicit: conf.is_some(),
        });
    }
}

/// Where Linux-PAM finds an included file: an absolute path as it is, a name in the
/// service directories.
fn include_path(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Some(PathBuf::from(name));
    }
    if name.is_empty() || name.contains('/') {
        return None;
    }
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The logical lines of a PAM file: (line number, tokens). As Linux-PAM reads them,
/// `#` starts a comment anywhere, a trailing backslash continues a line, a control in
/// brackets (`[success=1 default=ignore]`) is one token, and so is an argument in
/// brackets (`[conf=/a b]`, with `\]` for a bracket inside), given without them.
fn pam_lines(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        let (content, commented) = match raw.find('#') {
            Some(at) => (raw.get(..at).unwrap_or_default(), true),
            None => (raw, false),
        };
        let trimmed = content.trim_end();
        if !commented {
            if let Some(head) = trimmed.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
        }
        pending.push_str(trimmed);
        let tokens = tokenize(&pending);
        if !tokens.is_empty() {
            lines.push((start, tokens));
        }
        pending.clear();
    }
    let tokens = tokenize(&pending);
    if !tokens.is_empty() {
        lines.push((start, tokens));
    }
    lines
}

fn tokenize(line: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return tokens;
        };
        let mut token = String::new();
        if first == '[' {
            // Up to the closing bracket, spaces included.
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&']') => {
                        token.push(']');
                        chars.next();
                    }
                    ']' => break,
                    c => token.push(c),
                }
            }
            // A control keeps its brackets (it is not include/substack either way).
            if tokens.len() == 1 {
                token = format!("[{token}]");
            }
        } else {
            token.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                token.push(c);
            }
        }
        tokens.push(token);
    }
}

/// Directories Linux-PAM loads modules named without a path from.
fn module_dirs() -> Vec<PathBuf> {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{triple}/security"),
        format!("/usr/lib/{triple}/security"),
        "/lib64/security".to_owned(),
        "/usr/lib64/security".to_owned(),
        "/lib/security".to_owned(),
        "/usr/lib/security".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// The configuration file pam_duo reads without `conf=`: the path compiled into the
/// installed module (it differs between builds), else [`DEFAULT_CONF`].
fn default_conf(module: &str) -> PathBuf {
    let path = Path::new(module);
    let candidates = if path.is_absolute() {
        vec![path.to_owned()]
    } else {
        module_dirs().into_iter().map(|d| d.join(path)).collect()
    };
    candidates
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .and_then(|binary| compiled_conf_path(&binary))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF))
}

/// The first NUL-terminated absolute path ending in `/pam_duo.conf` in a module binary.
fn compiled_conf_path(binary: &[u8]) -> Option<PathBuf> {
    binary
        .split(|b| *b == 0)
        .filter(|s| s.starts_with(b"/") && s.ends_with(b"/pam_duo.conf"))
        .find_map(|s| std::str::from_utf8(s).ok())
        .map(PathBuf::from)
}

/// Checks the pam_duo configuration file at `path` as the proxy's user sees it.
pub fn check_conf(path: &Path) -> Result<(), ConfProblem> {
    let meta = std::fs::metadata(path).map_err(|e| ConfProblem::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(ConfProblem::NotAFile);
    }
    let text = std::fs::read(path).map_err(|e| ConfProblem::Unreadable(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfProblem::Permissions { mode });
    }
    check_conf_text(&text)
}

/// The `failmode` rules on the text of a pam_duo configuration, read as pam_duo's INI
/// parser reads it (sections are ignored by pam_duo: the last `failmode` anywhere wins).
pub fn check_conf_text(text: &[u8]) -> Result<(), ConfProblem> {
    let mut secure = false;
    let mut last_failmode: Option<String> = None;
    let mut prev_name: Option<String> = None;
    for (line, raw) in ini_lines(text) {
        let raw = String::from_utf8_lossy(raw);
        let raw = raw.trim_end();
        let start = raw.trim_start();
        let indented = start.len() < raw.len();
        // What pam_duo's handler gets for this line, if anything: (name, value).
        let setting = if indented && !start.is_empty() && prev_name.is_some() {
            // A continuation of the previous setting's value (Python ConfigParser style).
            if start.starts_with(';') {
                continue;
            }
            prev_name.clone().map(|n| (n, start.to_owned()))
        } else if start.is_empty() || start.starts_with(';') || start.starts_with('#') {
            continue;
        } else if let Some(section) = start.strip_prefix('[') {
            if until_comment(section, ']').1 {
                prev_name = None;
                continue;
            }
            if !secure {
                return Err(ConfProblem::BeforeFailmode {
                    line,
                    what: "a section line without ']'".into(),
                });
            }
            None
        } else {
            let (name, has_equals) = until_comment(start, '=');
            if !has_equals {
                if !secure {
                    return Err(ConfProblem::BeforeFailmode {
                        line,
                        what: "a line without '='".into(),
                    });
                }
                None
            } else {
                let name = name.trim_end().to_owned();
                let value_part = start.get(name.len()..).unwrap_or_default();
                let value = value_part
                    .trim_start()
                    .strip_prefix('=')
                    .unwrap_or_default()
                    .trim_start();
                let (value, _) = until_comment(value, '\0');
                prev_name = Some(name.clone());
                Some((name, value.trim_end().to_owned()))
            }
        };
        let Some((name, value)) = setting else {
            continue;
        };
        if name == "failmode" {
            match value.as_str() {
                "secure" => secure = true,
                "safe" => secure = false,
                _ if !secure => {
                    return Err(ConfProblem::BeforeFailmode {
                        line,
                        what: format!(
                            "failmode = {}, which pam_duo rejects",
                            Untrusted::new(&value)
                        ),
                    })
                }
                // Rejected, but the failmode in force stays secure.
                _ => {}
            }
            last_failmode = Some(value);
        } else if !secure && !ALWAYS_ACCEPTED.contains(&name.as_str()) {
            return Err(ConfProblem::BeforeFailmode {
                line,
                what: format!("setting '{}'", Untrusted::new(&name)),
            });
        }
    }
    match (secure, last_failmode) {
        (true, _) => Ok(()),
        (false, None) => Err(ConfProblem::NoSecureFailmode),
        (false, Some(value)) => Err(ConfProblem::Failmode {
            value: Untrusted::new(&value).to_string(),
        }),
    }
}

/// The lines pam_duo's `fgets` loop sees: at most [`INI_LINE`] bytes each, numbered.
fn ini_lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut rest = text;
    let mut number = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .take(INI_LINE)
            .position(|b| *b == b'\n')
            .map_or(INI_LINE.min(rest.len()), |at| at + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        number += 1;
        Some((number, line))
    })
}

/// inih's `find_char_or_comment`: the text before `c` or before a `;` that follows
/// whitespace, and whether `c` was found.
fn until_comment(s: &str, c: char) -> (&str, bool) {
    let mut was_space = false;
    for (i, ch) in s.char_indices() {
        if ch == c {
            return (s.get(..i).unwrap_or_default(), true);
        }
        if was_space && ch == ';' {
            return (s.get(..i).unwrap_or_default(), false);
        }
        was_space = ch.is_whitespace();
    }
    (s, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Result<(), ConfProblem> {
        check_conf_text(text.as_bytes())
    }

    #[test]
    fn failmode_secure_passes() {
        assert_eq!(
            conf("[duo]\nfailmode = secure\nikey = x\nskey = y\nhost = h\n"),
            Ok(())
        );
        // The settings every version accepts may come first (Duo's template order).
        assert_eq!(
            conf("[duo]\n; Duo API host\nhost = h\nikey = x\nskey = y\nfailmode = secure ; deny on errors\nautopush = yes\n"),
            Ok(())
        );
        // After failmode = secure, a rejected line makes pam_duo fail closed.
        assert_eq!(
            conf("[duo]\nfailmode = secure\nno_such_option = 1\n[broken\n"),
            Ok(())
        );
    }

    #[test]
    fn failmode_safe_or_missing_fails() {
        assert_eq!(
            conf("[duo]\nikey = x\n"),
            Err(ConfProblem::NoSecureFailmode)
        );
        assert_eq!(
            conf("[duo]\nfailmode = secure\nfailmode = safe\n"),
            Err(ConfProblem::Failmode {
                value: "safe".into()
            })
        );
        // Commented out, or a '#' that is not a comment in the middle of a line.
        assert_eq!(
            conf("[duo]\n;failmode = secure\n"),
            Err(ConfProblem::NoSecureFailmode)
        );
        assert!(matches!(
            conf("[duo]\nfailmode = secure # deny\n"),
            Err(ConfProblem::BeforeFailmode { line: 2, .. })
        ));
        // pam_duo compares names and values case-sensitively.
        assert!(matches!(
            conf("[duo]\nfailmode = Secure\n"),
            Err(ConfProblem::BeforeFailmode { line: 2, .. })
        ));
        assert!(matches!(
            conf("[duo]\nFailmode = secure\n"),
            Err(ConfProblem::BeforeFailmode { line: 2, .. })
        ));
    }

    #[test]
    fn a_continuation_line_changes_the_value() {
        assert_eq!(
            conf("[duo]\nfailmode = secure\n  safe\n"),
            Err(ConfProblem::Failmode {
                value: "safe".into()
            })
        );
        assert_eq!(
            conf("[duo]\nhost = h\n  ; a comment\nfailmode = secure\n"),
            Ok(())
        );
    }

    #[test]
    fn lines_before_failmode_that_may_stop_the_parse() {
        assert_eq!(
            conf("[duo]\nmotd = yes\nfailmode = secure\n"),
            Err(ConfProblem::BeforeFailmode {
                line: 2,
                what: "setting 'motd'".into()
            })
        );
        assert!(matches!(
            conf("[duo\nfailmode = secure\n"),
            Err(ConfProblem::BeforeFailmode { line: 1, .. })
        ));
        assert!(matches!(
            conf("[duo]\njust words\nfailmode = secure\n"),
            Err(ConfProblem::BeforeFailmode { line: 2, .. })
        ));
        // A line longer than pam_duo's buffer is read as two: the second has no '='.
        let long = format!("[duo]\ngroups = {}\nfailmode = secure\n", "g,".repeat(120));
        assert!(matches!(
            conf(&long),
            Err(ConfProblem::BeforeFailmode { line: 3, .. })
        ));
    }

    #[test]
    fn pam_lines_follow_linux_pam_syntax() {
        let text = "# comment\nauth [success=1 default=ignore] pam_unix.so nullok # trailing\n\
                    -auth required \\\n   pam_duo.so [conf=/a b/c\\]d] conf=/x\n@include common-auth\n";
        let lines = pam_lines(text);
        assert_eq!(
            lines,
            vec![
                (
                    2,
                    vec![
                        "auth".to_owned(),
                        "[success=1 default=ignore]".to_owned(),
                        "pam_unix.so".to_owned(),
                        "nullok".to_owned()
                    ]
                ),
                (
                    3,
                    vec![
                        "-auth".to_owned(),
                        "required".to_owned(),
                        "pam_duo.so".to_owned(),
                        "conf=/a b/c]d".to_owned(),
                        "conf=/x".to_owned()
                    ]
                ),
                (5, vec!["@include".to_owned(), "common-auth".to_owned()]),
            ]
        );
    }

    /// A service directory with `files` (name, text).
    fn pam_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn includes_and_substacks_are_followed() {
        let dir = pam_dir(&[
            (
                "svc",
                "auth required pam_env.so\n@include common\naccount include acct\n",
            ),
            (
                "common",
                "auth substack two\nsession required pam_duo.so conf=/nope\n",
            ),
            (
                "two",
                "auth [default=die] /lib/security/pam_duo.so conf=/etc/two.conf\n",
            ),
            ("acct", "auth required pam_duo.so conf=/never\n"),
            (
                "loop",
                "auth include loop\nauth required pam_duo.so conf=/etc/loop.conf\n",
            ),
        ]);
        let dirs = vec![dir.path().to_owned()];
        let found = duo_modules("svc", &dirs);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].conf, PathBuf::from("/etc/two.conf"));
        assert_eq!(found[0].pam_file, dir.path().join("two"));
        assert_eq!(found[0].line, 1);
        assert!(found[0].explicit);
        // A service that includes itself: Linux-PAM stops at its nesting limit.
        let found = duo_modules("loop", &dirs);
        assert!(!found.is_empty() && found.iter().all(|m| m.conf == Path::new("/etc/loop.conf")));
        // A missing service is PAM's "other".
        std::fs::write(dir.path().join("other"), "auth required pam_duo.so\n").unwrap();
        let found = duo_modules("missing", &dirs);
        assert_eq!(found.len(), 1);
        assert!(!found[0].explicit);
    }

    #[test]
    fn the_default_conf_is_read_from_the_module() {
        let binary = b"\x7fELF\0junk\0/etc/security/pam_duo.conf\0Loading config file %s\0";
        assert_eq!(
            compiled_conf_path(binary),
            Some(PathBuf::from("/etc/security/pam_duo.conf"))
        );
        assert_eq!(compiled_conf_path(b"nothing here"), None);
        assert_eq!(
            default_conf("/nonexistent/pam_duo.so"),
            PathBuf::from(DEFAULT_CONF)
        );
    }

    #[test]
    fn conf_files_are_checked_for_mode_and_readability() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pam_duo.conf");
        std::fs::write(&path, "[duo]\nfailmode = secure\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_conf(&path), Ok(()));
        for mode in [0o640, 0o604, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_conf(&path), Err(ConfProblem::Permissions { mode }));
        }
        assert!(matches!(
            check_conf(&dir.path().join("absent")),
            Err(ConfProblem::Unreadable(_))
        ));
        assert_eq!(check_conf(dir.path()), Err(ConfProblem::NotAFile));
    }

    #[test]
    fn problems_name_route_service_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("duo.conf");
        std::fs::write(&conf, "[duo]\nikey = x\n").unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pam = pam_dir(&[
            (
                "duo",
                &format!("auth required pam_duo.so conf={}\n", conf.display()),
            ),
            ("plain", "auth required pam_unix.so\n"),
        ]);
        let dirs = vec![pam.path().to_owned()];
        let problems = check_routes([("internal", "duo"), ("external", "plain")], &dirs);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = problems[0].to_string();
        for part in [
            "route 'internal'",
            "PAM service 'duo'",
            &conf.display().to_string(),
            "failmode = secure",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }
}
