//! The bind decision (DESIGN §2): which simple binds the proxy authenticates through
//! PAM, with which service and identity, and what the client is told.
//!
//! The steps that decide are plain functions ([`triage`], [`plan`], [`judge`]) so unit
//! tests drive them without sockets; [`authenticate`] strings them together with the
//! directory lookup and the PAM pool.

use crate::backend;
use crate::backend::BackendStream;
use crate::config::{Config, IdMap, Insecure, MissingSuffix, Route, Unmatched};
use crate::dn::Dn;
use crate::lookup::{EntryFacts, LookupPool};
use crate::pam_gate::{Attempt, PamGate, Rejection};
use crate::pam_pool::{PamOutcome, TicketResult};
use crate::proto::LdapError;
use crate::secret::Password;
use ldap3_proto::proto::LdapResultCode;
use std::net::IpAddr;

/// Authorization Identity Request control (RFC 3829).
pub const OID_AUTHZID_REQUEST: &str = "2.16.840.1.113730.3.4.16";
/// Authorization Identity Response control (RFC 3829).
pub const OID_AUTHZID_RESPONSE: &str = "2.16.840.1.113730.3.4.15";
/// Netscape password expired control, as 389 sends it.
pub const OID_PW_EXPIRED: &str = "2.16.840.1.113730.3.4.4";
/// Password policy control (draft-behera-ldap-password-policy).
pub const OID_PPOLICY: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

/// A simple bind the proxy may authenticate itself.
#[derive(Debug)]
pub struct SimpleBind {
    pub dn_text: String,
    pub dn: Dn,
    pub password: Password,
    /// The request carried the Authorization Identity Request control.
    pub wants_authz_id: bool,
    /// The request carried the password policy request control.
    pub wants_ppolicy: bool,
}

/// First step, before any I/O.
#[derive(Debug, PartialEq, Eq)]
pub enum Triage {
    /// Not the proxy's to decide: relay the bind unchanged.
    NotOurs(&'static str),
    /// In scope, but no route could apply.
    Unmatched,
    /// In scope of these routes (indices, in file order); the directory must say which matches.
    Candidates(Vec<usize>),
}

/// Decides from the DN alone whether a bind is the proxy's (DESIGN §2 step 1).
pub fn triage(config: &Config, dn: &Dn) -> Triage {
    let rules = &config.bind;
    if *dn == config.backend.root_dn {
        return Triage::NotOurs("root DN");
    }
    if rules.exclude_suffixes.iter().any(|s| dn.is_within(s)) {
        return Triage::NotOurs("excluded suffix");
    }
    if !rules.include_suffixes.is_empty() && !rules.include_suffixes.iter().any(|s| dn.is_within(s))
    {
        return Triage::NotOurs("outside the included suffixes");
    }
    let candidates: Vec<usize> = config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            !r.exclude_suffixes.iter().any(|s| dn.is_within(s))
                && (r.include_suffixes.is_empty()
                    || r.include_suffixes.iter().any(|s| dn.is_within(s)))
        })
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        Triage::Unmatched
    } else {
        Triage::Candidates(candidates)
    }
}

