//! The pure address and host-name classifier.
//!
//! [`classify`] answers one question for one IP address: is it a destination
//! that a tool may reach on the public internet, or does it belong to a range
//! that only makes sense inside a host, a cloud VPC or a private network? It
//! names the rule that refused the address, so an operator reading a refusal
//! knows what matched and where to allow it.
//!
//! IPv6 addresses that carry an IPv4 address inside them (IPv4-mapped,
//! IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo) are judged by the
//! IPv4 address they carry: `::ffff:127.0.0.1` reaches the loopback interface
//! just as surely as `127.0.0.1` does, and a NAT64 gateway turns
//! `64:ff9b::a9fe:a9fe` into a packet to 169.254.169.254.
//!
//! [`classify_name`] refuses host names that are internal by definition,
//! before any lookup: `localhost` and `*.localhost` (RFC 6761), the
//! private-use top-level names `*.internal` (reserved by ICANN in 2024 and
//! used by GCP and AWS for metadata and VPC names), `*.local` (multicast DNS,
//! RFC 6762), `*.home.arpa` (RFC 8375) and `*.localdomain` (the
//! conventional `/etc/hosts` suffix of the local host), the well-known metadata short
//! names, and single-label names such as `metadata` or `ollama`, which the
//! system resolver would complete with the search domains of
//! `/etc/resolv.conf` (inside Docker: the names of other containers).
//!
//! Everything here is a pure function of its input; the tables are data, so
//! the firewall rules of [`crate::rules`] block the same ranges.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Why an IPv4 address is not a public destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ipv4Rule {
    /// 169.254.169.254: the instance metadata service of AWS, GCP, Azure,
    /// Oracle Cloud, OpenStack and most other clouds.
    CloudMetadata,
    /// 169.254.170.2: the AWS ECS task metadata and credentials endpoint.
    EcsMetadata,
    /// 100.100.100.200: the Alibaba Cloud metadata service.
    AlibabaMetadata,
    /// 168.63.129.16: the Azure platform endpoint (WireServer, DNS, health
    /// probes), which Azure asks to be treated like the metadata address.
    AzureWireServer,
    /// 255.255.255.255: limited broadcast.
    Broadcast,
    /// 0.0.0.0/8: "this network" (0.0.0.0 reaches the local host on Linux).
    ThisNetwork,
    /// 10/8, 172.16/12, 192.168/16: private networks (RFC 1918).
    Private,
    /// 100.64.0.0/10: shared address space (RFC 6598): carrier-grade NAT
    /// and Tailscale.
    SharedAddressSpace,
    /// 127.0.0.0/8: loopback.
    Loopback,
    /// 169.254.0.0/16: link-local (RFC 3927).
    LinkLocal,
    /// 192.0.0.0/24: IETF protocol assignments (RFC 6890).
    IetfProtocol,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24: documentation
    /// (RFC 5737).
    Documentation,
    /// 192.88.99.0/24: the deprecated 6to4 relay anycast (RFC 7526).
    Relay6to4,
    /// 198.18.0.0/15: network benchmarking (RFC 2544).
    Benchmarking,
    /// 224.0.0.0/4: multicast.
    Multicast,
    /// 240.0.0.0/4: reserved for future use.
    Reserved,
}

