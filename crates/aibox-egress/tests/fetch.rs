//! The egress client against live local servers: redirects to internal
//! targets, DNS rebinding, mixed answers, proxies from the environment, and
//! the size and time caps.
//!
//! Two servers listen on the same port: A on 127.0.0.1, which the test
//! policy allow-lists (it stands in for a public server), and B on
//! 127.0.0.2, which stays blocked as loopback. B is a real, reachable
//! server (a control test reaches it once it is allow-listed), so when B
//! counts no connection in a refusal test, it is the check that stopped the
//! call, not a dead address.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aibox_egress::{EgressGuard, EgressPolicy, FetchRequest, Resolve, ResolveError, ResolveFuture};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers per name, in turn: a list of one answer is a fixed record, a
/// list of two alternates (DNS rebinding). Counts lookups per name.
#[derive(Default)]
struct TestResolver {
    answers: HashMap<String, Vec<Vec<IpAddr>>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl TestResolver {
    fn with(mut self, name: &str, answers: &[&[&str]]) -> Self {
        self.answers.insert(
            name.to_owned(),
            answers
                .iter()
                .map(|a| a.iter().map(|s| s.parse().unwrap()).collect())
                .collect(),
        );
        self
    }

    fn calls(&self, name: &str) -> usize {
        self.calls.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Resolve for TestResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(name.to_owned()).or_default();
            *c += 1;
            *c - 1
        };
        let answer = match self.answers.get(name) {
            Some(list) => Ok(list[n % list.len()].clone()),
            None => Err(ResolveError(format!("{name}: NXDOMAIN"))),
        };
        Box::pin(async move { answer })
    }
}

/// What a test server answers.
enum Reply {
    Body(&'static str),
    Redirect(u16, String),
    /// A body of this many bytes with a Content-Length.
    Sized(usize),
    /// Chunks of 64 KiB until the client goes away.
    Endless,
    /// Nothing, for a long time.
    Hang,
}

type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server that records what it saw.
#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    sent: Arc<AtomicUsize>,
}

