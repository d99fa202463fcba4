//! The errors of an egress call.
//!
//! A refusal names the rule that refused it and the key that would allow it
//! (`egress refused http://10.0.0.5/: 10.0.0.5 is private (RFC 1918), range
//! 10.0.0.0/8; to allow it add the host to egress.allow_hosts`). URLs in
//! messages are redacted ([`redact`]): no user name or password, no query
//! string, no fragment, because those are where URLs carry secrets.

use std::net::IpAddr;
use std::time::Duration;

use url::Url;

use crate::classify::BlockRule;
use crate::policy::keys;

/// Why an egress call was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The input is not a URL.
    #[error("egress refused {url}: not a valid URL ({cause})")]
    InvalidUrl {
        /// The input, redacted.
        url: String,
        /// The parser's complaint.
        cause: String,
    },
    /// An IPv6 literal with a zone id (`[fe80::1%25eth0]`).
    #[error(
        "egress refused {url}: IPv6 zone ids (%25...) are refused, they select a local network interface"
    )]
    ZoneId {
        /// The input, redacted.
        url: String,
    },
    /// A scheme other than http(s).
    #[error("egress refused {url}: the scheme {scheme}: is not allowed; {allowed}")]
    Scheme {
        /// The URL, redacted.
        url: String,
        /// The scheme.
        scheme: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A port that is not allowed.
    #[error(
        "egress refused {url}: port {port} is not allowed; to allow it add it to {}",
        keys::ALLOWED_PORTS
    )]
    Port {
        /// The URL, redacted.
        url: String,
        /// The port.
        port: u16,
    },
    /// A URL with a user name or password.
    #[error(
        "egress refused {url}: URLs with credentials (user:password@) are refused; send credentials in a header"
    )]
    Userinfo {
        /// The URL, redacted (without the credentials).
        url: String,
    },
    /// A host or address refused by a rule.
    #[error("egress refused {url}: {}", blocked_message(host, address.as_ref(), rule))]
    Blocked {
        /// The URL (or, for a refusal in the resolver, the host), redacted.
        url: String,
        /// The host as written in the URL.
        host: String,
        /// The address that was refused (`None` for a name refused by name).
        address: Option<IpAddr>,
        /// The rule.
        rule: BlockRule,
    },
    /// The name did not resolve.
    #[error("egress failed for {url}: cannot resolve {host}: {cause}")]
    Resolve {
        /// The URL, redacted.
        url: String,
        /// The host.
        host: String,
        /// The resolver's error.
        cause: String,
    },
    /// The name resolved to no address.
    #[error("egress failed for {url}: {host} has no addresses")]
    NoAddresses {
        /// The URL, redacted.
        url: String,
        /// The host.
        host: String,
    },
    /// A redirect target was refused.
    #[error("egress refused a redirect from {from}: {source}")]
    Redirect {
        /// The URL that redirected, redacted.
        from: String,
        /// Why the target was refused.
        source: Box<EgressError>,
    },
    /// More redirects than allowed.
    #[error(
        "egress refused {url}: more than {max} redirects; the limit is {}",
        keys::MAX_REDIRECTS
    )]
    TooManyRedirects {
        /// The URL that redirected once too often, redacted.
        url: String,
        /// The limit.
        max: u32,
    },
    /// A redirect without a usable `Location`.
    #[error("egress failed for {url}: the redirect has no usable Location ({cause})")]
    BadRedirect {
        /// The URL that redirected, redacted.
        url: String,
        /// What is wrong with it.
        cause: String,
    },
    /// The response body is larger than allowed.
    #[error(
        "egress refused {url}: the response is larger than {max} bytes; the limit is {}",
        keys::MAX_RESPONSE_BYTES
    )]
    TooLarge {
        /// The URL, redacted.
        url: String,
        /// The limit.
        max: u64,
    },
    /// The call took longer than allowed.
    #[error(
        "egress failed for {url}: no complete answer within {after:?}; the limit is {}",
        keys::TIMEOUT
    )]
    Timeout {
        /// The URL, redacted.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The connection failed.
    #[error("egress failed for {url}: cannot connect: {cause}")]
    Connect {
        /// The URL, redacted.
        url: String,
        /// The cause.
        cause: String,
    },
    /// The HTTP exchange failed after connecting.
    #[error("egress failed for {url}: {cause}")]
    Http {
        /// The URL, redacted.
        url: String,
        /// The cause.
        cause: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the egress HTTP client: {cause}")]
    Client {
        /// The cause.
        cause: String,
    },
}

fn blocked_message(host: &str, address: Option<&IpAddr>, rule: &BlockRule) -> String {
    let hint = if rule.is_metadata() {
        format!(
            "metadata endpoints open only when {} lists their exact address",
            keys::ALLOW_HOSTS
        )
    } else {
        format!("to allow it add the host to {}", keys::ALLOW_HOSTS)
    };
    match address {
        None => format!("{host} is {rule}; {hint}"),
        Some(ip) if ip_matches_host(*ip, host) => format!("{ip} is {rule}; {hint}"),
        Some(ip) => format!("{host} resolves to {ip}, which is {rule}; {hint}"),
    }
}

fn ip_matches_host(ip: IpAddr, host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|h| h == ip)
}

