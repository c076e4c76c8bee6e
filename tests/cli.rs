//! The administrators' tools (DESIGN §5): `import-389`, `check-config` and `explain`.
//!
//! The library functions are tested directly; the `binary_*` tests run the built
//! `ldap-pam-proxy`. The `explain_*`
//! tests ask the real 389 DS of the test run (tests/run.sh) which routes a DN matches.

mod common;

use common::*;
use ldap_pam_proxy::check::{check_config, check_text, CheckReport};
use ldap_pam_proxy::config::{Config, IdMap, MissingSuffix};
use ldap_pam_proxy::dn::Dn;
use ldap_pam_proxy::explain::explain_blocking;
use ldap_pam_proxy::import389::{import_389, Imported};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn import_file(name: &str) -> Imported {
    let path = path_of(&format!("tests/data/{name}"));
    let text = std::fs::read_to_string(&path).expect("test LDIF");
    import_389(&text, name).unwrap_or_else(|e| panic!("{e}"))
}

/// `[listen]` and `[backend]` (with a service account, which routes need) for `uri`,
/// the service password in `dir`.
fn head(uri: &str, dir: &Path) -> String {
    let pw = dir.join("service.pw");
    std::fs::write(&pw, "secret").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[listen]\naddress = \"127.0.0.1:1389\"\n\n[backend]\nuris = [\"{uri}\"]\nservice_dn = \"cn=svc,dc=example,dc=com\"\nservice_password_file = \"{}\"\n\n",
        pw.display()
    )
}

fn parse_with_head(toml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}{toml}", head("ldap://127.0.0.1:3389", dir.path()));
    Config::parse(&text, "imported.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn dns(list: &[Dn]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

#[test]
fn import_example_keeps_389_order_and_settings() {
    let imported = import_file("389-pam-passthru.ldif");
    // Measured on 389-ds-base 2.3.1: nested entries in descending byte order of their
    // normalised cn ("duo" before "csu"), then the plugin entry's own settings.
    assert_eq!(imported.routes, ["duo", "csu", "default"]);
    let config = parse_with_head(&imported.toml);
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["duo", "csu", "default"]);

    let duo = &config.routes[0];
    assert_eq!(duo.pam_service, "curc-twofactor-duo");
    assert!(duo.filter.is_some());
    assert!(imported
        .toml
        .contains("filter = \"(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))\""));
    assert_eq!(duo.id_map, [IdMap::Rdn, IdMap::Entry]);
    assert_eq!(duo.id_attr, "uid");
    assert!(duo.secure);
    assert!(!duo.fallback);
    assert!(duo.include_suffixes.is_empty() && duo.exclude_suffixes.is_empty());

    let csu = &config.routes[1];
    assert_eq!(csu.pam_service, "csu");
    assert!(imported
        .toml
        .contains("filter = \"(&(objectClass=posixAccount)(homeDirectory=/home/*@*))\""));
    assert_eq!(csu.id_map, [IdMap::Rdn, IdMap::Entry]);
    assert!(csu.secure);

    let default = &config.routes[2];
    assert_eq!(default.pam_service, "ldapserver");
    assert!(default.filter.is_none());
    assert_eq!(default.id_map, [IdMap::Rdn]);

    assert_eq!(config.bind.missing_suffix, MissingSuffix::Allow);
    assert_eq!(dns(&config.bind.exclude_suffixes), ["cn=config"]);
    assert!(config.bind.include_suffixes.is_empty());
    // The catch-all plugin entry is worth a warning: it takes application accounts too.
    assert!(
        imported
            .warnings
            .iter()
            .any(|w| w.contains("route 'default'") && w.contains("application")),
        "{:?}",
        imported.warnings
    );
}

