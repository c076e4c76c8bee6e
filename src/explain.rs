//! `explain <DN>`: what the proxy would do with a simple bind as that DN, without
//! authenticating. It runs the bind decision itself — [`bind::triage`], the same
//! directory lookup as [`bind::authenticate`] (as the service account, on the live
//! backend), then [`bind::plan`] — and prints one fact per line.
//!
//! The bind is taken to arrive over TLS, so a secure route shows the PAM transaction it
//! leads to; what a clear connection would get instead is its own line.

use crate::backend::Backends;
use crate::bind::{self, NotOurs, Plan, Resolved, SimpleBind, Triage};
use crate::config::{Config, IdMap, Insecure, Route};
use crate::dn::{Dn, DnError};
use crate::logsafe::Untrusted;
use crate::lookup::{LookupError, LookupPool};
use crate::proto::code_text;
use crate::secret::Password;
use crate::{dircheck, duo, pam_service};
use ldap3_proto::proto::LdapResultCode;
use std::sync::Arc;

/// `explain` could not decide.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("'{}' is not a DN: {source}", Untrusted::new(.dn))]
    BadDn {
        dn: String,
        #[source]
        source: DnError,
    },
    #[error(
        "cannot look up {} in the directory: {} (a bind now would get {})",
        Untrusted::new(.dn),
        Untrusted::new(&.source.to_string()),
        code_text(&LdapResultCode::Unavailable)
    )]
    Lookup {
        dn: String,
        #[source]
        source: LookupError,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// As [`explain`], on a runtime of its own with a fresh lookup pool (for the CLI). Also
/// logs a warning when the directory advertises password SASL mechanisms.
pub fn explain_blocking(config: &Config, dn: &str) -> Result<Vec<String>, ExplainError> {
    let backends = Arc::new(Backends::default());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExplainError::Runtime)?
        .block_on(async {
            let lookup = LookupPool::new(Arc::clone(&backends));
            let lines = explain(config, &lookup, dn).await?;
            if let Ok(dse) = dircheck::root_dse(config, &backends).await {
                if let Some(warning) = dircheck::sasl_warning(&dse.sasl_mechanisms) {
                    tracing::warn!("{warning}");
                }
            }
            Ok(lines)
        })
}

