//! Checks against the live directory, at start, on reload, from the health watcher while
//! they have not passed, and in `check-config --live`:
//!
//! - **Filters fail closed.** If the service account cannot search an attribute a route
//!   filter uses, 389 evaluates that part of the filter as Undefined, so a negated filter
//!   silently stops matching and the bind is forwarded to the directory's password check:
//!   a password-only login for a user who should get MFA. The check asks 389 for the
//!   service account's effective rights (Get Effective Rights control, which 389 grants
//!   an account for itself without any ACI) on every attribute the routes need:
//!   `objectClass`, `nsAccountLock`, each attribute of the route's filter and, for routes
//!   that take the PAM identity from the entry, `id_attr`. Each needs read and search.
//! - **SASL.** 389 advertises mechanisms that take the directory password (PLAIN,
//!   SCRAM-*, …) by default: a warning shows how to restrict them.
//!
//! Which entries are asked about: for each route's scope base (its `include_suffixes`,
//! else `bind.include_suffixes`, else the directory's naming contexts), the first
//! [`SAMPLE`] entries of a subtree search — real entries, so ACIs on `ou=People` or
//! with target filters count as they do for binds. 389 reports an attribute's rights on
//! an entry only when the entry's object classes allow the attribute (or it is
//! operational); an attribute no sampled entry allows is asked about on 389's template
//! entry for `extensibleObject` at the scope base, which allows every attribute.

use crate::backend::{self, BackendStream, Backends, ServiceBindError};
use crate::bind::{self, Triage};
use crate::config::{Config, IdMap, Route};
use crate::dn::Dn;
use crate::logsafe::Untrusted;
use crate::proto;
use bytes::BytesMut;
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapDerefAliases, LdapFilter, LdapMsg, LdapOp, LdapResultCode, LdapSearchRequest,
    LdapSearchResultEntry, LdapSearchScope,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// 389's Get Effective Rights request control.
pub const OID_GET_EFFECTIVE_RIGHTS: &str = "1.3.6.1.4.1.42.2.27.9.5.2";

/// Entries sampled under each scope base. Small on purpose: 389 returns a subtree in
/// entry-ID order, so these are the oldest entries of the tree (the containers and the
/// first users), and the check runs at every start and reload.
pub const SAMPLE: i32 = 50;

/// One request the directory does not answer in this time counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the directory checks did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirCheckError {
    /// The directory could not be asked (down, or the connection failed midway): the
    /// proxy starts (or takes a reload) but is not ready until a check passes.
    #[error("cannot check the directory: {0}")]
    Unreachable(String),
    /// The directory answered and the answer is a problem: the proxy refuses to start,
    /// and refuses a reload.
    #[error("{0}")]
    Failed(String),
}

/// What the root DSE says (read anonymously, as any client can).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootDse {
    pub naming_contexts: Vec<String>,
    pub sasl_mechanisms: Vec<String>,
}

/// Runs every directory check for `config`. `Ok` holds the warnings to log.
pub async fn run(config: &Config, backends: &Backends) -> Result<Vec<String>, DirCheckError> {
    let dse = match root_dse(config, backends).await {
        Ok(dse) => dse,
        // Without routes only the SASL warning depends on it: not worth refusing a start.
        Err(DirCheckError::Failed(why)) if config.routes.is_empty() => {
            return Ok(vec![format!(
                "cannot read the directory's root DSE to check its SASL mechanisms: {why}"
            )])
        }
        Err(e) => return Err(e),
    };
    let mut warnings: Vec<String> = sasl_warning(&dse.sasl_mechanisms).into_iter().collect();
    warnings.extend(check_rights(config, backends, &dse).await?);
    Ok(warnings)
}

/// Reads `namingContexts` and `supportedSASLMechanisms` from the root DSE, as the
/// service account when there is one (a directory may refuse anonymous reads), else
/// anonymously.
pub async fn root_dse(config: &Config, backends: &Backends) -> Result<RootDse, DirCheckError> {
    let stream = match &config.backend.service {
        Some(_) => service_connection(config, backends).await?,
        None => backends
            .connect(&config.backend)
            .await
            .map_err(|e| DirCheckError::Unreachable(e.to_string()))?,
    };
    let mut conn = Conn::new(stream);
    let request = search(
        "",
        LdapSearchScope::Base,
        vec!["namingContexts".into(), "supportedSASLMechanisms".into()],
        0,
        Vec::new(),
    );
    let answer = conn.ask(request).await?;
    if answer.code != LdapResultCode::Success {
        return Err(DirCheckError::Failed(format!(
            "the directory refused to read its root DSE: {}: {}",
            proto::code_text(&answer.code),
            Untrusted::new(&answer.message)
        )));
    }
    let mut dse = RootDse::default();
    for entry in &answer.entries {
        dse.naming_contexts.extend(values(entry, "namingContexts"));
        dse.sasl_mechanisms
            .extend(values(entry, "supportedSASLMechanisms"));
    }
    Ok(dse)
}

