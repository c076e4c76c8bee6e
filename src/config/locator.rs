//! Spans to line numbers, and the kinds of value every section reads (addresses, files,
//! DNs, durations, counts), each refused with the file, the line and the key.

use super::{parse_duration, ConfigError};
use crate::dn::Dn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Turns spans into line numbers for error messages.
pub(super) struct Locator<'a> {
    pub text: &'a str,
    pub origin: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// A file that is not the TOML the configuration is made of (syntax, unknown key,
    /// wrong type), at the line the parser points to.
    pub fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line: e.span().map_or(0, |s| self.line_of(s.start)),
            message: e.message().to_owned(),
        }
    }

    pub fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line: self.line_of(at.span().start),
            message: message.into(),
        }
    }

    /// An error about the file as a whole (line 1).
    pub fn whole(&self, what: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line: 1,
            message: format!("internal default {what} does not parse"),
        }
    }

    pub fn socket(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|e| {
            self.error(
                value,
                format!("{key}: {e} (expected ip:port, e.g. 127.0.0.1:1389)"),
            )
        })
    }

    /// A file path that must be readable now.
    pub fn readable(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(value.get_ref());
        std::fs::File::open(&path)
            .map(|_| path)
            .map_err(|e| self.error(value, format!("{key}: {}: {e}", value.get_ref())))
    }

    pub fn dn(&self, value: &Spanned<String>, key: &str) -> Result<Dn, ConfigError> {
        Dn::parse(value.get_ref())
            .map_err(|e| self.error(value, format!("{key}: '{}': {e}", value.get_ref())))
    }

    pub fn dns(&self, list: Option<&[Spanned<String>]>, key: &str) -> Result<Vec<Dn>, ConfigError> {
        list.unwrap_or_default()
            .iter()
            .map(|d| self.dn(d, key))
            .collect()
    }

    pub fn duration(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        value.map_or(Ok(default), |v| {
            parse_duration(v.get_ref()).map_err(|m| self.error(v, format!("{key}: {m}")))
        })
    }

    pub fn positive(
        &self,
        value: Option<&Spanned<i64>>,
        key: &str,
        default: usize,
    ) -> Result<usize, ConfigError> {
        value.map_or(Ok(default), |v| {
            usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| self.error(v, format!("{key}: must be a positive integer")))
        })
    }
}