/// The facts that decide a simple bind as `dn` (with a non-empty password), one per
/// line, ending with a `decision:` line.
pub async fn explain(
    config: &Config,
    lookup: &LookupPool,
    dn: &str,
) -> Result<Vec<String>, ExplainError> {
    // The DN and what the directory returns are shown escaped: they reach a terminal.
    let mut out = vec![format!("dn: {}", Untrusted::new(dn))];
    let parsed = Dn::parse(dn).map_err(|source| ExplainError::BadDn {
        dn: dn.to_owned(),
        source,
    })?;
    if parsed.is_empty() {
        out.push("bind: anonymous (empty DN)".into());
        out.push(
            "decision: forward to the directory unchanged (anonymous binds always are)".into(),
        );
        return Ok(out);
    }
    out.push(format!(
        "normalised: {}",
        Untrusted::new(&parsed.to_string())
    ));
    let bind = SimpleBind {
        name: dn.to_owned(),
        spelled: Some(parsed),
        password: Password::from_vec(b"not-a-password".to_vec()),
        wants_authz_id: false,
        wants_ppolicy: false,
    };
    let lookup_error = |source| ExplainError::Lookup {
        dn: dn.to_owned(),
        source,
    };
    let mut conn = lookup.conn(&config.backend).await.map_err(lookup_error)?;
    let resolution = bind::resolve(config, &mut conn, &bind, true)
        .await
        .map_err(lookup_error)?;
    drop(conn);

    match &resolution.resolved {
        None => out.push("entry: no such entry (read as the service account)".into()),
        Some(r) => {
            out.push("entry: exists".into());
            out.push(format!("entry dn: {}", Untrusted::new(&r.entry.dn)));
            out.push(format!(
                "locked: {}",
                if r.entry.locked {
                    "yes (nsAccountLock: true)"
                } else {
                    "no"
                }
            ));
        }
    }
    match &resolution.triage {
        Some(Triage::NotOurs(why)) => {
            let at = resolution
                .resolved
                .as_ref()
                .map(|r| &r.dn)
                .or(bind.spelled.as_ref());
            let detail = match why {
                NotOurs::RootDn => format!("backend.root_dn is {}", config.backend.root_dn),
                NotOurs::ExcludedSuffix => {
                    let s = config
                        .bind
                        .exclude_suffixes
                        .iter()
                        .find(|s| at.is_some_and(|d| d.is_within(s)))
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    format!("at or under bind.exclude_suffixes entry {s}")
                }
                NotOurs::OutsideIncludedSuffixes => format!(
                    "not under any of bind.include_suffixes: {}",
                    config
                        .bind
                        .include_suffixes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            };
            let why = why.reason();
            out.push(format!("scope: not the proxy's: {why} ({detail})"));
            out.push(format!(
                "decision: forward to the directory unchanged ({why}): its own password check decides"
            ));
            return Ok(out);
        }
        Some(Triage::Unmatched) if config.routes.is_empty() => {
            out.push("scope: in scope, but no routes are configured".into());
        }
        Some(Triage::Unmatched) => out.push(
            "scope: in scope, but no route admits this DN (every route's include_suffixes/exclude_suffixes leave it out)"
                .into(),
        ),
        Some(Triage::Candidates(candidates)) => {
            let names = |idx: &mut dyn Iterator<Item = usize>| -> String {
                idx.map(|i| config.routes[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(format!(
                "scope: in scope; candidate routes in order: {}",
                names(&mut candidates.iter().copied())
            ));
            let outside: Vec<usize> = (0..config.routes.len())
                .filter(|i| !candidates.contains(i))
                .collect();
            if !outside.is_empty() {
                out.push(format!(
                    "not candidates (their suffixes leave this DN out): {}",
                    names(&mut outside.into_iter())
                ));
            }
            for (i, matched) in candidates.iter().zip(&resolution.matched) {
                let route = &config.routes[*i];
                out.push(format!(
                    "route {}: {}",
                    route.name,
                    match (&route.filter, matched) {
                        (None, true) => "matches (no filter)",
                        (None, false) =>
                            "does not match (no filter, but the entry was not returned)",
                        (Some(_), true) => "filter matches",
                        (Some(_), false) => "filter does not match",
                    }
                ));
            }
            if let (Some(i), Some(r)) = (
                bind::first_match(candidates, &resolution.matched),
                &resolution.resolved,
            ) {
                describe_route(config, &config.routes[i], r, &mut out);
            }
        }
        None => {}
    }
    push_plan_end(config, resolution.plan, &mut out);
    Ok(out)
}

/// The route's settings that matter for this bind.
fn describe_route(config: &Config, route: &Route, resolved: &Resolved, out: &mut Vec<String>) {
    out.push(format!("route: {} (the first that matches)", route.name));
    out.push(format!("pam service: {}", route.pam_service));
    let dirs = pam_service::pam_service_dirs();
    out.push(
        match pam_service::find_pam_service(&route.pam_service, &dirs) {
            Some(p) => format!("pam service file: {}", p.display()),
            None => format!(
                "pam service file: MISSING: {}",
                pam_service::missing_service_explanation(&route.pam_service, &dirs)
            ),
        },
    );
    for module in duo::duo_modules(&route.pam_service, &dirs) {
        out.push(format!(
            "pam_duo: {}:{} reads {}: {}",
            module.pam_file.display(),
            module.line,
            module.conf.display(),
            match duo::check_conf(&module.conf) {
                Ok(()) => "ok (failmode = secure, readable only by its owner)".to_owned(),
                Err(problem) => format!("PROBLEM: {problem}"),
            }
        ));
    }
    let methods: Vec<String> = route
        .id_map
        .iter()
        .map(|m| match m {
            IdMap::Rdn => format!(
                "rdn {} → {}",
                route.rdn_attr,
                Untrusted::new(resolved.dn.rdn_value(&route.rdn_attr).unwrap_or("(none)"))
            ),
            IdMap::Entry => format!(
                "entry {} → {}",
                route.id_attr,
                Untrusted::new(resolved.entry.first(&route.id_attr).unwrap_or("(none)"))
            ),
            IdMap::Dn => format!("dn → {}", Untrusted::new(&resolved.entry.dn)),
        })
        .collect();
    out.push(format!("id_map: {}", methods.join("; ")));
    out.push(format!(
        "secure: {}",
        match (route.secure, config.bind.insecure) {
            (false, _) => "no: PAM also on clear connections".to_owned(),
            (true, Insecure::Reject) => format!(
                "yes: LDAPS or StartTLS only; on a clear connection the bind gets {} before PAM",
                code_text(&LdapResultCode::ConfidentialityRequired)
            ),
            (true, Insecure::Forward) => "yes: on a clear connection the bind is forwarded to the directory's own password check (insecure = \"forward\", as 389)".to_owned(),
        }
    ));
    out.push(format!(
        "fallback: {}",
        if route.fallback {
            "yes: a failed PAM bind goes on to the directory's own password check"
        } else {
            "no"
        }
    ));
    out.push(format!("timeout: {:?}", route.timeout));
}

fn push_plan_end(config: &Config, plan: Plan, out: &mut Vec<String>) {
    match plan {
        Plan::Forward(why) => out.push(format!("decision: forward to the directory ({why})")),
        Plan::Reject { err, detail } => out.push(format!(
            "decision: reject with {}: {} ({detail})",
            code_text(&err.code),
            err.message
        )),
        Plan::Pam { route, identities } => {
            let shown: Vec<String> = identities
                .iter()
                .map(|i| Untrusted::new(i).to_string())
                .collect();
            out.push(format!(
                "pam identities: {} (in order; the next only when PAM answers PAM_USER_UNKNOWN)",
                shown.join(", ")
            ));
            out.push(format!(
                "decision: PAM authentication with service {} as {}",
                config.routes[route].pam_service,
                shown.first().map(String::as_str).unwrap_or_default()
            ));
        }
    }
}
