//! RFC 4515 search filters from the configuration, parsed into ldap3_proto's filter type
//! (which encodes them for the directory). ldap3_proto's own parser refuses spaces in
//! values, which real route filters have (`(cn=Research Computing)`).

use ldap3_proto::proto::{LdapFilter, LdapMatchingRuleAssertion, LdapSubstringFilter};

/// Why a filter string is not an RFC 4515 filter; `at` is a character offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {at}: {what}")]
pub struct FilterError {
    pub at: usize,
    pub what: &'static str,
}

/// Parses a whole filter; surrounding spaces are allowed, anything after it is not.
pub fn parse(text: &str) -> Result<LdapFilter, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { s: &chars, i: 0 };
    p.spaces();
    let f = p.filter(0)?;
    p.spaces();
    if p.i != chars.len() {
        return Err(p.err("unexpected text after the filter"));
    }
    Ok(f)
}

/// Deeper nesting than any real route filter: refuse before recursion gets costly.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> FilterError {
        FilterError { at: self.i, what }
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> Result<(), FilterError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(match c {
                '(' => "expected '('",
                _ => "expected ')'",
            }))
        }
    }

    fn spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.i += 1;
        }
    }

    fn filter(&mut self, depth: usize) -> Result<LdapFilter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(self.err("filter nested too deeply"));
        }
        self.eat('(')?;
        let f = match self.peek() {
            Some('&') => {
                self.i += 1;
                LdapFilter::And(self.list(depth)?)
            }
            Some('|') => {
                self.i += 1;
                LdapFilter::Or(self.list(depth)?)
            }
            Some('!') => {
                self.i += 1;
                self.spaces();
                LdapFilter::Not(Box::new(self.filter(depth + 1)?))
            }
            _ => self.item()?,
        };
        self.spaces();
        self.eat(')')?;
        Ok(f)
    }

    fn list(&mut self, depth: usize) -> Result<Vec<LdapFilter>, FilterError> {
        let mut v = Vec::new();
        self.spaces();
        while self.peek() == Some('(') {
            v.push(self.filter(depth + 1)?);
            self.spaces();
        }
        if v.is_empty() {
            return Err(self.err("'&' and '|' need at least one filter"));
        }
        Ok(v)
    }

    /// attr=value, attr~=value, attr>=value, attr<=value, attr=*, substrings, extensible.
    fn item(&mut self) -> Result<LdapFilter, FilterError> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';' | ':'))
        {
            self.i += 1;
        }
        let lhs: String = self.s[start..self.i].iter().collect();
        let op = match (self.peek(), self.s.get(self.i + 1)) {
            (Some('='), _) => "=",
            (Some('~'), Some('=')) => "~=",
            (Some('>'), Some('=')) => ">=",
            (Some('<'), Some('=')) => "<=",
            _ => return Err(self.err("expected '=', '~=', '>=' or '<=' after the attribute")),
        };
        self.i += op.len();
        if let Some(rule) = lhs.strip_suffix(':').filter(|_| op == "=") {
            return self.extensible(rule);
        }
        if lhs.is_empty()
            || lhs.contains(':')
            || !lhs.starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err(FilterError {
                at: start,
                what: "bad attribute description",
            });
        }
        // A value runs to the closing parenthesis; '*' separates substrings.
        let mut parts = vec![String::new()];
        while let Some(c) = self.peek() {
            match c {
                ')' => break,
                '(' => return Err(self.err("unescaped '(' in a value")),
                '*' => {
                    self.i += 1;
                    parts.push(String::new());
                }
                '\\' => {
                    let byte = self.escape()?;
                    let last = parts.last_mut().expect("parts is never empty");
                    push_escaped(last, byte, self)?;
                }
                _ => {
                    self.i += 1;
                    parts.last_mut().expect("parts is never empty").push(c);
                }
            }
        }
        if parts.len() == 1 {
            let v = parts.pop().unwrap_or_default();
            return Ok(match op {
                "=" => LdapFilter::Equality(lhs, v),
                "~=" => LdapFilter::Approx(lhs, v),
                ">=" => LdapFilter::GreaterOrEqual(lhs, v),
                _ => LdapFilter::LessOrEqual(lhs, v),
            });
        }
        if op != "=" {
            return Err(self.err("'*' is only allowed with '='"));
        }
        if parts.len() == 2 && parts.iter().all(String::is_empty) {
            return Ok(LdapFilter::Present(lhs));
        }
        let last = parts.len() - 1;
        let initial = Some(std::mem::take(&mut parts[0])).filter(|s| !s.is_empty());
        let final_ = Some(std::mem::take(&mut parts[last])).filter(|s| !s.is_empty());
        let any: Vec<String> = parts[1..last].to_vec();
        if any.iter().any(String::is_empty) {
            return Err(self.err("'**' in a substring filter"));
        }
        Ok(LdapFilter::Substring(
            lhs,
            LdapSubstringFilter {
                initial,
                any,
                final_,
            },
        ))
    }

    /// `[attr][:dn][:rule]:=value`
    fn extensible(&mut self, lhs: &str) -> Result<LdapFilter, FilterError> {
        let mut fields = lhs.split(':');
        let type_ = fields.next().filter(|s| !s.is_empty()).map(str::to_owned);
        let mut dn_attributes = false;
        let mut matching_rule = None;
        for f in fields {
            match f {
                "dn" if !dn_attributes && matching_rule.is_none() => dn_attributes = true,
                rule if !rule.is_empty() && matching_rule.is_none() => {
                    matching_rule = Some(rule.to_owned())
                }
                _ => return Err(self.err("bad extensible match")),
            }
        }
        if type_.is_none() && matching_rule.is_none() {
            return Err(self.err("an extensible match needs an attribute or a matching rule"));
        }
        let mut value = String::new();
        while let Some(c) = self.peek() {
            match c {
                ')' => break,
                '(' | '*' => return Err(self.err("unescaped special character in a value")),
                '\\' => {
                    let byte = self.escape()?;
                    push_escaped(&mut value, byte, self)?;
                }
                _ => {
                    self.i += 1;
                    value.push(c);
                }
            }
        }
        Ok(LdapFilter::Extensible(LdapMatchingRuleAssertion {
            matching_rule,
            type_,
            match_value: value,
            dn_attributes,
        }))
    }

    /// `\XX`: one escaped byte.
    fn escape(&mut self) -> Result<u8, FilterError> {
        let hex: String = self.s.iter().skip(self.i + 1).take(2).collect();
        let byte = (hex.len() == 2)
            .then(|| u8::from_str_radix(&hex, 16).ok())
            .flatten()
            .ok_or_else(|| self.err("'\\' must be followed by two hex digits"))?;
        self.i += 3;
        Ok(byte)
    }
}