impl Ipv4Rule {
    /// A short stable identifier (for audit events, metrics and tests).
    pub fn id(self) -> &'static str {
        match self {
            Self::CloudMetadata => "cloud-metadata",
            Self::EcsMetadata => "ecs-metadata",
            Self::AlibabaMetadata => "alibaba-metadata",
            Self::AzureWireServer => "azure-wireserver",
            Self::Broadcast => "broadcast",
            Self::ThisNetwork => "this-network",
            Self::Private => "rfc1918",
            Self::SharedAddressSpace => "cgnat",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::IetfProtocol => "ietf-protocol",
            Self::Documentation => "documentation",
            Self::Relay6to4 => "6to4-relay",
            Self::Benchmarking => "benchmarking",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
        }
    }

    /// What the range is, in words an operator recognises.
    pub fn describe(self) -> &'static str {
        match self {
            Self::CloudMetadata => "the cloud instance metadata service",
            Self::EcsMetadata => "the AWS ECS task metadata service",
            Self::AlibabaMetadata => "the Alibaba Cloud metadata service",
            Self::AzureWireServer => "the Azure platform endpoint (WireServer)",
            Self::Broadcast => "the broadcast address",
            Self::ThisNetwork => "\"this network\" (0.0.0.0/8 reaches the local host)",
            Self::Private => "private (RFC 1918)",
            Self::SharedAddressSpace => {
                "shared address space (RFC 6598: carrier-grade NAT, Tailscale)"
            }
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local (RFC 3927)",
            Self::IetfProtocol => "reserved for IETF protocol assignments (RFC 6890)",
            Self::Documentation => "a documentation range (RFC 5737)",
            Self::Relay6to4 => "the deprecated 6to4 relay anycast (RFC 7526)",
            Self::Benchmarking => "reserved for benchmarking (RFC 2544)",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved (240.0.0.0/4)",
        }
    }

    /// Whether this rule names a metadata or platform endpoint, which an
    /// allow-list opens only when it lists the exact address.
    pub fn is_metadata(self) -> bool {
        matches!(
            self,
            Self::CloudMetadata | Self::EcsMetadata | Self::AlibabaMetadata | Self::AzureWireServer
        )
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

/// The blocked IPv4 ranges, most specific first: the first match names the
/// rule. [`crate::rules`] turns the same table into firewall rules.
pub const IPV4_BLOCKED: &[(Ipv4Net, Ipv4Rule)] = &[
    (v4(169, 254, 169, 254, 32), Ipv4Rule::CloudMetadata),
    (v4(169, 254, 170, 2, 32), Ipv4Rule::EcsMetadata),
    (v4(100, 100, 100, 200, 32), Ipv4Rule::AlibabaMetadata),
    (v4(168, 63, 129, 16, 32), Ipv4Rule::AzureWireServer),
    (v4(255, 255, 255, 255, 32), Ipv4Rule::Broadcast),
    (v4(0, 0, 0, 0, 8), Ipv4Rule::ThisNetwork),
    (v4(10, 0, 0, 0, 8), Ipv4Rule::Private),
    (v4(100, 64, 0, 0, 10), Ipv4Rule::SharedAddressSpace),
    (v4(127, 0, 0, 0, 8), Ipv4Rule::Loopback),
    (v4(169, 254, 0, 0, 16), Ipv4Rule::LinkLocal),
    (v4(172, 16, 0, 0, 12), Ipv4Rule::Private),
    (v4(192, 0, 0, 0, 24), Ipv4Rule::IetfProtocol),
    (v4(192, 0, 2, 0, 24), Ipv4Rule::Documentation),
    (v4(192, 88, 99, 0, 24), Ipv4Rule::Relay6to4),
    (v4(192, 168, 0, 0, 16), Ipv4Rule::Private),
    (v4(198, 18, 0, 0, 15), Ipv4Rule::Benchmarking),
    (v4(198, 51, 100, 0, 24), Ipv4Rule::Documentation),
    (v4(203, 0, 113, 0, 24), Ipv4Rule::Documentation),
    (v4(224, 0, 0, 0, 4), Ipv4Rule::Multicast),
    (v4(240, 0, 0, 0, 4), Ipv4Rule::Reserved),
];

/// Why an IPv6 address (that does not embed an IPv4 one) is not a public
/// destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ipv6Rule {
    /// ::1.
    Loopback,
    /// ::.
    Unspecified,
    /// fd00:ec2::254: the AWS instance metadata service over IPv6.
    AwsMetadata,
    /// fc00::/7: unique local addresses (RFC 4193).
    UniqueLocal,
    /// fe80::/10: link-local.
    LinkLocal,
    /// fec0::/10: the deprecated site-local range (RFC 3879).
    SiteLocal,
    /// ff00::/8: multicast.
    Multicast,
    /// 100::/64: discard-only (RFC 6666).
    DiscardOnly,
    /// 2001:2::/48: benchmarking (RFC 5180).
    Benchmarking,
    /// 2001:10::/28 and 2001:20::/28: ORCHID identifiers (RFC 4843, 7343).
    Orchid,
    /// 2001:db8::/32 and 3fff::/20: documentation (RFC 3849, RFC 9637).
    Documentation,
    /// 5f00::/16: SRv6 segment identifiers (RFC 9602).
    Srv6,
    /// 64:ff9b:1::/48: local-use NAT64 (RFC 8215); where the IPv4 address
    /// sits depends on the local prefix length, so it is refused whole.
    LocalNat64,
    /// Everything outside 2000::/3 that no other rule names: not global
    /// unicast.
    NotGlobalUnicast,
}

