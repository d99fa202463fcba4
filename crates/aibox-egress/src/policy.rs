//! The egress policy: which schemes and ports tools may use, which internal
//! hosts the operator opened, and the caps on redirects, size and time.
//!
//! Built only through [`EgressPolicyBuilder::build`], which checks every
//! value and names the configuration key of a bad one (`egress.allow_hosts[2]
//! = "10.0.0.5/8": host bits are set; did you mean 10.0.0.0/8?`). The key
//! names are the constants of [`keys`].
//!
//! The allow-list (`egress.allow_hosts`) takes host names (`wiki.corp.example`),
//! suffix patterns (`*.corp.example`: every name below, not the name itself),
//! IP addresses and CIDR ranges. A listed name may resolve to internal
//! addresses; a listed address or range may be reached by any name or
//! directly. Cloud metadata addresses (169.254.169.254, 169.254.170.2,
//! 100.100.100.200, 168.63.129.16, fd00:ec2::254) are the exception: they
//! open only when listed as exact addresses, never through a range that
//! contains them or a name that resolves to them, because reaching one hands
//! the host's cloud credentials to a tool.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::classify::normalize_name;

/// The configuration keys, as the operator writes them in `config.yaml`.
pub mod keys {
    /// Internal hosts, suffix patterns, addresses and ranges tools may reach.
    pub const ALLOW_HOSTS: &str = "egress.allow_hosts";
    /// Ports allowed besides 80 and 443.
    pub const ALLOWED_PORTS: &str = "egress.allowed_ports";
    /// Refuse plain `http:`.
    pub const HTTPS_ONLY: &str = "egress.https_only";
    /// Redirect hops followed per call.
    pub const MAX_REDIRECTS: &str = "egress.max_redirects";
    /// The largest response body read, in bytes.
    pub const MAX_RESPONSE_BYTES: &str = "egress.max_response_bytes";
    /// The whole call, all hops and the body included.
    pub const TIMEOUT: &str = "egress.timeout_ms";
    /// Establishing one TCP (and TLS) connection.
    pub const CONNECT_TIMEOUT: &str = "egress.connect_timeout_ms";
}

/// The ports allowed without configuration.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];
/// The default redirect cap.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;
/// The highest redirect cap accepted.
pub const MAX_MAX_REDIRECTS: u32 = 20;
/// The default response size cap: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
/// The default total time of a call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bad egress setting; the message names the key, the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct PolicyError {
    /// The configuration key (with the list index for list entries).
    pub key: String,
    /// The offending value, quoted as written.
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

