//! Pure generation of the host firewall rules of `aibox egress`.
//!
//! Seed 004 §1 drops traffic from the tool containers' subnet to the private
//! ranges, the CGNAT/Tailscale range and the metadata addresses in Docker's
//! `DOCKER-USER` chain, and keeps DNS open. This module generates those rules
//! from the same range tables the in-process classifier uses
//! ([`crate::classify`]), so the host and the process block the same
//! destinations, for IPv4 (`iptables`) and IPv6 (`ip6tables`), and as one
//! nftables table of its own (`inet aibox_egress`).
//!
//! For each subnet, in order:
//!
//! 1. replies to connections made to the containers pass
//!    (`ctstate RELATED,ESTABLISHED`), so a service that calls a tool still
//!    gets its answer;
//! 2. DNS (udp and tcp port 53) passes, to any address, as the seed says;
//! 3. every blocked range is dropped, one rule per range, each with a
//!    comment naming its rule (`aibox-egress:rfc1918`);
//! 4. IPv6 only: NAT64 of a public IPv4 address passes, and everything else
//!    outside global unicast (2000::/3) is dropped.
//!
//! Where the seed uses `ACCEPT` for DNS, these rules use `RETURN`: the
//! packet goes on to Docker's own rules (network isolation) instead of
//! skipping them. Every rule carries a comment starting with
//! `aibox-egress`, which is how `apply` recognises its own rules (re-apply
//! replaces them, adds nothing) and how `remove` removes exactly them.
//!
//! The module also parses `iptables-save` output and plans the
//! `iptables-restore --noflush` input for apply and remove; the IO is in
//! [`crate::firewall`].

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::classify::{IPV4_BLOCKED, IPV6_BLOCKED, IPV6_GLOBAL_UNICAST};

/// The comment prefix of every rule aibox adds.
pub const TAG: &str = "aibox-egress";
/// Docker's chain for user rules, evaluated before Docker's own.
pub const CHAIN: &str = "DOCKER-USER";
/// The nftables table (family `inet`).
pub const NFT_TABLE: &str = "aibox_egress";

/// A bad subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not a CIDR range.
    #[error("--subnet {value}: not a CIDR range (e.g. 172.18.0.0/16 or fd00:18::/64)")]
    Invalid {
        /// The value.
        value: String,
    },
    /// Host bits set.
    #[error("--subnet {value}: host bits are set; did you mean {suggestion}?")]
    HostBits {
        /// The value.
        value: String,
        /// The network.
        suggestion: String,
    },
    /// A /0 would filter all forwarded traffic.
    #[error(
        "--subnet {value}: a /0 would filter every forwarded packet of the host; give the containers' subnet"
    )]
    Everything {
        /// The value.
        value: String,
    },
    /// Nothing given.
    #[error("no subnet: pass --subnet CIDR (repeatable, IPv4 and IPv6) or --docker-network NAME")]
    Empty,
}

/// The subnets whose traffic is filtered, by family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subnets {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Subnets {
    /// Parses CIDR strings; at least one is required.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, SubnetError> {
        let mut nets = Vec::with_capacity(values.len());
        for v in values {
            let v = v.as_ref().trim();
            let net: IpNet = v.parse().map_err(|_| SubnetError::Invalid {
                value: v.to_owned(),
            })?;
            nets.push((v.to_owned(), net));
        }
        Self::from_nets(nets)
    }

    fn from_nets(nets: Vec<(String, IpNet)>) -> Result<Self, SubnetError> {
        let mut out = Self::default();
        for (value, net) in nets {
            if net != net.trunc() {
                return Err(SubnetError::HostBits {
                    value,
                    suggestion: net.trunc().to_string(),
                });
            }
            if net.prefix_len() == 0 {
                return Err(SubnetError::Everything { value });
            }
            match net {
                IpNet::V4(n) if !out.v4.contains(&n) => out.v4.push(n),
                IpNet::V6(n) if !out.v6.contains(&n) => out.v6.push(n),
                _ => {}
            }
        }
        if out.v4.is_empty() && out.v6.is_empty() {
            return Err(SubnetError::Empty);
        }
        Ok(out)
    }

    /// The IPv4 subnets.
    pub fn v4(&self) -> &[Ipv4Net] {
        &self.v4
    }

    /// The IPv6 subnets.
    pub fn v6(&self) -> &[Ipv6Net] {
        &self.v6
    }

    /// The subnets of one family, as text.
    pub fn of(&self, family: Family) -> Vec<String> {
        match family {
            Family::V4 => self.v4.iter().map(ToString::to_string).collect(),
            Family::V6 => self.v6.iter().map(ToString::to_string).collect(),
        }
    }
}

