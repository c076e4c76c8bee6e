//! The bind decision (DESIGN §2): which simple binds the proxy authenticates through
//! PAM, with which service and identity, and what the client is told.
//!
//! The steps that decide are plain functions ([`first_look`], [`triage`], [`plan`],
//! [`judge`]) so unit tests drive them without sockets; [`resolve`] asks the directory
//! which entry the client's DN names and which route filters it matches, and
//! [`authenticate`] strings them together with the PAM gate.
//!
//! Every decision after [`first_look`] is made on the entry the directory resolved, never
//! on the client's spelling of its DN: scope, route, identity, the guard and coalescing
//! all see one identity per entry.

use crate::backend::Backends;
use crate::bind_request::{sasl_mechanism, BindRequest, Credentials};
use crate::config::{Config, IdMap, Insecure, MissingSuffix, Route, Unmatched};
use crate::context::Shared;
use crate::dn::Dn;
pub use crate::lookup::Resolved;
use crate::lookup::{Entry, Facts, LookupConn, LookupError};
use crate::pam_gate::{Attempt, Rejection, Submit};
use crate::pam_pool::{PamOutcome, TicketResult};
use crate::proto::LdapError;
use crate::secret::Password;
use crate::service_links::Lease;
use ldap3_proto::proto::LdapResultCode;
use std::net::IpAddr;
use std::sync::Arc;

/// Authorization Identity Request control (RFC 3829).
pub const OID_AUTHZID_REQUEST: &str = "2.16.840.1.113730.3.4.16";
/// Authorization Identity Response control (RFC 3829).
pub const OID_AUTHZID_RESPONSE: &str = "2.16.840.1.113730.3.4.15";
/// Netscape password expired control, as 389 sends it.
pub const OID_PW_EXPIRED: &str = "2.16.840.1.113730.3.4.4";
/// Password policy control (draft-behera-ldap-password-policy).
pub const OID_PPOLICY: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

/// A simple bind with a name and a password: the proxy decides it.
#[derive(Debug)]
pub struct SimpleBind {
    /// The name as sent: the client's spelling, which the directory resolves.
    pub name: String,
    /// The name as the proxy reads it, when it reads as a DN.
    pub spelled: Option<Dn>,
    pub password: Password,
    /// The request carried the Authorization Identity Request control.
    pub wants_authz_id: bool,
    /// The request carried the password policy request control.
    pub wants_ppolicy: bool,
}

/// What the proxy does with a bind before it asks the directory anything.
#[derive(Debug)]
pub enum FirstLook {
    /// The directory's to decide: anonymous and unauthenticated binds, SASL mechanisms
    /// listed in `bind.forward_sasl` (`mechanism` is the name to send, upper-cased).
    Forward {
        reason: &'static str,
        mechanism: Option<String>,
    },
    /// Answered at once with this error; the session stays anonymous.
    Refuse(LdapError),
    /// The proxy decides, after asking the directory about the entry.
    Decide(SimpleBind),
}

/// SASL mechanisms that carry a password the directory would check: forwarding them
/// would let a routed user in with the directory password, without PAM.
pub fn is_password_sasl(mechanism: &str) -> bool {
    matches!(
        mechanism,
        "PLAIN" | "LOGIN" | "DIGEST-MD5" | "CRAM-MD5" | "NTLM" | "GSS-SPNEGO" | "OTP"
    ) || mechanism.starts_with("SCRAM-")
}

/// A warning when `bind.forward_sasl` lists a mechanism that carries a password.
pub fn forward_sasl_warning(config: &Config) -> Option<String> {
    let risky: Vec<&str> = config
        .bind
        .forward_sasl
        .iter()
        .map(String::as_str)
        .filter(|m| is_password_sasl(m))
        .collect();
    (!risky.is_empty()).then(|| {
        format!(
            "bind.forward_sasl lists {}: the directory checks its own password for these, so routed users can log in without PAM or MFA",
            risky.join(", ")
        )
    })
}

/// The refusal every clear-text bind in a secure route's scope gets, whether or not the
/// DN exists or a route matches it: the answer tells nothing about the DN.
pub fn tls_required() -> LdapError {
    LdapError::new(
        LdapResultCode::ConfidentialityRequired,
        "binds to this directory require TLS: use LDAPS or StartTLS",
    )
}