impl Ipv6Rule {
    /// A short stable identifier.
    pub fn id(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::AwsMetadata => "aws-metadata-v6",
            Self::UniqueLocal => "unique-local",
            Self::LinkLocal => "link-local",
            Self::SiteLocal => "site-local",
            Self::Multicast => "multicast",
            Self::DiscardOnly => "discard-only",
            Self::Benchmarking => "benchmarking",
            Self::Orchid => "orchid",
            Self::Documentation => "documentation",
            Self::Srv6 => "srv6-sid",
            Self::LocalNat64 => "local-nat64",
            Self::NotGlobalUnicast => "not-global-unicast",
        }
    }

    /// What the range is, in words an operator recognises.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "the unspecified address (it reaches the local host)",
            Self::AwsMetadata => "the AWS instance metadata service (IPv6)",
            Self::UniqueLocal => "unique local (RFC 4193, the IPv6 private range)",
            Self::LinkLocal => "link-local",
            Self::SiteLocal => "site-local (deprecated, RFC 3879)",
            Self::Multicast => "multicast",
            Self::DiscardOnly => "discard-only (RFC 6666)",
            Self::Benchmarking => "reserved for benchmarking (RFC 5180)",
            Self::Orchid => "an ORCHID identifier (RFC 7343)",
            Self::Documentation => "a documentation range",
            Self::Srv6 => "an SRv6 segment identifier (RFC 9602)",
            Self::LocalNat64 => "local-use NAT64 (RFC 8215)",
            Self::NotGlobalUnicast => "not global unicast (outside 2000::/3)",
        }
    }

    /// Whether this rule names a metadata endpoint.
    pub fn is_metadata(self) -> bool {
        matches!(self, Self::AwsMetadata)
    }
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// The blocked IPv6 ranges that do not embed an IPv4 address, most specific
/// first. Addresses outside 2000::/3 that match none of them are refused as
/// [`Ipv6Rule::NotGlobalUnicast`].
pub const IPV6_BLOCKED: &[(Ipv6Net, Ipv6Rule)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), Ipv6Rule::Loopback),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), Ipv6Rule::Unspecified),
    (
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        Ipv6Rule::AwsMetadata,
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        Ipv6Rule::LocalNat64,
    ),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), Ipv6Rule::DiscardOnly),
    (
        v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
        Ipv6Rule::Benchmarking,
    ),
    (v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), Ipv6Rule::Orchid),
    (v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28), Ipv6Rule::Orchid),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        Ipv6Rule::Documentation,
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        Ipv6Rule::Documentation,
    ),
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), Ipv6Rule::Srv6),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), Ipv6Rule::UniqueLocal),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), Ipv6Rule::LinkLocal),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), Ipv6Rule::SiteLocal),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), Ipv6Rule::Multicast),
];

