//! Unit tests of the firewall rule generation and planning: exact rule text,
//! agreement with the in-process classifier, and the apply/remove plans
//! against saved tables with and without Docker.

use std::net::IpAddr;

use super::*;
use crate::classify::classify;

fn subnets(list: &[&str]) -> Subnets {
    Subnets::parse(list).unwrap()
}

/// The verdict of a chain for a packet from `src` to `dst`: the first
/// matching rule decides; no match passes. Established and DNS rules are
/// left out (the packet is a new TCP connection to port 80).
fn verdict(rules: &[Rule], src: IpAddr, dst: IpAddr) -> Verdict {
    for r in rules {
        if !r.source.contains(&src) {
            continue;
        }
        let hit = match &r.matches {
            Match::Established | Match::Dns { .. } => false,
            Match::Dest(net) => net.contains(&dst),
            Match::NotDest(net) => !net.contains(&dst),
        };
        if hit {
            return r.verdict;
        }
    }
    Verdict::Pass
}

#[test]
fn iptables_v4_rules_exact() {
    let s = subnets(&["172.18.0.0/16"]);
    let got: Vec<String> = chain_rules(Family::V4, &s)
        .iter()
        .map(Rule::iptables_spec)
        .collect();
    let src = "-s 172.18.0.0/16";
    let want: Vec<String> = [
        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"aibox-egress:established\" -j RETURN",
        "-p udp -m udp --dport 53 -m comment --comment \"aibox-egress:dns-udp\" -j RETURN",
        "-p tcp -m tcp --dport 53 -m comment --comment \"aibox-egress:dns-tcp\" -j RETURN",
        "-d 0.0.0.0/8 -m comment --comment \"aibox-egress:this-network\" -j DROP",
        "-d 10.0.0.0/8 -m comment --comment \"aibox-egress:rfc1918\" -j DROP",
        "-d 100.64.0.0/10 -m comment --comment \"aibox-egress:cgnat\" -j DROP",
        "-d 127.0.0.0/8 -m comment --comment \"aibox-egress:loopback\" -j DROP",
        "-d 168.63.129.16/32 -m comment --comment \"aibox-egress:azure-wireserver\" -j DROP",
        "-d 169.254.0.0/16 -m comment --comment \"aibox-egress:link-local\" -j DROP",
        "-d 172.16.0.0/12 -m comment --comment \"aibox-egress:rfc1918\" -j DROP",
        "-d 192.0.0.0/24 -m comment --comment \"aibox-egress:ietf-protocol\" -j DROP",
        "-d 192.0.2.0/24 -m comment --comment \"aibox-egress:documentation\" -j DROP",
        "-d 192.88.99.0/24 -m comment --comment \"aibox-egress:6to4-relay\" -j DROP",
        "-d 192.168.0.0/16 -m comment --comment \"aibox-egress:rfc1918\" -j DROP",
        "-d 198.18.0.0/15 -m comment --comment \"aibox-egress:benchmarking\" -j DROP",
        "-d 198.51.100.0/24 -m comment --comment \"aibox-egress:documentation\" -j DROP",
        "-d 203.0.113.0/24 -m comment --comment \"aibox-egress:documentation\" -j DROP",
        "-d 224.0.0.0/4 -m comment --comment \"aibox-egress:multicast\" -j DROP",
        "-d 240.0.0.0/4 -m comment --comment \"aibox-egress:reserved\" -j DROP",
    ]
    .iter()
    .map(|r| format!("{src} {r}"))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn iptables_v6_rules_exact_head_and_tail() {
    let s = subnets(&["fd00:18::/64"]);
    let got: Vec<String> = chain_rules(Family::V6, &s)
        .iter()
        .map(Rule::iptables_spec)
        .collect();
    assert_eq!(got.len(), 38);
    assert_eq!(
        got[3],
        "-s fd00:18::/64 -d ::/96 -m comment --comment \"aibox-egress:ipv4-compatible\" -j DROP"
    );
    assert_eq!(
        got[4],
        "-s fd00:18::/64 -d ::ffff:0.0.0.0/96 -m comment --comment \"aibox-egress:ipv4-mapped\" -j DROP"
    );
    assert!(got.contains(
        &"-s fd00:18::/64 -d 64:ff9b::a9fe:0/112 -m comment --comment \"aibox-egress:nat64/link-local\" -j DROP"
            .to_owned()
    ));
    assert!(got.contains(
        &"-s fd00:18::/64 -d fc00::/7 -m comment --comment \"aibox-egress:unique-local\" -j DROP".to_owned()
    ));
    assert_eq!(
        got[36],
        "-s fd00:18::/64 -d 64:ff9b::/96 -m comment --comment \"aibox-egress:nat64-public\" -j RETURN"
    );
    assert_eq!(
        got[37],
        "-s fd00:18::/64 ! -d 2000::/3 -m comment --comment \"aibox-egress:not-global-unicast\" -j DROP"
    );
}

#[test]
fn the_seed_rules_are_covered_and_dns_comes_first() {
    let s = subnets(&["172.18.0.0/16"]);
    let rules = chain_rules(Family::V4, &s);
    let src: IpAddr = "172.18.0.5".parse().unwrap();
    for dst in [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.170.2",
    ] {
        assert_eq!(
            verdict(&rules, src, dst.parse().unwrap()),
            Verdict::Drop,
            "{dst}"
        );
    }
    let first_drop = rules
        .iter()
        .position(|r| r.verdict == Verdict::Drop)
        .unwrap();
    for (i, r) in rules.iter().enumerate() {
        if matches!(r.matches, Match::Dns { .. } | Match::Established) {
            assert!(i < first_drop, "{}", r.name);
        }
    }
    // Another subnet's traffic is not touched.
    assert_eq!(
        verdict(
            &rules,
            "172.19.0.5".parse().unwrap(),
            "10.0.0.1".parse().unwrap()
        ),
        Verdict::Pass
    );
}

#[test]
fn firewall_agrees_with_the_classifier() {
    let s = subnets(&["10.77.0.0/24", "fd77::/64"]);
    let v4 = chain_rules(Family::V4, &s);
    let v6 = chain_rules(Family::V6, &s);
    let src4: IpAddr = "10.77.0.9".parse().unwrap();
    let src6: IpAddr = "fd77::9".parse().unwrap();
    let mut samples: Vec<String> = Vec::new();
    for (net, _) in crate::classify::IPV4_BLOCKED {
        samples.push(net.network().to_string());
        samples.push(net.broadcast().to_string());
        samples.push(format!("::ffff:{}", net.network()));
        samples.push(format!("64:ff9b::{}", net.broadcast()));
    }
    for (net, _) in crate::classify::IPV6_BLOCKED {
        samples.push(net.network().to_string());
        samples.push(net.broadcast().to_string());
    }
    samples.extend(
        [
            "8.8.8.8",
            "93.184.216.34",
            "1.1.1.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:82b::200e",
            "64:ff9b::8.8.8.8",
            "4000::1",
            "1::1",
            "::1",
            "::",
        ]
        .map(str::to_owned),
    );
    for dst in samples {
        let ip: IpAddr = dst.parse().unwrap();
        let (rules, src) = if ip.is_ipv4() {
            (&v4, src4)
        } else {
            (&v6, src6)
        };
        let want = if classify(ip).is_some() {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        assert_eq!(verdict(rules, src, ip), want, "{dst}");
    }
    // Stricter than the classifier, by design: 6to4 and Teredo are dropped
    // whole, even when they carry a public IPv4 address.
    for dst in ["2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7"] {
        let ip: IpAddr = dst.parse().unwrap();
        assert!(classify(ip).is_none());
        assert_eq!(verdict(&v6, src6, ip), Verdict::Drop, "{dst}");
    }
}

#[test]
fn nft_table_exact() {
    let s = subnets(&["10.77.0.0/24"]);
    let t = nft_table(&s);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "table inet aibox_egress {");
    assert_eq!(lines[1], "\tchain forward {");
    assert_eq!(
        lines[2],
        "\t\ttype filter hook forward priority filter - 1; policy accept;"
    );
    assert_eq!(
        lines[3],
        "\t\tip saddr 10.77.0.0/24 ct state established,related accept comment \"aibox-egress:established\""
    );
    assert_eq!(
        lines[4],
        "\t\tip saddr 10.77.0.0/24 udp dport 53 accept comment \"aibox-egress:dns-udp\""
    );
    assert_eq!(
        lines[5],
        "\t\tip saddr 10.77.0.0/24 tcp dport 53 accept comment \"aibox-egress:dns-tcp\""
    );
    assert_eq!(
        lines[10],
        "\t\tip saddr 10.77.0.0/24 ip daddr 168.63.129.16 drop comment \"aibox-egress:azure-wireserver\""
    );
    assert_eq!(
        lines[11],
        "\t\tip saddr 10.77.0.0/24 ip daddr 169.254.0.0/16 drop comment \"aibox-egress:link-local\""
    );
    assert_eq!(lines[lines.len() - 2], "\t}");
    assert_eq!(lines[lines.len() - 1], "}");
    assert_eq!(lines.len(), 3 + 19 + 2);
    let script = nft_script(&s);
    assert!(script.starts_with(
        "add table inet aibox_egress\ndelete table inet aibox_egress\ntable inet aibox_egress {\n"
    ));
}

#[test]
fn subnet_errors() {
    let e = Subnets::parse(&["10.77.0.5/24"]).unwrap_err().to_string();
    assert!(e.contains("did you mean 10.77.0.0/24?"), "{e}");
    let e = Subnets::parse(&["0.0.0.0/0"]).unwrap_err().to_string();
    assert!(e.contains("every forwarded packet"), "{e}");
    let e = Subnets::parse(&["bogus"]).unwrap_err().to_string();
    assert!(e.contains("not a CIDR range"), "{e}");
    let e = Subnets::parse::<&str>(&[]).unwrap_err().to_string();
    assert!(e.contains("--docker-network"), "{e}");
    let s = subnets(&["10.77.0.0/24", "10.77.0.0/24", "fd77::/64"]);
    assert_eq!(s.v4().len(), 1);
    assert_eq!(s.v6().len(), 1);
}

#[test]
fn parse_save_reads_only_the_filter_table() {
    let text = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment \"aibox-egress:x\" -j RETURN\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -s 1.2.3.0/24 -m comment --comment \"say \\\"hi\\\" aibox-egress\" -j DROP\n-A DOCKER-USER -m comment --comment aibox-egress -j RETURN\nCOMMIT\n";
    let f = parse_save(text);
    assert_eq!(f.chains, vec!["INPUT", "FORWARD", "DOCKER-USER"]);
    assert_eq!(f.rules.len(), 3);
    assert!(!f.rules[0].is_ours());
    assert!(f.rules[0].jumps_to("DOCKER-USER"));
    // A comment that merely mentions the tag is not ours.
    assert!(!f.rules[1].is_ours());
    assert_eq!(f.rules[1].words[7], "say \"hi\" aibox-egress");
    assert!(f.rules[2].is_ours());
}

/// What `iptables-save` prints after the plan ran (the chain rules and jump
/// inserted as planned), for the idempotency checks.
fn saved_after(before: &str, subnets: &Subnets, docker: bool) -> String {
    let mut out = before.replace("COMMIT\n", "");
    if !before.contains(":DOCKER-USER") {
        out.push_str(":DOCKER-USER - [0:0]\n");
    }
    if !docker {
        out = out.replacen(
            ":DOCKER-USER - [0:0]\n",
            &format!(":DOCKER-USER - [0:0]\n-A FORWARD {}\n", jump_spec()),
            1,
        );
    }
    let mut chain = String::new();
    for r in chain_rules(Family::V4, subnets) {
        chain.push_str(&format!("-A DOCKER-USER {}\n", r.iptables_spec()));
    }
    // Our rules go first in DOCKER-USER, before the operator's own.
    match out.find("-A DOCKER-USER") {
        Some(i) => out.insert_str(i, &chain),
        None => out.push_str(&chain),
    }
    out.push_str("COMMIT\n");
    out
}

const BARE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n";
const DOCKER: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER\n-A DOCKER-USER -s 10.99.0.0/24 -j DROP\nCOMMIT\n";

#[test]
fn apply_without_docker_creates_chain_and_jump() {
    let s = subnets(&["10.77.0.0/24"]);
    let p = plan_apply(Family::V4, &parse_save(BARE), &s);
    let input = p.restore_input.unwrap();
    let lines: Vec<&str> = input.lines().collect();
    assert_eq!(lines[0], "*filter");
    assert_eq!(lines[1], ":DOCKER-USER - [0:0]");
    assert_eq!(
        lines[2],
        "-I FORWARD 1 -m comment --comment \"aibox-egress:jump\" -j DOCKER-USER"
    );
    assert_eq!(
        lines[3],
        "-I DOCKER-USER 1 -s 10.77.0.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"aibox-egress:established\" -j RETURN"
    );
    assert_eq!(
        lines[21],
        "-I DOCKER-USER 19 -s 10.77.0.0/24 -d 240.0.0.0/4 -m comment --comment \"aibox-egress:reserved\" -j DROP"
    );
    assert_eq!(lines[22], "COMMIT");
    assert_eq!(lines.len(), 23);
    assert!(p.creates_chain);
    assert_eq!(p.installs, 20);

    // Applied: a second apply plans nothing.
    let after = saved_after(BARE, &s, false);
    let p2 = plan_apply(Family::V4, &parse_save(&after), &s);
    assert_eq!(p2.restore_input, None, "{after}");

    // Remove deletes our rules, the jump, and the chain we created.
    let r = plan_remove(&parse_save(&after));
    assert!(r.deletes_chain);
    assert_eq!(r.removes, 20);
    let input = r.restore_input.unwrap();
    assert!(input.ends_with("-X DOCKER-USER\nCOMMIT\n"), "{input}");
    assert!(
        input.contains("-D FORWARD -m comment --comment \"aibox-egress:jump\" -j DOCKER-USER\n")
    );
    assert!(!input.contains("--dport 22"), "{input}");
}

#[test]
fn apply_with_docker_keeps_dockers_chain_jump_and_rules() {
    let s = subnets(&["172.18.0.0/16"]);
    let p = plan_apply(Family::V4, &parse_save(DOCKER), &s);
    let input = p.restore_input.unwrap();
    assert!(!p.creates_chain);
    assert!(!input.contains(":DOCKER-USER"), "{input}");
    assert!(!input.contains("FORWARD"), "{input}");
    assert!(!input.contains("-D "), "{input}");
    assert!(input.contains("-I DOCKER-USER 1 -s 172.18.0.0/16 -m conntrack"));
    assert_eq!(p.installs, 19);

    let after = saved_after(DOCKER, &s, true);
    assert_eq!(
        plan_apply(Family::V4, &parse_save(&after), &s).restore_input,
        None
    );

    let r = plan_remove(&parse_save(&after));
    assert!(!r.deletes_chain);
    assert_eq!(r.removes, 19);
    let input = r.restore_input.unwrap();
    assert!(
        !input.contains("10.99.0.0/24"),
        "the operator's rule stays: {input}"
    );
    assert!(!input.contains("-X"), "{input}");
}

#[test]
fn reapply_for_another_subnet_replaces_in_one_transaction() {
    let old = subnets(&["10.77.0.0/24"]);
    let new = subnets(&["10.78.0.0/24"]);
    let after = saved_after(DOCKER, &old, true);
    let p = plan_apply(Family::V4, &parse_save(&after), &new);
    assert_eq!(p.replaces, 19);
    let input = p.restore_input.unwrap();
    let deletes = input
        .lines()
        .filter(|l| l.starts_with("-D DOCKER-USER -s 10.77.0.0/24"))
        .count();
    let inserts = input
        .lines()
        .filter(|l| l.starts_with("-I DOCKER-USER") && l.contains("10.78.0.0/24"))
        .count();
    assert_eq!((deletes, inserts), (19, 19));
    // Deletions come before insertions, all before the one COMMIT.
    let last_delete = input.rfind("-D ").unwrap();
    let first_insert = input.find("-I ").unwrap();
    assert!(last_delete < first_insert);
    assert_eq!(input.matches("COMMIT").count(), 1);
}

#[test]
fn remove_keeps_a_chain_that_holds_other_rules() {
    let s = subnets(&["10.77.0.0/24"]);
    let mut after = saved_after(BARE, &s, false);
    after = after.replace(
        "COMMIT\n",
        "-A DOCKER-USER -s 10.5.0.0/16 -j DROP\nCOMMIT\n",
    );
    let r = plan_remove(&parse_save(&after));
    assert!(!r.deletes_chain);
    assert_eq!(r.removes, 20);
    assert!(plan_remove(&parse_save(BARE)).restore_input.is_none());
}

#[test]
fn nft_listing_helpers() {
    assert!(nft_has_table("table ip filter\ntable inet aibox_egress\n"));
    assert!(!nft_has_table(
        "table ip aibox_egress\ntable inet aibox_egress_x\n"
    ));
    assert!(nft_same(
        "table x {\n\tchain y {\n\t}\n}\n",
        "table x {\n  chain y {\n  }\n}"
    ));
    assert!(!nft_same("table x {\n}\n", "table z {\n}\n"));
}