/// An address family: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The rule tool.
    pub fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    /// The save tool.
    pub fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    /// The restore tool.
    pub fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

/// What a rule does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet on (iptables `RETURN`, nftables `accept` in our own
    /// table): Docker's rules still apply.
    Pass,
    /// Drop it.
    Drop,
}

/// What a rule matches, beyond the source subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Replies and related packets of connections already allowed.
    Established,
    /// DNS over udp or tcp.
    Dns {
        /// `udp` or `tcp`.
        proto: &'static str,
    },
    /// A destination range.
    Dest(IpNet),
    /// Every destination outside this range.
    NotDest(IpNet),
}

/// One generated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The source subnet.
    pub source: IpNet,
    /// The match.
    pub matches: Match,
    /// The verdict.
    pub verdict: Verdict,
    /// The rule's name, after `aibox-egress:` in its comment.
    pub name: String,
}

impl Rule {
    /// The comment: `aibox-egress:NAME`.
    pub fn comment(&self) -> String {
        format!("{TAG}:{}", self.name)
    }

    /// The iptables rule specification, as `iptables-save` prints it.
    pub fn iptables_spec(&self) -> String {
        let m = match &self.matches {
            Match::Established => "-m conntrack --ctstate RELATED,ESTABLISHED".to_owned(),
            Match::Dns { proto } => format!("-p {proto} -m {proto} --dport 53"),
            Match::Dest(net) => format!("-d {net}"),
            Match::NotDest(net) => format!("! -d {net}"),
        };
        let target = match self.verdict {
            Verdict::Pass => "RETURN",
            Verdict::Drop => "DROP",
        };
        format!(
            "-s {} {m} -m comment --comment \"{}\" -j {target}",
            self.source,
            self.comment()
        )
    }

    /// The nftables rule, as `nft list` prints it.
    pub fn nft(&self) -> String {
        let (saddr, daddr) = match self.source {
            IpNet::V4(_) => ("ip saddr", "ip daddr"),
            IpNet::V6(_) => ("ip6 saddr", "ip6 daddr"),
        };
        let m = match &self.matches {
            Match::Established => "ct state established,related".to_owned(),
            Match::Dns { proto } => format!("{proto} dport 53"),
            Match::Dest(net) => format!("{daddr} {}", nft_net(net)),
            Match::NotDest(net) => format!("{daddr} != {}", nft_net(net)),
        };
        let verdict = match self.verdict {
            Verdict::Pass => "accept",
            Verdict::Drop => "drop",
        };
        format!(
            "{saddr} {} {m} {verdict} comment \"{}\"",
            self.source,
            self.comment()
        )
    }
}

