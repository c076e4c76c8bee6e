//! Distinguished names (RFC 4514), parsed just enough to compare them the way the
//! directory does for suffix scoping and to take the value of the first RDN.
//!
//! Comparison folds case and surrounding spaces of every attribute type and value, which
//! is 389's behaviour for the directory-string and IA5 attributes DNs are built from
//! (uid, cn, ou, dc, o, l, …).

use std::fmt;

/// A parsed DN: its RDNs from leftmost (most specific) to rightmost.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Dn {
    rdns: Vec<Rdn>,
}

/// One RDN: one or more `type=value` pairs; multi-valued RDNs compare equal in any order.
#[derive(Clone, Debug)]
struct Rdn(Vec<Ava>);

#[derive(Clone, Debug)]
struct Ava {
    /// Lower-cased attribute type.
    attr: String,
    /// Lower-cased unescaped value: the comparison form.
    norm: String,
    /// Unescaped value as written: what `rdn` identity mapping hands to PAM.
    value: String,
}

/// A DN that does not follow RFC 4514.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN: {0}")]
pub struct DnError(&'static str);

impl Dn {
    /// Parses `text`; the empty string is the root DSE's (empty) DN.
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        let mut rdns = Vec::new();
        if text.trim().is_empty() {
            return Ok(Dn { rdns });
        }
        let mut avas = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut attr = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                attr.push(c);
            }
            let attr = attr.trim().to_ascii_lowercase();
            if attr.is_empty()
                || !attr
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(DnError("bad attribute type"));
            }
            let mut value = String::new();
            let mut end = None;
            let mut escaped_trailing_space = false;
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                // An RFC 1779 quoted value (`ou="People"`), which 389 still reads.
                chars.next();
                let quoted = quoted_value(&mut chars)?;
                match chars.next() {
                    None => {}
                    Some(c @ (',' | ';' | '+')) => end = Some(c),
                    Some(_) => return Err(DnError("text after a quoted value")),
                }
                if quoted.is_empty() {
                    return Err(DnError("empty attribute value"));
                }
                avas.push(Ava {
                    attr,
                    norm: quoted.to_lowercase(),
                    value: quoted,
                });
                match end {
                    Some('+') => continue,
                    Some(_) => {
                        rdns.push(Rdn(std::mem::take(&mut avas)));
                        continue;
                    }
                    None => {
                        rdns.push(Rdn(avas));
                        return Ok(Dn { rdns });
                    }
                }
            }
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        let a = chars.next().ok_or(DnError("dangling escape"))?;
                        if a.is_ascii_hexdigit() {
                            let b = chars.next().ok_or(DnError("bad hex escape"))?;
                            let byte = u8::from_str_radix(&format!("{a}{b}"), 16)
                                .map_err(|_| DnError("bad hex escape"))?;
                            // Hex escapes may spell UTF-8 sequences byte by byte.
                            let mut bytes = vec![byte];
                            while chars.peek() == Some(&'\\') {
                                let mut look = chars.clone();
                                look.next();
                                let (Some(h), Some(l)) = (look.next(), look.next()) else {
                                    break;
                                };
                                let Ok(b) = u8::from_str_radix(&format!("{h}{l}"), 16) else {
                                    break;
                                };
                                if !(h.is_ascii_hexdigit() && l.is_ascii_hexdigit()) {
                                    break;
                                }
                                bytes.push(b);
                                chars = look;
                            }
                            value.push_str(
                                &String::from_utf8(bytes)
                                    .map_err(|_| DnError("escaped bytes are not UTF-8"))?,
                            );
                        } else {
                            // RFC 4514 escapes only special characters; 389 (liblber)
                            // reads an escaped ordinary character as itself, and so does
                            // the proxy, so the two agree on what the DN names.
                            value.push(a);
                        }
                        escaped_trailing_space = a == ' ';
                        continue;
                    }
                    ',' | ';' | '+' => {
                        end = Some(c);
                        break;
                    }
                    _ => value.push(c),
                }
                escaped_trailing_space = false;
            }
            let value = if escaped_trailing_space {
                value.trim_start().to_owned()
            } else {
                value.trim().to_owned()
            };
            if value.is_empty() {
                return Err(DnError("empty attribute value"));
            }
            avas.push(Ava {
                attr,
                norm: value.to_lowercase(),
                value,
            });
            match end {
                Some('+') => continue,
                Some(_) => {
                    rdns.push(Rdn(std::mem::take(&mut avas)));
                }
                None => {
                    rdns.push(Rdn(avas));
                    return Ok(Dn { rdns });
                }
            }
        }
    }

    /// Whether this DN is `suffix` or lies below it.
    pub fn is_within(&self, suffix: &Dn) -> bool {
        self.rdns.len() >= suffix.rdns.len()
            && self.rdns[self.rdns.len() - suffix.rdns.len()..] == suffix.rdns[..]
    }

    /// The root DSE's DN.
    pub fn is_empty(&self) -> bool {
        self.rdns.is_empty()
    }

    /// The value of the leftmost RDN (its first AVA as written), as 389's `RDN` id map
    /// method takes it.
    pub fn first_rdn_value(&self) -> Option<&str> {
        self.rdns
            .first()
            .and_then(|r| r.0.first())
            .map(|a| a.value.as_str())
    }
}

