//! URL and IP classification of the SSRF-safe egress: `parse_url` and
//! `check_url` on URLs a tool or model can steer, `classify_name` on host
//! names, and `classify` on addresses.
//!
//! Properties: an IPv6 address that embeds an IPv4 address in a form a
//! dual-stack socket or a translator connects to (mapped, translated,
//! compatible, NAT64) is blocked exactly when its IPv4 address is, and the
//! other embeddings (local NAT64, 6to4, Teredo) are blocked at least when
//! it is; a URL that passes the check names no blocked address and no
//! blocked name.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use aibox_egress::check::{CheckedHost, check_url, parse_url};
use aibox_egress::classify::{classify_v4, embedded_ipv4};
use aibox_egress::{EgressPolicy, classify, classify_name};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static EgressPolicy {
    static P: OnceLock<EgressPolicy> = OnceLock::new();
    P.get_or_init(EgressPolicy::default)
}

/// Every IPv6 form that carries `v4`, with whether the IPv6 verdict must
/// equal the IPv4 one (true) or only include it (false).
fn embeddings(v4: Ipv4Addr, salt: [u8; 4]) -> Vec<(Ipv6Addr, bool)> {
    let o = v4.octets();
    let w = |hi: u8, lo: u8| u16::from(hi) << 8 | u16::from(lo);
    let (a, b) = (w(o[0], o[1]), w(o[2], o[3]));
    let (s1, s2) = (w(salt[0], salt[1]), w(salt[2], salt[3]));
    let mut out = vec![
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, a, b), true),
        (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, a, b), true),
        (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, a, b), true),
        (Ipv6Addr::new(0x64, 0xff9b, 1, s1, s2, 0, a, b), false),
        (Ipv6Addr::new(0x2002, a, b, s1, s2, 0, 0, 1), false),
        (Ipv6Addr::new(0x2001, 0, a, b, s1, s2, !a, !b), false),
        (Ipv6Addr::new(0x2001, 0, s1, s2, 0, 0, !a, !b), false),
    ];
    // :: and ::1 are named by their own rules; the rest of ::/96 is the
    // IPv4-compatible form.
    if u32::from(v4) > 1 {
        out.push((Ipv6Addr::new(0, 0, 0, 0, 0, 0, a, b), true));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let [a, b, c, d, s0, s1, s2, s3, ..] = *data {
        let v4 = Ipv4Addr::new(a, b, c, d);
        let blocked4 = classify_v4(v4).is_some();
        assert_eq!(classify(IpAddr::V4(v4)).is_some(), blocked4);
        for (v6, exact) in embeddings(v4, [s0, s1, s2, s3]) {
            let blocked6 = classify(IpAddr::V6(v6)).is_some();
            if exact {
                assert_eq!(blocked6, blocked4, "{v6} judged unlike its {v4}");
            } else if blocked4 {
                assert!(blocked6, "{v6} passes although it carries {v4}");
            }
        }
    }
    if data.len() >= 16 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&data[..16]);
        let v6 = Ipv6Addr::from(o);
        let verdict = classify(IpAddr::V6(v6));
        if verdict.is_none() {
            for (_, v4) in embedded_ipv4(v6) {
                assert!(
                    classify_v4(v4).is_none(),
                    "{v6} passes although it carries {v4}"
                );
            }
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = classify_name(text);
    if let Ok(url) = parse_url(text)
        && let Ok(checked) = check_url(policy(), &url)
    {
        match &checked.host {
            CheckedHost::Ip(ip) => {
                assert!(
                    classify(*ip).is_none(),
                    "{url} passed with a blocked address"
                )
            }
            CheckedHost::Name { name, .. } => {
                assert!(
                    classify_name(name).is_none(),
                    "{url} passed with a blocked name"
                );
                // A name that is an address in disguise must have been read
                // as one by the URL parser.
                assert!(
                    name.parse::<IpAddr>().is_err(),
                    "{url} kept an address as a name"
                );
            }
        }
        assert!(checked.url.fragment().is_none());
        assert!(checked.url.username().is_empty() && checked.url.password().is_none());
    }
});
