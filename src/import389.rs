//! `import-389`: turns a 389 DS "PAM Pass Through Auth" plugin configuration (LDIF) into
//! `[[route]]` tables and the `[bind]` keys they need (DESIGN §2 and §5).
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

use crate::dn::Dn;
use std::cmp::Ordering;
use std::fmt::Write as _;

/// The plugin entry of 389's PAM Pass Through Auth plugin.
pub const PLUGIN_DN: &str = "cn=PAM Pass Through Auth,cn=plugins,cn=config";

/// Name of the route made from the plugin entry's own settings.
pub const DEFAULT_ROUTE: &str = "default";

/// The input could not be read as LDIF, or holds no PAM Pass Through Auth configuration.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{origin}:{line}: {message}")]
    Ldif {
        origin: String,
        line: usize,
        message: String,
    },
    #[error(
        "{origin}: no PAM Pass Through Auth configuration: no entry {PLUGIN_DN} and none below it"
    )]
    NoConfig { origin: String },
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `[bind]` and `[[route]]` tables, to append to a configuration's `[listen]` and
    /// `[backend]`.
    pub toml: String,
    /// Everything the TOML does not say as 389 did, one message each (for stderr).
    pub warnings: Vec<String>,
    /// The route names, in evaluation order.
    pub routes: Vec<String>,
}

/// One LDIF record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdifEntry {
    pub dn: String,
    /// Line of the `dn:` line.
    pub line: usize,
    pub attrs: Vec<LdifAttr>,
}

/// One attribute value of an LDIF record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdifAttr {
    /// The attribute type as written, without options (`;lang-…`).
    pub name: String,
    pub value: String,
    /// Line where the value starts.
    pub line: usize,
}

impl LdifEntry {
    /// Values of attribute `name` (case-insensitive), in file order.
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a LdifAttr> + 'a {
        let name = name.to_owned();
        self.attrs
            .iter()
            .filter(move |a| a.name.eq_ignore_ascii_case(&name))
    }
}

/// Parses LDIF content records (RFC 2849): folded lines (a leading space continues the
/// previous line), comments (also folded), `attr:: base64` values, CRLF line ends, a
/// leading `version: 1`. Change records other than `changetype: add` and `attr:< URL`
/// values are skipped with a warning.
pub fn parse_ldif(text: &str, origin: &str) -> Result<(Vec<LdifEntry>, Vec<String>), ImportError> {
    let err = |line: usize, message: String| ImportError::Ldif {
        origin: origin.to_owned(),
        line,
        message,
    };
    let mut warnings = Vec::new();

    // Logical lines (continuations joined), grouped in records.
    struct Logical {
        text: String,
        line: usize,
    }
    let mut records: Vec<Vec<Logical>> = Vec::new();
    let mut current: Vec<Logical> = Vec::new();
    let mut in_comment = false;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            if !current.is_empty() {
                records.push(std::mem::take(&mut current));
            }
            in_comment = false;
            continue;
        }
        if let Some(rest) = line.strip_prefix(' ') {
            if in_comment {
                continue;
            }
            match current.last_mut() {
                Some(last) => last.text.push_str(rest),
                None if rest.trim().is_empty() => {}
                None => {
                    return Err(err(
                        number,
                        "continuation line (leading space) without a line to continue".into(),
                    ))
                }
            }
            continue;
        }
        if line.starts_with('#') {
            in_comment = true;
            continue;
        }
        in_comment = false;
        current.push(Logical {
            text: line.to_owned(),
            line: number,
        });
    }
    if !current.is_empty() {
        records.push(current);
    }

    let mut entries = Vec::new();
    for (n, record) in records.into_iter().enumerate() {
        let mut lines = record.into_iter().peekable();
        if n == 0 {
            if let Some(first) = lines.peek() {
                if let Some(("version", v)) = split_type(&first.text) {
                    if v.trim() != "1" {
                        warnings.push(format!(
                            "{origin}:{}: LDIF version '{}' (expected 1)",
                            first.line,
                            v.trim()
                        ));
                    }
                    lines.next();
                }
            }
        }
        let Some(first) = lines.next() else { continue };
        let (name, value) = parse_value(&first.text)
            .map_err(|m| err(first.line, m))?
            .ok_or_else(|| {
                err(
                    first.line,
                    "'attr:< URL' is not supported for the DN".into(),
                )
            })?;
        if !name.eq_ignore_ascii_case("dn") {
            return Err(err(
                first.line,
                format!("a record must start with 'dn:', not '{name}:'"),
            ));
        }
        let mut entry = LdifEntry {
            dn: value,
            line: first.line,
            attrs: Vec::new(),
        };
        let mut skip = false;
        for l in lines {
            let parsed = parse_value(&l.text).map_err(|m| err(l.line, m))?;
            let Some((name, value)) = parsed else {
                warnings.push(format!(
                    "{origin}:{}: '{}': values read from a URL ('attr:<') are not supported; ignored",
                    l.line,
                    l.text.split(':').next().unwrap_or_default()
                ));
                continue;
            };
            if name.eq_ignore_ascii_case("changetype") {
                if !value.trim().eq_ignore_ascii_case("add") {
                    warnings.push(format!(
                        "{origin}:{}: 'changetype: {}' record for {}: only content records (or changetype: add) describe a configuration; skipped",
                        l.line, value.trim(), entry.dn
                    ));
                    skip = true;
                    break;
                }
                continue;
            }
            if name.eq_ignore_ascii_case("control") {
                warnings.push(format!("{origin}:{}: LDIF control ignored", l.line));
                continue;
            }
            entry.attrs.push(LdifAttr {
                name,
                value,
                line: l.line,
            });
        }
        if !skip {
            entries.push(entry);
        }
    }
    Ok((entries, warnings))
}