/// The first step of every bind (DESIGN §2, §7), before any I/O.
pub fn first_look(config: &Config, req: &BindRequest<'_>, tls: bool) -> FirstLook {
    if req.version != 3 {
        return FirstLook::Refuse(LdapError::new(
            LdapResultCode::ProtocolError,
            "only LDAPv3 binds are supported",
        ));
    }
    let password = match req.credentials {
        Credentials::Sasl { mechanism, .. } => {
            return match sasl_mechanism(mechanism) {
                Some(m) if config.bind.forward_sasl.contains(&m) => FirstLook::Forward {
                    reason: "SASL mechanism in bind.forward_sasl",
                    mechanism: Some(m),
                },
                Some(m) => FirstLook::Refuse(LdapError::new(
                    LdapResultCode::AuthMethodNotSupported,
                    format!("SASL mechanism {m} is not available through this proxy"),
                )),
                None => FirstLook::Refuse(LdapError::new(
                    LdapResultCode::AuthMethodNotSupported,
                    "not a SASL mechanism name",
                )),
            };
        }
        Credentials::Simple(password) => password,
    };
    if req.name.is_empty() || password.is_empty() {
        return FirstLook::Forward {
            reason: "anonymous or unauthenticated bind",
            mechanism: None,
        };
    }
    if config.routes.is_empty() {
        return FirstLook::Forward {
            reason: "no routes configured",
            mechanism: None,
        };
    }
    let Ok(name) = std::str::from_utf8(req.name) else {
        return FirstLook::Refuse(LdapError::new(
            LdapResultCode::InvalidDNSyntax,
            "the bind DN is not UTF-8",
        ));
    };
    let spelled = Dn::parse(name).ok();
    // Where every route that could take the DN is secure, the answer on a clear
    // connection is known before asking the directory anything. A name the proxy cannot
    // read as a DN could be anywhere: it gets the same answer (no client needs one).
    let all = (0..config.routes.len()).collect::<Vec<_>>();
    let candidates = match spelled.as_ref().map(|d| triage(config, d)) {
        Some(Triage::Candidates(c)) => c,
        Some(_) => Vec::new(),
        None => all,
    };
    if !candidates.is_empty()
        && candidates.iter().all(|i| config.routes[*i].secure)
        && refuses_clear_text(config, &candidates, tls)
    {
        return FirstLook::Refuse(tls_required());
    }
    FirstLook::Decide(SimpleBind {
        name: name.to_owned(),
        spelled,
        password: Password::from_vec(password.to_vec()),
        wants_authz_id: req.has_control(OID_AUTHZID_REQUEST),
        wants_ppolicy: req.has_control(OID_PPOLICY),
    })
}

/// A clear-text bind in the scope of a secure route is refused with [`tls_required`]
/// unless a route that is not secure takes it: whether the DN exists, matches no route or
/// is locked, the answer is the same.
fn refuses_clear_text(config: &Config, candidates: &[usize], tls: bool) -> bool {
    !tls && config.bind.insecure == Insecure::Reject
        && candidates.iter().any(|i| config.routes[*i].secure)
}

/// Why a bind is not the proxy's to decide (DESIGN §2 step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOurs {
    RootDn,
    ExcludedSuffix,
    OutsideIncludedSuffixes,
}

impl NotOurs {
    /// For logs and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            NotOurs::RootDn => "root DN",
            NotOurs::ExcludedSuffix => "excluded suffix",
            NotOurs::OutsideIncludedSuffixes => "outside the included suffixes",
        }
    }
}

/// Which routes may apply to a DN.
#[derive(Debug, PartialEq, Eq)]
pub enum Triage {
    /// Not the proxy's to decide: the directory's own password check decides.
    NotOurs(NotOurs),
    /// In scope, but no route could apply.
    Unmatched,
    /// In scope of these routes (indices, in file order); the directory must say which matches.
    Candidates(Vec<usize>),
}

