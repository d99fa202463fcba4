//! Identifiers that cross trust boundaries, validated once where they enter.
//!
//! A tenant or user id ends up in SQL parameters, Redis keys, log lines, JWS
//! claims and audit rows. Restricting the alphabet at the edge means none of
//! those places needs its own escaping rules, and a hostile identity provider
//! claim cannot smuggle separators (`:` in Redis keys, newlines in logs).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The identifier was longer than allowed.
    #[error("{kind} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The identifier contained a character outside its alphabet.
    #[error("{kind} contains a character outside [A-Za-z0-9{extra}]")]
    BadChar {
        /// Which identifier.
        kind: &'static str,
        /// The punctuation that is allowed besides letters and digits.
        extra: &'static str,
    },
}

fn check(kind: &'static str, s: &str, max: usize, extra: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b))
    {
        return Err(IdError::BadChar { kind, extra });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $extra:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $max, $extra)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

string_id!(
    /// A tenant: the unit of isolation for limits, audit chains and secrets.
    TenantId, "tenant id", 64, "._-"
);
string_id!(
    /// A user within a tenant (an OIDC subject, a username or an email).
    UserId, "user id", 256, "._-@+:"
);
string_id!(
    /// A request id, accepted from `X-Request-Id` when well-formed.
    RequestId, "request id", 128, "._-:"
);
string_id!(
    /// A turn: one chat request or one agent turn, the unit of a CapToken and
    /// of an audit envelope.
    TurnId, "turn id", 64, "-"
);

impl TenantId {
    /// The tenant every request belongs to when authentication is off.
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }
}

impl UserId {
    /// The user every request is attributed to when authentication is off.
    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }
}

impl RequestId {
    /// A fresh, time-ordered request id (UUID v7).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl TurnId {
    /// A fresh, time-ordered turn id (UUID v7).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        assert!(TenantId::new("acme-corp_1.eu").is_ok());
        assert!(UserId::new("alice@example.com").is_ok());
        assert!(RequestId::new("req-123:abc").is_ok());
        assert!(TurnId::new(TurnId::generate().as_str()).is_ok());
        assert!(RequestId::new(RequestId::generate().as_str()).is_ok());
    }

    #[test]
    fn refuses_separators_and_control_characters() {
        for bad in ["", "a b", "a\nb", "a:b", "a/b", "a\0b", "é", "../x"] {
            assert!(TenantId::new(bad).is_err(), "tenant {bad:?} accepted");
        }
        for bad in ["", "x\r\nSet-Cookie: a=b", "a b", "<script>"] {
            assert!(RequestId::new(bad).is_err(), "request id {bad:?} accepted");
        }
        assert!(matches!(
            RequestId::new("a".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
    }

    #[test]
    fn deserialize_validates() {
        let ok: Result<TenantId, _> = serde_json::from_str("\"t1\"");
        assert!(ok.is_ok());
        let bad: Result<TenantId, _> = serde_json::from_str("\"t 1\"");
        assert!(bad.is_err());
    }
}