/// Configured include/exclude suffixes (global and per route) that are not at or under
/// one of the directory's naming contexts. 389's own configuration trees (`cn=config`,
/// `cn=schema`, `cn=monitor`) are not naming contexts but always exist.
pub fn missing_suffixes(config: &Config, contexts: &[Dn]) -> Vec<String> {
    let builtin: Vec<Dn> = ["cn=config", "cn=schema", "cn=monitor"]
        .iter()
        .filter_map(|s| Dn::parse(s).ok())
        .collect();
    let rules = &config.bind;
    let mut missing: Vec<String> = rules
        .include_suffixes
        .iter()
        .chain(&rules.exclude_suffixes)
        .chain(
            config
                .routes
                .iter()
                .flat_map(|r| r.include_suffixes.iter().chain(&r.exclude_suffixes)),
        )
        .filter(|s| !contexts.iter().chain(&builtin).any(|c| s.is_within(c)))
        .map(ToString::to_string)
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Applies `missing_suffix` (DESIGN §2 step 2) against the live directory: `Err` names
/// the missing suffixes under `error`; `allow` logs them; `ignore` does not look.
pub async fn check_suffixes(config: &Config) -> Result<(), String> {
    if config.bind.missing_suffix == MissingSuffix::Ignore {
        return Ok(());
    }
    let contexts = match crate::lookup::naming_contexts(&config.backend).await {
        Ok(c) => c
            .iter()
            .filter_map(|c| Dn::parse(c).ok())
            .collect::<Vec<_>>(),
        Err(e) => {
            // The proxy must be able to start while the directory is down.
            tracing::warn!("cannot check configured suffixes against the directory: {e}");
            return Ok(());
        }
    };
    let missing = missing_suffixes(config, &contexts);
    if missing.is_empty() {
        return Ok(());
    }
    let text = format!("suffixes not held by the directory: {}", missing.join("; "));
    match config.bind.missing_suffix {
        MissingSuffix::Error => Err(format!("{text} (missing_suffix = \"error\")")),
        _ => {
            tracing::warn!("{text} (missing_suffix = \"allow\")");
            Ok(())
        }
    }
}

/// The routes of `candidates` (in order) and the entry attributes their `id_map` needs:
/// what a bind (or `explain`) asks the directory about.
pub fn lookup_request<'c>(
    config: &'c Config,
    candidates: &[usize],
) -> (Vec<&'c Route>, Vec<&'c str>) {
    let routes: Vec<&Route> = candidates.iter().map(|i| &config.routes[*i]).collect();
    let mut attrs: Vec<&str> = Vec::new();
    for r in routes.iter().filter(|r| r.id_map.contains(&IdMap::Entry)) {
        if !attrs.iter().any(|a| a.eq_ignore_ascii_case(&r.id_attr)) {
            attrs.push(r.id_attr.as_str());
        }
    }
    (routes, attrs)
}

/// What to do once the directory has answered the lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Forward(&'static str),
    Reject(LdapError),
    /// Run PAM with `route`, trying `identities` in order.
    Pam {
        route: usize,
        identities: Vec<String>,
    },
}

/// The unmatched policy (DESIGN §2 step 4).
pub fn unmatched(config: &Config, why: &'static str) -> Plan {
    match config.bind.unmatched {
        Unmatched::Forward => Plan::Forward(why),
        Unmatched::Reject => Plan::Reject(invalid_credentials()),
    }
}

/// Steps 3–7: route choice, lock, TLS, identity.
pub fn plan(
    config: &Config,
    candidates: &[usize],
    bind: &SimpleBind,
    facts: Option<&EntryFacts>,
    tls: bool,
) -> Plan {
    let Some(facts) = facts else {
        return unmatched(config, "no such entry");
    };
    let Some(index) = candidates
        .iter()
        .zip(&facts.matched)
        .find(|(_, matched)| **matched)
        .map(|(i, _)| *i)
    else {
        return unmatched(config, "no route matches");
    };
    let route = &config.routes[index];
    if facts.locked {
        return Plan::Reject(LdapError::new(
            LdapResultCode::UnwillingToPerform,
            "Account inactivated. Contact system administrator.",
        ));
    }
    if route.secure && !tls {
        return match config.bind.insecure {
            Insecure::Forward => Plan::Forward("secure route on a clear connection"),
            Insecure::Reject => Plan::Reject(LdapError::new(
                LdapResultCode::ConfidentialityRequired,
                format!("route '{}' requires TLS: use LDAPS or StartTLS", route.name),
            )),
        };
    }
    let identities = identities(route, bind, facts);
    if identities.is_empty() {
        return Plan::Reject(LdapError::new(
            LdapResultCode::NoSuchObject,
            format!("no PAM identity for this entry (route '{}')", route.name),
        ));
    }
    Plan::Pam {
        route: index,
        identities,
    }
}