/// A range as `nft list` prints it: a single address without its prefix.
fn nft_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Keeps the ranges no other range of the list contains (the metadata /32s
/// sit inside 169.254.0.0/16 and need no rule of their own), sorted by
/// address.
fn outermost<N: Copy + Ord>(
    list: &[(N, String)],
    contains: impl Fn(&N, &N) -> bool,
) -> Vec<(N, String)> {
    let mut out: Vec<(N, String)> = list
        .iter()
        .filter(|(n, _)| !list.iter().any(|(o, _)| o != n && contains(o, n)))
        .cloned()
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// The IPv4 destinations dropped, with their rule names.
pub fn blocked_v4() -> Vec<(Ipv4Net, String)> {
    let all: Vec<(Ipv4Net, String)> = IPV4_BLOCKED
        .iter()
        .map(|(n, r)| (*n, r.id().to_owned()))
        .collect();
    outermost(&all, |o, n| o.contains(n))
}

/// The IPv6 destinations dropped, with their rule names: the IPv6 table;
/// the IPv4-embedding forms that are never routed or deprecated, whole
/// (mapped, translated, compatible, Teredo, 6to4: stricter than the
/// in-process check, which judges them by their IPv4 address); and NAT64 of
/// every blocked IPv4 range.
pub fn blocked_v6() -> Vec<(Ipv6Net, String)> {
    let mut all: Vec<(Ipv6Net, String)> = IPV6_BLOCKED
        .iter()
        .map(|(n, r)| (*n, r.id().to_owned()))
        .collect();
    let whole = [
        (
            Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
            96,
            "ipv4-mapped",
        ),
        (
            Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
            96,
            "ipv4-translated",
        ),
        (Ipv6Addr::UNSPECIFIED, 96, "ipv4-compatible"),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "teredo"),
        (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4"),
    ];
    for (addr, len, name) in whole {
        if let Ok(net) = Ipv6Net::new(addr, len) {
            all.push((net, name.to_owned()));
        }
    }
    for (v4, name) in blocked_v4() {
        let bits = u128::from(u32::from(v4.network()));
        let nat64 = Ipv6Addr::from((0x0064_ff9b_u128 << 96) | bits);
        if let Ok(net) = Ipv6Net::new(nat64, 96 + v4.prefix_len()) {
            all.push((net, format!("nat64/{name}")));
        }
    }
    outermost(&all, |o, n| o.contains(n))
}

/// The NAT64 well-known prefix, which passes for public IPv4 addresses.
fn nat64_prefix() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96).unwrap_or_default()
}

/// The rules of one family, in chain order.
pub fn chain_rules(family: Family, subnets: &Subnets) -> Vec<Rule> {
    let sources: Vec<IpNet> = match family {
        Family::V4 => subnets.v4.iter().copied().map(IpNet::V4).collect(),
        Family::V6 => subnets.v6.iter().copied().map(IpNet::V6).collect(),
    };
    let mut out = Vec::new();
    for source in sources {
        let rule = |matches: Match, verdict: Verdict, name: &str| Rule {
            source,
            matches,
            verdict,
            name: name.to_owned(),
        };
        out.push(rule(Match::Established, Verdict::Pass, "established"));
        out.push(rule(Match::Dns { proto: "udp" }, Verdict::Pass, "dns-udp"));
        out.push(rule(Match::Dns { proto: "tcp" }, Verdict::Pass, "dns-tcp"));
        match family {
            Family::V4 => {
                for (net, name) in blocked_v4() {
                    out.push(rule(Match::Dest(IpNet::V4(net)), Verdict::Drop, &name));
                }
            }
            Family::V6 => {
                for (net, name) in blocked_v6() {
                    out.push(rule(Match::Dest(IpNet::V6(net)), Verdict::Drop, &name));
                }
                out.push(rule(
                    Match::Dest(IpNet::V6(nat64_prefix())),
                    Verdict::Pass,
                    "nat64-public",
                ));
                out.push(rule(
                    Match::NotDest(IpNet::V6(IPV6_GLOBAL_UNICAST)),
                    Verdict::Drop,
                    "not-global-unicast",
                ));
            }
        }
    }
    out
}

/// The jump from `FORWARD` to `DOCKER-USER`, added only when aibox creates
/// the chain (no Docker).
pub fn jump_spec() -> String {
    format!("-m comment --comment \"{TAG}:jump\" -j {CHAIN}")
}

/// The iptables and ip6tables commands, for reading (`aibox egress rules`).
pub fn iptables_commands(subnets: &Subnets) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        let rules = chain_rules(family, subnets);
        if rules.is_empty() {
            continue;
        }
        let tool = family.iptables();
        let _ = writeln!(
            out,
            "# {tool}: {} (chain {CHAIN}; rules tagged {TAG})",
            subnets.of(family).join(", ")
        );
        let _ = writeln!(
            out,
            "# Without Docker, apply first creates the chain and jumps to it from FORWARD:\n#   {tool} -N {CHAIN}\n#   {tool} -I FORWARD 1 {}",
            jump_spec()
        );
        for (i, r) in rules.iter().enumerate() {
            let _ = writeln!(out, "{tool} -I {CHAIN} {} {}", i + 1, r.iptables_spec());
        }
    }
    out
}