/// `type: value` → `(type, value)` without looking at the value.
fn split_type(line: &str) -> Option<(&str, &str)> {
    line.split_once(':').map(|(t, v)| (t.trim(), v))
}

/// One logical line: `Ok(None)` for a URL value.
fn parse_value(line: &str) -> Result<Option<(String, String)>, String> {
    let (name, rest) = line
        .split_once(':')
        .ok_or_else(|| format!("'{line}' is not 'attribute: value'"))?;
    let name = name.trim();
    let base = name.split(';').next().unwrap_or_default();
    if base.is_empty()
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!("'{name}' is not an attribute type"));
    }
    let value = if let Some(b64) = rest.strip_prefix(':') {
        let bytes = decode_base64(b64.trim())
            .ok_or_else(|| format!("{base}:: value is not valid base64"))?;
        String::from_utf8(bytes).map_err(|_| format!("{base}:: value is not UTF-8 text"))?
    } else if rest.starts_with('<') {
        return Ok(None);
    } else {
        rest.trim_start_matches(' ').trim_end().to_owned()
    };
    Ok(Some((base.to_owned(), value)))
}

/// Standard base64 (RFC 4648), padding optional, spaces ignored.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine as _;
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD_ANY_PADDING.decode(text).ok()
}

/// A config entry as 389 would apply it.
#[derive(Debug)]
struct PamEntry {
    dn: String,
    line: usize,
    name: String,
    is_plugin_entry: bool,
    service: String,
    filter: Option<String>,
    id_map: Vec<&'static str>,
    id_attr: Option<String>,
    fallback: bool,
    secure: bool,
    missing_suffix: Option<&'static str>,
    excludes: Vec<(String, Dn)>,
    includes: Vec<(String, Dn)>,
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

/// Converts a 389 PAM Pass Through Auth configuration. `origin` names the input in
/// messages.
pub fn import_389(text: &str, origin: &str) -> Result<Imported, ImportError> {
    let (entries, mut warnings) = parse_ldif(text, origin)?;
    let plugin = Dn::parse(PLUGIN_DN).expect("constant DN");

    let mut parsed: Vec<(Dn, &LdifEntry)> = Vec::new();
    let mut outside = 0usize;
    for e in &entries {
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
        if let Some(p) = read_entry(e, *is_plugin_entry, origin, &mut warnings) {
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

    Ok(render(&pam_entries, origin, warnings))
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

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(quote).collect();
    format!("[{}]", items.join(", "))
}

fn same_set(a: &[(String, Dn)], b: &[(String, Dn)]) -> bool {
    a.len() == b.len() && a.iter().all(|(_, x)| b.iter().any(|(_, y)| x == y))
}

fn render(entries: &[PamEntry], origin: &str, mut warnings: Vec<String>) -> Imported {
    // Global exclusions: those every entry has. Excluding them for all binds is what 389
    // does, since no entry would take such a DN.
    let global_excludes: Vec<(String, Dn)> = match entries.first() {
        None => Vec::new(),
        Some(first) => first
            .excludes
            .iter()
            .filter(|(_, d)| {
                entries
                    .iter()
                    .all(|e| e.excludes.iter().any(|(_, x)| x == d))
            })
            .cloned()
            .collect(),
    };
    // Global inclusions: only when every entry restricts itself to included suffixes;
    // then the union (a DN outside all of them is no entry's). Routes whose own set
    // differs keep it.
    let global_includes: Vec<(String, Dn)> =
        if !entries.is_empty() && entries.iter().all(|e| !e.includes.is_empty()) {
            let mut union: Vec<(String, Dn)> = Vec::new();
            for (t, d) in entries.iter().flat_map(|e| &e.includes) {
                if !union.iter().any(|(_, u)| u == d) {
                    union.push((t.clone(), d.clone()));
                }
            }
            union
        } else {
            Vec::new()
        };

    let missing: Vec<&str> = entries.iter().filter_map(|e| e.missing_suffix).collect();
    let strictest = ["error", "allow", "ignore"]
        .into_iter()
        .find(|level| missing.contains(level));
    if let Some(level) = strictest {
        if missing.iter().any(|m| *m != level) {
            warnings.push(format!(
                "{origin}: the entries disagree on pamMissingSuffix ({}); the proxy has one setting for all suffixes: using the strictest, \"{level}\"",
                missing.join(", ")
            ));
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported by `ldap-pam-proxy import-389` from {origin}.\n\
         # Routes are in 389's evaluation order: nested entries in descending byte order of\n\
         # their normalised RDN, the plugin entry's own settings last. Append this to a\n\
         # configuration whose [backend] has service_dn and service_password_file."
    );
    out.push_str("\n[bind]\n");
    if let Some(level) = strictest {
        let _ = writeln!(out, "missing_suffix = {}", quote(level));
    }
    if !global_includes.is_empty() {
        let _ = writeln!(
            out,
            "include_suffixes = {}",
            list(global_includes.iter().map(|(t, _)| t.as_str()))
        );
    }
    let _ = writeln!(
        out,
        "exclude_suffixes = {}",
        list(global_excludes.iter().map(|(t, _)| t.as_str()))
    );
    if global_excludes.is_empty() {
        warnings.push(format!(
            "{origin}: not every entry excludes cn=config: like 389, binds under cn=config may go to PAM (exclude_suffixes = [] overrides the proxy's default [\"cn=config\"])"
        ));
    }

    let mut names = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        names.push(e.name.clone());
        let own_excludes: Vec<&str> = e
            .excludes
            .iter()
            .filter(|(_, d)| !global_excludes.iter().any(|(_, g)| g == d))
            .map(|(t, _)| t.as_str())
            .collect();
        let own_includes: Vec<&str> = if same_set(&e.includes, &global_includes) {
            Vec::new()
        } else {
            e.includes.iter().map(|(t, _)| t.as_str()).collect()
        };
        out.push('\n');
        let _ = writeln!(out, "# {} ({origin} line {})", e.dn, e.line);
        if e.is_plugin_entry {
            out.push_str(
                "# 389 uses the plugin entry's own settings for every bind no entry above took.\n",
            );
        }
        out.push_str("[[route]]\n");
        let _ = writeln!(out, "name = {}", quote(&e.name));
        if let Some(f) = &e.filter {
            let _ = writeln!(out, "filter = {}", quote(f));
        }
        let _ = writeln!(out, "pam_service = {}", quote(&e.service));
        let _ = writeln!(out, "id_map = {}", list(e.id_map.iter().copied()));
        if e.id_map.contains(&"entry") {
            if let Some(a) = &e.id_attr {
                let _ = writeln!(out, "id_attr = {}", quote(a));
            }
        }
        let _ = writeln!(out, "fallback = {}", e.fallback);
        let _ = writeln!(out, "secure = {}", e.secure);
        if !own_includes.is_empty() {
            let _ = writeln!(out, "include_suffixes = {}", list(own_includes));
        }
        if !own_excludes.is_empty() {
            let _ = writeln!(
                out,
                "exclude_suffixes = {}",
                list(own_excludes.iter().copied())
            );
        }

        let unscoped = e.includes.is_empty() && own_excludes.is_empty();
        let later: Vec<&str> = entries[i + 1..].iter().map(|l| l.name.as_str()).collect();
        if e.filter.is_none() && unscoped && !later.is_empty() {
            warnings.push(format!(
                "{origin}:{}: route '{}' has no filter and no suffix restriction of its own: it takes every bind, so route{} {} after it never match (as in 389)",
                e.line,
                e.name,
                if later.len() == 1 { "" } else { "s" },
                later.join(", ")
            ));
        }
        if e.is_plugin_entry && e.filter.is_none() {
            warnings.push(format!(
                "{origin}:{}: route '{}' (the plugin entry's own settings, pamService {}) has no filter: every bind in scope that no other route takes goes to PAM service {} — application and service accounts too, whose directory passwords then stop working. That is what 389 did; delete this route to let those binds reach the directory's own password check",
                e.line, e.name, e.service, e.service
            ));
        }
    }
    Imported {
        toml: out,
        warnings,
        routes: names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs bG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("a$").is_none());
        assert!(decode_base64("aGVsbG9=").is_none()); // non-zero leftover bits
    }

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

    #[test]
    fn ldif_folding_comments_and_base64() {
        let text = "version: 1\r\n# a comment\r\n  folded comment\r\ndn: cn=x,\r\n cn=y\r\nfoo:: YmFy\r\nbaz:   spaced  \r\nurl:< file:///etc/passwd\r\n\r\n\r\ndn: cn=z\nchangetype: modify\nreplace: a\n";
        let (entries, warnings) = parse_ldif(text, "t").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].dn, "cn=x,cn=y");
        assert_eq!(entries[0].line, 4);
        assert_eq!(entries[0].values("FOO").next().unwrap().value, "bar");
        assert_eq!(entries[0].values("baz").next().unwrap().value, "spaced");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(parse_ldif(" leading\n", "t").is_err());
        let e = parse_ldif("cn: x\n", "t").unwrap_err().to_string();
        assert!(e.starts_with("t:1:"), "{e}");
        assert!(parse_ldif("dn: cn=x\nfoo:: ***\n", "t")
            .unwrap_err()
            .to_string()
            .starts_with("t:2:"));
    }
}