/// The PAM user names `route`'s id_map yields, in order, without repeats.
fn identities(route: &Route, bind: &SimpleBind, facts: &EntryFacts) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for method in &route.id_map {
        let id = match method {
            IdMap::Rdn => bind.dn.first_rdn_value(),
            IdMap::Entry => facts.first(&route.id_attr),
            IdMap::Dn => Some(bind.dn_text.as_str()),
        };
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// What the client gets for a PAM bind.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure {
        err: LdapError,
        /// Add the password-expired control.
        pw_expired: bool,
        /// Add a password policy response saying accountLocked (when requested).
        account_locked: bool,
    },
    /// `fallback = true`: the directory's own password check decides.
    Fallback,
}

/// Maps a PAM result to the client's answer (DESIGN §2 step 9).
pub fn judge(route: &Route, attempt: Attempt) -> Verdict {
    let failure = |code, message: String| Verdict::Failure {
        err: LdapError::new(code, message),
        pw_expired: false,
        account_locked: false,
    };
    let verdict = match attempt {
        Attempt::Done(TicketResult::Completed(outcome)) => match outcome {
            PamOutcome::Success => return Verdict::Success,
            PamOutcome::AuthFailed | PamOutcome::UserUnknown | PamOutcome::CredentialsError => {
                Verdict::Failure {
                    err: invalid_credentials(),
                    pw_expired: false,
                    account_locked: false,
                }
            }
            PamOutcome::MaxTries => Verdict::Failure {
                err: LdapError::new(
                    LdapResultCode::ConstraintViolation,
                    "Too many authentication failures",
                ),
                pw_expired: false,
                account_locked: true,
            },
            PamOutcome::PermissionDenied => failure(
                LdapResultCode::UnwillingToPerform,
                "Access denied by the account policy".into(),
            ),
            PamOutcome::AccountExpired | PamOutcome::NewAuthtokRequired => Verdict::Failure {
                err: invalid_credentials(),
                pw_expired: true,
                account_locked: false,
            },
            PamOutcome::Unavailable { reason } => failure(
                LdapResultCode::Unavailable,
                format!("PAM service {} unavailable: {reason}", route.pam_service),
            ),
        },
        Attempt::Done(TicketResult::DeadlinePassed) => failure(
            LdapResultCode::Unavailable,
            format!(
                "PAM service {} did not answer within {:?}",
                route.pam_service, route.timeout
            ),
        ),
        Attempt::Rejected(Rejection::QueueFull) => failure(
            LdapResultCode::Busy,
            "too many authentications in progress; try again later".into(),
        ),
        Attempt::Rejected(Rejection::InFlight) => failure(
            LdapResultCode::Busy,
            "another authentication of this user is in progress".into(),
        ),
        Attempt::Rejected(Rejection::RateLimited) => failure(
            LdapResultCode::Busy,
            "too many authentication attempts for this user; wait a minute".into(),
        ),
        Attempt::Rejected(Rejection::ShutDown) => failure(
            LdapResultCode::Unavailable,
            "the proxy is shutting down".into(),
        ),
    };
    if route.fallback {
        Verdict::Fallback
    } else {
        verdict
    }
}

fn invalid_credentials() -> LdapError {
    LdapError::new(LdapResultCode::InvalidCredentials, "Invalid credentials")
}