impl Server {
    async fn start(bind: SocketAddr, handler: Handler) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            requests: Arc::default(),
            sent: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let handler = Arc::clone(&handler);
                tokio::spawn(async move { s.handle(stream, handler).await });
            }
        });
        server
    }

    async fn handle(&self, mut stream: TcpStream, handler: Handler) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        self.requests.lock().unwrap().push(head);
        let reply = handler(&path);
        let close = "Connection: close\r\n";
        let out = match reply {
            Reply::Body(b) => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n{b}",
                b.len()
            ),
            Reply::Redirect(code, to) => format!(
                "HTTP/1.1 {code} Moved\r\nLocation: {to}\r\nContent-Length: 0\r\n{close}\r\n"
            ),
            Reply::Sized(n) => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n{close}\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&vec![b'x'; n]).await;
                let _ = stream.shutdown().await;
                return;
            }
            Reply::Endless => {
                let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{close}\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 65536];
                loop {
                    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                    frame.extend_from_slice(&chunk);
                    frame.extend_from_slice(b"\r\n");
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                    let total = self.sent.fetch_add(chunk.len(), Ordering::SeqCst) + chunk.len();
                    if total > 256 * 1024 * 1024 {
                        return;
                    }
                }
            }
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
        };
        let _ = stream.write_all(out.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn hits(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> String {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// A on 127.0.0.1 (allowed) and B on 127.0.0.2 (blocked), same port. A
/// redirects `/go/N` to the N-th target.
struct Lab {
    a: Server,
    b: Server,
    port: u16,
    targets: Arc<Mutex<Vec<(u16, String)>>>,
}

impl Lab {
    async fn start() -> Self {
        let targets: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let t = Arc::clone(&targets);
        let handler_a: Handler = Arc::new(move |path: &str| {
            if let Some(i) = path.strip_prefix("/go/") {
                let (code, to) = t.lock().unwrap()[i.parse::<usize>().unwrap()].clone();
                return Reply::Redirect(code, to);
            }
            match path {
                "/loop" => Reply::Redirect(302, "/loop".into()),
                "/big" => Reply::Sized(2_000_000),
                "/exact" => Reply::Sized(1_000_000),
                "/endless" => Reply::Endless,
                "/hang" => Reply::Hang,
                _ => Reply::Body("hello from A"),
            }
        });
        let handler_b: Handler = Arc::new(|_: &str| Reply::Body("internal secret from B"));
        // Retry until B can take A's port on 127.0.0.2.
        for _ in 0..20 {
            let a = Server::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&handler_a)).await;
            let port = a.addr.port();
            let bind_b: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
            if TcpListener::bind(bind_b).await.is_ok() {
                let b = Server::start(bind_b, Arc::clone(&handler_b)).await;
                return Lab {
                    a,
                    b,
                    port,
                    targets,
                };
            }
        }
        panic!("no common free port on 127.0.0.1 and 127.0.0.2");
    }

    fn redirect(&self, code: u16, to: &str) -> String {
        let mut t = self.targets.lock().unwrap();
        t.push((code, to.replace("{p}", &self.port.to_string())));
        format!("http://start.test:{}/go/{}", self.port, t.len() - 1)
    }

    fn policy(&self, extra_allow: &[&str]) -> EgressPolicy {
        EgressPolicy::builder()
            .allow_host("127.0.0.1")
            .allow_hosts(extra_allow.iter().copied())
            .allowed_ports([i64::from(self.port)])
            .max_response_bytes(1_000_000)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    fn resolver(&self) -> TestResolver {
        TestResolver::default()
            .with("start.test", &[&["127.0.0.1"]])
            .with("inner.test", &[&["127.0.0.2"]])
    }
}

async fn get(
    guard: &EgressGuard,
    url: &str,
) -> Result<aibox_egress::FetchedResponse, aibox_egress::EgressError> {
    let url = guard.parse_url(url)?;
    guard.fetch(FetchRequest::get(url)).await
}

#[tokio::test]
async fn redirects_to_internal_targets_are_refused() {
    let lab = Lab::start().await;
    let guard = EgressGuard::new(lab.policy(&[]), Arc::new(lab.resolver())).unwrap();
    let table: &[(u16, &str, &str)] = &[
        (302, "http://127.0.0.2:{p}/", "loopback"),
        (301, "http://2130706434:{p}/", "loopback"),
        (307, "http://0x7f.0.0.2:{p}/", "loopback"),
        (
            308,
            "http://[::ffff:127.0.0.2]:{p}/",
            "ipv4-mapped/loopback",
        ),
        (303, "http://inner.test:{p}/", "loopback"),
        (
            302,
            "http://169.254.169.254/latest/meta-data/",
            "cloud-metadata",
        ),
        (
            302,
            "http://[fd00:ec2::254]/latest/meta-data/",
            "aws-metadata-v6",
        ),
        (302, "http://[::1]:{p}/", "loopback"),
        (302, "http://localhost:{p}/", "localhost-name"),
        (302, "http://metadata.google.internal/", "metadata-name"),
        (302, "file:///etc/passwd", "scheme"),
        (302, "gopher://127.0.0.2:{p}/_GET", "scheme"),
        (302, "http://start.test:22/", "port"),
        (302, "http://user:pw@start.test:{p}/", "userinfo"),
        (302, "http://[fe80::1%25lo]:{p}/", "bad-redirect"),
    ];
    for (code, to, want) in table {
        let url = lab.redirect(*code, to);
        let before = lab.a.hits();
        let e = get(&guard, &url).await.unwrap_err();
        assert_eq!(e.reason(), *want, "{to}: {e}");
        assert_eq!(lab.a.hits(), before + 1, "{to}: the first hop reached A");
        if *want != "bad-redirect" {
            assert!(
                e.to_string()
                    .starts_with("egress refused a redirect from http://start.test:"),
                "{e}"
            );
        }
    }
    assert_eq!(lab.b.hits(), 0, "B was never contacted");

    // Relative and allowed redirects are followed.
    let url = lab.redirect(302, "/ok");
    let r = get(&guard, &url).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello from A");
    assert_eq!(r.redirects.len(), 1);
    assert_eq!(r.url.path(), "/ok");

    // Control: once B is allowed, the same redirect reaches it. The refusals
    // above were the check's doing.
    let open = EgressGuard::new(lab.policy(&["127.0.0.2"]), Arc::new(lab.resolver())).unwrap();
    let url = lab.redirect(302, "http://127.0.0.2:{p}/");
    let r = get(&open, &url).await.unwrap();
    assert_eq!(&r.body[..], b"internal secret from B");
    assert_eq!(lab.b.hits(), 1);
}

#[tokio::test]
async fn redirect_hops_are_capped() {
    let lab = Lab::start().await;
    let guard = EgressGuard::new(lab.policy(&[]), Arc::new(lab.resolver())).unwrap();
    let before = lab.a.hits();
    let e = get(&guard, &format!("http://start.test:{}/loop", lab.port))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "max-redirects", "{e}");
    assert!(e.to_string().contains("egress.max_redirects"), "{e}");
    // The first request and five redirects followed; the sixth is refused.
    assert_eq!(lab.a.hits() - before, 6);
}

#[tokio::test]
async fn dns_rebinding_never_reaches_the_second_answer() {
    let lab = Lab::start().await;
    let resolver = Arc::new(
        lab.resolver()
            .with("rebind.test", &[&["127.0.0.1"], &["127.0.0.2"]]),
    );
    let guard =
        EgressGuard::new(lab.policy(&[]), Arc::clone(&resolver) as Arc<dyn Resolve>).unwrap();
    let url = format!("http://rebind.test:{}/ok", lab.port);

    // First answer: the allowed address. One lookup, not two: the check and
    // the connection use the same answer.
    let r = get(&guard, &url).await.unwrap();
    assert_eq!(&r.body[..], b"hello from A");
    assert_eq!(resolver.calls("rebind.test"), 1);

    // Second answer: internal. Refused, and B never sees a connection.
    let e = get(&guard, &url).await.unwrap_err();
    assert_eq!(e.reason(), "loopback", "{e}");
    assert!(
        e.to_string().contains("rebind.test resolves to 127.0.0.2"),
        "{e}"
    );
    assert_eq!(resolver.calls("rebind.test"), 2);
    assert_eq!(lab.b.hits(), 0);

    // Within one call: the first hop resolves to A, the redirect to the same
    // name needs a new connection, whose lookup answers B: refused.
    let resolver = Arc::new(
        lab.resolver()
            .with("rebind.test", &[&["127.0.0.1"], &["127.0.0.2"]]),
    );
    let guard =
        EgressGuard::new(lab.policy(&[]), Arc::clone(&resolver) as Arc<dyn Resolve>).unwrap();
    let hop = lab.redirect(302, "/ok");
    let url = hop.replace("start.test", "rebind.test");
    let e = get(&guard, &url).await.unwrap_err();
    assert_eq!(e.reason(), "loopback", "{e}");
    assert!(
        matches!(e, aibox_egress::EgressError::Redirect { .. }),
        "{e:?}"
    );
    assert_eq!(resolver.calls("rebind.test"), 2);
    assert_eq!(lab.b.hits(), 0);
}

#[tokio::test]
async fn one_internal_record_refuses_the_name_before_any_connection() {
    let lab = Lab::start().await;
    let resolver = lab
        .resolver()
        .with("mixed.test", &[&["127.0.0.1", "127.0.0.2"]])
        .with("mixed6.test", &[&["127.0.0.1", "::1"]]);
    let guard = EgressGuard::new(lab.policy(&[]), Arc::new(resolver)).unwrap();
    let before = lab.a.hits();
    for (name, want) in [("mixed.test", "loopback"), ("mixed6.test", "loopback")] {
        let e = get(&guard, &format!("http://{name}:{}/ok", lab.port))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), want, "{e}");
    }
    assert_eq!(
        lab.a.hits(),
        before,
        "not even the allowed address was contacted"
    );
    assert_eq!(lab.b.hits(), 0);
}