#[test]
fn import_reads_folded_base64_and_commented_ldif() {
    let imported = import_file("389-pam-folded.ldif");
    assert_eq!(imported.routes, ["Research Computing", "alpha", "default"]);
    let config = parse_with_head(&imported.toml);

    let rc = &config.routes[0];
    assert_eq!(rc.name, "Research Computing");
    assert_eq!(rc.pam_service, "curc-twofactor-duo"); // pamService:: (base64)
    assert!(
        imported
            .toml
            .contains("filter = \"(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))\""),
        "folded pamFilter:\n{}",
        imported.toml
    );
    assert_eq!(rc.id_map, [IdMap::Entry, IdMap::Rdn]);
    assert!(!rc.secure);
    assert_eq!(
        dns(&rc.include_suffixes),
        ["ou=people,dc=example,dc=com"],
        "its own include suffix"
    );

    let alpha = &config.routes[1];
    assert_eq!(alpha.pam_service, "csu");
    assert!(imported
        .toml
        .contains("filter = \"(&(objectClass=posixAccount)(homeDirectory=/home/*@*))\""));
    assert_eq!(alpha.id_map, [IdMap::Rdn, IdMap::Entry]); // "rdn,entry"
    assert!(alpha.fallback && alpha.secure);
    // cn=config is excluded by every entry: global; ou=Services only by alpha.
    assert_eq!(dns(&config.bind.exclude_suffixes), ["cn=config"]);
    assert_eq!(
        dns(&alpha.exclude_suffixes),
        ["ou=services,dc=example,dc=com"]
    );
    assert!(alpha.include_suffixes.is_empty());
    assert!(config.bind.include_suffixes.is_empty());
    // IGNORE and ALLOW: the strictest wins, with a warning.
    assert_eq!(config.bind.missing_suffix, MissingSuffix::Allow);

    let warned = |needle: &str| {
        assert!(
            imported.warnings.iter().any(|w| w.contains(needle)),
            "no warning about {needle}: {:#?}",
            imported.warnings
        )
    };
    warned("pamServiceAttr"); // unknown attribute
    warned("cn=broken"); // ENTRY without pamIDAttr: 389 skips it
    warned("comma-separated"); // 389 itself would reject "rdn,entry"
    warned("pamMissingSuffix");
}

#[test]
fn import_handles_crlf_and_per_route_includes() {
    let ldif = [
        "dn: cn=PAM Pass Through Auth,cn=plugins,cn=config",
        "pamIncludeSuffix: dc=example,dc=com",
        "pamService: other-svc",
        "",
        "dn: cn=b,cn=PAM Pass Through Auth,cn=plugins,cn=config",
        "pamIncludeSuffix: dc=example,dc=com",
        "pamIncludeSuffix: dc=example,dc=org",
        "pamService: bsvc",
        "pamFilter: uid=*",
        "",
    ]
    .join("\r\n");
    let imported = import_389(&ldif, "crlf.ldif").unwrap();
    assert_eq!(imported.routes, ["b", "default"]);
    let config = parse_with_head(&imported.toml);
    // Every entry has includes: their union is global; b's set is that union, so it
    // needs none of its own, and the plugin entry's route keeps its narrower one.
    assert_eq!(
        dns(&config.bind.include_suffixes),
        ["dc=example,dc=com", "dc=example,dc=org"]
    );
    assert!(config.routes[0].include_suffixes.is_empty());
    assert_eq!(
        dns(&config.routes[1].include_suffixes),
        ["dc=example,dc=com"]
    );
    assert!(imported.toml.contains("filter = \"(uid=*)\""));
    // Nobody excludes cn=config here: said explicitly, and warned about.
    assert!(config.bind.exclude_suffixes.is_empty());
    assert!(imported.warnings.iter().any(|w| w.contains("cn=config")));

    assert!(import_389("dn: cn=x,dc=example,dc=com\ncn: x\n", "none.ldif").is_err());
}

/// A configuration file in `dir` with `[listen]`, `[backend]` and `rest`.
fn write_config(dir: &Path, rest: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!("{}{rest}", head("ldap://127.0.0.1:3389", dir)),
    )
    .unwrap();
    path
}

/// A PAM service directory holding `services`.
fn pam_dir(dir: &Path, services: &[&str]) -> PathBuf {
    let d = dir.join("pam.d");
    std::fs::create_dir_all(&d).unwrap();
    for s in services {
        std::fs::write(d.join(s), "auth required pam_permit.so\n").unwrap();
    }
    d
}

fn check(path: &Path, pam: &Path) -> CheckReport {
    let text = std::fs::read_to_string(path).unwrap();
    check_text(&text, &path.display().to_string(), &[pam.to_owned()])
}

const GOOD_ROUTES: &str = r#"[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "curc-twofactor-duo"

[[route]]
name = "csu"
filter = "(homeDirectory=/home/*@*)"
pam_service = "csu"
"#;

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), GOOD_ROUTES);
    let report = check(&path, &pam_dir(dir.path(), &["curc-twofactor-duo", "csu"]));
    assert!(report.ok(), "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
}

