//! Secrets that must never reach a log line and must not linger in memory.
//!
//! LDAP simple-bind passwords are octet strings (RFC 4511 §4.2): they may be
//! any bytes, including non-UTF-8, so they are kept as bytes and only turned
//! into a C string at the PAM boundary.

use std::ffi::{CStr, CString};
use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A bind password. Its bytes are wiped when it is dropped.
///
/// There is deliberately no `Display` and no `Clone`: every copy of a
/// password is one more place that has to be wiped, so copies are made only
/// where PAM needs one ([`Password::to_c_string`]).
pub struct Password(Zeroizing<Vec<u8>>);

impl Password {
    /// Takes ownership of the bytes, so that no unwiped copy is left behind
    /// by this constructor (the caller's earlier copies are its own business).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Password(Zeroizing::new(bytes))
    }

    /// The raw octets, for hashing or splitting. Do not log them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty password (an "unauthenticated" bind in LDAP terms).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The NUL-terminated copy PAM needs, itself wiped on drop.
    ///
    /// # Errors
    /// [`NulByteError`] when the password contains a NUL byte: C would see a
    /// shorter password, so it must be refused rather than truncated.
    pub fn to_c_string(&self) -> Result<SecretCString, NulByteError> {
        SecretCString::from_bytes(self.as_bytes())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// A secret contained a NUL byte and cannot be passed to C.
///
/// Carries no position: even that says something about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("secret contains a NUL byte and cannot be passed to PAM")]
pub struct NulByteError;

/// A `CString` holding a secret; its buffer is wiped on drop.
pub struct SecretCString(CString);

impl SecretCString {
    /// Copies `bytes` into a new C string.
    ///
    /// The buffer is allocated with room for the terminating NUL up front, so
    /// that `CString::new` does not reallocate and leave an unwiped copy on
    /// the heap.
    ///
    /// # Errors
    /// [`NulByteError`] when `bytes` contains a NUL byte.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NulByteError> {
        let mut buf = Vec::with_capacity(bytes.len().saturating_add(1));
        buf.extend_from_slice(bytes);
        match CString::new(buf) {
            Ok(c) => Ok(SecretCString(c)),
            Err(err) => {
                err.into_vec().zeroize();
                Err(NulByteError)
            }
        }
    }

    /// The C string, for handing to C. Do not log it.
    pub fn as_c_str(&self) -> &CStr {
        &self.0
    }
}

impl Drop for SecretCString {
    fn drop(&mut self) {
        // `into_bytes_with_nul` reuses the allocation, so this wipes the very
        // buffer the secret lived in.
        std::mem::take(&mut self.0).into_bytes_with_nul().zeroize();
    }
}

impl fmt::Debug for SecretCString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let p = Password::from_vec(b"hunter2".to_vec());
        assert_eq!(format!("{p:?}"), "********");
        assert_eq!(format!("{:?}", p.to_c_string()), "Ok(********)");
    }

    #[test]
    fn non_utf8_passwords_survive_the_conversion() {
        let p = Password::from_vec(vec![0xff, 0xfe, b'a']);
        let c = p.to_c_string().expect("no NUL");
        assert_eq!(c.as_c_str().to_bytes(), &[0xff, 0xfe, b'a']);
    }

    #[test]
    fn nul_byte_is_an_error() {
        let p = Password::from_vec(b"ab\0cd".to_vec());
        assert_eq!(p.to_c_string().err(), Some(NulByteError));
    }
}