/// The advertised mechanisms that take a password the directory checks (PLAIN, LOGIN,
/// SCRAM-*, DIGEST-MD5, CRAM-MD5, NTLM), in the order advertised.
pub fn password_mechanisms(advertised: &[String]) -> Vec<String> {
    advertised
        .iter()
        .filter(|m| crate::bind::is_password_sasl(&m.to_ascii_uppercase()))
        .cloned()
        .collect()
}

/// A warning when the directory advertises password mechanisms: a client that reaches
/// it with one of them logs in on the directory password alone, without PAM or MFA.
pub fn sasl_warning(advertised: &[String]) -> Option<String> {
    let found = password_mechanisms(advertised);
    if found.is_empty() {
        return None;
    }
    let list: Vec<String> = found
        .iter()
        .map(|m| Untrusted::new(m).to_string())
        .collect();
    Some(format!(
        "the directory advertises SASL mechanisms that take the directory password: {}. The proxy refuses them, but a client that reaches the directory with one logs in on the password alone, without PAM or MFA. Restrict 389 to mechanisms without a password: dsconf <instance> config replace nsslapd-allowed-sasl-mechanisms=\"EXTERNAL GSSAPI\"",
        list.join(", ")
    ))
}

/// The attributes the service account must read and search for `route`: `objectClass`
/// (every lookup's filter), `nsAccountLock` (the lock check), the filter's attributes and
/// `id_attr` when the identity may come from the entry. Names as written, without
/// attribute options, each once (case-insensitively).
pub fn needed_attributes(route: &Route) -> Vec<String> {
    let mut attrs = vec!["objectClass".to_owned(), "nsAccountLock".to_owned()];
    if let Some(f) = &route.filter {
        filter_attributes(f, &mut attrs);
    }
    if route.id_map.contains(&IdMap::Entry) {
        attrs.push(route.id_attr.clone());
    }
    let mut unique: Vec<String> = Vec::with_capacity(attrs.len());
    for a in attrs {
        let base = a.split(';').next().unwrap_or_default().to_owned();
        if !base.is_empty() && !unique.iter().any(|u| u.eq_ignore_ascii_case(&base)) {
            unique.push(base);
        }
    }
    unique
}

fn filter_attributes(filter: &LdapFilter, out: &mut Vec<String>) {
    match filter {
        LdapFilter::And(list) | LdapFilter::Or(list) => {
            list.iter().for_each(|f| filter_attributes(f, out));
        }
        LdapFilter::Not(f) => filter_attributes(f, out),
        LdapFilter::Equality(a, _)
        | LdapFilter::Substring(a, _)
        | LdapFilter::GreaterOrEqual(a, _)
        | LdapFilter::LessOrEqual(a, _)
        | LdapFilter::Present(a)
        | LdapFilter::Approx(a, _) => out.push(a.clone()),
        LdapFilter::Extensible(m) => out.extend(m.type_.clone()),
    }
}

/// One attribute's rights as 389 reported them, e.g. `rsc` or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rights(String);

impl Rights {
    fn has(&self, right: char) -> bool {
        self.0 != "none" && self.0.contains(right)
    }

    /// Read and search: what a lookup needs.
    fn enough(&self) -> bool {
        self.has('r') && self.has('s')
    }
}

/// `attributeLevelRights: uid:rsc, homeDirectory:none, …` by lower-cased name.
fn parse_attribute_rights(entry: &LdapSearchResultEntry) -> HashMap<String, Rights> {
    values(entry, "attributeLevelRights")
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let (name, rights) = item.trim().rsplit_once(':')?;
            Some((
                name.trim().to_ascii_lowercase(),
                Rights(rights.trim().to_owned()),
            ))
        })
        .collect()
}