#[test]
fn check_config_lists_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let pam = pam_dir(dir.path(), &["csu"]);
    // Line numbers below count from the start of the file: head() is 8 lines.
    let text = format!(
        "{}{}",
        head("ldap://127.0.0.1:3389", dir.path()).replace(
            &dir.path().join("service.pw").display().to_string(),
            "/nonexistent/service.pw"
        ),
        r#"[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*))"
pam_service = "curc-twofactor-duo"

[[route]]
name = "csu"
filter = "(homeDirectory=/home/*@*)"
pam_service = "csu"
"#
    );
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, &text).unwrap();
    let report = check(&path, &pam);
    assert!(!report.ok());
    let p = path.display().to_string();
    let has = |prefix: String, needle: &str| {
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.starts_with(&prefix) && e.contains(needle)),
            "no error '{prefix}…{needle}…' in {:#?}",
            report.errors
        )
    };
    has(format!("{p}:7:"), "service_password_file"); // missing password file
    has(format!("{p}:11:"), "is not an LDAP filter"); // unbalanced parentheses
    has(format!("{p}:12:"), "curc-twofactor-duo"); // no PAM service file
    has(format!("{p}:12:"), "other"); // … and what Linux-PAM does then
    assert_eq!(report.errors.len(), 3, "{:#?}", report.errors);
}

#[test]
fn check_config_names_unknown_keys_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let pam = pam_dir(dir.path(), &[]);
    let path = write_config(dir.path(), "[limits]\nmax_mesage_size = 10\n");
    let report = check(&path, &pam);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    let e = &report.errors[0];
    assert!(
        e.starts_with(&format!("{}:10:", path.display())) && e.contains("max_mesage_size"),
        "{e}"
    );

    let missing = check_config(&dir.path().join("nope.toml"));
    assert!(!missing.ok());
    assert!(missing.errors[0].contains("nope.toml"), "{missing:?}");
}

#[test]
fn check_config_warns_about_a_world_readable_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    std::fs::set_permissions(
        dir.path().join("service.pw"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let report = check(&path, &pam_dir(dir.path(), &[]));
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(
        report.warnings[0].contains("service_password_file") && report.warnings[0].contains("0644"),
        "{report:?}"
    );
}

/// The example's routes (imported) in front of the test directory.
fn example_config() -> Config {
    let ds = directory();
    let imported = import_file("389-pam-passthru.ldif");
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:1389\"\n\n[backend]\nuris = [\"{}\"]\nconnect_timeout = \"2s\"\nservice_dn = \"{}\"\nservice_password_file = \"{}\"\nroot_dn = \"{}\"\n\n{}",
        ds.uri,
        ds.service_dn,
        ds.service_pw_file.display(),
        ds.root_dn,
        imported.toml
    );
    Config::parse(&text, "example.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn explain(config: &Config, dn: &str) -> Vec<String> {
    explain_blocking(config, dn).unwrap_or_else(|e| panic!("{e}"))
}

fn has_line(lines: &[String], line: &str) {
    assert!(
        lines.iter().any(|l| l == line),
        "no line '{line}' in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn explain_internal_user_takes_the_duo_route() {
    let config = example_config();
    let lines = explain(&config, &user("alice"));
    has_line(&lines, "entry: exists");
    has_line(&lines, "locked: no");
    has_line(&lines, "route duo: filter matches");
    has_line(&lines, "route csu: filter does not match");
    has_line(&lines, "route: duo (the first that matches)");
    has_line(&lines, "pam service: curc-twofactor-duo");
    has_line(&lines, "id_map: rdn uid → alice; entry uid → alice");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("pam identities: alice (")));
    has_line(
        &lines,
        "decision: PAM authentication with service curc-twofactor-duo as alice",
    );
}

#[test]
fn explain_external_user_takes_the_csu_route() {
    let config = example_config();
    let lines = explain(&config, &user("erin"));
    has_line(&lines, "route duo: filter does not match");
    has_line(&lines, "route csu: filter matches");
    has_line(&lines, "route: csu (the first that matches)");
    has_line(&lines, "pam service: csu");
    has_line(
        &lines,
        "decision: PAM authentication with service csu as erin",
    );
}

#[test]
fn explain_locked_user_is_refused_before_pam() {
    let config = example_config();
    let lines = explain(&config, &user("lockeduser"));
    has_line(&lines, "locked: yes (nsAccountLock: true)");
    has_line(&lines, "route: duo (the first that matches)");
    let decision = lines.last().unwrap();
    assert!(
        decision.starts_with("decision: reject with unwillingToPerform (53)"),
        "{decision}"
    );
}