/// The nftables table (as `nft list table inet aibox_egress` prints it).
pub fn nft_table(subnets: &Subnets) -> String {
    let mut out = format!(
        "table inet {NFT_TABLE} {{\n\tchain forward {{\n\t\ttype filter hook forward priority filter - 1; policy accept;\n"
    );
    for family in [Family::V4, Family::V6] {
        for r in chain_rules(family, subnets) {
            let _ = writeln!(out, "\t\t{}", r.nft());
        }
    }
    out.push_str("\t}\n}\n");
    out
}

/// The `nft -f` input that installs the table, replacing an earlier one in
/// the same transaction.
pub fn nft_script(subnets: &Subnets) -> String {
    format!(
        "add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{}",
        nft_table(subnets)
    )
}

/// Splits an `iptables-save` line into words, honouring double quotes and
/// backslash escapes inside them; quotes are removed.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// One rule of an `iptables-save` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    /// The chain.
    pub chain: String,
    /// The line exactly as saved (`-A CHAIN ...`).
    pub line: String,
    /// Its words, quotes removed.
    pub words: Vec<String>,
}

impl SavedRule {
    /// Whether aibox added it (its comment starts with `aibox-egress`).
    pub fn is_ours(&self) -> bool {
        self.words.windows(2).any(|w| {
            w[0] == "--comment"
                && (w[1] == TAG || w[1].strip_prefix(TAG).is_some_and(|r| r.starts_with(':')))
        })
    }

    /// Whether it jumps (or goes) to `chain`.
    pub fn jumps_to(&self, chain: &str) -> bool {
        self.words
            .windows(2)
            .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
    }