#[tokio::test]
async fn literal_addresses_are_checked_before_the_request() {
    let lab = Lab::start().await;
    let guard = EgressGuard::new(lab.policy(&[]), Arc::new(lab.resolver())).unwrap();
    let url = reqwest::Url::parse(&format!("http://127.0.0.2:{}/", lab.port)).unwrap();
    // `execute` checks the URL: reqwest would connect to a literal address
    // without asking any resolver.
    let e = guard
        .execute(reqwest::Request::new(reqwest::Method::GET, url.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "loopback");
    let e = guard.fetch(FetchRequest::get(url)).await.unwrap_err();
    assert_eq!(e.reason(), "loopback");
    assert_eq!(lab.b.hits(), 0);
    // Names through the bare client still go through the checked resolver.
    let e = guard
        .client()
        .get(format!("http://inner.test:{}/", lab.port))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{:?}", e).contains("127.0.0.2"), "{e:?}");
    assert_eq!(lab.b.hits(), 0);
}

#[tokio::test]
async fn credentials_stay_on_their_origin_and_303_turns_into_get() {
    let lab = Lab::start().await;
    let guard = EgressGuard::new(lab.policy(&["127.0.0.2"]), Arc::new(lab.resolver())).unwrap();
    let url = lab.redirect(307, "http://127.0.0.2:{p}/elsewhere");
    let req = FetchRequest::get(guard.parse_url(&url).unwrap()).header(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer secret-token"),
    );
    guard.fetch(req).await.unwrap();
    assert!(
        lab.a
            .last_request()
            .contains("authorization: Bearer secret-token"),
        "{}",
        lab.a.last_request()
    );
    assert!(
        !lab.b
            .last_request()
            .to_ascii_lowercase()
            .contains("authorization"),
        "{}",
        lab.b.last_request()
    );

    let url = lab.redirect(303, "/after-post");
    let req = FetchRequest::new(reqwest::Method::POST, guard.parse_url(&url).unwrap())
        .header(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer same-origin"),
        )
        .body("payload");
    guard.fetch(req).await.unwrap();
    let last = lab.a.last_request();
    assert!(last.starts_with("GET /after-post "), "{last}");
    assert!(last.contains("authorization: Bearer same-origin"), "{last}");
}

#[tokio::test]
async fn response_size_is_capped_while_streaming() {
    let lab = Lab::start().await;
    let guard = EgressGuard::new(lab.policy(&[]), Arc::new(lab.resolver())).unwrap();
    let base = format!("http://start.test:{}", lab.port);

    let e = get(&guard, &format!("{base}/big")).await.unwrap_err();
    assert_eq!(e.reason(), "max-response-bytes", "{e}");
    assert!(e.to_string().contains("egress.max_response_bytes"), "{e}");

    let r = get(&guard, &format!("{base}/exact")).await.unwrap();
    assert_eq!(r.body.len(), 1_000_000);

    // No Content-Length, a body without end: refused after about the cap,
    // not after buffering everything.
    let started = Instant::now();
    let e = get(&guard, &format!("{base}/endless")).await.unwrap_err();
    assert_eq!(e.reason(), "max-response-bytes", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = lab.a.sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 * 1024 * 1024,
        "the server got to send {sent} bytes"
    );
}

#[tokio::test]
async fn total_time_is_capped() {
    let lab = Lab::start().await;
    let policy = EgressPolicy::builder()
        .allow_host("127.0.0.1")
        .allowed_ports([i64::from(lab.port)])
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let guard = EgressGuard::new(policy, Arc::new(lab.resolver())).unwrap();
    let started = Instant::now();
    let e = get(&guard, &format!("http://start.test:{}/hang", lab.port))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "timeout", "{e}");
    assert!(e.to_string().contains("egress.timeout"), "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

const CHILD: &str = "AIBOX_EGRESS_PROXY_CHILD_PORT";

/// Runs in a child process whose environment points every proxy variable
/// at the parent's listener (the workspace forbids `unsafe`, so the test
/// cannot set variables in its own process).
#[test]
#[ignore = "run by environment_proxies_are_ignored in a child process"]
fn proxy_env_child() {
    let Ok(port) = std::env::var(CHILD) else {
        return;
    };
    let port: u16 = port.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let policy = EgressPolicy::builder()
            .allow_host("127.0.0.1")
            .allowed_ports([i64::from(port)])
            .build()
            .unwrap();
        let resolver = TestResolver::default().with("target.test", &[&["127.0.0.1"]]);
        // Building the guard also installs the TLS provider the plain
        // client below needs.
        let guard = EgressGuard::new(policy, Arc::new(resolver)).unwrap();
        // Control: a default reqwest client does use the proxy variables in
        // this process, so the check below can fail.
        let proxied = reqwest::Client::new()
            .get("http://control.test/")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(proxied, "from the proxy");

        let r = get(&guard, &format!("http://target.test:{port}/direct"))
            .await
            .unwrap();
        assert_eq!(&r.body[..], b"direct");
    });
}

#[test]
fn environment_proxies_are_ignored() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (target, proxy) = rt.block_on(async {
        let target = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_: &str| Reply::Body("direct")),
        )
        .await;
        let proxy = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_: &str| Reply::Body("from the proxy")),
        )
        .await;
        (target, proxy)
    });
    let proxy_url = format!("http://{}", proxy.addr);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "proxy_env_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, target.addr.port().to_string())
    .env_remove("NO_PROXY")
    .env_remove("no_proxy");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &proxy_url);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run:\n{stdout}"
    );
    // The proxy saw the control request and nothing else.
    let seen = proxy.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("GET http://control.test/"), "{seen:?}");
    assert_eq!(target.hits(), 1);
    drop(rt);
}

/// The system resolver reads /etc/hosts and /etc/resolv.conf; `localhost`
/// is answered from the hosts file, without any network.
#[tokio::test]
async fn system_resolver_answers_from_the_hosts_file() {
    let r = aibox_egress::SystemResolver::from_system_conf().unwrap();
    let addrs = r.resolve("localhost").await.unwrap();
    assert!(
        addrs.iter().all(|a| a.is_loopback()) && !addrs.is_empty(),
        "{addrs:?}"
    );
}