#[test]
fn explain_root_dn_is_forwarded() {
    let config = example_config();
    let lines = explain(&config, &directory().root_dn);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("scope: not the proxy's: root DN")),
        "{lines:?}"
    );
    has_line(
        &lines,
        "decision: forward to the directory unchanged (root DN): its own password check decides",
    );
}

#[test]
fn explain_missing_entry_and_catch_all_route() {
    let config = example_config();
    let lines = explain(&config, &user("nobody-here"));
    has_line(&lines, "entry: no such entry (read as the service account)");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("decision: forward to the directory (no such entry"),
        "{lines:?}"
    );
    // Like 389, the plugin entry's own settings take every other bind: the service
    // accounts of applications included.
    let lines = explain(
        &config,
        &format!("cn=grafana,ou=Services,{}", directory().suffix),
    );
    has_line(&lines, "route: default (the first that matches)");
    has_line(&lines, "pam service: ldapserver");
    // Excluded suffix: forwarded before any lookup.
    let lines = explain(&config, "cn=replication manager,cn=config");
    assert!(
        lines.last().unwrap().contains("(excluded suffix)"),
        "{lines:?}"
    );
    assert!(explain_blocking(&config, "not a dn").is_err());
}

// ---- the built binary, once main.rs has the subcommands ----

fn run(args: &[&str], env: &[(&str, &Path)]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_ldap-pam-proxy"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .env_remove("RUST_LOG")
        .output()
        .expect("run ldap-pam-proxy");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn binary_import_389() {
    let ldif = path_of("tests/data/389-pam-passthru.ldif");
    let out = run(&["import-389", ldif.to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    parse_with_head(&out.stdout);
    assert!(out.stderr.contains("route 'default'"), "{out:?}");
    let bad = dir.path().join("bad.ldif");
    std::fs::write(&bad, " continuation first\n").unwrap();
    let out = run(&["import-389", bad.to_str().unwrap()], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("bad.ldif:1:"), "{out:?}");
}

#[test]
fn binary_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), GOOD_ROUTES);
    let pam = pam_dir(dir.path(), &["curc-twofactor-duo", "csu"]);
    let wrapper = [
        ("PAM_WRAPPER", Path::new("1")),
        ("PAM_WRAPPER_SERVICE_DIR", &pam),
    ];
    let out = run(&["check-config", path.to_str().unwrap()], &wrapper);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("OK"), "{out:?}");
    // pam_wrapper reads $PAM_WRAPPER_SERVICE_DIR only when PAM_WRAPPER=1; so does
    // check-config, which then looks in /etc/pam.d, where these services are not.
    let out = run(
        &["check-config", path.to_str().unwrap()],
        &[("PAM_WRAPPER_SERVICE_DIR", &pam)],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("/etc/pam.d"), "{out:?}");

    std::fs::remove_file(pam.join("csu")).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("(homeDirectory=/home/*@*)", "(homeDirectory=/home/*@*");
    std::fs::write(&path, text).unwrap();
    let out = run(&["check-config", path.to_str().unwrap()], &wrapper);
    assert_eq!(out.code, 1, "{out:?}");
    let p = path.display().to_string();
    assert!(out.stderr.contains(&format!("{p}:16:")), "{out:?}"); // filter
    assert!(out.stderr.contains(&format!("{p}:17:")), "{out:?}"); // service
    assert!(!out.stdout.contains("OK"), "{out:?}");
}

#[test]
fn binary_explain() {
    let ds = directory();
    let dir = tempfile::tempdir().unwrap();
    let imported = import_file("389-pam-passthru.ldif");
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:1389\"\n\n[backend]\nuris = [\"{}\"]\nservice_dn = \"{}\"\nservice_password_file = \"{}\"\n\n{}",
            ds.uri,
            ds.service_dn,
            ds.service_pw_file.display(),
            imported.toml
        ),
    )
    .unwrap();
    let out = run(
        &[
            "explain",
            "--config",
            path.to_str().unwrap(),
            &user("alice"),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("decision: PAM authentication with service curc-twofactor-duo as alice"),
        "{out:?}"
    );
    let out = run(
        &["explain", "--config", path.to_str().unwrap(), &ds.root_dn],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("(root DN)"), "{out:?}");
}

