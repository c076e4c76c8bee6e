//! LDIF reading (RFC 2849), as much of it as a plugin configuration export needs:
//! content records, folded lines, comments, base64 values, CRLF line ends. Positions are
//! kept so that messages can name the line.

use super::ImportError;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Standard base64 (RFC 4648) with or without padding: LDIF writers differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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
pub fn parse(text: &str, origin: &str) -> Result<(Vec<LdifEntry>, Vec<String>), ImportError> {
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
        // Spaces inside the value are ignored, as they always were here.
        let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = BASE64
            .decode(compact)
            .map_err(|_| format!("{base}:: value is not valid base64"))?;
        String::from_utf8(bytes).map_err(|_| format!("{base}:: value is not UTF-8 text"))?
    } else if rest.starts_with('<') {
        return Ok(None);
    } else {
        rest.trim_start_matches(' ').trim_end().to_owned()
    };
    Ok(Some((base.to_owned(), value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_values() {
        let value = |line: &str| parse_value(line).map(|v| v.map(|(_, v)| v));
        assert_eq!(value("a:: aGVsbG8=").unwrap().unwrap(), "hello");
        assert_eq!(value("a:: aGVsbG8").unwrap().unwrap(), "hello");
        assert_eq!(value("a:: aGVs bG8h").unwrap().unwrap(), "hello!");
        assert_eq!(value("a::").unwrap().unwrap(), "");
        assert!(value("a:: a$").is_err());
        assert!(value("a:: aGVsbG9=").is_err()); // non-zero leftover bits
        assert!(value("a:: /w==").is_err()); // not UTF-8
    }

    #[test]
    fn folding_comments_and_base64() {
        let text = "version: 1\r\n# a comment\r\n  folded comment\r\ndn: cn=x,\r\n cn=y\r\nfoo:: YmFy\r\nbaz:   spaced  \r\nurl:< file:///etc/passwd\r\n\r\n\r\ndn: cn=z\nchangetype: modify\nreplace: a\n";
        let (entries, warnings) = parse(text, "t").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].dn, "cn=x,cn=y");
        assert_eq!(entries[0].line, 4);
        assert_eq!(entries[0].values("FOO").next().unwrap().value, "bar");
        assert_eq!(entries[0].values("baz").next().unwrap().value, "spaced");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(parse(" leading\n", "t").is_err());
        let e = parse("cn: x\n", "t").unwrap_err().to_string();
        assert!(e.starts_with("t:1:"), "{e}");
        assert!(parse("dn: cn=x\nfoo:: ***\n", "t")
            .unwrap_err()
            .to_string()
            .starts_with("t:2:"));
    }
}