/// Global unicast, 2000::/3: the only IPv6 space that is routed publicly.
pub const IPV6_GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// How an IPv6 address carries an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Embedding {
    /// ::ffff:0:0/96 (RFC 4291): a dual-stack socket connects to the IPv4
    /// address itself.
    Ipv4Mapped,
    /// ::ffff:0:0:0/96 (RFC 2765, SIIT).
    Ipv4Translated,
    /// ::/96, the deprecated IPv4-compatible form (RFC 4291).
    Ipv4Compatible,
    /// 64:ff9b::/96, the well-known NAT64 prefix (RFC 6052).
    Nat64,
    /// 64:ff9b:1::/48 read as a /96 (RFC 8215).
    LocalNat64,
    /// 2002::/16, 6to4 (RFC 3056): the IPv4 address is bits 16 to 47.
    SixToFour,
    /// 2001::/32, Teredo (RFC 4380): the client's IPv4 address is the last
    /// 32 bits, inverted.
    TeredoClient,
    /// 2001::/32, Teredo: the server's IPv4 address is bits 32 to 63.
    TeredoServer,
}

impl Embedding {
    /// A short stable identifier.
    pub fn id(self) -> &'static str {
        match self {
            Self::Ipv4Mapped => "ipv4-mapped",
            Self::Ipv4Translated => "ipv4-translated",
            Self::Ipv4Compatible => "ipv4-compatible",
            Self::Nat64 => "nat64",
            Self::LocalNat64 => "local-nat64",
            Self::SixToFour => "6to4",
            Self::TeredoClient => "teredo-client",
            Self::TeredoServer => "teredo-server",
        }
    }

    /// The form, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Ipv4Mapped => "IPv4-mapped IPv6",
            Self::Ipv4Translated => "IPv4-translated IPv6",
            Self::Ipv4Compatible => "IPv4-compatible IPv6",
            Self::Nat64 => "NAT64",
            Self::LocalNat64 => "local-use NAT64",
            Self::SixToFour => "6to4",
            Self::TeredoClient => "Teredo (client)",
            Self::TeredoServer => "Teredo (server)",
        }
    }
}

/// Why a host name is refused before any lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameRule {
    /// `localhost` and `*.localhost` (RFC 6761).
    Localhost,
    /// A well-known metadata host name (`metadata`, `instance-data`,
    /// `metadata.google.internal`, ...).
    Metadata,
    /// A private-use top-level name: `*.internal`, `*.local`, `*.home.arpa`.
    PrivateSuffix(&'static str),
    /// A name without a dot, which the resolver completes with the search
    /// domains (inside Docker: another container).
    SingleLabel,
}

impl NameRule {
    /// A short stable identifier.
    pub fn id(self) -> &'static str {
        match self {
            Self::Localhost => "localhost-name",
            Self::Metadata => "metadata-name",
            Self::PrivateSuffix(_) => "private-suffix",
            Self::SingleLabel => "single-label-name",
        }
    }

    /// What the name is, in words.
    pub fn describe(self) -> String {
        match self {
            Self::Localhost => "a loopback name (RFC 6761)".to_owned(),
            Self::Metadata => "a cloud metadata service name".to_owned(),
            Self::PrivateSuffix(s) => format!("under the private-use suffix .{s}"),
            Self::SingleLabel => {
                "a single-label name (the resolver completes it with the search domains, \
                 inside Docker it names another container)"
                    .to_owned()
            }
        }
    }
}

/// The metadata host names refused by name. Names under `.internal`
/// (`metadata.google.internal`, `instance-data.ec2.internal`) are refused by
/// their suffix as well; they are listed so the refusal names them as what
/// they are.
pub const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The private-use suffixes refused by name.
pub const PRIVATE_SUFFIXES: &[&str] = &["internal", "local", "home.arpa", "localdomain"];