fn policy_error(
    key: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> PolicyError {
    PolicyError {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The operator's allow-list, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    names: BTreeSet<String>,
    /// Suffixes with their leading dot: `*.corp.example` is `.corp.example`.
    suffixes: BTreeSet<String>,
    exact: BTreeSet<IpAddr>,
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parses the entries of `egress.allow_hosts`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, PolicyError> {
        let mut list = Self::default();
        for (i, entry) in entries.iter().enumerate() {
            list.add(entry.as_ref(), &format!("{}[{i}]", keys::ALLOW_HOSTS))?;
        }
        Ok(list)
    }

    fn add(&mut self, raw: &str, key: &str) -> Result<(), PolicyError> {
        let quoted = format!("{raw:?}");
        let entry = raw.trim();
        if entry.is_empty() {
            return Err(policy_error(key, quoted, "an empty entry; remove it"));
        }
        if entry.contains("://") {
            return Err(policy_error(
                key,
                quoted,
                "give a host name, a *.suffix pattern, an IP address or a CIDR range, not a URL",
            ));
        }
        if entry.contains('/') {
            return match entry.parse::<IpNet>() {
                Ok(net) => self.add_net(net, key, &quoted),
                Err(_) if looks_like_cidr(entry) => Err(policy_error(
                    key,
                    quoted,
                    "not a valid CIDR range (e.g. 10.1.0.0/16 or fd00:1::/64)",
                )),
                Err(_) => Err(policy_error(
                    key,
                    quoted,
                    "give a host name, a *.suffix pattern, an IP address or a CIDR range, not a path",
                )),
            };
        }
        let bare = bracketed(entry).unwrap_or(entry);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.exact.insert(canonical_ip(ip));
            return Ok(());
        }
        if entry == "*" || entry == "*." {
            return Err(policy_error(
                key,
                quoted,
                "a bare * would turn the egress check off; list the internal hosts tools need",
            ));
        }
        let (pattern, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        if name.contains('*') {
            return Err(policy_error(
                key,
                quoted,
                "only a leading *. is supported (e.g. *.corp.example)",
            ));
        }
        if name.contains(':') {
            return Err(policy_error(
                key,
                quoted,
                "ports are not part of an allow_hosts entry; list the host and add the port to egress.allowed_ports",
            ));
        }
        // Normalise the way a URL host is normalised (IDNA, lowercase), so a
        // listed name matches the name a tool's URL produces.
        let host = url::Url::parse(&format!("http://{name}/"))
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()));
        match host {
            Some(url::Host::Domain(d)) => {
                let d = normalize_name(&d);
                if pattern {
                    self.suffixes.insert(format!(".{d}"));
                } else {
                    self.names.insert(d);
                }
                Ok(())
            }
            // A numeric form such as 2130706433 or 127.1: store the address
            // it denotes, as the URL parser reads it.
            Some(url::Host::Ipv4(ip)) if !pattern => {
                self.exact.insert(IpAddr::V4(ip));
                Ok(())
            }
            _ => Err(policy_error(
                key,
                quoted,
                "not a valid host name, address or range",
            )),
        }
    }

    fn add_net(&mut self, net: IpNet, key: &str, quoted: &str) -> Result<(), PolicyError> {
        if net != net.trunc() {
            return Err(policy_error(
                key,
                quoted,
                format!("host bits are set; did you mean {}?", net.trunc()),
            ));
        }
        if net.prefix_len() == 0 {
            return Err(policy_error(
                key,
                quoted,
                "this range allows every address and turns the egress check off; list the internal ranges tools need",
            ));
        }
        if net.prefix_len() == net.max_prefix_len() {
            self.exact.insert(canonical_ip(net.addr()));
        } else {
            self.nets.push(net);
        }
        Ok(())
    }

    /// Whether the list opens this host name (normalised).
    pub fn allows_name(&self, name: &str) -> bool {
        let name = normalize_name(name);
        self.names.contains(&name) || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }

    /// Whether the list opens this address. Metadata addresses open only
    /// when listed exactly.
    pub fn allows_ip(&self, ip: IpAddr, is_metadata: bool) -> bool {
        let ip = canonical_ip(ip);
        self.exact.contains(&ip) || !is_metadata && self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
            && self.suffixes.is_empty()
            && self.exact.is_empty()
            && self.nets.is_empty()
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address: `::ffff:10.0.0.5`
/// matches an entry `10.0.0.5`.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn bracketed(s: &str) -> Option<&str> {
    s.strip_prefix('[')?.strip_suffix(']')
}

fn looks_like_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(a, len)| {
        a.parse::<IpAddr>().is_ok() || len.chars().all(|c| c.is_ascii_digit())
    })
}

/// The checked egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub(crate) https_only: bool,
    pub(crate) allowed_ports: BTreeSet<u16>,
    pub(crate) allow: AllowList,
    pub(crate) max_redirects: u32,
    pub(crate) max_response_bytes: u64,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            https_only: false,
            allowed_ports: DEFAULT_PORTS.into_iter().collect(),
            allow: AllowList::default(),
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl EgressPolicy {
    /// Starts a builder with the defaults (ports 80 and 443, nothing
    /// internal allowed, 5 redirects, 10 MiB, 30 s total, 10 s connect).
    pub fn builder() -> EgressPolicyBuilder {
        EgressPolicyBuilder::default()
    }

    /// Whether plain `http:` is refused.
    pub fn https_only(&self) -> bool {
        self.https_only
    }

    /// The allowed ports.
    pub fn allowed_ports(&self) -> &BTreeSet<u16> {
        &self.allowed_ports
    }

    /// The operator's allow-list.
    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }

    /// Redirect hops followed per call.
    pub fn max_redirects(&self) -> u32 {
        self.max_redirects
    }

    /// The largest response body read.
    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_bytes
    }

    /// The total time of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time to establish one connection.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// Collects raw settings; [`build`](Self::build) checks them.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicyBuilder {
    https_only: bool,
    extra_ports: Vec<i64>,
    allow_hosts: Vec<String>,
    max_redirects: Option<i64>,
    max_response_bytes: Option<u64>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
}