/// What the sample told about one (route, attribute).
#[derive(Default)]
struct Verdict {
    /// Some in-scope entry showed the rights.
    granted: bool,
    /// The first in-scope entry that showed them missing: (DN, rights).
    denied: Option<(String, String)>,
    /// Compare is missing somewhere (a warning only: the proxy never compares).
    no_compare: bool,
}

/// The Get Effective Rights check. `Ok` holds warnings; `Err(Failed)` names each route,
/// attribute and entry whose rights are missing.
pub async fn check_rights(
    config: &Config,
    backends: &Backends,
    dse: &RootDse,
) -> Result<Vec<String>, DirCheckError> {
    if config.routes.is_empty() {
        return Ok(Vec::new());
    }
    let Some(account) = config.backend.service.as_ref() else {
        return Ok(Vec::new());
    };
    let contexts: Vec<Dn> = dse
        .naming_contexts
        .iter()
        .filter_map(|c| Dn::parse(c).ok())
        .collect();
    // Scope bases per route, and every base once.
    let route_bases: Vec<Vec<Dn>> = config
        .routes
        .iter()
        .map(|r| scope_bases(config, r, &contexts))
        .collect();
    let mut bases: Vec<&Dn> = Vec::new();
    for b in route_bases.iter().flatten() {
        if !bases.contains(&b) {
            bases.push(b);
        }
    }
    let needed: Vec<Vec<String>> = config.routes.iter().map(needed_attributes).collect();
    let mut all_needed: Vec<String> = Vec::new();
    for a in needed.iter().flatten() {
        if !all_needed.iter().any(|x| x.eq_ignore_ascii_case(a)) {
            all_needed.push(a.clone());
        }
    }

    let mut conn = Conn::new(service_connection(config, backends).await?);
    let subject = format!("dn:{}", account.dn);

    // verdicts[route][attribute index]
    let mut verdicts: Vec<Vec<Verdict>> = needed
        .iter()
        .map(|n| n.iter().map(|_| Verdict::default()).collect())
        .collect();
    let mut seen_in_scope = vec![false; config.routes.len()];
    let mut existing: Vec<&Dn> = Vec::new();
    for base in &bases {
        let mut attrs = vec!["*".to_owned()];
        attrs.extend(all_needed.iter().cloned());
        let answer = conn
            .ask(search(
                &base.to_string(),
                LdapSearchScope::Subtree,
                attrs,
                SAMPLE,
                vec![ger_control(&subject)],
            ))
            .await?;
        if answer.code == LdapResultCode::NoSuchObject {
            // Nothing there to bind as: whether the suffix must exist is missing_suffix's.
            continue;
        }
        answer.accept(base)?;
        existing.push(base);
        for entry in &answer.entries {
            let Ok(dn) = Dn::parse(&entry.dn) else {
                continue;
            };
            let Triage::Candidates(candidates) = bind::triage(config, &dn) else {
                continue;
            };
            let rights = parse_attribute_rights(entry);
            for r in candidates {
                let (Some(names), Some(route_verdicts)) = (needed.get(r), verdicts.get_mut(r))
                else {
                    continue;
                };
                if let Some(seen) = seen_in_scope.get_mut(r) {
                    *seen = true;
                }
                for (name, verdict) in names.iter().zip(route_verdicts.iter_mut()) {
                    record(verdict, rights.get(&name.to_ascii_lowercase()), &entry.dn);
                }
            }
        }
    }

    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (r, route) in config.routes.iter().enumerate() {
        let bases_here: Vec<&Dn> = route_bases
            .get(r)
            .map(|b| b.iter().filter(|b| existing.contains(b)).collect())
            .unwrap_or_default();
        if bases_here.is_empty() {
            continue;
        }
        if !seen_in_scope.get(r).copied().unwrap_or(false) {
            problems.push(format!(
                "route '{}': the service account {} sees no entry in the route's scope under {}: every bind would look like a missing entry and be forwarded to the directory's own password check (grant it read access there, or narrow the route with include_suffixes)",
                route.name,
                account.dn,
                bases_here
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            continue;
        }
        let (Some(names), Some(route_verdicts)) = (needed.get(r), verdicts.get_mut(r)) else {
            continue;
        };
        // Attributes no sampled entry allows: ask on the template entry at each base.
        for (name, verdict) in names.iter().zip(route_verdicts.iter_mut()) {
            if verdict.granted || verdict.denied.is_some() {
                continue;
            }
            for base in &bases_here {
                let template = conn.template_rights(base, name, &subject).await?;
                record(verdict, template.1.as_ref(), &template.0);
            }
        }
        for (name, verdict) in names.iter().zip(route_verdicts.iter()) {
            if let Some((dn, rights)) = &verdict.denied {
                let template = if is_template(dn) {
                    " (389's template entry at the route's scope base: none of the sampled entries allows the attribute; if your ACIs grant it only further down, narrow the route with include_suffixes)"
                } else {
                    ""
                };
                problems.push(format!(
                    "route '{}': the service account {} cannot read and search {name} on {}{template} (389's effective rights: {name}:{}); a route filter or lookup on an attribute it cannot search fails silently, so binds would leave this route for the directory's own password check: grant it read, search and compare on {name} (deploy/README.md)",
                    route.name,
                    account.dn,
                    Untrusted::new(dn),
                    Untrusted::new(rights),
                ));
            } else if !verdict.granted {
                // Not shown to be readable is not readable: this check fails closed.
                problems.push(format!(
                    "route '{}': 389 reported no effective rights of the service account {} on {name} for any entry in the route's scope, so they cannot be checked",
                    route.name, account.dn
                ));
            } else if verdict.no_compare {
                warnings.push(format!(
                    "route '{}': the service account {} has no compare right on {name}; the proxy does not need it, deploy/README.md grants it",
                    route.name, account.dn
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(warnings)
    } else {
        Err(DirCheckError::Failed(problems.join("; ")))
    }
}

/// A connection bound as the service account; a refused bind is the directory's answer.
async fn service_connection(
    config: &Config,
    backends: &Backends,
) -> Result<BackendStream, DirCheckError> {
    backends
        .connect_as_service(&config.backend)
        .await
        .map_err(|e| match e {
            ServiceBindError::Refused(why) => {
                DirCheckError::Failed(format!("the service account cannot bind: {why}"))
            }
            other => DirCheckError::Unreachable(other.to_string()),
        })
}

/// Whether `dn` names one of 389's GER template entries (see [`Conn::template_rights`]).
fn is_template(dn: &str) -> bool {
    dn.to_ascii_lowercase().starts_with("uid=template_")
}

/// Adds what one entry's `rights` (if 389 reported the attribute) say to `verdict`.
fn record(verdict: &mut Verdict, rights: Option<&Rights>, dn: &str) {
    let Some(rights) = rights else {
        return;
    };
    if rights.enough() {
        verdict.granted = true;
        verdict.no_compare |= !rights.has('c');
    } else if verdict.denied.is_none() {
        verdict.denied = Some((dn.to_owned(), rights.0.clone()));
    }
}

/// Where a route's users are: its `include_suffixes`, else `bind.include_suffixes`, else
/// the directory's naming contexts; never a base the global `exclude_suffixes` cover.
fn scope_bases(config: &Config, route: &Route, contexts: &[Dn]) -> Vec<Dn> {
    let chosen = if !route.include_suffixes.is_empty() {
        &route.include_suffixes
    } else if !config.bind.include_suffixes.is_empty() {
        &config.bind.include_suffixes
    } else {
        contexts
    };
    chosen
        .iter()
        .filter(|b| !config.bind.exclude_suffixes.iter().any(|x| b.is_within(x)))
        .filter(|b| !route.exclude_suffixes.iter().any(|x| b.is_within(x)))
        .cloned()
        .collect()
}

/// The Get Effective Rights request control: the subject is an authzId, `dn:<DN>`, which
/// 389 also takes as the raw control value (its documented `ldapsearch -E` form).
fn ger_control(subject: &str) -> LdapControl {
    LdapControl::Unknown {
        oid: OID_GET_EFFECTIVE_RIGHTS.to_owned(),
        criticality: true,
        value: Some(subject.as_bytes().to_vec()),
    }
}

fn search(
    base: &str,
    scope: LdapSearchScope,
    attrs: Vec<String>,
    sizelimit: i32,
    ctrl: Vec<LdapControl>,
) -> LdapMsg {
    LdapMsg {
        msgid: 0,
        op: LdapOp::SearchRequest(LdapSearchRequest {
            base: base.to_owned(),
            scope,
            aliases: LdapDerefAliases::Never,
            sizelimit,
            timelimit: 10,
            typesonly: false,
            filter: LdapFilter::Present("objectClass".into()),
            attrs,
        }),
        ctrl,
    }
}

/// The string values of `attr` in `entry`.
fn values(entry: &LdapSearchResultEntry, attr: &str) -> Vec<String> {
    entry
        .attributes
        .iter()
        .filter(|a| a.atype.eq_ignore_ascii_case(attr))
        .flat_map(|a| a.vals.iter())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// A search's entries and result.
struct Answer {
    entries: Vec<LdapSearchResultEntry>,
    code: LdapResultCode,
    message: String,
}

impl Answer {
    /// A result that ends the check: anything but success, or the size limit (the
    /// sample is meant to be cut short).
    fn accept(&self, base: &Dn) -> Result<(), DirCheckError> {
        match self.code {
            LdapResultCode::Success | LdapResultCode::SizeLimitExceeded => Ok(()),
            LdapResultCode::UnavailableCriticalExtension => Err(DirCheckError::Failed(format!(
                "the directory does not support the Get Effective Rights control ({OID_GET_EFFECTIVE_RIGHTS}), so the service account's rights on route filter attributes cannot be checked (searched {base})"
            ))),
            ref other => Err(DirCheckError::Failed(format!(
                "the directory refused the effective-rights search of {base}: {}: {}",
                proto::code_text(other),
                Untrusted::new(&self.message)
            ))),
        }
    }
}

/// One connection for the checks: one request at a time.
struct Conn {
    stream: BackendStream,
    buf: BytesMut,
    next_id: i32,
}

impl Conn {
    fn new(stream: BackendStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            // messageID 1 was the service account's bind.
            next_id: 2,
        }
    }

    /// Sends `request` (its messageID replaced) and reads its entries and result.
    async fn ask(&mut self, mut request: LdapMsg) -> Result<Answer, DirCheckError> {
        request.msgid = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| {
                DirCheckError::Unreachable(format!(
                    "the directory did not answer within {REQUEST_TIMEOUT:?}"
                ))
            })?
    }

    async fn exchange(&mut self, request: LdapMsg) -> Result<Answer, DirCheckError> {
        let lost = |e: String| DirCheckError::Unreachable(format!("directory connection: {e}"));
        let id = request.msgid;
        self.stream
            .write_all(&proto::encode(request))
            .await
            .map_err(|e| lost(e.to_string()))?;
        let mut entries = Vec::new();
        loop {
            let msg = backend::read_message(&mut self.stream, &mut self.buf)
                .await
                .map_err(|e| lost(e.to_string()))?;
            if msg.msgid != id {
                continue;
            }
            match msg.op {
                LdapOp::SearchResultEntry(e) => entries.push(e),
                LdapOp::SearchResultDone(r) => {
                    return Ok(Answer {
                        entries,
                        code: r.code,
                        message: r.message,
                    })
                }
                _ => {}
            }
        }
    }

    /// `attr`'s rights on 389's `extensibleObject` template entry under `base` (which
    /// allows every attribute): (the template's DN, the rights if reported).
    async fn template_rights(
        &mut self,
        base: &Dn,
        attr: &str,
        subject: &str,
    ) -> Result<(String, Option<Rights>), DirCheckError> {
        let answer = self
            .ask(search(
                &base.to_string(),
                LdapSearchScope::Base,
                vec![attr.to_owned(), "*@extensibleObject:uid".to_owned()],
                0,
                vec![ger_control(subject)],
            ))
            .await?;
        answer.accept(base)?;
        let template = answer.entries.iter().find(|e| is_template(&e.dn));
        Ok(match template {
            Some(e) => (
                e.dn.clone(),
                parse_attribute_rights(e).remove(&attr.to_ascii_lowercase()),
            ),
            None => (format!("the template entry under {base}"), None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3_proto::proto::LdapPartialAttribute;

    fn route(filter: &str, extra: &str) -> Route {
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris = [\"ldap://127.0.0.1:2\"]\n[[route]]\nname = \"r\"\nfilter = \"{filter}\"\npam_service = \"duo\"\n{extra}\n"
        );
        // Routes need a service account (its password file is read at parse time).
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x").unwrap_or_else(|e| panic!("{e}"));
        let text = text.replace(
            "[[route]]",
            &format!(
                "service_dn = \"cn=svc\"\nservice_password_file = \"{}\"\n[[route]]",
                pw.display()
            ),
        );
        match Config::parse(&text, "t") {
            Ok(mut c) => c.routes.remove(0),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn needed_attributes_of_a_route() {
        let r = route(
            "(&(objectclass=posixAccount)(!(homeDirectory=/home/*@*))(cn;lang-en=x)(memberOf:1.2.840.113556.1.4.1941:=cn=g))",
            "id_map = [\"rdn\", \"entry\"]\nid_attr = \"employeeNumber\"",
        );
        assert_eq!(
            needed_attributes(&r),
            [
                "objectClass",
                "nsAccountLock",
                "homeDirectory",
                "cn",
                "memberOf",
                "employeeNumber"
            ]
        );
        // id_attr only matters when the identity may come from the entry.
        let r = route("(uid=*)", "");
        assert_eq!(
            needed_attributes(&r),
            ["objectClass", "nsAccountLock", "uid"]
        );
        let r = route("(mail=*)", "id_map = [\"rdn\"]");
        assert_eq!(
            needed_attributes(&r),
            ["objectClass", "nsAccountLock", "mail"]
        );
    }

    #[test]
    fn rights_are_parsed_as_389_writes_them() {
        let entry = LdapSearchResultEntry {
            dn: "uid=a".into(),
            attributes: vec![LdapPartialAttribute {
                atype: "attributeLevelRights".into(),
                vals: vec![b"homeDirectory:rsc, uid:rscwo, nsAccountLock:none, foo:rc".to_vec()],
            }],
        };
        let rights = parse_attribute_rights(&entry);
        assert!(rights["homedirectory"].enough());
        assert!(rights["uid"].enough());
        assert!(!rights["nsaccountlock"].enough());
        assert!(!rights["foo"].enough());
        assert!(!Rights("none".into()).has('n'));
    }

    #[test]
    fn verdicts_remember_the_first_denial() {
        let mut v = Verdict::default();
        record(&mut v, None, "uid=a");
        assert!(!v.granted && v.denied.is_none());
        record(&mut v, Some(&Rights("rs".into())), "uid=b");
        assert!(v.granted && v.no_compare);
        record(&mut v, Some(&Rights("none".into())), "uid=c");
        record(&mut v, Some(&Rights("r".into())), "uid=d");
        assert_eq!(v.denied, Some(("uid=c".into(), "none".into())));
    }

    #[test]
    fn password_mechanisms_are_recognised() {
        let advertised: Vec<String> = [
            "EXTERNAL",
            "GSS-SPNEGO",
            "GSSAPI",
            "SCRAM-SHA-512",
            "SCRAM-SHA-1",
            "DIGEST-MD5",
            "CRAM-MD5",
            "NTLM",
            "PLAIN",
            "LOGIN",
            "ANONYMOUS",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            password_mechanisms(&advertised),
            [
                // SPNEGO can negotiate NTLM, a password mechanism.
                "GSS-SPNEGO",
                "SCRAM-SHA-512",
                "SCRAM-SHA-1",
                "DIGEST-MD5",
                "CRAM-MD5",
                "NTLM",
                "PLAIN",
                "LOGIN"
            ]
        );
        let w = sasl_warning(&advertised).unwrap_or_default();
        assert!(w.contains("PLAIN, LOGIN"), "{w}");
        assert!(
            w.contains("dsconf <instance> config replace nsslapd-allowed-sasl-mechanisms=\"EXTERNAL GSSAPI\""),
            "{w}"
        );
        let safe: Vec<String> = vec!["EXTERNAL".into(), "GSSAPI".into()];
        assert_eq!(sasl_warning(&safe), None);
    }

    #[test]
    fn scope_bases_prefer_the_route_then_the_global_include() {
        let contexts = vec![Dn::parse("dc=example,dc=com").unwrap_or_else(|e| panic!("{e}"))];
        let r = route(
            "(uid=*)",
            "include_suffixes = [\"ou=People,dc=example,dc=com\"]",
        );
        let text =
            "[listen]\naddress = \"127.0.0.1:1\"\n[backend]\nuris = [\"ldap://127.0.0.1:2\"]\n";
        let mut config = Config::parse(text, "t").unwrap_or_else(|e| panic!("{e}"));
        let shown = |v: Vec<Dn>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            shown(scope_bases(&config, &r, &contexts)),
            ["ou=people,dc=example,dc=com"]
        );
        let plain = route("(uid=*)", "");
        assert_eq!(
            shown(scope_bases(&config, &plain, &contexts)),
            ["dc=example,dc=com"]
        );
        config.bind.exclude_suffixes = contexts.clone();
        assert!(scope_bases(&config, &plain, &contexts).is_empty());
    }
}
