//! `Origin` validation for the MCP endpoint (pure).
//!
//! The MCP Streamable HTTP transport requires servers to validate `Origin`
//! to stop DNS rebinding: a web page on `http://evil.example` whose name
//! re-resolves to the gateway's address makes the browser send requests
//! with `Origin: http://evil.example` and `Host: evil.example`. That is why
//! "the Origin equals the Host" is *not* a safe rule and is not used here:
//! under rebinding both name the attacker.
//!
//! The rules:
//! - no `Origin` header: allowed (not a browser; authentication still applies);
//! - an origin in the operator's list (`AIBOX_MCP_ALLOWED_ORIGINS`, exact
//!   `scheme://host[:port]`): allowed;
//! - a loopback origin (`localhost`, `127.0.0.0/8`, `[::1]`) while the
//!   request's `Host` is loopback too: allowed (local development, where a
//!   rebinding attacker cannot produce a loopback origin);
//! - anything else, including `Origin: null`: refused with 403.

use std::net::IpAddr;

/// Why an origin is not usable in the operator's list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "allowed origin '{0}' is invalid: use scheme://host[:port] with http or https and nothing after it (AIBOX_MCP_ALLOWED_ORIGINS)"
)]
pub struct BadOrigin(pub String);

/// A normalised origin: scheme, lowercase host, port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an `Origin` header value or a configured origin.
    pub fn parse(text: &str) -> Option<Self> {
        let url = url::Url::parse(text.trim()).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        // An origin is exactly scheme://host[:port]: no path, query,
        // fragment or credentials.
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || !matches!(url.path(), "" | "/")
        {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        let port = url.port_or_known_default()?;
        Some(Self {
            scheme: url.scheme().to_owned(),
            host,
            port,
        })
    }

    fn is_loopback(&self) -> bool {
        host_is_loopback(&self.host)
    }
}

fn host_is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`).
fn host_header_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The operator's allowed origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<Origin>,
}

/// Why a request's origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Origin '{0}' is not allowed to use the MCP endpoint; an operator can add it to AIBOX_MCP_ALLOWED_ORIGINS"
)]
pub struct OriginRefused(pub String);

impl OriginPolicy {
    /// A policy from configured origins.
    pub fn new<I, S>(allowed: I) -> Result<Self, BadOrigin>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let allowed = allowed
            .into_iter()
            .map(|s| Origin::parse(s.as_ref()).ok_or_else(|| BadOrigin(s.as_ref().to_owned())))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Checks a request's `Origin` (if any) given its `Host` (if any).
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), OriginRefused> {
        let Some(origin_text) = origin else {
            return Ok(());
        };
        let refused = || OriginRefused(crate::names::printable(origin_text));
        let o = Origin::parse(origin_text).ok_or_else(refused)?;
        if self.allowed.contains(&o) {
            return Ok(());
        }
        if o.is_loopback() && host.is_some_and(|h| host_is_loopback(host_header_name(h))) {
            return Ok(());
        }
        Err(refused())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn origin_table() {
        let policy =
            OriginPolicy::new(["https://app.example.com", "http://tools.internal:8081"]).unwrap();
        // (origin, host, allowed)
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, Some("gw.example.com"), true),
            (None, None, true),
            (
                Some("https://app.example.com"),
                Some("gw.example.com"),
                true,
            ),
            (
                Some("https://APP.example.com"),
                Some("gw.example.com"),
                true,
            ),
            (
                Some("https://app.example.com:443"),
                Some("gw.example.com"),
                true,
            ),
            (
                Some("https://app.example.com/"),
                Some("gw.example.com"),
                true,
            ),
            (
                Some("http://app.example.com"),
                Some("gw.example.com"),
                false,
            ),
            (
                Some("https://app.example.com:8443"),
                Some("gw.example.com"),
                false,
            ),
            (
                Some("https://app.example.com.evil.com"),
                Some("gw.example.com"),
                false,
            ),
            (Some("http://tools.internal:8081"), None, true),
            (Some("http://tools.internal"), None, false),
            // DNS rebinding: Origin and Host name the attacker.
            (
                Some("http://evil.example:8080"),
                Some("evil.example:8080"),
                false,
            ),
            (Some("http://evil.example"), Some("evil.example"), false),
            // Local development.
            (Some("http://localhost:3000"), Some("127.0.0.1:8080"), true),
            (Some("http://127.0.0.1:8080"), Some("localhost:8080"), true),
            (Some("http://[::1]:8080"), Some("[::1]:8080"), true),
            (Some("http://localhost:3000"), Some("gw.example.com"), false),
            (Some("http://localhost:3000"), None, false),
            (Some("http://evil.example"), Some("127.0.0.1:8080"), false),
            // Not origins.
            (Some("null"), Some("127.0.0.1"), false),
            (Some(""), Some("127.0.0.1"), false),
            (Some("file://"), Some("127.0.0.1"), false),
            (Some("chrome-extension://abc"), Some("127.0.0.1"), false),
            (Some("http://user@localhost"), Some("127.0.0.1"), false),
            (Some("https://app.example.com/path"), Some("gw"), false),
        ];
        for (origin, host, ok) in cases {
            assert_eq!(
                policy.check(*origin, *host).is_ok(),
                *ok,
                "{origin:?} {host:?}"
            );
        }
    }

    #[test]
    fn bad_configured_origins_are_refused() {
        for bad in [
            "app.example.com",
            "ftp://x",
            "https://x/path",
            "https://u:p@x",
            "null",
        ] {
            assert!(OriginPolicy::new([bad]).is_err(), "{bad}");
        }
    }
}
