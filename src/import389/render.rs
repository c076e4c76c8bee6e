//! Rendering the entries 389 would use as the proxy's configuration: the `[bind]` keys
//! every entry shares, then one `[[route]]` per entry in 389's order, with a comment
//! naming its source and warnings for what 389 did that a reader may not expect.

use super::plugin::PamEntry;
use super::Imported;
use crate::dn::Dn;
use std::fmt::Write as _;

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

/// The TOML for `entries` (in evaluation order), and every warning.
pub(super) fn render(entries: &[PamEntry], origin: &str, mut warnings: Vec<String>) -> Imported {
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