/// `mode` on a new file `path` holding `text`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_config_finds_pam_duo_that_would_fail_open() {
    let dir = tempfile::tempdir().unwrap();
    let pam = pam_dir(dir.path(), &["csu"]);
    let conf = dir.path().join("pam_duo.conf");
    // The service includes the file that runs pam_duo, as Debian's common-auth would.
    std::fs::write(
        pam.join("curc-twofactor-duo"),
        "auth requisite pam_unix.so\n@include duo-common\naccount required pam_permit.so\n",
    )
    .unwrap();
    std::fs::write(
        pam.join("duo-common"),
        format!(
            "auth [success=1 default=ignore] pam_duo.so conf={}\n",
            conf.display()
        ),
    )
    .unwrap();
    let path = write_config(dir.path(), GOOD_ROUTES);
    let p = path.display().to_string();

    write_mode(&conf, "[duo]\nfailmode = secure\nikey = i\n", 0o600);
    let report = check(&path, &pam);
    assert!(report.ok(), "{report:?}");

    write_mode(&conf, "[duo]\nikey = i\nfailmode = safe\n", 0o644);
    let report = check(&path, &pam);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    let e = &report.errors[0];
    // The line of the route's pam_service, the route, the service, the file, the problem.
    let prefix = format!("{p}:12:");
    let file = conf.display().to_string();
    for part in [
        prefix.as_str(),
        "route 'duo'",
        "PAM service 'curc-twofactor-duo'",
        file.as_str(),
        "mode 0644",
    ] {
        assert!(e.contains(part), "no '{part}' in {e}");
    }

    write_mode(&conf, "[duo]\nikey = i\nfailmode = safe\n", 0o600);
    let report = check(&path, &pam);
    assert!(report.errors[0].contains("failmode = safe"), "{report:?}");

    // pam.duo_config_check = "warn": a warning instead.
    let path = write_config(
        dir.path(),
        &format!("[pam]\nduo_config_check = \"warn\"\n\n{GOOD_ROUTES}"),
    );
    let report = check(&path, &pam);
    assert!(report.ok(), "{report:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("failmode = safe")),
        "{report:?}"
    );
}

/// A configuration in front of the test directory, with `routes`.
fn live_config(dir: &Path, uri: &str, routes: &str) -> PathBuf {
    let ds = directory();
    let path = dir.join("live.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:1389\"\n\n[backend]\nuris = [\"{uri}\"]\nconnect_timeout = \"2s\"\nservice_dn = \"{}\"\nservice_password_file = \"{}\"\n\n{routes}",
            ds.service_dn,
            ds.service_pw_file.display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn binary_check_config_live_asks_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pam = pam_dir(dir.path(), &["curc-twofactor-duo", "csu"]);
    let wrapper = [
        ("PAM_WRAPPER", Path::new("1")),
        ("PAM_WRAPPER_SERVICE_DIR", &pam),
    ];
    let path = live_config(dir.path(), &directory().uri, GOOD_ROUTES);
    let out = run(
        &["check-config", "--live", path.to_str().unwrap()],
        &wrapper,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("OK"), "{out:?}");
    // The test directory has 389's default SASL mechanisms.
    assert!(
        out.stderr.contains("PLAIN")
            && out
                .stderr
                .contains("nsslapd-allowed-sasl-mechanisms=\"EXTERNAL GSSAPI\""),
        "{out:?}"
    );

    // A directory that cannot be asked is an error for --live only.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = live_config(dir.path(), &format!("ldap://{dead}"), GOOD_ROUTES);
    let out = run(
        &["check-config", "--live", path.to_str().unwrap()],
        &wrapper,
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cannot check the directory"), "{out:?}");
    let out = run(&["check-config", path.to_str().unwrap()], &wrapper);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn binary_explain_warns_about_password_sasl_mechanisms() {
    let dir = tempfile::tempdir().unwrap();
    let path = live_config(dir.path(), &directory().uri, GOOD_ROUTES);
    let out = run(
        &[
            "explain",
            "--config",
            path.to_str().unwrap(),
            &user("alice"),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("SCRAM-SHA-256"),
        "{out:?}"
    );
}

/// What the directory returns is shown escaped: a DN with a newline and an ESC byte
/// cannot write a line of its own, or control the terminal.
#[test]
fn explain_escapes_what_it_prints() {
    let config = example_config();
    let dn = "uid=x\u{1b}[2J\ndecision: forged,ou=People,dc=example,dc=com";
    let text = match explain_blocking(&config, dn) {
        Ok(lines) => {
            assert!(
                lines[0].contains("\\x1b[2J\\ndecision: forged"),
                "{lines:?}"
            );
            lines.join("\n")
        }
        Err(e) => e.to_string(),
    };
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("decision: forged")),
        "{text}"
    );
}