/// The rule that refused an address or a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockRule {
    /// An IPv4 address in a blocked range.
    Ipv4 {
        /// The rule.
        rule: Ipv4Rule,
        /// The range that matched.
        range: Ipv4Net,
    },
    /// An IPv6 address in a blocked range.
    Ipv6 {
        /// The rule.
        rule: Ipv6Rule,
        /// The range that matched.
        range: Ipv6Net,
    },
    /// An IPv6 address whose embedded IPv4 address is blocked.
    Embedded {
        /// How the IPv4 address is embedded.
        form: Embedding,
        /// The embedded address.
        ipv4: Ipv4Addr,
        /// The rule the embedded address matched.
        rule: Ipv4Rule,
        /// The range that matched.
        range: Ipv4Net,
    },
    /// A host name refused by name.
    Name(NameRule),
}

impl BlockRule {
    /// A short stable identifier: the rule id, prefixed with the embedding
    /// form for embedded addresses (`nat64/cloud-metadata`).
    pub fn id(&self) -> String {
        match self {
            Self::Ipv4 { rule, .. } => rule.id().to_owned(),
            Self::Ipv6 { rule, .. } => rule.id().to_owned(),
            Self::Embedded { form, rule, .. } => format!("{}/{}", form.id(), rule.id()),
            Self::Name(rule) => rule.id().to_owned(),
        }
    }

    /// Whether the rule names a metadata or platform endpoint.
    pub fn is_metadata(&self) -> bool {
        match self {
            Self::Ipv4 { rule, .. } | Self::Embedded { rule, .. } => rule.is_metadata(),
            Self::Ipv6 { rule, .. } => rule.is_metadata(),
            Self::Name(rule) => *rule == NameRule::Metadata,
        }
    }
}

impl fmt::Display for BlockRule {
    /// The predicate of "X is ...": `private (RFC 1918), range 10.0.0.0/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4 { rule, range } => write!(f, "{}, range {range}", rule.describe()),
            Self::Ipv6 { rule, range } => write!(f, "{}, range {range}", rule.describe()),
            Self::Embedded {
                form,
                ipv4,
                rule,
                range,
            } => write!(
                f,
                "{} and carries {ipv4}, which is {}, range {range}",
                form.describe(),
                rule.describe()
            ),
            Self::Name(rule) => f.write_str(&rule.describe()),
        }
    }
}

/// Classifies an IPv4 address: `None` means public.
pub fn classify_v4(ip: Ipv4Addr) -> Option<(Ipv4Rule, Ipv4Net)> {
    IPV4_BLOCKED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(net, rule)| (*rule, *net))
}

/// The IPv4 addresses an IPv6 address carries, with their form. Most forms
/// carry one; Teredo carries two (server and client), and both are judged.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<(Embedding, Ipv4Addr)> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut out = Vec::new();
    if s[..5] == [0; 5] && s[5] == 0xffff {
        out.push((Embedding::Ipv4Mapped, last32));
    } else if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        out.push((Embedding::Ipv4Translated, last32));
    } else if s[..6] == [0; 6] {
        // :: and ::1 are in this range too; they are named by their own rule
        // before this one is consulted.
        out.push((Embedding::Ipv4Compatible, last32));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push((Embedding::Nat64, last32));
    } else if s[..3] == [0x64, 0xff9b, 1] {
        out.push((Embedding::LocalNat64, last32));
    } else if s[0] == 0x2002 {
        out.push((Embedding::SixToFour, Ipv4Addr::new(o[2], o[3], o[4], o[5])));
    } else if s[0] == 0x2001 && s[1] == 0 {
        out.push((
            Embedding::TeredoClient,
            Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]),
        ));
        out.push((
            Embedding::TeredoServer,
            Ipv4Addr::new(o[4], o[5], o[6], o[7]),
        ));
    }
    out
}