impl EgressPolicyBuilder {
    /// `egress.https_only`: refuse plain `http:`.
    pub fn https_only(mut self, on: bool) -> Self {
        self.https_only = on;
        self
    }

    /// `egress.allowed_ports`: ports allowed besides 80 and 443. Taken as
    /// `i64` so a config value out of range is reported, not truncated.
    pub fn allowed_ports(mut self, ports: impl IntoIterator<Item = i64>) -> Self {
        self.extra_ports.extend(ports);
        self
    }

    /// `egress.allow_hosts`: one entry.
    pub fn allow_host(mut self, entry: impl Into<String>) -> Self {
        self.allow_hosts.push(entry.into());
        self
    }

    /// `egress.allow_hosts`: several entries.
    pub fn allow_hosts<S: Into<String>>(mut self, entries: impl IntoIterator<Item = S>) -> Self {
        self.allow_hosts.extend(entries.into_iter().map(Into::into));
        self
    }

    /// `egress.max_redirects` (0 refuses every redirect).
    pub fn max_redirects(mut self, n: i64) -> Self {
        self.max_redirects = Some(n);
        self
    }

    /// `egress.max_response_bytes`.
    pub fn max_response_bytes(mut self, n: u64) -> Self {
        self.max_response_bytes = Some(n);
        self
    }