    /// The specification without `-A CHAIN`, normalised (single spaces, no
    /// quotes), for comparison with generated rules.
    pub fn normalized_spec(&self) -> String {
        self.words
            .iter()
            .skip(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The `filter` table of an `iptables-save` listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedFilter {
    /// Declared chains, in order.
    pub chains: Vec<String>,
    /// Rules, in order.
    pub rules: Vec<SavedRule>,
}

impl SavedFilter {
    /// Whether a chain exists.
    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    /// The rules of one chain, in order.
    pub fn chain(&self, chain: &str) -> impl Iterator<Item = &SavedRule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// Parses the `*filter` section of `iptables-save` output.
pub fn parse_save(text: &str) -> SavedFilter {
    let mut out = SavedFilter::default();
    let mut in_filter = false;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if line == "COMMIT" {
            in_filter = false;
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                out.chains.push(name.to_owned());
            }
        } else if line.starts_with("-A ") {
            let words = words(line);
            if let Some(chain) = words.get(1) {
                out.rules.push(SavedRule {
                    chain: chain.clone(),
                    line: line.to_owned(),
                    words,
                });
            }
        }
    }
    out
}

fn normalize(spec: &str) -> String {
    words(spec).join(" ")
}

fn delete_line(rule: &SavedRule) -> String {
    // `-A CHAIN spec` becomes `-D CHAIN spec`, the saved text otherwise
    // untouched, so the kernel matches it exactly.
    format!("-D{}", &rule.line[2..])
}

/// What `apply` will do to one family's filter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPlan {
    /// The `iptables-restore --noflush` input, or `None` when the rules are
    /// already in place.
    pub restore_input: Option<String>,
    /// Whether `DOCKER-USER` is created (no Docker).
    pub creates_chain: bool,
    /// Rules of an earlier apply that are replaced.
    pub replaces: usize,
    /// Rules installed (the jump included).
    pub installs: usize,
}

/// Plans `apply` for one family: remove every earlier aibox rule and insert
/// the wanted ones at the top of `DOCKER-USER`, in one transaction; nothing
/// when they are in place already.
pub fn plan_apply(family: Family, saved: &SavedFilter, subnets: &Subnets) -> ApplyPlan {
    let wanted: Vec<String> = chain_rules(family, subnets)
        .iter()
        .map(Rule::iptables_spec)
        .collect();
    let chain_exists = saved.has_chain(CHAIN);
    let foreign_jump = saved
        .chain("FORWARD")
        .any(|r| !r.is_ours() && r.jumps_to(CHAIN));
    let want_jump = !foreign_jump;
    let ours: Vec<&SavedRule> = saved.rules.iter().filter(|r| r.is_ours()).collect();

    let chain_specs: Vec<String> = saved.chain(CHAIN).map(SavedRule::normalized_spec).collect();
    let wanted_norm: Vec<String> = wanted.iter().map(|s| normalize(s)).collect();
    let chain_ok = chain_specs.len() >= wanted_norm.len()
        && chain_specs[..wanted_norm.len()] == wanted_norm[..];
    let jump_ok = if want_jump {
        saved
            .chain("FORWARD")
            .next()
            .is_some_and(|r| r.normalized_spec() == normalize(&jump_spec()))
    } else {
        true
    };
    let count_ok = ours.len() == wanted.len() + usize::from(want_jump);
    if chain_exists && chain_ok && jump_ok && count_ok {
        return ApplyPlan {
            restore_input: None,
            creates_chain: false,
            replaces: 0,
            installs: 0,
        };
    }

    let mut input = String::from("*filter\n");
    if !chain_exists {
        let _ = writeln!(input, ":{CHAIN} - [0:0]");
    }
    for r in &ours {
        let _ = writeln!(input, "{}", delete_line(r));
    }
    if want_jump {
        let _ = writeln!(input, "-I FORWARD 1 {}", jump_spec());
    }
    for (i, spec) in wanted.iter().enumerate() {
        let _ = writeln!(input, "-I {CHAIN} {} {spec}", i + 1);
    }
    input.push_str("COMMIT\n");
    ApplyPlan {
        restore_input: Some(input),
        creates_chain: !chain_exists,
        replaces: ours.len(),
        installs: wanted.len() + usize::from(want_jump),
    }
}

/// What `remove` will do to one family's filter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovePlan {
    /// The `iptables-restore --noflush` input, or `None` when there is
    /// nothing of ours.
    pub restore_input: Option<String>,
    /// Rules removed.
    pub removes: usize,
    /// Whether `DOCKER-USER` is deleted (aibox created it).
    pub deletes_chain: bool,
}

/// Plans `remove` for one family: delete every rule whose comment starts
/// with `aibox-egress`, and `DOCKER-USER` itself when aibox created it (its
/// jump from FORWARD is ours), nothing else refers to it and it is left
/// empty.
pub fn plan_remove(saved: &SavedFilter) -> RemovePlan {
    let ours: Vec<&SavedRule> = saved.rules.iter().filter(|r| r.is_ours()).collect();
    if ours.is_empty() {
        return RemovePlan {
            restore_input: None,
            removes: 0,
            deletes_chain: false,
        };
    }
    let our_jump = ours
        .iter()
        .any(|r| r.chain == "FORWARD" && r.jumps_to(CHAIN));
    let chain_left_empty = saved.chain(CHAIN).all(SavedRule::is_ours);
    let other_refs = saved
        .rules
        .iter()
        .any(|r| !r.is_ours() && r.jumps_to(CHAIN));
    let deletes_chain = our_jump && chain_left_empty && !other_refs;
    let mut input = String::from("*filter\n");
    for r in &ours {
        let _ = writeln!(input, "{}", delete_line(r));
    }
    if deletes_chain {
        let _ = writeln!(input, "-X {CHAIN}");
    }
    input.push_str("COMMIT\n");
    RemovePlan {
        restore_input: Some(input),
        removes: ours.len(),
        deletes_chain,
    }
}

/// Whether an `nft list tables` listing has the aibox table.
pub fn nft_has_table(list_tables: &str) -> bool {
    list_tables
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["table", "inet", NFT_TABLE])
}

/// Whether two nftables listings are the same ruleset (whitespace aside).
pub fn nft_same(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
    };
    norm(a) == norm(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