/// Classifies an IPv6 address: `None` means public.
pub fn classify_v6(ip: Ipv6Addr) -> Option<BlockRule> {
    // Loopback and unspecified sit inside the IPv4-compatible range; name
    // them for what they are first.
    for (net, rule) in &IPV6_BLOCKED[..2] {
        if net.contains(&ip) {
            return Some(BlockRule::Ipv6 {
                rule: *rule,
                range: *net,
            });
        }
    }
    for (form, ipv4) in embedded_ipv4(ip) {
        if let Some((rule, range)) = classify_v4(ipv4) {
            return Some(BlockRule::Embedded {
                form,
                ipv4,
                rule,
                range,
            });
        }
    }
    if let Some((net, rule)) = IPV6_BLOCKED[2..].iter().find(|(net, _)| net.contains(&ip)) {
        return Some(BlockRule::Ipv6 {
            rule: *rule,
            range: *net,
        });
    }
    let embeds_public_ipv4 = matches!(
        embedded_ipv4(ip).first(),
        Some((
            Embedding::Ipv4Mapped
                | Embedding::Ipv4Translated
                | Embedding::Ipv4Compatible
                | Embedding::Nat64,
            _
        ))
    );
    if !IPV6_GLOBAL_UNICAST.contains(&ip) && !embeds_public_ipv4 {
        return Some(BlockRule::Ipv6 {
            rule: Ipv6Rule::NotGlobalUnicast,
            range: IPV6_GLOBAL_UNICAST,
        });
    }
    None
}

/// Classifies an address: `None` means it is a public destination, `Some`
/// names the rule that refuses it.
pub fn classify(ip: IpAddr) -> Option<BlockRule> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip).map(|(rule, range)| BlockRule::Ipv4 { rule, range }),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

