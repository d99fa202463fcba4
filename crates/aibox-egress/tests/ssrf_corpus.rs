//! The SSRF corpus: a table of URLs, what the (injected) resolver answers for
//! their host, and the rule that must refuse them, or `ok` for the ones that
//! must pass. Each row goes through the same parse, URL check, resolution and
//! per-address check the egress client runs before it connects
//! (`EgressGuard::resolve_checked`). The live behaviour (redirects, DNS
//! rebinding, proxies, caps) is in `tests/fetch.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::Arc;

use aibox_egress::check::parse_url;
use aibox_egress::{EgressGuard, EgressPolicy, Resolve, ResolveError, ResolveFuture};

/// Answers every name with the row's addresses (none: NXDOMAIN).
struct AnyName(Vec<IpAddr>);

impl Resolve for AnyName {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        let answer = if self.0.is_empty() {
            Err(ResolveError(format!("{name}: NXDOMAIN")))
        } else {
            Ok(self.0.clone())
        };
        Box::pin(async move { answer })
    }
}

/// (URL, resolver answers for its host, expected reason or "ok").
type Row = (&'static str, &'static [&'static str], &'static str);

const PUBLIC: &[&str] = &["93.184.216.34"];

const CORPUS: &[Row] = &[
    // IPv4 literals in every spelling the WHATWG parser accepts.
    ("http://127.0.0.1/", &[], "loopback"),
    ("http://2130706433/", &[], "loopback"),
    ("http://0177.0.0.1/", &[], "loopback"),
    ("http://0x7f.1/", &[], "loopback"),
    ("http://0x7f000001/", &[], "loopback"),
    ("http://127.1/", &[], "loopback"),
    ("http://127.0.1/", &[], "loopback"),
    ("http://017700000001/", &[], "loopback"),
    ("http://0x7f.0x0.0x0.0x1/", &[], "loopback"),
    ("http://127.0.0.1./", &[], "loopback"),
    ("http://%31%32%37.0.0.1/", &[], "loopback"),
    ("http://127%2E0%2E0%2E1/", &[], "loopback"),
    (
        "http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/",
        &[],
        "loopback",
    ),
    ("http://127\u{3002}0\u{3002}0\u{3002}1/", &[], "loopback"),
    ("http://127\u{ff0e}0\u{ff0e}0\u{ff0e}1/", &[], "loopback"),
    ("http://\u{2460}\u{2461}\u{2466}.0.0.1/", &[], "loopback"),
    ("http://127.0.0.1:80/", &[], "loopback"),
    ("http://127.255.255.254/", &[], "loopback"),
    ("http://0/", &[], "this-network"),
    ("http://0.0.0.0/", &[], "this-network"),
    ("http://0x0.0x0.0x0.0x0/", &[], "this-network"),
    ("http://10.0.0.5/", &[], "rfc1918"),
    ("http://167772165/", &[], "rfc1918"),
    ("http://012.0.0.5/", &[], "rfc1918"),
    ("http://172.16.0.1/", &[], "rfc1918"),
    ("http://172.31.255.255/", &[], "rfc1918"),
    ("http://192.168.1.1/", &[], "rfc1918"),
    ("http://0xc0a80101/", &[], "rfc1918"),
    ("http://192.168.1/", &[], "rfc1918"),
    ("http://100.64.0.1/", &[], "cgnat"),
    (
        "http://100.100.100.200/latest/meta-data/",
        &[],
        "alibaba-metadata",
    ),
    (
        "http://169.254.169.254/latest/meta-data/",
        &[],
        "cloud-metadata",
    ),
    ("http://2852039166/", &[], "cloud-metadata"),
    ("http://0xa9fea9fe/", &[], "cloud-metadata"),
    ("http://0251.0376.0251.0376/", &[], "cloud-metadata"),
    ("http://169.254.43518/", &[], "cloud-metadata"),
    ("http://169.254.170.2/v2/credentials", &[], "ecs-metadata"),
    (
        "http://168.63.129.16/machine?comp=goalstate",
        &[],
        "azure-wireserver",
    ),
    ("http://169.254.1.1/", &[], "link-local"),
    ("http://192.0.0.170/", &[], "ietf-protocol"),
    ("http://192.0.2.1/", &[], "documentation"),
    ("http://198.51.100.1/", &[], "documentation"),
    ("http://203.0.113.1/", &[], "documentation"),
    ("http://198.18.0.1/", &[], "benchmarking"),
    ("http://224.0.0.1/", &[], "multicast"),
    ("http://240.0.0.1/", &[], "reserved"),
    ("http://255.255.255.255/", &[], "broadcast"),
    // IPv6 literals, and every way of carrying an IPv4 address inside one.
    ("http://[::1]/", &[], "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", &[], "loopback"),
    ("http://[::]/", &[], "unspecified"),
    ("http://[::ffff:127.0.0.1]/", &[], "ipv4-mapped/loopback"),
    ("http://[::ffff:7f00:1]/", &[], "ipv4-mapped/loopback"),
    (
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        &[],
        "ipv4-mapped/loopback",
    ),
    (
        "http://[::ffff:169.254.169.254]/",
        &[],
        "ipv4-mapped/cloud-metadata",
    ),
    (
        "http://[::ffff:a9fe:a9fe]/",
        &[],
        "ipv4-mapped/cloud-metadata",
    ),
    (
        "http://[::ffff:0:10.0.0.1]/",
        &[],
        "ipv4-translated/rfc1918",
    ),
    ("http://[::127.0.0.1]/", &[], "ipv4-compatible/loopback"),
    ("http://[::a00:1]/", &[], "ipv4-compatible/rfc1918"),
    (
        "http://[64:ff9b::169.254.169.254]/",
        &[],
        "nat64/cloud-metadata",
    ),
    ("http://[64:ff9b::7f00:1]/", &[], "nat64/loopback"),
    ("http://[64:ff9b::c0a8:101]/", &[], "nat64/rfc1918"),
    ("http://[64:ff9b:1::a00:1]/", &[], "local-nat64/rfc1918"),
    ("http://[64:ff9b:1::808:808]/", &[], "local-nat64"),
    ("http://[2002:7f00:1::]/", &[], "6to4/loopback"),
    ("http://[2002:a9fe:a9fe::1]/", &[], "6to4/cloud-metadata"),
    ("http://[2002:a00:1::]/", &[], "6to4/rfc1918"),
    (
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        &[],
        "teredo-client/loopback",
    ),
    (
        "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",
        &[],
        "teredo-client/cloud-metadata",
    ),
    (
        "http://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/",
        &[],
        "teredo-server/rfc1918",
    ),
    (
        "http://[fd00:ec2::254]/latest/meta-data/",
        &[],
        "aws-metadata-v6",
    ),
    ("http://[fc00::1]/", &[], "unique-local"),
    ("http://[fd12:3456:789a::1]/", &[], "unique-local"),
    ("http://[fe80::1]/", &[], "link-local"),
    ("http://[fec0::1]/", &[], "site-local"),
    ("http://[ff02::1]/", &[], "multicast"),
    ("http://[2001:db8::1]/", &[], "documentation"),
    ("http://[100::1]/", &[], "discard-only"),
    ("http://[4000::1]/", &[], "not-global-unicast"),
    // Zone ids select a local interface.
    ("http://[fe80::1%25eth0]/", &[], "zone-id"),
    ("http://[fe80::1%eth0]/", &[], "zone-id"),
    ("http://[::1%25lo]:8080/", &[], "zone-id"),
    // Names refused by name, before any lookup.
    ("http://localhost/", &["93.184.216.34"], "localhost-name"),
    ("http://LOCALHOST./", PUBLIC, "localhost-name"),
    ("http://a.b.localhost/", PUBLIC, "localhost-name"),
    (
        "http://%6c%6f%63%61%6c%68%6f%73%74/",
        PUBLIC,
        "localhost-name",
    ),
    (
        "http://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/",
        PUBLIC,
        "localhost-name",
    ),
    (
        "http://metadata.google.internal/computeMetadata/v1/",
        PUBLIC,
        "metadata-name",
    ),
    (
        "http://metadata.google.internal./computeMetadata/v1/",
        PUBLIC,
        "metadata-name",
    ),
    (
        "http://metadata/computeMetadata/v1/",
        PUBLIC,
        "metadata-name",
    ),
    ("http://instance-data/latest/", PUBLIC, "metadata-name"),
    (
        "http://instance-data.ec2.internal/",
        PUBLIC,
        "metadata-name",
    ),
    ("http://ip-10-0-0-5.ec2.internal/", PUBLIC, "private-suffix"),
    ("http://db.internal/", PUBLIC, "private-suffix"),
    ("http://printer.local/", PUBLIC, "private-suffix"),
    ("http://router.home.arpa/", PUBLIC, "private-suffix"),
    ("http://localhost.localdomain/", PUBLIC, "private-suffix"),
    ("http://ollama/", PUBLIC, "single-label-name"),
    ("http://ops-controller:9000/", PUBLIC, "single-label-name"),
    // Names whose records are internal: every record is checked.
    ("http://internal.example.com/", &["10.0.0.5"], "rfc1918"),
    (
        "http://meta.example.com/",
        &["169.254.169.254"],
        "cloud-metadata",
    ),
    ("http://loop.example.com/", &["127.0.0.1"], "loopback"),
    ("http://localtest.me/", &["127.0.0.1"], "loopback"),
    (
        "http://169.254.169.254.nip.io/",
        &["169.254.169.254"],
        "cloud-metadata",
    ),
    ("http://v6loop.example.com/", &["::1"], "loopback"),
    (
        "http://mapped.example.com/",
        &["::ffff:10.0.0.1"],
        "ipv4-mapped/rfc1918",
    ),
    (
        "http://nat64.example.com/",
        &["64:ff9b::a9fe:a9fe"],
        "nat64/cloud-metadata",
    ),
    ("http://ts.example.com/", &["100.101.102.103"], "cgnat"),
    (
        "http://ula.example.com/",
        &["fd7a:115c:a1e0::1"],
        "unique-local",
    ),
    (
        "http://mixed.example.com/",
        &["93.184.216.34", "10.0.0.5"],
        "rfc1918",
    ),
    (
        "http://mixed-first.example.com/",
        &["10.0.0.5", "93.184.216.34"],
        "rfc1918",
    ),
    (
        "http://mixed6.example.com/",
        &["93.184.216.34", "fd00::1"],
        "unique-local",
    ),
    (
        "http://mixed-meta.example.com/",
        &["2606:4700::1111", "169.254.169.254"],
        "cloud-metadata",
    ),
    ("http://nx.example.com/", &[], "resolve"),
    // User-info, fragment and backslash tricks: the host the parser reads
    // is the host that is checked and the host that is connected to.
    ("http://public.example@127.0.0.1/", PUBLIC, "loopback"),
    ("http://public.example:80@127.0.0.1/", PUBLIC, "loopback"),
    ("http://user:pass@93.184.216.34/", PUBLIC, "userinfo"),
    ("http://user@public.example/", PUBLIC, "userinfo"),
    ("http://127.0.0.1#@public.example/", PUBLIC, "loopback"),
    ("http://127.0.0.1?@public.example/", PUBLIC, "loopback"),
    ("http://public.example#@127.0.0.1/", PUBLIC, "ok"),
    ("http://127.0.0.1\\@public.example/", PUBLIC, "loopback"),
    ("http://public.example\\@127.0.0.1/", PUBLIC, "ok"),
    ("http://127.0.0.1:80\\@public.example/", PUBLIC, "loopback"),
    ("http:\\\\127.0.0.1\\", PUBLIC, "loopback"),
    ("http:/127.0.0.1/", PUBLIC, "loopback"),
    ("http:127.0.0.1/", PUBLIC, "loopback"),
    (" http://127.0.0.1/ ", PUBLIC, "loopback"),
    ("http://127.0.0.\t1/", PUBLIC, "loopback"),
    ("http://127.0.0.1%09/", PUBLIC, "invalid-url"),
    // Other schemes.
    ("file:///etc/passwd", &[], "scheme"),
    ("gopher://127.0.0.1:70/_GET", &[], "scheme"),
    ("data:text/plain,hello", &[], "scheme"),
    ("ftp://93.184.216.34/", &[], "scheme"),
    ("dict://127.0.0.1:11211/stat", &[], "scheme"),
    ("ldap://127.0.0.1/", &[], "scheme"),
    ("javascript:alert(1)", &[], "scheme"),
    ("ws://93.184.216.34/", &[], "scheme"),
    ("jar:http://127.0.0.1!/", &[], "scheme"),
    ("HTTP://127.0.0.1/", &[], "loopback"),
    // Ports.
    ("http://93.184.216.34:22/", &[], "port"),
    ("http://93.184.216.34:6379/", &[], "port"),
    ("http://93.184.216.34:0/", &[], "port"),
    ("http://93.184.216.34:65536/", &[], "invalid-url"),
    ("https://93.184.216.34:80/", &[], "ok"),
    // Public destinations still work.
    ("http://93.184.216.34/", &[], "ok"),
    ("http://1572395042/", &[], "ok"),
    ("https://[2606:4700::1111]/", &[], "ok"),
    ("http://[::ffff:93.184.216.34]/", &[], "ok"),
    ("http://[64:ff9b::93.184.216.34]/", &[], "ok"),
    ("http://[2002:5db8:d822::1]/", &[], "ok"),
    (
        "https://example.com/",
        &["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
        "ok",
    ),
    (
        "https://\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.com/",
        PUBLIC,
        "ok",
    ),
    ("https://example.com./", PUBLIC, "ok"),
    ("https://b\u{fc}cher.example/", PUBLIC, "ok"),
];

async fn reason(guard_policy: &EgressPolicy, url: &str, answers: &[&str]) -> String {
    let answers: Vec<IpAddr> = answers.iter().map(|a| a.parse().unwrap()).collect();
    let guard = EgressGuard::new(guard_policy.clone(), Arc::new(AnyName(answers))).unwrap();
    let result = match parse_url(url) {
        Err(e) => Err(e),
        Ok(u) => guard.resolve_checked(&u).await,
    };
    match result {
        Ok(addrs) => {
            assert!(!addrs.is_empty(), "{url}: allowed with no address");
            "ok".to_owned()
        }
        Err(e) => {
            let message = e.to_string();
            // Every refusal explains itself and never echoes credentials.
            assert!(!message.contains("pass@"), "{url}: {message}");
            if e.block_rule().is_some() {
                assert!(message.contains("egress.allow_hosts"), "{url}: {message}");
            }
            e.reason()
        }
    }
}

fn check_table(policy: &EgressPolicy, table: &[Row]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for (url, answers, want) in table {
        let got = rt.block_on(reason(policy, url, answers));
        if got != *want {
            failures.push(format!("{url:?}: want {want}, got {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn ssrf_corpus() {
    assert!(CORPUS.len() >= 80, "{}", CORPUS.len());
    let refused = CORPUS.iter().filter(|(_, _, w)| *w != "ok").count();
    assert!(refused >= 80, "{refused}");
    check_table(&EgressPolicy::default(), CORPUS);
}

/// With an allow-list: listed names and ranges open, metadata does not.
const ALLOWED: &[Row] = &[
    ("http://wiki.corp.example/", &["10.0.0.5"], "ok"),
    (
        "http://wiki.corp.example/",
        &["10.0.0.5", "93.184.216.34"],
        "ok",
    ),
    (
        "http://wiki.corp.example/",
        &["169.254.169.254"],
        "cloud-metadata",
    ),
    (
        "http://wiki.corp.example/",
        &["fd00:ec2::254"],
        "aws-metadata-v6",
    ),
    ("http://WIKI.corp.example./", &["10.0.0.5"], "ok"),
    ("http://other.corp.example/", &["10.0.0.5"], "rfc1918"),
    ("http://x.svc.example/", &["172.16.0.9"], "ok"),
    ("http://svc.example/", &["172.16.0.9"], "rfc1918"),
    ("http://10.1.2.3/", &[], "ok"),
    ("http://167838211/", &[], "ok"),
    ("http://[::ffff:10.1.2.3]/", &[], "ok"),
    ("http://10.2.0.1/", &[], "rfc1918"),
    ("http://other.example/", &["10.1.5.5"], "ok"),
    (
        "http://other.example/",
        &["10.1.5.5", "10.9.9.9"],
        "rfc1918",
    ),
    ("http://ollama.internal:11434/", &["172.18.0.3"], "ok"),
    ("http://ollama.internal/", &["172.18.0.3"], "ok"),
    ("http://ollama.internal:11435/", &["172.18.0.3"], "port"),
    ("http://169.254.169.254/", &[], "cloud-metadata"),
];

#[test]
fn allow_list_corpus() {
    let policy = EgressPolicy::builder()
        .allow_hosts([
            "wiki.corp.example",
            "10.1.0.0/16",
            "*.svc.example",
            "ollama.internal",
            "169.254.0.0/16",
        ])
        .allowed_ports([11434])
        .build()
        .unwrap();
    check_table(&policy, ALLOWED);
}

#[test]
fn https_only_refuses_http() {
    let policy = EgressPolicy::builder().https_only(true).build().unwrap();
    check_table(
        &policy,
        &[
            ("http://93.184.216.34/", &[], "scheme"),
            ("https://93.184.216.34/", &[], "ok"),
        ],
    );
}