/// Decides from a DN alone whether a bind is the proxy's (DESIGN §2 step 1). Applied to
/// the entry the directory resolved, never to the client's spelling alone (except for a
/// DN with no entry).
pub fn triage(config: &Config, dn: &Dn) -> Triage {
    let rules = &config.bind;
    if *dn == config.backend.root_dn {
        return Triage::NotOurs(NotOurs::RootDn);
    }
    if rules.exclude_suffixes.iter().any(|s| dn.is_within(s)) {
        return Triage::NotOurs(NotOurs::ExcludedSuffix);
    }
    if !rules.include_suffixes.is_empty() && !rules.include_suffixes.iter().any(|s| dn.is_within(s))
    {
        return Triage::NotOurs(NotOurs::OutsideIncludedSuffixes);
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
pub async fn check_suffixes(config: &Config, backends: &Backends) -> Result<(), String> {
    if config.bind.missing_suffix == MissingSuffix::Ignore {
        return Ok(());
    }
    let contexts = match crate::lookup::naming_contexts(backends, &config.backend).await {
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

/// The entry attributes the routes' `id_map` needs: read with the entry, before it is
/// known which route applies.
fn identity_attrs(config: &Config) -> Vec<&str> {
    let mut attrs: Vec<&str> = Vec::new();
    for r in config
        .routes
        .iter()
        .filter(|r| r.id_map.contains(&IdMap::Entry))
    {
        if !attrs.iter().any(|a| a.eq_ignore_ascii_case(&r.id_attr)) {
            attrs.push(r.id_attr.as_str());
        }
    }
    attrs
}

/// What to do once the directory has answered the lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Forward(&'static str),
    /// Answer `err`; `detail` says why in the log.
    Reject {
        err: LdapError,
        detail: &'static str,
    },
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
        Unmatched::Reject => Plan::Reject {
            err: invalid_credentials(),
            detail: why,
        },
    }
}

/// Everything the directory said about a bind, and the plan that follows: what a bind
/// acts on and what `explain` shows.
#[derive(Debug)]
pub struct Resolution {
    pub resolved: Option<Resolved>,
    /// The scope of the resolved entry (or of the spelling, when there is no entry).
    pub triage: Option<Triage>,
    /// For each candidate route in order: whether its filter matched the entry.
    pub matched: Vec<bool>,
    pub plan: Plan,
}

/// Asks the directory about a bind (steps 1 and 3): which entry the client's spelling
/// names and, when the proxy reads the spelling as that entry's DN and the entry is in
/// scope, which candidate route filters match it.
pub async fn ask(
    config: &Config,
    conn: &mut LookupConn<'_>,
    bind: &SimpleBind,
) -> Result<Facts, LookupError> {
    let Some(entry) = conn.entry(&bind.name, &identity_attrs(config)).await? else {
        return Ok(Facts {
            resolved: None,
            matched: Vec::new(),
        });
    };
    let Ok(dn) = Dn::parse(&entry.dn) else {
        return Err(LookupError::Refused(format!(
            "the directory returned a DN the proxy cannot read: {}",
            crate::logsafe::Untrusted::new(&entry.dn)
        )));
    };
    let mut matched = Vec::new();
    if bind.spelled.as_ref() == Some(&dn) {
        if let Triage::Candidates(candidates) = triage(config, &dn) {
            let routes: Vec<&Route> = candidates.iter().map(|i| &config.routes[*i]).collect();
            matched = conn.matches(&entry.dn, &routes).await?;
        }
    }
    Ok(Facts {
        resolved: Some(Resolved { entry, dn }),
        matched,
    })
}

/// Steps 1–7 from what the directory said: scope, route, lock, TLS, identity.
pub fn resolution(config: &Config, bind: &SimpleBind, facts: Facts, tls: bool) -> Resolution {
    let Facts { resolved, matched } = facts;
    let Some(Resolved { entry, dn }) = resolved else {
        // Nothing for PAM to act for; the spelling decides only whether the directory
        // may still try (the root DN has no entry).
        let triage = bind.spelled.as_ref().map(|d| triage(config, d));
        let plan = match &triage {
            Some(Triage::NotOurs(why)) => Plan::Forward(why.reason()),
            Some(Triage::Candidates(c)) if refuses_clear_text(config, c, tls) => Plan::Reject {
                err: tls_required(),
                detail: "no such entry, in a secure route's scope on a clear connection",
            },
            _ => unmatched(config, "no such entry"),
        };
        return Resolution {
            resolved: None,
            triage,
            matched,
            plan,
        };
    };
    let scope = triage(config, &dn);
    // The proxy reads scope, route and identity from the entry; a spelling it reads as
    // another DN (attribute type aliases, for one) could only be used to make the two
    // disagree.
    let plan = if bind.spelled.as_ref() != Some(&dn) {
        let secure_scope =
            matches!(&scope, Triage::Candidates(c) if refuses_clear_text(config, c, tls));
        Plan::Reject {
            err: if secure_scope {
                tls_required()
            } else {
                invalid_credentials()
            },
            detail: "the bind DN is spelled differently from the entry's DN",
        }
    } else {
        match &scope {
            Triage::NotOurs(why) => Plan::Forward(why.reason()),
            Triage::Unmatched => unmatched(config, "no route in scope"),
            Triage::Candidates(candidates) => plan(config, candidates, &matched, &entry, &dn, tls),
        }
    };
    Resolution {
        resolved: Some(Resolved { entry, dn }),
        triage: Some(scope),
        matched,
        plan,
    }
}

/// [`ask`], then [`resolution`].
pub async fn resolve(
    config: &Config,
    conn: &mut LookupConn<'_>,
    bind: &SimpleBind,
    tls: bool,
) -> Result<Resolution, LookupError> {
    Ok(resolution(
        config,
        bind,
        ask(config, conn, bind).await?,
        tls,
    ))
}

/// The first candidate route whose filter matched.
pub fn first_match(candidates: &[usize], matched: &[bool]) -> Option<usize> {
    candidates
        .iter()
        .zip(matched)
        .find(|(_, m)| **m)
        .map(|(i, _)| *i)
}

/// Steps 3–7: route choice, lock, TLS, identity.
pub fn plan(
    config: &Config,
    candidates: &[usize],
    matched: &[bool],
    entry: &Entry,
    dn: &Dn,
    tls: bool,
) -> Plan {
    let Some(index) = first_match(candidates, matched) else {
        if refuses_clear_text(config, candidates, tls) {
            return Plan::Reject {
                err: tls_required(),
                detail: "no route matches, in a secure route's scope on a clear connection",
            };
        }
        return unmatched(config, "no route matches");
    };
    let route = &config.routes[index];
    // Before the lock: on a clear connection, a locked entry looks like any other.
    if route.secure && !tls {
        return match config.bind.insecure {
            Insecure::Forward => Plan::Forward("secure route on a clear connection"),
            Insecure::Reject => Plan::Reject {
                err: tls_required(),
                detail: "secure route on a clear connection",
            },
        };
    }
    if entry.locked {
        return Plan::Reject {
            err: LdapError::new(
                LdapResultCode::UnwillingToPerform,
                "Account inactivated. Contact system administrator.",
            ),
            detail: "account locked (nsAccountLock)",
        };
    }
    let identities = identities(route, entry, dn);
    if identities.is_empty() {
        // 389 says noSuchObject here; that would tell an unauthenticated client the
        // entry exists and which route took it.
        return Plan::Reject {
            err: invalid_credentials(),
            detail: "the route's id_map yields no PAM identity for this entry",
        };
    }
    Plan::Pam {
        route: index,
        identities,
    }
}

/// The PAM user names `route`'s id_map yields for the resolved entry, in order, without
/// repeats. `rdn` takes the value of `rdn_attr` in the entry's RDN, so neither the
/// client's spelling nor the order of a multi-valued RDN chooses the PAM user.
pub fn identities(route: &Route, entry: &Entry, dn: &Dn) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for method in &route.id_map {
        let id = match method {
            IdMap::Rdn => dn.rdn_value(&route.rdn_attr),
            IdMap::Entry => entry.first(&route.id_attr),
            IdMap::Dn => Some(entry.dn.as_str()),
        };
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// A bind the proxy refuses, and the response controls that go with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub err: LdapError,
    /// Add the password-expired control.
    pub pw_expired: bool,
    /// Add a password policy response saying accountLocked (when requested).
    pub account_locked: bool,
}

impl From<LdapError> for Refusal {
    fn from(err: LdapError) -> Self {
        Refusal {
            err,
            pw_expired: false,
            account_locked: false,
        }
    }
}

/// What the client gets for a PAM bind.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure(Refusal),
    /// `fallback = true`: the directory's own password check decides.
    Fallback,
}

/// Maps a PAM result to the client's answer (DESIGN §2 step 9).
pub fn judge(route: &Route, attempt: Attempt) -> Verdict {
    let failure = |code, message: String| LdapError::new(code, message).into();
    let refusal: Refusal = match attempt {
        Attempt::Done(TicketResult::Completed(outcome)) => match outcome {
            PamOutcome::Success => return Verdict::Success,
            PamOutcome::AuthFailed | PamOutcome::UserUnknown | PamOutcome::CredentialsError => {
                invalid_credentials().into()
            }
            PamOutcome::MaxTries => Refusal {
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
            PamOutcome::AccountExpired | PamOutcome::NewAuthtokRequired => Refusal {
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
        Attempt::Rejected(Rejection::RateLimited) => rate_limited().into(),
        Attempt::Rejected(Rejection::ShutDown) => failure(
            LdapResultCode::Unavailable,
            "the proxy is shutting down".into(),
        ),
    };
    if route.fallback {
        Verdict::Fallback
    } else {
        Verdict::Failure(refusal)
    }
}

/// The answer to a client that spent its attempt budget for an entry, whoever decides
/// the bind (PAM or the directory).
fn rate_limited() -> LdapError {
    LdapError::new(
        LdapResultCode::Busy,
        "too many authentication attempts for this user; wait a minute",
    )
}

fn invalid_credentials() -> LdapError {
    LdapError::new(LdapResultCode::InvalidCredentials, "Invalid credentials")
}

/// The end of a bind the proxy looked at.
#[derive(Debug)]
pub enum Outcome {
    /// Relay the bind to the backend (the proxy's own encoding of it). A bind in the
    /// proxy's scope carries the key of its attempt budget: a failure the directory
    /// reports is charged to it ([`crate::pam_gate::PamGate::charge_failure`]).
    Forward {
        reason: &'static str,
        budget: Option<String>,
    },
    /// Answer the client; the session is anonymous.
    Fail(Refusal),
    /// PAM said yes for the entry `dn` (its DN as the directory stores it). `link` is the
    /// session's place on a shared connection bound as the service account, for its
    /// later operations.
    Bound { link: Lease, dn: String },
}

/// What the log line of a bind reports besides its result.
#[derive(Debug, Default, Clone)]
pub struct Trail {
    /// The entry the directory resolved the bind DN to.
    pub entry: Option<String>,
    pub route: Option<String>,
    pub service: Option<String>,
    pub detail: Option<String>,
}

/// [`authenticate`], unless `cut` is cancelled first (the shutdown grace is ending): the
/// bind then answers unavailable. Its PAM transaction runs on (libpam cannot be
/// cancelled); nobody is bound by it.
pub async fn authenticate_unless_cut<P: Submit>(
    shared: &Shared<P>,
    config: &Arc<Config>,
    bind: SimpleBind,
    client: IpAddr,
    tls: bool,
) -> (Outcome, Trail) {
    tokio::select! {
        decided = authenticate(shared, config, bind, client, tls) => decided,
        () = shared.grace_over.cancelled() => (
            Outcome::Fail(
                LdapError::new(LdapResultCode::Unavailable, "the proxy is shutting down").into(),
            ),
            Trail {
                detail: Some("still deciding at the end of the shutdown grace".to_owned()),
                ..Trail::default()
            },
        ),
    }
}

/// Steps 1–10 for a bind [`first_look`] left to the proxy: resolve the entry, plan, PAM,
/// and on success a place on a shared service-bound connection.
pub async fn authenticate<P: Submit>(
    shared: &Shared<P>,
    config: &Arc<Config>,
    bind: SimpleBind,
    client: IpAddr,
    tls: bool,
) -> (Outcome, Trail) {
    let (lookup, gate) = (&shared.lookup, &shared.pam);
    let mut trail = Trail::default();
    let facts = match config
        .bind
        .lookup_cache
        .and_then(|_| lookup.cached(&bind.name))
    {
        Some(facts) => Ok(facts),
        None => match lookup.conn(&config.backend).await {
            Ok(mut conn) => ask(config, &mut conn, &bind).await.inspect(|facts| {
                // Only facts that lead to no PAM transaction are remembered: a bind the
                // directory decides (no entry, out of scope, no route matches) or
                // refuses. Within `bind.lookup_cache` an entry that becomes routed is
                // still forwarded; a routed entry is always asked about afresh (its
                // lock, its route).
                if let (Some(ttl), false) =
                    (config.bind.lookup_cache, facts.matched.contains(&true))
                {
                    lookup.remember(&bind.name, facts.clone(), ttl);
                }
            }),
            Err(e) => Err(e),
        },
    };
    let resolution = facts.map(|facts| resolution(config, &bind, facts, tls));
    let resolution = match resolution {
        Ok(r) => r,
        Err(e) => {
            trail.detail = Some(e.to_string());
            return (
                Outcome::Fail(
                    LdapError::new(
                        LdapResultCode::Unavailable,
                        format!("cannot look up the bind DN in the directory: {e}"),
                    )
                    .into(),
                ),
                trail,
            );
        }
    };
    let Resolution {
        resolved,
        triage,
        matched,
        plan,
    } = resolution;
    if let Some(r) = &resolved {
        trail.entry = Some(r.entry.dn.clone());
    }
    if let (Some(Triage::Candidates(c)), false) = (&triage, matched.is_empty()) {
        trail.route = first_match(c, &matched).map(|i| config.routes[i].name.clone());
    }
    let (route, identities) = match plan {
        Plan::Forward(reason) => {
            // Out of scope (root DN, excluded suffixes): the directory's alone. In scope,
            // the same budget as a PAM bind, keyed by the entry or, with none, the
            // spelling.
            if matches!(triage, Some(Triage::NotOurs(_))) {
                return (
                    Outcome::Forward {
                        reason,
                        budget: None,
                    },
                    trail,
                );
            }
            let key = match (&resolved, &bind.spelled) {
                (Some(r), _) => r.dn.to_string(),
                (None, Some(d)) => d.to_string(),
                (None, None) => bind.name.to_lowercase(),
            };
            if gate.budget_spent(&key, client) {
                trail.detail = Some(format!("{reason}; attempt budget spent"));
                return (Outcome::Fail(rate_limited().into()), trail);
            }
            return (
                Outcome::Forward {
                    reason,
                    budget: Some(key),
                },
                trail,
            );
        }
        Plan::Reject { err, detail } => {
            trail.detail = Some(detail.to_owned());
            return (Outcome::Fail(err.into()), trail);
        }
        Plan::Pam { route, identities } => (&config.routes[route], identities),
    };
    // Plan::Pam comes only from a resolved entry.
    let Some(Resolved { entry, dn }) = resolved else {
        return (
            Outcome::Fail(LdapError::new(LdapResultCode::OperationsError, "no entry").into()),
            trail,
        );
    };
    trail.service = Some(route.pam_service.clone());

    // One identity per entry for the guard and coalescing, however the client spelled it.
    let key = dn.to_string();
    let mut verdict = Verdict::Success;
    for (n, identity) in identities.iter().enumerate() {
        let password = Password::from_vec(bind.password.as_bytes().to_vec());
        let attempt = gate
            .authenticate(route, &key, identity, password, client)
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
        Verdict::Fallback => {
            return (
                Outcome::Forward {
                    reason: "PAM failed, fallback",
                    budget: Some(key),
                },
                trail,
            )
        }
        Verdict::Failure(refusal) => return (Outcome::Fail(refusal), trail),
    }
    // The session will act as this user through the service account: get its place on
    // a shared connection now, so a success is only reported when it can be honoured.
    match shared.links.lease(config).await {
        Ok(link) => (Outcome::Bound { link, dn: entry.dn }, trail),
        Err(e) => {
            trail.detail = Some(format!("PAM success, but {e}"));
            (
                Outcome::Fail(
                    LdapError::new(
                        LdapResultCode::Unavailable,
                        format!("directory unavailable after authentication: {e}"),
                    )
                    .into(),
                ),
                trail,
            )
        }
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

    fn entry(dn: &str, uid: &str, locked: bool) -> (Entry, Dn) {
        (
            Entry {
                dn: dn.into(),
                locked,
                attrs: HashMap::from([("uid".to_owned(), vec![uid.to_owned()])]),
            },
            Dn::parse(dn).unwrap(),
        )
    }

    fn request(version: i64, dn: &str, credentials: Credentials<'static>) -> Vec<u8> {
        let dn: &'static str = Box::leak(dn.to_owned().into_boxed_str());
        BindRequest {
            msgid: 1,
            version,
            name: dn.as_bytes(),
            credentials,
            controls: Vec::new(),
        }
        .encode(None)
        .to_vec()
    }

    fn look(c: &Config, msg: &[u8], tls: bool) -> FirstLook {
        first_look(c, &crate::bind_request::parse(msg).unwrap(), tls)
    }

    #[test]
    fn first_look_refuses_what_the_proxy_will_not_decide() {
        let c = config(TWO, "");
        let alice = "uid=alice,ou=People,dc=example,dc=com";
        let code = |f: FirstLook| match f {
            FirstLook::Refuse(e) => Some(e.code),
            _ => None,
        };
        // LDAPv2 (389 would check the directory password): refused.
        assert_eq!(
            code(look(
                &c,
                &request(2, alice, Credentials::Simple(b"pw")),
                true
            )),
            Some(LdapResultCode::ProtocolError)
        );
        // Password SASL mechanisms, in any case, and names that are not mechanism names.
        for mech in [&b"PLAIN"[..], b"scram-sha-256", b"PLAIN\0", b"DIGEST-MD5"] {
            let m = request(
                3,
                "",
                Credentials::Sasl {
                    mechanism: Box::leak(mech.to_vec().into_boxed_slice()),
                    credentials: Some(b"\0alice\0alice-dirpw"),
                },
            );
            assert_eq!(
                code(look(&c, &m, true)),
                Some(LdapResultCode::AuthMethodNotSupported),
                "{mech:?}"
            );
        }
        // EXTERNAL and GSSAPI go to the directory, spelled as listed.
        let m = request(
            3,
            "",
            Credentials::Sasl {
                mechanism: b"external",
                credentials: None,
            },
        );
        assert!(matches!(
            look(&c, &m, false),
            FirstLook::Forward { mechanism: Some(ref m), .. } if m == "EXTERNAL"
        ));
        // Anonymous and unauthenticated binds are the directory's.
        for (dn, pw) in [("", &b""[..]), (alice, b"")] {
            assert!(matches!(
                look(&c, &request(3, dn, Credentials::Simple(pw)), false),
                FirstLook::Forward {
                    mechanism: None,
                    ..
                }
            ));
        }
        // Everything else with a name and a password is decided after the lookup, whatever
        // the spelling.
        for dn in [
            alice,
            "uid=al\\ice,ou=People,dc=example,dc=com",
            "UID=ALICE ,ou=people;dc=x",
        ] {
            assert!(
                matches!(
                    look(&c, &request(3, dn, Credentials::Simple(b"pw")), true),
                    FirstLook::Decide(_)
                ),
                "{dn}"
            );
        }
    }

    #[test]
    fn clear_text_refusal_does_not_depend_on_the_dn() {
        // Both routes secure (the default).
        let c = config(&TWO.replace("secure = false\n", ""), "");
        let pw = |dn: &str| request(3, dn, Credentials::Simple(b"wrong"));
        let refusal = |dn: &str| match look(&c, &pw(dn), false) {
            FirstLook::Refuse(e) => Some(e),
            _ => None,
        };
        // Existing, missing, routed or not: in a secure route's scope, the same answer.
        let a = refusal("uid=erin,ou=People,dc=example,dc=com").unwrap();
        let b = refusal("uid=nobody,ou=People,dc=example,dc=com").unwrap();
        let d = refusal("uid=noposix,ou=People,dc=example,dc=com").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, d);
        assert_eq!(a.code, LdapResultCode::ConfidentialityRequired);
        // Out of every secure route's scope: decided after the lookup.
        assert!(refusal("cn=replication manager,cn=config").is_none());
        assert!(refusal("cn=Directory Manager").is_none());
        // Over TLS: never.
        assert!(matches!(
            look(&c, &pw("uid=erin,ou=People,dc=example,dc=com"), true),
            FirstLook::Decide(_)
        ));
        // Where a route that is not secure may take the DN, the directory must say
        // which route does first (see `plan`).
        let mixed = config(TWO, "");
        assert!(matches!(
            look(&mixed, &pw("uid=erin,ou=People,dc=example,dc=com"), false),
            FirstLook::Decide(_)
        ));
    }

    #[test]
    fn triage_scopes() {
        let c = config(TWO, "");
        let t = |dn: &str| triage(&c, &Dn::parse(dn).unwrap());
        assert_eq!(t("CN=Directory Manager"), Triage::NotOurs(NotOurs::RootDn));
        assert_eq!(
            t("cn=x,cn=config"),
            Triage::NotOurs(NotOurs::ExcludedSuffix)
        );
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
            Triage::NotOurs(NotOurs::OutsideIncludedSuffixes)
        );
        assert_eq!(
            t("cn=app,ou=Services,dc=example,dc=com"),
            Triage::NotOurs(NotOurs::ExcludedSuffix)
        );
        // cn=config is no longer excluded once exclude_suffixes is set explicitly, but
        // it is outside the included suffixes.
        assert_eq!(
            t("cn=config"),
            Triage::NotOurs(NotOurs::OutsideIncludedSuffixes)
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
    fn first_matching_route_wins_and_identities_come_from_the_entry() {
        let c = config(TWO, "");
        let (e, dn) = entry("uid=Alice,ou=People,dc=example,dc=com", "alice", false);
        assert_eq!(
            plan(&c, &[0, 1], &[true, true], &e, &dn, false),
            Plan::Pam {
                route: 0,
                identities: vec!["Alice".into(), "alice".into()]
            }
        );
        // Same identity from rdn and entry: asked once.
        let (e, dn) = entry("uid=alice,ou=People,dc=example,dc=com", "alice", false);
        assert_eq!(
            plan(&c, &[0, 1], &[true, false], &e, &dn, false),
            Plan::Pam {
                route: 0,
                identities: vec!["alice".into()]
            }
        );
        // rdn takes id_attr's value in the entry's RDN, whatever the order of its values,
        // and nothing from an RDN of another type.
        let route = &c.routes[0];
        let (e, dn) = entry("cn=erin+uid=grace,ou=X,dc=example,dc=com", "grace", false);
        assert_eq!(identities(route, &e, &dn), vec!["grace".to_owned()]);
        let (mut e, dn) = entry("cn=erin,ou=X,dc=example,dc=com", "erin", false);
        e.attrs.clear();
        assert!(identities(route, &e, &dn).is_empty());
        assert!(matches!(
            plan(&c, &[0], &[true], &e, &dn, true),
            Plan::Reject { ref err, .. } if err.code == LdapResultCode::InvalidCredentials
        ));
    }

    fn simple(dn: &str) -> SimpleBind {
        SimpleBind {
            name: dn.into(),
            spelled: Dn::parse(dn).ok(),
            password: Password::from_vec(b"pw".to_vec()),
            wants_authz_id: false,
            wants_ppolicy: false,
        }
    }

    #[test]
    fn resolution_reads_the_entry_not_the_spelling() {
        let c = config(TWO, "");
        let (e, dn) = entry("uid=alice,ou=People,dc=example,dc=com", "alice", false);
        let facts = |matched: &[bool]| Facts {
            resolved: Some(Resolved {
                entry: e.clone(),
                dn: dn.clone(),
            }),
            matched: matched.to_vec(),
        };
        // The spelling 389 resolved to alice, read by the proxy as the same DN.
        let r = resolution(
            &c,
            &simple("UID=Alice, ou=people,dc=example,dc=com"),
            facts(&[true, false]),
            true,
        );
        assert!(matches!(r.plan, Plan::Pam { route: 0, .. }));
        // A spelling the proxy reads as another DN: refused, whatever the route.
        let r = resolution(
            &c,
            &simple("userid=alice,ou=People,dc=example,dc=com"),
            facts(&[]),
            true,
        );
        assert!(
            matches!(r.plan, Plan::Reject { ref err, .. } if err.code == LdapResultCode::InvalidCredentials)
        );
        // ... and on a clear connection in csu's (secure) scope, the clear-text answer.
        let r = resolution(
            &c,
            &simple("userid=alice,ou=People,dc=example,dc=com"),
            facts(&[]),
            false,
        );
        assert!(
            matches!(r.plan, Plan::Reject { ref err, .. } if err.code == LdapResultCode::ConfidentialityRequired)
        );
        // No entry: forwarded, or the clear-text answer in a secure scope.
        let none = || Facts {
            resolved: None,
            matched: Vec::new(),
        };
        let nobody = simple("uid=nobody,ou=People,dc=example,dc=com");
        assert_eq!(
            resolution(&c, &nobody, none(), true).plan,
            Plan::Forward("no such entry")
        );
        assert!(matches!(
            resolution(&c, &nobody, none(), false).plan,
            Plan::Reject { ref err, .. } if err.code == LdapResultCode::ConfidentialityRequired
        ));
        // The root DN has no entry and is never the proxy's.
        assert_eq!(
            resolution(&c, &simple("cn=Directory Manager"), none(), false).plan,
            Plan::Forward("root DN")
        );
    }

    #[test]
    fn refusals_before_pam() {
        let c = config(TWO, "");
        let (e, dn) = entry("uid=erin,ou=People,dc=example,dc=com", "erin", false);
        let code = |p: Plan| match p {
            Plan::Reject { err, .. } => Some(err.code),
            _ => None,
        };
        // csu is secure by default: clear connection → 13.
        assert_eq!(
            code(plan(&c, &[0, 1], &[false, true], &e, &dn, false)),
            Some(LdapResultCode::ConfidentialityRequired)
        );
        assert!(matches!(
            plan(&c, &[0, 1], &[false, true], &e, &dn, true),
            Plan::Pam { route: 1, .. }
        ));
        // Lock wins over everything but TLS (duo is not secure; csu is).
        let (locked, _) = entry("uid=erin,ou=People,dc=example,dc=com", "erin", true);
        assert_eq!(
            code(plan(&c, &[0, 1], &[true, false], &locked, &dn, false)),
            Some(LdapResultCode::UnwillingToPerform)
        );
        assert_eq!(
            code(plan(&c, &[0, 1], &[false, true], &locked, &dn, false)),
            Some(LdapResultCode::ConfidentialityRequired)
        );
        // Nothing matches: on a clear connection in csu's (secure) scope, the same
        // answer as for a routed entry; elsewhere the unmatched policy.
        assert_eq!(
            code(plan(&c, &[0, 1], &[false, false], &e, &dn, false)),
            Some(LdapResultCode::ConfidentialityRequired)
        );
        assert_eq!(
            plan(&c, &[0, 1], &[false, false], &e, &dn, true),
            Plan::Forward("no route matches")
        );
        assert_eq!(
            plan(&c, &[0], &[false], &e, &dn, false),
            Plan::Forward("no route matches")
        );
        let c = config(TWO, "unmatched = \"reject\"\ninsecure = \"forward\"");
        assert_eq!(
            code(plan(&c, &[0, 1], &[false, false], &e, &dn, false)),
            Some(LdapResultCode::InvalidCredentials)
        );
        assert_eq!(
            plan(&c, &[0, 1], &[false, true], &e, &dn, false),
            Plan::Forward("secure route on a clear connection")
        );
    }

    #[test]
    fn pam_results_map_like_389() {
        let c = config(TWO, "");
        let r = &c.routes[0];
        let code = |res| match judge(r, res) {
            Verdict::Failure(Refusal {
                err, pw_expired, ..
            }) => (err.code, pw_expired),
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
