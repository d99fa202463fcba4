//! Pure URL and address checks against an [`EgressPolicy`].
//!
//! URLs are parsed with the `url` crate, which implements the WHATWG URL
//! standard, the same parser the HTTP client uses: decimal, octal, hex and
//! short IPv4 forms (`http://2130706433/`, `http://0177.0.0.1/`,
//! `http://0x7f.1/`, `http://127.1/`), percent-encoded hosts, full-width
//! digits and dots all come out as the IPv4 address they denote, and that
//! address is what is checked. There is no second parser whose reading could
//! differ from the one that connects.
//!
//! The checks, in order: the scheme (http, https; only https with
//! `egress.https_only`), the host (a literal address is classified; a name is
//! refused by name or left for resolution), the port (80, 443 and
//! `egress.allowed_ports`), and credentials in the URL, which are refused:
//! they end up in logs and audit records, and `user@host` is the classic way
//! to make a URL read as if it went somewhere else. Fragments are never sent.
//! An IPv6 zone id (`[fe80::1%25eth0]`) is refused: the WHATWG parser rejects
//! it, and the refusal says why.

use std::net::IpAddr;

use url::{Host, Url};

use crate::classify::{BlockRule, classify, classify_name, normalize_name};
use crate::error::{EgressError, redact, redact_raw};
use crate::policy::EgressPolicy;

/// The host of a checked URL: what must be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedHost {
    /// A literal address, already checked.
    Ip(IpAddr),
    /// A name still to be resolved; every address it resolves to must pass
    /// [`check_addr`].
    Name {
        /// The normalised name (lowercase, no trailing dot).
        name: String,
        /// Whether `egress.allow_hosts` lists the name (its internal
        /// addresses are then allowed, metadata addresses excepted).
        allowed: bool,
    },
}

/// A URL that passed [`check_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    /// The URL without its fragment.
    pub url: Url,
    /// Its host.
    pub host: CheckedHost,
    /// Its port (explicit or the scheme's default).
    pub port: u16,
}

/// Parses a URL, telling a zone id apart from other parse errors.
pub fn parse_url(input: &str) -> Result<Url, EgressError> {
    Url::parse(input).map_err(|e| {
        if has_zone_id(input) {
            EgressError::ZoneId {
                url: redact_raw(input),
            }
        } else {
            EgressError::InvalidUrl {
                url: redact_raw(input),
                cause: e.to_string(),
            }
        }
    })
}

fn has_zone_id(input: &str) -> bool {
    input
        .find('[')
        .and_then(|open| {
            let rest = &input[open..];
            rest.find(']').map(|close| rest[..close].contains('%'))
        })
        .unwrap_or(false)
}

/// Checks a host name against the policy: `Ok(true)` when the allow-list
/// opens it, `Ok(false)` when it may be resolved and its addresses checked,
/// `Err` with the rule when it is refused by name.
pub fn check_name(policy: &EgressPolicy, name: &str) -> Result<bool, BlockRule> {
    if policy.allow.allows_name(name) {
        return Ok(true);
    }
    match classify_name(name) {
        Some(rule) => Err(BlockRule::Name(rule)),
        None => Ok(false),
    }
}

/// Checks one address: public addresses pass; internal ones pass when the
/// allow-list lists them, or when the name they were resolved from is listed
/// (metadata addresses excepted: they need their exact address listed).
pub fn check_addr(policy: &EgressPolicy, name_allowed: bool, ip: IpAddr) -> Result<(), BlockRule> {
    let Some(rule) = classify(ip) else {
        return Ok(());
    };
    let metadata = rule.is_metadata();
    if policy.allow.allows_ip(ip, metadata) || name_allowed && !metadata {
        return Ok(());
    }
    Err(rule)
}