/// Appends an escaped byte; consecutive escapes may spell one UTF-8 character.
fn push_escaped(out: &mut String, first: u8, p: &mut Parser<'_>) -> Result<(), FilterError> {
    let mut bytes = vec![first];
    while std::str::from_utf8(&bytes).is_err() && bytes.len() < 4 && p.peek() == Some('\\') {
        bytes.push(p.escape()?);
    }
    let s = std::str::from_utf8(&bytes).map_err(|_| p.err("escaped bytes are not UTF-8"))?;
    out.push_str(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use LdapFilter::*;

    fn eq(a: &str, v: &str) -> LdapFilter {
        Equality(a.into(), v.into())
    }

    #[test]
    fn the_389_example_filters() {
        assert_eq!(
            parse("(&(objectClass=posixAccount)(!(homeDirectory=/home/*@*)))").unwrap(),
            And(vec![
                eq("objectClass", "posixAccount"),
                Not(Box::new(Substring(
                    "homeDirectory".into(),
                    LdapSubstringFilter {
                        initial: Some("/home/".into()),
                        any: vec!["@".into()],
                        final_: None
                    }
                )))
            ])
        );
    }

    #[test]
    fn values_with_spaces_escapes_and_operators() {
        assert_eq!(
            parse("(cn=Research Computing)").unwrap(),
            eq("cn", "Research Computing")
        );
        assert_eq!(parse("(cn=a\\2ab\\29)").unwrap(), eq("cn", "a*b)"));
        assert_eq!(parse("(cn=caf\\c3\\a9)").unwrap(), eq("cn", "café"));
        assert_eq!(parse(" (uid=*) ").unwrap(), Present("uid".into()));
        assert_eq!(
            parse("(uidNumber>=1000)").unwrap(),
            GreaterOrEqual("uidNumber".into(), "1000".into())
        );
        assert_eq!(
            parse("(sn~=smyth)").unwrap(),
            Approx("sn".into(), "smyth".into())
        );
        assert_eq!(
            parse("(|(a=1)(b=2))").unwrap(),
            Or(vec![eq("a", "1"), eq("b", "2")])
        );
        assert_eq!(parse("(cn=)").unwrap(), eq("cn", ""));
        assert!(
            matches!(parse("(uid:caseExactMatch:=Bob)").unwrap(), Extensible(m) if m.matching_rule.as_deref() == Some("caseExactMatch") && m.type_.as_deref() == Some("uid"))
        );
        assert!(matches!(parse("(ou:dn:=People)").unwrap(), Extensible(m) if m.dn_attributes));
        assert!(
            matches!(parse("(cn=*a*b*)").unwrap(), Substring(_, s) if s.any == ["a", "b"] && s.initial.is_none())
        );
    }

    #[test]
    fn broken_filters_are_refused_with_a_position() {
        for bad in [
            "",
            "uid=a",
            "(uid=a",
            "(uid=a))",
            "(&)",
            "(=a)",
            "(uid)",
            "(uid=a(b)",
            "(uid=\\zz)",
            "(uid>=a*)",
            "(cn=a**b)",
            "(:=x)",
            "(!(a=1)(b=2))",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse("(uid=a))").unwrap_err().at, 7);
        let deep = "(!".repeat(40) + "(a=1)" + &")".repeat(40);
        assert!(parse(&deep).is_err());
    }
}
