//! 389's semantics of a PAM Pass Through Auth configuration: which entries it reads,
//! in which order it tries them, and what each one means as a route.
//!
//! What 389 does with that configuration (389-ds-base `pam_ptconfig.c`, and measured on
//! 389-ds-base 2.3.1 with `nsslapd-errorlog-level: 64`, which logs the order it stores
//! the entries in):
//! - At startup and after every change it reads every entry of its config area (the
//!   plugin entry and the entries below it) with one internal subtree search, validates
//!   each, skips the invalid ones ("skipping invalid config entry") and appends the
//!   others to a list in the order the search returned them.
//! - That order is the reverse of the DSE's sorted order: the nested entries in
//!   **descending** byte order of their normalised RDN (`cn=zed x`, `cn=pzz`, `cn=mmm`,
//!   `cn=duo`, `cn=csu2`, `cn=csu`, `cn=b`, `cn=aaa` — measured), then the plugin entry
//!   itself **last**, whatever its name sorts as.
//! - A bind uses the first entry in that list whose include/exclude suffixes admit the
//!   DN and whose `pamFilter` (if any) matches the bind entry, fetched by the plugin. An
//!   entry without `pamFilter` matches every DN in its scope, so the plugin entry's own
//!   settings (it has `pamService: ldapserver` and no filter by default) are the last
//!   resort for every bind no nested entry took — application accounts included.
//! - `pamFilter` on the plugin entry itself was honoured in 2.3.1 (a non-matching DN fell
//!   through to the directory's password check); 389 issue #7814 reports 3.2 ignoring it.
//! - Single-valued attributes are read with their first value; `pamIDMapMethod` is split
//!   at spaces only (up to three of `DN`, `RDN`, `ENTRY`); `ENTRY` without `pamIDAttr`,
//!   an unknown method or a filter `slapi_str2filter` refuses makes the entry invalid.
//!   `pamSecure` defaults to TRUE when absent, `pamFallback` to FALSE.
//!
//! The import keeps that order and that last resort, and says on stderr what it changed
//! or could not express.

use super::ldif::{LdifAttr, LdifEntry};
use super::{ImportError, DEFAULT_ROUTE, PLUGIN_DN};
use crate::dn::Dn;
use std::cmp::Ordering;

/// A config entry as 389 would apply it.
#[derive(Debug)]
pub(super) struct PamEntry {
    pub dn: String,
    pub line: usize,
    pub name: String,
    pub is_plugin_entry: bool,
    pub service: String,
    pub filter: Option<String>,
    pub id_map: Vec<&'static str>,
    pub id_attr: Option<String>,
    pub fallback: bool,
    pub secure: bool,
    pub missing_suffix: Option<&'static str>,
    pub excludes: Vec<(String, Dn)>,
    pub includes: Vec<(String, Dn)>,
}

/// Attributes every LDAP entry may carry that say nothing about the configuration.
const IGNORED: &[&str] = &[
    "objectclass",
    "cn",
    "createtimestamp",
    "modifytimestamp",
    "creatorsname",
    "modifiersname",
    "numsubordinates",
    "hassubordinates",
    "nsuniqueid",
    "entryid",
    "entrydn",
    "parentid",
    "entryusn",
    "description",
];