/// The rest of a quoted value after its opening quote, up to the closing one (consumed,
/// with the spaces after it). Inside, `\x` is `x`.
fn quoted_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, DnError> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(DnError("unterminated quoted value")),
            Some('"') => break,
            Some('\\') => value.push(chars.next().ok_or(DnError("dangling escape"))?),
            Some(c) => value.push(c),
        }
    }
    while chars.peek() == Some(&' ') {
        chars.next();
    }
    Ok(value)
}

impl Dn {
    /// The value of the leftmost RDN's `attr` (compared case-insensitively), however many
    /// values that RDN has and in whatever order they were written: the `rdn` identity of
    /// a route whose `id_attr` is `attr`.
    pub fn rdn_value(&self, attr: &str) -> Option<&str> {
        self.rdns
            .first()?
            .0
            .iter()
            .find(|a| a.attr.eq_ignore_ascii_case(attr))
            .map(|a| a.value.as_str())
    }
}

impl Rdn {
    /// The comparison key: (type, normalised value) pairs in a fixed order.
    fn key(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .0
            .iter()
            .map(|a| (a.attr.as_str(), a.norm.as_str()))
            .collect();
        v.sort_unstable();
        v
    }
}

impl PartialEq for Rdn {
    fn eq(&self, other: &Rdn) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Rdn {}
impl std::hash::Hash for Rdn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl fmt::Display for Dn {
    /// The normalised form: lower case, no spaces around separators, specials escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            for (j, ava) in rdn.0.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{}=", ava.attr)?;
                for c in ava.norm.chars() {
                    if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dn({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::parse(s).unwrap()
    }

    #[test]
    fn case_and_spaces_do_not_matter() {
        assert_eq!(
            dn("UID=Alice , ou=People,DC=Example,dc=com"),
            dn("uid=alice,ou=people,dc=example,dc=com")
        );
        assert_eq!(
            dn("cn=Directory Manager").to_string(),
            "cn=directory manager"
        );
    }

    #[test]
    fn suffix_scope() {
        let user = dn("uid=alice,ou=People,dc=example,dc=com");
        assert!(user.is_within(&dn("dc=example,dc=com")));
        assert!(user.is_within(&dn("ou=people, dc=example, dc=com")));
        assert!(user.is_within(&user));
        assert!(!user.is_within(&dn("dc=example,dc=org")));
        assert!(!dn("dc=com").is_within(&dn("dc=example,dc=com")));
        assert!(!dn("cn=config").is_within(&dn("dc=example,dc=com")));
        assert!(dn("cn=foo,cn=config").is_within(&dn("cn=config")));
        // An RDN value ending in the suffix's text is not below it.
        assert!(!dn("cn=xcn\\=config").is_within(&dn("cn=config")));
    }

    #[test]
    fn escapes_and_first_rdn() {
        let d = dn("uid=smith\\, john+cn=J,ou=People,dc=example,dc=com");
        assert_eq!(d.first_rdn_value(), Some("smith, john"));
        assert_eq!(dn("cn=caf\\c3\\a9,dc=x").first_rdn_value(), Some("café"));
        assert_eq!(dn("uid=Bob,dc=x").first_rdn_value(), Some("Bob"));
        assert_eq!(dn("cn=a+sn=b,dc=x"), dn("sn=B+cn=A,dc=x"));
        assert_eq!(dn("cn=erin+uid=grace,dc=x").rdn_value("UID"), Some("grace"));
        assert_eq!(dn("cn=erin,dc=x").rdn_value("uid"), None);
        assert_eq!(dn("uid=a,uid=b").rdn_value("uid"), Some("a"));
    }

    #[test]
    fn spellings_389_reads_as_the_same_dn() {
        let alice = dn("uid=alice,ou=People,dc=example,dc=com");
        for spelled in [
            "uid=al\\ice,ou=People,dc=example,dc=com",
            "uid=\\61lice,ou=People,dc=example,dc=com",
            "uid=alice,ou=\"People\",dc=example,dc=com",
            "uid=\"alice\" , ou=People;dc=example;dc=com",
            " uid = alice , ou = People , dc = example , dc = com ",
        ] {
            assert_eq!(dn(spelled), alice, "{spelled}");
        }
        assert_eq!(
            dn("cn=\"Smith, John\",dc=x").rdn_value("cn"),
            Some("Smith, John")
        );
    }

    #[test]
    fn bad_dns() {
        for bad in [
            "uid",
            "=x",
            "uid=",
            "uid=a,",
            "uid=a\\",
            "u id=a",
            "cn=\\az",
            "ou=\"x",
            "ou=\"x\"y",
            "ou=\"\"",
        ] {
            assert!(Dn::parse(bad).is_err(), "{bad}");
        }
        assert!(dn("").is_empty());
    }
}