impl EgressError {
    /// A short stable identifier of the reason (for audit events, metrics
    /// and tests): the rule id for a blocked address or name, otherwise
    /// `scheme`, `port`, `userinfo`, `zone-id`, `invalid-url`,
    /// `max-redirects`, `max-response-bytes`, `timeout`, ...; a refused
    /// redirect gives the reason of its target.
    pub fn reason(&self) -> String {
        match self {
            Self::InvalidUrl { .. } => "invalid-url".into(),
            Self::ZoneId { .. } => "zone-id".into(),
            Self::Scheme { .. } => "scheme".into(),
            Self::Port { .. } => "port".into(),
            Self::Userinfo { .. } => "userinfo".into(),
            Self::Blocked { rule, .. } => rule.id(),
            Self::Resolve { .. } => "resolve".into(),
            Self::NoAddresses { .. } => "no-addresses".into(),
            Self::Redirect { source, .. } => source.reason(),
            Self::TooManyRedirects { .. } => "max-redirects".into(),
            Self::BadRedirect { .. } => "bad-redirect".into(),
            Self::TooLarge { .. } => "max-response-bytes".into(),
            Self::Timeout { .. } => "timeout".into(),
            Self::Connect { .. } => "connect".into(),
            Self::Http { .. } => "http".into(),
            Self::Client { .. } => "client".into(),
        }
    }

    /// Whether the policy refused the call (as opposed to the network or the
    /// server failing it).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::InvalidUrl { .. }
            | Self::ZoneId { .. }
            | Self::Scheme { .. }
            | Self::Port { .. }
            | Self::Userinfo { .. }
            | Self::Blocked { .. }
            | Self::TooManyRedirects { .. }
            | Self::TooLarge { .. } => true,
            Self::Redirect { source, .. } => source.is_refusal(),
            _ => false,
        }
    }

    /// The rule, for a blocked address or name (through redirects too).
    pub fn block_rule(&self) -> Option<&BlockRule> {
        match self {
            Self::Blocked { rule, .. } => Some(rule),
            Self::Redirect { source, .. } => source.block_rule(),
            _ => None,
        }
    }

    /// The same error, reported against `url` (errors raised inside the
    /// resolver know only the host).
    pub(crate) fn at(mut self, shown: &str) -> Self {
        match &mut self {
            Self::Blocked { url, .. }
            | Self::Resolve { url, .. }
            | Self::NoAddresses { url, .. }
            | Self::Connect { url, .. }
            | Self::Http { url, .. } => *url = shown.to_owned(),
            _ => {}
        }
        self
    }
}

/// A URL as it may appear in errors and logs: no user name or password, no
/// query string (shown as `?…`), no fragment.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let had_query = u.query().is_some();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let mut s = String::from(u);
    if had_query {
        s.push_str("?…");
    }
    s
}

/// Redacts input that did not parse: drops everything from the first `?`
/// or `#`, and anything before an `@` in what looks like the authority;
/// truncates long input.
pub fn redact_raw(input: &str) -> String {
    let cut = input.find(['?', '#']).unwrap_or(input.len());
    let mut s = input[..cut].to_owned();
    if let Some(scheme_end) = s.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = s[auth_start..]
            .find(['/', '\\'])
            .map_or(s.len(), |i| auth_start + i);
        if let Some(at) = s[auth_start..auth_end].rfind('@') {
            s.replace_range(auth_start..auth_start + at + 1, "");
        }
    }
    if cut < input.len() {
        s.push_str("?…");
    }
    if s.chars().count() > 200 {
        s = s.chars().take(200).collect::<String>() + "…";
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_secrets() {
        let u = Url::parse("https://user:hunter2@example.com:8443/p/a?token=abc#frag").unwrap();
        assert_eq!(redact(&u), "https://example.com:8443/p/a?…");
        assert_eq!(
            redact_raw("http://user:hunter2@[fe80::1%25eth0]/x?key=1"),
            "http://[fe80::1%25eth0]/x?…"
        );
        assert_eq!(redact_raw("gopher://a:b@h/"), "gopher://h/");
    }

    #[test]
    fn blocked_message_names_rule_and_fix() {
        let rule = crate::classify::classify("10.0.0.5".parse().unwrap()).unwrap();
        let e = EgressError::Blocked {
            url: "http://10.0.0.5/".into(),
            host: "10.0.0.5".into(),
            address: Some("10.0.0.5".parse().unwrap()),
            rule,
        };
        assert_eq!(
            e.to_string(),
            "egress refused http://10.0.0.5/: 10.0.0.5 is private (RFC 1918), range 10.0.0.0/8; \
             to allow it add the host to egress.allow_hosts"
        );
        let e = EgressError::Blocked {
            url: "http://evil.example/".into(),
            host: "evil.example".into(),
            address: Some("169.254.169.254".parse().unwrap()),
            rule: crate::classify::classify("169.254.169.254".parse().unwrap()).unwrap(),
        };
        let m = e.to_string();
        assert!(m.contains("evil.example resolves to 169.254.169.254, which is the cloud instance metadata service"), "{m}");
        assert!(m.contains("exact address"), "{m}");
        assert_eq!(e.reason(), "cloud-metadata");
        assert!(e.is_refusal());
    }
}