    /// `egress.timeout_ms`: the whole call.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// `egress.connect_timeout_ms`.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Checks every setting.
    pub fn build(self) -> Result<EgressPolicy, PolicyError> {
        let mut allowed_ports: BTreeSet<u16> = DEFAULT_PORTS.into_iter().collect();
        for (i, p) in self.extra_ports.iter().enumerate() {
            match u16::try_from(*p) {
                Ok(port) if port != 0 => {
                    allowed_ports.insert(port);
                }
                _ => {
                    return Err(policy_error(
                        format!("{}[{i}]", keys::ALLOWED_PORTS),
                        p,
                        "not a TCP port (1 to 65535)",
                    ));
                }
            }
        }
        let allow = AllowList::parse(&self.allow_hosts)?;
        let max_redirects = match self.max_redirects {
            None => DEFAULT_MAX_REDIRECTS,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n <= MAX_MAX_REDIRECTS => n,
                _ => {
                    return Err(policy_error(
                        keys::MAX_REDIRECTS,
                        n,
                        format!("must be between 0 and {MAX_MAX_REDIRECTS}"),
                    ));
                }
            },
        };
        let max_response_bytes = self
            .max_response_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
        if max_response_bytes == 0 {
            return Err(policy_error(
                keys::MAX_RESPONSE_BYTES,
                0,
                "must be at least 1 (the default is 10485760, 10 MiB)",
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(policy_error(
                keys::TIMEOUT,
                "0s",
                "must be longer than zero",
            ));
        }
        let connect_timeout = self
            .connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT.min(timeout));
        if connect_timeout.is_zero() {
            return Err(policy_error(
                keys::CONNECT_TIMEOUT,
                "0s",
                "must be longer than zero",
            ));
        }
        if connect_timeout > timeout {
            return Err(policy_error(
                keys::CONNECT_TIMEOUT,
                format!("{connect_timeout:?}"),
                format!(
                    "is longer than {} ({timeout:?}), which bounds the whole call",
                    keys::TIMEOUT
                ),
            ));
        }
        Ok(EgressPolicy {
            https_only: self.https_only,
            allowed_ports,
            allow,
            max_redirects,
            max_response_bytes,
            timeout,
            connect_timeout,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn err(entries: &[&str]) -> String {
        EgressPolicy::builder()
            .allow_hosts(entries.iter().copied())
            .build()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn allow_list_forms() {
        let p = EgressPolicy::builder()
            .allow_hosts([
                "Wiki.Corp.Example.",
                "*.svc.example",
                "10.1.0.0/16",
                "192.168.7.7",
                "[fd00:1::5]",
                "fd00:2::/64",
                "169.254.169.254",
                "2130706433",
            ])
            .build()
            .unwrap();
        let a = p.allow_list();
        assert!(a.allows_name("wiki.corp.example"));
        assert!(a.allows_name("WIKI.corp.example."));
        assert!(!a.allows_name("corp.example"));
        assert!(a.allows_name("a.svc.example"));
        assert!(a.allows_name("a.b.svc.example"));
        assert!(!a.allows_name("svc.example"));
        assert!(!a.allows_name("evilsvc.example"));
        assert!(a.allows_ip("10.1.2.3".parse().unwrap(), false));
        assert!(!a.allows_ip("10.2.0.1".parse().unwrap(), false));
        assert!(a.allows_ip("192.168.7.7".parse().unwrap(), false));
        assert!(a.allows_ip("::ffff:192.168.7.7".parse().unwrap(), false));
        assert!(a.allows_ip("fd00:1::5".parse().unwrap(), false));
        assert!(a.allows_ip("fd00:2::9".parse().unwrap(), false));
        assert!(a.allows_ip("169.254.169.254".parse().unwrap(), true));
        assert!(a.allows_ip("127.0.0.1".parse().unwrap(), false));
    }

    #[test]
    fn metadata_needs_an_exact_entry() {
        let p = EgressPolicy::builder()
            .allow_host("169.254.0.0/16")
            .build()
            .unwrap();
        assert!(
            p.allow_list()
                .allows_ip("169.254.1.1".parse().unwrap(), false)
        );
        assert!(
            !p.allow_list()
                .allows_ip("169.254.169.254".parse().unwrap(), true)
        );
    }

    #[test]
    fn bad_entries_name_the_key_and_fix() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["ok.example", ""],
                "egress.allow_hosts[1] = \"\": an empty entry",
            ),
            (&["10.0.0.5/8"], "did you mean 10.0.0.0/8?"),
            (&["0.0.0.0/0"], "turns the egress check off"),
            (&["::/0"], "turns the egress check off"),
            (&["*"], "would turn the egress check off"),
            (&["http://wiki.example/"], "not a URL"),
            (&["10.0.0.0/33"], "not a valid CIDR range"),
            (
                &["wiki.example:8080"],
                "add the port to egress.allowed_ports",
            ),
            (&["a.*.example"], "only a leading *."),
            (&["exa mple.com"], "not a valid host name"),
        ];
        for (entries, want) in cases {
            let e = err(entries);
            assert!(e.contains(want), "{entries:?}: {e}");
            assert!(e.starts_with("egress.allow_hosts["), "{e}");
        }
    }

    #[test]
    fn numbers_and_durations() {
        let e = EgressPolicy::builder()
            .allowed_ports([8080, 70000])
            .build()
            .unwrap_err();
        assert_eq!(e.key, "egress.allowed_ports[1]");
        let e = EgressPolicy::builder()
            .allowed_ports([0])
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("not a TCP port"));
        let p = EgressPolicy::builder()
            .allowed_ports([8080])
            .build()
            .unwrap();
        assert_eq!(
            p.allowed_ports().iter().copied().collect::<Vec<_>>(),
            vec![80, 443, 8080]
        );
        let e = EgressPolicy::builder()
            .max_redirects(21)
            .build()
            .unwrap_err();
        assert_eq!(e.key, "egress.max_redirects");
        let e = EgressPolicy::builder()
            .max_redirects(-1)
            .build()
            .unwrap_err();
        assert_eq!(e.key, "egress.max_redirects");
        let e = EgressPolicy::builder()
            .max_response_bytes(0)
            .build()
            .unwrap_err();
        assert_eq!(e.key, "egress.max_response_bytes");
        let e = EgressPolicy::builder()
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.key, "egress.timeout_ms");
        let e = EgressPolicy::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(6))
            .build()
            .unwrap_err();
        assert_eq!(e.key, "egress.connect_timeout_ms");
        let p = EgressPolicy::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        assert_eq!(p.connect_timeout(), Duration::from_secs(3));
        let d = EgressPolicy::default();
        assert_eq!(d.max_redirects(), 5);
        assert!(d.allow_list().is_empty());
    }
}