/// The configuration entries of `entries` that 389 would use, in the order it tries
/// them, each read as 389 reads it; what 389 would skip or the proxy cannot express is
/// left out or changed, with a warning. `origin` names the input in messages.
pub(super) fn entries_in_389_order(
    entries: &[LdifEntry],
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<PamEntry>, ImportError> {
    let plugin = Dn::parse(PLUGIN_DN).expect("constant DN");

    let mut parsed: Vec<(Dn, &LdifEntry)> = Vec::new();
    let mut outside = 0usize;
    for e in entries {
        match Dn::parse(&e.dn) {
            Ok(dn) => {
                if parsed.iter().any(|(d, _)| *d == dn) {
                    warnings.push(format!(
                        "{origin}:{}: {}: a second entry with this DN; ignored",
                        e.line, e.dn
                    ));
                } else {
                    parsed.push((dn, e));
                }
            }
            Err(err) => warnings.push(format!(
                "{origin}:{}: '{}': {err}; entry ignored",
                e.line, e.dn
            )),
        }
    }

    let top = parsed.iter().find(|(d, _)| *d == plugin).map(|(_, e)| *e);
    // nsslapd-pluginConfigArea moves the configuration elsewhere: then only the entries
    // below that container count, and the plugin entry's own pam* settings do not.
    let area = top.and_then(|t| t.values("nsslapd-pluginConfigArea").next());
    let (area_dn, alternate) = match area {
        Some(a) => match Dn::parse(&a.value) {
            Ok(d) => {
                warnings.push(format!(
                    "{origin}:{}: nsslapd-pluginConfigArea {}: 389 reads the configuration from the entries below it (and ignores the plugin entry's own pam* settings); importing those",
                    a.line, a.value
                ));
                (d, true)
            }
            Err(e) => {
                warnings.push(format!(
                    "{origin}:{}: nsslapd-pluginConfigArea '{}': {e}; ignored",
                    a.line, a.value
                ));
                (plugin.clone(), false)
            }
        },
        None => (plugin.clone(), false),
    };
    if let Some(t) = top {
        if let Some(on) = t.values("nsslapd-pluginEnabled").next() {
            if !on.value.trim().eq_ignore_ascii_case("on") {
                warnings.push(format!(
                    "{origin}:{}: nsslapd-pluginEnabled: {}: 389 does not use this configuration at all; imported anyway",
                    on.line, on.value
                ));
            }
        }
    }

    let mut config_entries: Vec<(Vec<String>, &LdifEntry, bool)> = Vec::new();
    for (dn, e) in &parsed {
        let is_plugin_entry = *dn == plugin;
        let in_area = dn.is_within(&area_dn) && !(alternate && *dn == area_dn);
        if in_area && !(alternate && is_plugin_entry) {
            config_entries.push((components(dn), e, is_plugin_entry));
        } else if !is_plugin_entry {
            outside += 1;
        }
    }
    if outside > 0 {
        warnings.push(format!(
            "{origin}: {outside} entr{} outside {} ignored",
            if outside == 1 { "y" } else { "ies" },
            if alternate {
                "the configuration area"
            } else {
                PLUGIN_DN
            }
        ));
    }
    if config_entries.is_empty() {
        return Err(ImportError::NoConfig {
            origin: origin.to_owned(),
        });
    }
    // 389's DSE keeps entries sorted by `entry_dn_cmp` (ancestors first, then fewer RDNs
    // first, then RDN by RDN from the right, byte order); its subtree search hands the
    // plugin the reverse of that order.
    config_entries.sort_by(|a, b| entry_dn_cmp(&a.0, &b.0).reverse());

    let mut pam_entries: Vec<PamEntry> = Vec::new();
    for (_, e, is_plugin_entry) in &config_entries {
        if let Some(p) = read_entry(e, *is_plugin_entry, origin, warnings) {
            pam_entries.push(p);
        }
    }
    if pam_entries.iter().any(|p| p.id_map.contains(&"rdn")) {
        warnings.push(format!(
            "{origin}: pamIDMapMethod RDN: 389 takes the value of the first RDN whatever its type; the proxy takes only the `rdn_attr` value (default uid) of the resolved entry's RDN, so a client cannot choose the PAM user by how it writes the DN: set rdn_attr if your entries are named by another attribute"
        ));
    }
    if pam_entries.is_empty() {
        warnings.push(format!(
            "{origin}: no usable PAM configuration entry: every bind would go to the directory's own password check"
        ));
    }
    // Route names must be unique: the plugin entry's route is "default" unless a nested
    // entry is called that.
    if pam_entries
        .iter()
        .any(|p| !p.is_plugin_entry && p.name == DEFAULT_ROUTE)
    {
        for p in pam_entries.iter_mut().filter(|p| p.is_plugin_entry) {
            p.name = "pam-pass-through-auth".into();
        }
    }

    Ok(pam_entries)
}

/// The RDNs of `dn` in normalised form, leftmost first.
fn components(dn: &Dn) -> Vec<String> {
    let text = dn.to_string();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// 389's `entry_dn_cmp` (ldap/servers/slapd/dse.c) on normalised RDN lists.
fn entry_dn_cmp(a: &[String], b: &[String]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    if a.len() > b.len() && a.ends_with(b) {
        return Ordering::Greater; // a is below b: after its ancestor
    }
    if b.len() > a.len() && b.ends_with(a) {
        return Ordering::Less;
    }
    if a.len() != b.len() {
        return a.len().cmp(&b.len());
    }
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        match x.as_bytes().cmp(y.as_bytes()) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// A single-valued attribute: 389 reads the first value; more are worth a warning.
fn first_value<'e>(
    e: &'e LdifEntry,
    name: &str,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Option<&'e LdifAttr> {
    let mut values = e.values(name);
    let first = values.next();
    if let Some(extra) = values.next() {
        warnings.push(format!(
            "{origin}:{}: {}: {name} has more than one value; 389 uses the first ('{}') and so does the import",
            extra.line,
            e.dn,
            first.map(|f| f.value.as_str()).unwrap_or_default()
        ));
    }
    first
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Reads one config entry as 389 validates and applies it; `None` (with a warning) for
/// one 389 would skip or the proxy cannot express.
fn read_entry(
    e: &LdifEntry,
    is_plugin_entry: bool,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Option<PamEntry> {
    let at = |line: usize| format!("{origin}:{line}: {}", e.dn);
    let skip = |why: String, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{}: {why}; 389 skips such an entry (\"skipping invalid config entry\"), so no route is made from it",
            at(e.line)
        ));
    };
    let single = |name: &str, warnings: &mut Vec<String>| first_value(e, name, origin, warnings);

    for a in &e.attrs {
        let lower = a.name.to_ascii_lowercase();
        let known = IGNORED.contains(&lower.as_str())
            || lower.starts_with("nsslapd-plugin")
            || matches!(
                lower.as_str(),
                "pammissingsuffix"
                    | "pamexcludesuffix"
                    | "pamincludesuffix"
                    | "pamidattr"
                    | "pamidmapmethod"
                    | "pamfallback"
                    | "pamsecure"
                    | "pamservice"
                    | "pamfilter"
            );
        if lower == "pammoduleisthreadsafe" {
            warnings.push(format!(
                "{}: pamModuleIsThreadSafe has no equivalent: the proxy always runs PAM on its own worker pool ([pam] workers)",
                at(a.line)
            ));
        } else if !known {
            warnings.push(format!(
                "{}: attribute {} has no equivalent in the proxy's configuration; ignored",
                at(a.line),
                a.name
            ));
        }
    }

    let name = if is_plugin_entry {
        DEFAULT_ROUTE.to_owned()
    } else {
        Dn::parse(&e.dn)
            .ok()
            .and_then(|d| d.first_rdn_value().map(str::to_owned))
            .unwrap_or_default()
    };

    let missing_suffix = match single("pamMissingSuffix", warnings) {
        None => None,
        Some(a) => match a.value.trim().to_ascii_lowercase().as_str() {
            "error" => Some("error"),
            "allow" => Some("allow"),
            "ignore" => Some("ignore"),
            _ => {
                skip(
                    format!(
                        "pamMissingSuffix '{}' is not ERROR, ALLOW or IGNORE",
                        a.value
                    ),
                    warnings,
                );
                return None;
            }
        },
    };

    let suffixes = |attr: &str, warnings: &mut Vec<String>| -> Vec<(String, Dn)> {
        let mut out: Vec<(String, Dn)> = Vec::new();
        for a in e.values(attr) {
            match Dn::parse(a.value.trim()) {
                Ok(d) if !out.iter().any(|(_, o)| *o == d) => {
                    out.push((a.value.trim().to_owned(), d))
                }
                Ok(_) => {}
                Err(err) => warnings.push(format!(
                    "{}: {attr} '{}': {err}; value ignored",
                    at(a.line),
                    a.value
                )),
            }
        }
        out
    };
    let excludes = suffixes("pamExcludeSuffix", warnings);
    let includes = suffixes("pamIncludeSuffix", warnings);

    let id_attr = single("pamIDAttr", warnings).map(|a| a.value.trim().to_owned());
    let id_map = match single("pamIDMapMethod", warnings) {
        None => vec!["rdn"],
        Some(a) => {
            if a.value.contains(',') {
                warnings.push(format!(
                    "{}: pamIDMapMethod '{}' is comma-separated: 389 splits it at spaces only and rejects this value, so 389 itself skipped this entry; imported as the list it means",
                    at(a.line),
                    a.value
                ));
            }
            let mut methods = Vec::new();
            for token in a
                .value
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
            {
                let m = match token.to_ascii_lowercase().as_str() {
                    "rdn" => "rdn",
                    "entry" => "entry",
                    "dn" => "dn",
                    _ => {
                        skip(
                            format!(
                                "pamIDMapMethod '{}': '{token}' is not DN, RDN or ENTRY",
                                a.value
                            ),
                            warnings,
                        );
                        return None;
                    }
                };
                methods.push(m);
            }
            if methods.is_empty() {
                skip("pamIDMapMethod is empty".into(), warnings);
                return None;
            }
            if methods.len() > 3 {
                skip(
                    format!("pamIDMapMethod '{}' lists more than three methods", a.value),
                    warnings,
                );
                return None;
            }
            methods.dedup();
            methods
        }
    };
    if id_map.contains(&"entry") && id_attr.as_deref().map_or(true, str::is_empty) {
        skip(
            "pamIDMapMethod ENTRY needs pamIDAttr, which is not set".into(),
            warnings,
        );
        return None;
    }

    let filter = match single("pamFilter", warnings) {
        None => None,
        Some(a) => {
            let text = a.value.trim();
            // slapi_str2filter accepts a filter without its outer parentheses.
            let text = if text.starts_with('(') {
                text.to_owned()
            } else {
                format!("({text})")
            };
            if let Err(err) = crate::filter::parse(&text) {
                skip(
                    format!("pamFilter '{}' is not an LDAP filter: {err}", a.value),
                    warnings,
                );
                return None;
            }
            Some(text)
        }
    };

    let flag = |attr: &str, default: bool, warnings: &mut Vec<String>| -> bool {
        match single(attr, warnings) {
            None => default,
            Some(a) => parse_bool(&a.value).unwrap_or_else(|| {
                warnings.push(format!(
                    "{}: {attr} '{}' is not TRUE or FALSE; read as FALSE, as 389 does",
                    at(a.line),
                    a.value
                ));
                false
            }),
        }
    };
    let fallback = flag("pamFallback", false, warnings);
    let secure = flag("pamSecure", true, warnings);

    let Some(service) = single("pamService", warnings).map(|a| a.value.trim().to_owned()) else {
        warnings.push(format!(
            "{}: no pamService: a route needs a PAM service, so no route is made from this entry",
            at(e.line)
        ));
        return None;
    };
    if service.is_empty()
        || !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        warnings.push(format!(
            "{}: pamService '{service}' is not a PAM service name the proxy accepts (letters, digits, '.', '_', '-'); no route is made from this entry",
            at(e.line)
        ));
        return None;
    }

    Some(PamEntry {
        dn: e.dn.clone(),
        line: e.line,
        name,
        is_plugin_entry,
        service,
        filter,
        id_map,
        id_attr,
        fallback,
        secure,
        missing_suffix,
        excludes,
        includes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dse_order_is_reversed_like_389() {
        let c = |s: &str| components(&Dn::parse(s).unwrap());
        let mut v = [
            c("cn=csu,cn=PAM Pass Through Auth,cn=plugins,cn=config"),
            c("cn=PAM Pass Through Auth,cn=plugins,cn=config"),
            c("cn=Zed x,cn=PAM Pass Through Auth,cn=plugins,cn=config"),
            c("cn=duo,cn=PAM Pass Through Auth,cn=plugins,cn=config"),
            c("cn=pzz,cn=PAM Pass Through Auth,cn=plugins,cn=config"),
            c("cn=Csu2,cn=PAM Pass Through Auth,cn=plugins,cn=config"),
        ];
        v.sort_by(|a, b| entry_dn_cmp(a, b).reverse());
        let first: Vec<&str> = v.iter().map(|x| x[0].as_str()).collect();
        // As logged by 389-ds-base 2.3.1 ("store [...] at tail").
        assert_eq!(
            first,
            [
                "cn=zed x",
                "cn=pzz",
                "cn=duo",
                "cn=csu2",
                "cn=csu",
                "cn=pam pass through auth"
            ]
        );
    }
}