/// The end of a bind the proxy looked at.
#[derive(Debug)]
pub enum Outcome {
    /// Relay the original bind to the backend.
    Forward(&'static str),
    /// Answer the client; the session stays anonymous.
    Fail {
        err: LdapError,
        pw_expired: bool,
        account_locked: bool,
    },
    /// PAM said yes. `link` is a backend connection bound as the service account, for
    /// the session's later operations.
    Bound { link: BackendStream },
}

/// What the log line of a bind reports besides its result.
#[derive(Debug, Default, Clone)]
pub struct Trail {
    pub route: Option<String>,
    pub service: Option<String>,
    pub detail: Option<String>,
}

/// Steps 3–10 for a bind [`triage`] found candidates for: lookup, plan, PAM, and on
/// success a service-bound backend connection.
pub async fn authenticate(
    config: &Config,
    lookup: &LookupPool,
    gate: &PamGate,
    bind: SimpleBind,
    candidates: Vec<usize>,
    client: IpAddr,
    tls: bool,
) -> (Outcome, Trail) {
    let mut trail = Trail::default();
    let (routes, attrs) = lookup_request(config, &candidates);
    let facts = match lookup
        .lookup(&config.backend, &bind.dn_text, &routes, &attrs)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            trail.detail = Some(e.to_string());
            return (
                fail(LdapError::new(
                    LdapResultCode::Unavailable,
                    format!("cannot look up the bind DN in the directory: {e}"),
                )),
                trail,
            );
        }
    };
    let (route, identities) = match plan(config, &candidates, &bind, facts.as_ref(), tls) {
        Plan::Forward(why) => return (Outcome::Forward(why), trail),
        Plan::Reject(err) => {
            if let Some(i) = facts.as_ref().and_then(|f| {
                candidates
                    .iter()
                    .zip(&f.matched)
                    .find(|(_, m)| **m)
                    .map(|(i, _)| *i)
            }) {
                trail.route = Some(config.routes[i].name.clone());
            }
            return (fail(err), trail);
        }
        Plan::Pam { route, identities } => (&config.routes[route], identities),
    };
    trail.route = Some(route.name.clone());
    trail.service = Some(route.pam_service.clone());

    let mut verdict = Verdict::Success;
    for (n, identity) in identities.iter().enumerate() {
        let password = Password::from_vec(bind.password.as_bytes().to_vec());
        let attempt = gate
            .authenticate(route, &bind.dn_text, identity, password, client)
            .await;
        let user_unknown = matches!(
            attempt,
            Attempt::Done(TicketResult::Completed(PamOutcome::UserUnknown))
        );
        trail.detail = Some(format!("identity {identity}: {attempt:?}"));
        verdict = judge(route, attempt);
        // Only an unknown user moves on to the next identity: any other failure could
        // mean a push was sent, and one bind must never send two (DESIGN §2 step 6).
        if !(user_unknown && n + 1 < identities.len()) {
            break;
        }
    }
    match verdict {
        Verdict::Success => {}
        Verdict::Fallback => return (Outcome::Forward("PAM failed, fallback"), trail),
        Verdict::Failure {
            err,
            pw_expired,
            account_locked,
        } => {
            return (
                Outcome::Fail {
                    err,
                    pw_expired,
                    account_locked,
                },
                trail,
            )
        }
    }
    // The session will act as this user through the service account: get that
    // connection now, so a success is only reported when it can be honoured.
    match backend::connect_as_service(&config.backend).await {
        Ok(link) => (Outcome::Bound { link }, trail),
        Err(e) => {
            trail.detail = Some(format!("PAM success, but {e}"));
            (
                fail(LdapError::new(
                    LdapResultCode::Unavailable,
                    format!("directory unavailable after authentication: {e}"),
                )),
                trail,
            )
        }
    }
}