/// Normalises a host name for comparison: ASCII lowercase, one trailing dot
/// removed (`LocalHost.` and `localhost` are the same name to a resolver).
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Classifies a host name (already in ASCII, as a URL parser leaves it):
/// `None` means it may be looked up; its addresses are then classified one
/// by one.
pub fn classify_name(name: &str) -> Option<NameRule> {
    let name = normalize_name(name);
    if name == "localhost" || name.ends_with(".localhost") {
        return Some(NameRule::Localhost);
    }
    if METADATA_NAMES.contains(&name.as_str()) {
        return Some(NameRule::Metadata);
    }
    for suffix in PRIVATE_SUFFIXES {
        if name == *suffix
            || name
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.'))
        {
            return Some(NameRule::PrivateSuffix(suffix));
        }
    }
    if !name.contains('.') {
        return Some(NameRule::SingleLabel);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn id(ip: &str) -> Option<String> {
        classify(ip.parse().unwrap()).map(|r| r.id())
    }

    #[test]
    fn ipv4_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0.0.0.0", Some("this-network")),
            ("0.255.255.255", Some("this-network")),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some("rfc1918")),
            ("10.255.255.255", Some("rfc1918")),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some("cgnat")),
            ("100.100.100.200", Some("alibaba-metadata")),
            ("100.127.255.255", Some("cgnat")),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("168.63.129.16", Some("azure-wireserver")),
            ("168.63.129.17", None),
            ("169.254.0.1", Some("link-local")),
            ("169.254.169.254", Some("cloud-metadata")),
            ("169.254.170.2", Some("ecs-metadata")),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("rfc1918")),
            ("172.31.255.255", Some("rfc1918")),
            ("172.32.0.0", None),
            ("192.0.0.8", Some("ietf-protocol")),
            ("192.0.1.1", None),
            ("192.0.2.1", Some("documentation")),
            ("192.88.99.1", Some("6to4-relay")),
            ("192.167.255.255", None),
            ("192.168.1.1", Some("rfc1918")),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("198.20.0.0", None),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("223.255.255.255", None),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("1.1.1.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(id(ip).as_deref(), *want, "{ip}");
        }
    }

    #[test]
    fn ipv6_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("::ffff:127.0.0.1", Some("ipv4-mapped/loopback")),
            ("::ffff:169.254.169.254", Some("ipv4-mapped/cloud-metadata")),
            ("::ffff:8.8.8.8", None),
            ("::ffff:0:10.1.2.3", Some("ipv4-translated/rfc1918")),
            ("::ffff:0:8.8.8.8", None),
            ("::127.0.0.1", Some("ipv4-compatible/loopback")),
            ("::10.0.0.1", Some("ipv4-compatible/rfc1918")),
            ("::0.0.0.2", Some("ipv4-compatible/this-network")),
            ("64:ff9b::a9fe:a9fe", Some("nat64/cloud-metadata")),
            ("64:ff9b::192.168.0.1", Some("nat64/rfc1918")),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::10.0.0.1", Some("local-nat64/rfc1918")),
            ("64:ff9b:1::8.8.8.8", Some("local-nat64")),
            ("2002:7f00:1::", Some("6to4/loopback")),
            ("2002:a9fe:a9fe::1", Some("6to4/cloud-metadata")),
            ("2002:808:808::1", None),
            // Teredo: server 65.54.227.120, client 127.0.0.1 inverted.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                Some("teredo-client/loopback"),
            ),
            // Teredo: server 10.0.0.1 (private), client 8.8.8.8 inverted.
            (
                "2001:0:a00:1:8000:63bf:f7f7:f7f7",
                Some("teredo-server/rfc1918"),
            ),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            ("fd00:ec2::254", Some("aws-metadata-v6")),
            ("fd12:3456::1", Some("unique-local")),
            ("fc00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("ff02::1", Some("multicast")),
            ("100::1", Some("discard-only")),
            ("2001:2::1", Some("benchmarking")),
            ("2001:10::1", Some("orchid")),
            ("2001:20::1", Some("orchid")),
            ("2001:db8::1", Some("documentation")),
            ("3fff::1", Some("documentation")),
            ("5f00::1", Some("srv6-sid")),
            ("4000::1", Some("not-global-unicast")),
            ("1::1", Some("not-global-unicast")),
            ("2606:4700::1111", None),
            ("2a00:1450:4001:82b::200e", None),
            ("2001:4860:4860::8888", None),
        ];
        for (ip, want) in cases {
            assert_eq!(id(ip).as_deref(), *want, "{ip}");
        }
    }

    #[test]
    fn names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("localhost", Some("localhost-name")),
            ("LOCALHOST.", Some("localhost-name")),
            ("evil.localhost", Some("localhost-name")),
            ("metadata", Some("metadata-name")),
            ("metadata.google.internal", Some("metadata-name")),
            ("metadata.google.internal.", Some("metadata-name")),
            ("instance-data", Some("metadata-name")),
            ("foo.internal", Some("private-suffix")),
            ("internal", Some("private-suffix")),
            ("printer.local", Some("private-suffix")),
            ("nas.home.arpa", Some("private-suffix")),
            ("ollama", Some("single-label-name")),
            ("example.com", None),
            ("notlocalhost.com", None),
            ("internal.example.com", None),
            ("myinternal", Some("single-label-name")),
            ("xinternal.com", None),
        ];
        for (name, want) in cases {
            assert_eq!(classify_name(name).map(NameRule::id), *want, "{name}");
        }
    }

    #[test]
    fn ipv4_table_ranges_are_canonical() {
        for (net, _) in IPV4_BLOCKED {
            assert_eq!(*net, net.trunc(), "{net}");
        }
        for (net, _) in IPV6_BLOCKED {
            assert_eq!(*net, net.trunc(), "{net}");
        }
    }

    #[test]
    fn display_names_the_range() {
        let r = classify("10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(r.to_string(), "private (RFC 1918), range 10.0.0.0/8");
        let r = classify("::ffff:169.254.169.254".parse().unwrap()).unwrap();
        assert!(r.to_string().contains("169.254.169.254"), "{r}");
        assert!(r.is_metadata());
    }
}