/// Checks a parsed URL against the policy without any IO.
pub fn check_url(policy: &EgressPolicy, url: &Url) -> Result<CheckedUrl, EgressError> {
    let shown = redact(url);
    match url.scheme() {
        "https" => {}
        "http" if !policy.https_only => {}
        other => {
            return Err(EgressError::Scheme {
                url: shown,
                scheme: other.to_owned(),
                allowed: if policy.https_only {
                    "only https (egress.https_only is on)"
                } else {
                    "only http and https"
                },
            });
        }
    }
    let host = match url.host() {
        None => {
            return Err(EgressError::InvalidUrl {
                url: shown,
                cause: "no host".into(),
            });
        }
        Some(Host::Ipv4(ip)) => CheckedHost::Ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => CheckedHost::Ip(IpAddr::V6(ip)),
        Some(Host::Domain(d)) => {
            let name = normalize_name(d);
            match check_name(policy, &name) {
                Ok(allowed) => CheckedHost::Name { name, allowed },
                Err(rule) => {
                    return Err(EgressError::Blocked {
                        url: shown,
                        host: d.to_owned(),
                        address: None,
                        rule,
                    });
                }
            }
        }
    };
    if let CheckedHost::Ip(ip) = host {
        check_addr(policy, false, ip).map_err(|rule| EgressError::Blocked {
            url: shown.clone(),
            host: url.host_str().unwrap_or_default().to_owned(),
            address: Some(ip),
            rule,
        })?;
    }
    let port = url.port_or_known_default().unwrap_or(0);
    if !policy.allowed_ports.contains(&port) {
        return Err(EgressError::Port { url: shown, port });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::Userinfo { url: shown });
    }
    let mut url = url.clone();
    url.set_fragment(None);
    Ok(CheckedUrl { url, host, port })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn reason(policy: &EgressPolicy, input: &str) -> String {
        match parse_url(input).and_then(|u| check_url(policy, &u)) {
            Ok(_) => "ok".into(),
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn order_and_reasons() {
        let p = EgressPolicy::default();
        assert_eq!(reason(&p, "ftp://93.184.216.34/"), "scheme");
        assert_eq!(reason(&p, "http://93.184.216.34:22/"), "port");
        assert_eq!(reason(&p, "http://127.0.0.1:22/"), "loopback");
        assert_eq!(reason(&p, "http://u:p@93.184.216.34/"), "userinfo");
        assert_eq!(reason(&p, "http://[fe80::1%25eth0]/"), "zone-id");
        assert_eq!(reason(&p, "http://93.184.216.34/#x"), "ok");
        assert_eq!(reason(&p, "https://example.com/"), "ok");
        assert_eq!(reason(&p, "https://example.com:443/"), "ok");
        assert_eq!(reason(&p, "http://"), "invalid-url");
        let https = EgressPolicy::builder().https_only(true).build().unwrap();
        assert_eq!(reason(&https, "http://example.com/"), "scheme");
    }

    #[test]
    fn fragment_is_dropped() {
        let p = EgressPolicy::default();
        let c = check_url(&p, &Url::parse("https://example.com/a#b").unwrap()).unwrap();
        assert_eq!(c.url.as_str(), "https://example.com/a");
        assert_eq!(c.port, 443);
        assert_eq!(
            c.host,
            CheckedHost::Name {
                name: "example.com".into(),
                allowed: false
            }
        );
    }

    #[test]
    fn allowed_name_opens_internal_but_not_metadata() {
        let p = EgressPolicy::builder()
            .allow_host("wiki.corp.example")
            .build()
            .unwrap();
        assert_eq!(check_name(&p, "wiki.corp.example"), Ok(true));
        assert!(check_addr(&p, true, "10.0.0.5".parse().unwrap()).is_ok());
        assert!(check_addr(&p, false, "10.0.0.5".parse().unwrap()).is_err());
        assert!(check_addr(&p, true, "169.254.169.254".parse().unwrap()).is_err());
        assert!(check_addr(&p, true, "fd00:ec2::254".parse().unwrap()).is_err());
    }
}