fn fail(err: LdapError) -> Outcome {
    Outcome::Fail {
        err,
        pw_expired: false,
        account_locked: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(routes: &str, bind: &str) -> Config {
        // The password is read while parsing; the file may go once parsed.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("svc.pw");
        std::fs::write(&pw, "x").unwrap();
        Config::parse(
            &format!(
                "[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris = [\"ldap://127.0.0.1:2\"]\nservice_dn = \"cn=svc,dc=example,dc=com\"\nservice_password_file = \"{}\"\n[bind]\n{bind}\n{routes}",
                pw.display()
            ),
            "t.toml",
        )
        .unwrap()
    }

    const TWO: &str = r#"
[[route]]
name = "duo"
filter = "(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))"
pam_service = "duo"
id_map = ["rdn", "entry"]
secure = false
[[route]]
name = "csu"
filter = "(homeDirectory=/home/*@*)"
pam_service = "csu"
include_suffixes = ["ou=People,dc=example,dc=com"]
"#;

    fn bind(dn: &str) -> SimpleBind {
        SimpleBind {
            dn_text: dn.into(),
            dn: Dn::parse(dn).unwrap(),
            password: Password::from_vec(b"pw".to_vec()),
            wants_authz_id: false,
            wants_ppolicy: false,
        }
    }

    fn facts(matched: &[bool], uid: &str, locked: bool) -> EntryFacts {
        EntryFacts {
            locked,
            attrs: HashMap::from([("uid".to_owned(), vec![uid.to_owned()])]),
            matched: matched.to_vec(),
        }
    }

    #[test]
    fn triage_scopes() {
        let c = config(TWO, "");
        let t = |dn: &str| triage(&c, &Dn::parse(dn).unwrap());
        assert_eq!(t("CN=Directory Manager"), Triage::NotOurs("root DN"));
        assert_eq!(t("cn=x,cn=config"), Triage::NotOurs("excluded suffix"));
        assert_eq!(
            t("uid=a,ou=People,dc=example,dc=com"),
            Triage::Candidates(vec![0, 1])
        );
        assert_eq!(
            t("uid=a,ou=Other,dc=example,dc=com"),
            Triage::Candidates(vec![0])
        );
        let c = config(TWO, "include_suffixes = [\"dc=example,dc=com\"]\nexclude_suffixes = [\"ou=Services,dc=example,dc=com\"]");
        let t = |dn: &str| triage(&c, &Dn::parse(dn).unwrap());
        assert_eq!(
            t("uid=a,dc=example,dc=org"),
            Triage::NotOurs("outside the included suffixes")
        );
        assert_eq!(
            t("cn=app,ou=Services,dc=example,dc=com"),
            Triage::NotOurs("excluded suffix")
        );
        // cn=config is no longer excluded once exclude_suffixes is set explicitly, but
        // it is outside the included suffixes.
        assert_eq!(
            t("cn=config"),
            Triage::NotOurs("outside the included suffixes")
        );
    }

    #[test]
    fn missing_suffixes_are_found() {
        let c = config(
            &TWO.replace(
                "include_suffixes = [\"ou=People,dc=example,dc=com\"]",
                "include_suffixes = [\"ou=People,dc=example,dc=com\", \"dc=other,dc=org\"]",
            ),
            "exclude_suffixes = [\"cn=config\", \"o=gone\"]",
        );
        let contexts = [Dn::parse("dc=example,dc=com").unwrap()];
        assert_eq!(
            missing_suffixes(&c, &contexts),
            vec!["dc=other,dc=org", "o=gone"]
        );
    }

    #[test]
    fn first_matching_route_wins_and_identities_follow_id_map() {
        let c = config(TWO, "");
        let b = bind("uid=Alice,ou=People,dc=example,dc=com");
        let p = plan(
            &c,
            &[0, 1],
            &b,
            Some(&facts(&[true, true], "alice", false)),
            false,
        );
        assert_eq!(
            p,
            Plan::Pam {
                route: 0,
                identities: vec!["Alice".into(), "alice".into()]
            }
        );
        // Same identity from rdn and entry: asked once.
        let b = bind("uid=alice,ou=People,dc=example,dc=com");
        let p = plan(
            &c,
            &[0, 1],
            &b,
            Some(&facts(&[true, false], "alice", false)),
            false,
        );
        assert_eq!(
            p,
            Plan::Pam {
                route: 0,
                identities: vec!["alice".into()]
            }
        );
    }

    #[test]
    fn refusals_before_pam() {
        let c = config(TWO, "");
        let b = bind("uid=erin,ou=People,dc=example,dc=com");
        // csu is secure by default: clear connection → 13.
        let p = plan(
            &c,
            &[0, 1],
            &b,
            Some(&facts(&[false, true], "erin", false)),
            false,
        );
        assert!(
            matches!(p, Plan::Reject(ref e) if e.code == LdapResultCode::ConfidentialityRequired)
        );
        assert!(matches!(
            plan(
                &c,
                &[0, 1],
                &b,
                Some(&facts(&[false, true], "erin", false)),
                true
            ),
            Plan::Pam { route: 1, .. }
        ));
        // Lock wins over everything.
        let p = plan(
            &c,
            &[0, 1],
            &b,
            Some(&facts(&[true, false], "erin", true)),
            false,
        );
        assert!(matches!(p, Plan::Reject(ref e) if e.code == LdapResultCode::UnwillingToPerform));
        // Nothing matches, or no entry: unmatched policy.
        assert_eq!(
            plan(
                &c,
                &[0, 1],
                &b,
                Some(&facts(&[false, false], "erin", false)),
                false
            ),
            Plan::Forward("no route matches")
        );
        assert_eq!(
            plan(&c, &[0, 1], &b, None, false),
            Plan::Forward("no such entry")
        );
        let c = config(TWO, "unmatched = \"reject\"\ninsecure = \"forward\"");
        assert!(
            matches!(plan(&c, &[0, 1], &b, None, false), Plan::Reject(ref e) if e.code == LdapResultCode::InvalidCredentials)
        );
        assert_eq!(
            plan(
                &c,
                &[0, 1],
                &b,
                Some(&facts(&[false, true], "erin", false)),
                false
            ),
            Plan::Forward("secure route on a clear connection")
        );
    }

    #[test]
    fn pam_results_map_like_389() {
        let c = config(TWO, "");
        let r = &c.routes[0];
        let code = |res| match judge(r, res) {
            Verdict::Failure {
                err, pw_expired, ..
            } => (err.code, pw_expired),
            other => panic!("{other:?}"),
        };
        let done = |o| Attempt::Done(TicketResult::Completed(o));
        assert_eq!(judge(r, done(PamOutcome::Success)), Verdict::Success);
        assert_eq!(
            code(done(PamOutcome::AuthFailed)),
            (LdapResultCode::InvalidCredentials, false)
        );
        assert_eq!(
            code(done(PamOutcome::UserUnknown)),
            (LdapResultCode::InvalidCredentials, false)
        );
        assert_eq!(
            code(done(PamOutcome::MaxTries)),
            (LdapResultCode::ConstraintViolation, false)
        );
        assert_eq!(
            code(done(PamOutcome::PermissionDenied)),
            (LdapResultCode::UnwillingToPerform, false)
        );
        assert_eq!(
            code(done(PamOutcome::AccountExpired)),
            (LdapResultCode::InvalidCredentials, true)
        );
        assert_eq!(
            code(done(PamOutcome::NewAuthtokRequired)),
            (LdapResultCode::InvalidCredentials, true)
        );
        assert_eq!(
            code(done(PamOutcome::Unavailable { reason: "x".into() })),
            (LdapResultCode::Unavailable, false)
        );
        assert_eq!(
            code(Attempt::Done(TicketResult::DeadlinePassed)),
            (LdapResultCode::Unavailable, false)
        );
        for r in [
            Rejection::QueueFull,
            Rejection::InFlight,
            Rejection::RateLimited,
        ] {
            assert_eq!(code(Attempt::Rejected(r)), (LdapResultCode::Busy, false));
        }
        let c = config(
            &TWO.replace("secure = false", "secure = false\nfallback = true"),
            "",
        );
        assert_eq!(
            judge(&c.routes[0], done(PamOutcome::AuthFailed)),
            Verdict::Fallback
        );
    }
}
