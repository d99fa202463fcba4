//! The HTTP proxy that is a sandboxed stdio server's only way out.
//!
//! A server with network `proxy` runs in its own network namespace with
//! nothing but loopback. Its launcher opens a listening socket on
//! `127.0.0.1:PORT` *inside* that namespace and hands it to aibox; aibox
//! accepts on it here (a socket keeps the namespace it was created in, so
//! aibox needs no `setns`) and serves two forms of proxy request:
//!
//! - `CONNECT host:port` (HTTPS and any TCP tunnel);
//! - plain HTTP in absolute form (`GET http://host/path HTTP/1.1`), which
//!   is forwarded with the origin-form request line and `Connection: close`.
//!
//! Every destination goes through the egress seam (in `aibox serve`, the
//! SSRF-safe `aibox-egress` guard: names resolved by aibox, every address
//! checked, the allow-list and port rules applied), and aibox connects only
//! to an address that passed. A refusal answers `403` with the reason and
//! is audited as a `sandbox` event `egress_denied`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aibox_core::audit::EventKind;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::seams::{HttpEgress, SandboxRecord, ToolAudit};

/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long aibox tries to connect to a destination.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per server.
const MAX_CONNECTIONS: usize = 64;

/// A running proxy; it stops when dropped.
pub struct ProxyHandle(tokio::task::JoinHandle<()>);

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the proxy on `listener` for `server`.
pub fn spawn(
    server: String,
    listener: std::net::TcpListener,
    egress: Arc<dyn HttpEgress>,
    audit: Arc<dyn ToolAudit>,
) -> std::io::Result<ProxyHandle> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let ctx = Arc::new(Ctx {
        server,
        egress,
        audit,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                ctx.serve(stream).await;
                drop(permit);
            });
        }
    });
    Ok(ProxyHandle(task))
}

struct Ctx {
    server: String,
    egress: Arc<dyn HttpEgress>,
    audit: Arc<dyn ToolAudit>,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// `CONNECT host:port`.
    Connect {
        /// `host:port` as sent.
        authority: String,
    },
    /// An absolute-form HTTP request.
    Forward {
        /// The destination.
        url: url::Url,
        /// The head to send upstream (origin form, proxy headers removed,
        /// `Connection: close`).
        head: Vec<u8>,
    },
}

/// Parses a request head (everything up to and including the blank line).
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "unsupported protocol '{}'",
            crate::names::printable(version)
        ));
    }
    if method == "CONNECT" {
        if target.is_empty()
            || target
                .chars()
                .any(|c| matches!(c, '/' | '@' | '?' | '#' | '\\') || c.is_whitespace())
        {
            return Err("CONNECT needs host:port".into());
        }
        return Ok(Request::Connect {
            authority: target.to_owned(),
        });
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        return Err("malformed method".into());
    }
    let url = url::Url::parse(target).map_err(|_| {
        "a proxy request needs an absolute http:// URL (use CONNECT for https)".to_owned()
    })?;
    if url.scheme() != "http" {
        return Err(format!(
            "scheme '{}' is not forwarded (use CONNECT for https)",
            url.scheme()
        ));
    }
    let mut out = format!("{method} {} {version}\r\n", origin_form(&url));
    let mut has_host = false;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        has_host |= name == "host";
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !has_host {
        let host = url.host_str().unwrap_or_default();
        match url.port() {
            Some(p) => out.push_str(&format!("Host: {host}:{p}\r\n")),
            None => out.push_str(&format!("Host: {host}\r\n")),
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(Request::Forward {
        url,
        head: out.into_bytes(),
    })
}

fn origin_form(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

async fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err("the request head is too large".into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = "no address".to_owned();
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: timed out"),
        }
    }
    Err(last)
}

impl Ctx {
    async fn serve(&self, mut client: TcpStream) {
        let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
            Ok(Ok(h)) => h,
            Ok(Err(_)) | Err(_) => return,
        };
        let req = match parse_head(&head) {
            Ok(r) => r,
            Err(e) => {
                let _ = respond(&mut client, "400 Bad Request", &format!("aibox proxy: {e}")).await;
                return;
            }
        };
        let (url, shown, upstream_head) = match req {
            Request::Connect { authority } => {
                let url = url::Url::parse(&format!("https://{authority}/"));
                match url {
                    Ok(u) => (u, format!("CONNECT {authority}"), None),
                    Err(_) => {
                        let _ = respond(
                            &mut client,
                            "400 Bad Request",
                            "aibox proxy: CONNECT needs host:port",
                        )
                        .await;
                        return;
                    }
                }
            }
            Request::Forward { url, head } => {
                let shown = format!(
                    "{} {}:{}",
                    std::str::from_utf8(&head)
                        .ok()
                        .and_then(|h| h.split(' ').next())
                        .unwrap_or("GET"),
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(80)
                );
                (url, shown, Some(head))
            }
        };
        let addrs = match self.egress.check(&url) {
            Ok(()) => self.egress.resolve(&url).await,
            Err(e) => Err(e),
        };
        let addrs = match addrs {
            Ok(a) => a,
            Err(e) => {
                self.denied(&shown, &e).await;
                let _ = respond(
                    &mut client,
                    "403 Forbidden",
                    &format!("aibox egress refused {shown}: {e}"),
                )
                .await;
                return;
            }
        };
        if addrs.is_empty() {
            self.denied(&shown, "the name has no address").await;
            let _ = respond(
                &mut client,
                "403 Forbidden",
                "aibox egress: the name has no address",
            )
            .await;
            return;
        }
        let mut upstream = match connect_any(&addrs).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(server = %self.server, destination = %shown, error = %e, "sandbox proxy: cannot connect");
                let _ = respond(
                    &mut client,
                    "502 Bad Gateway",
                    &format!("aibox proxy: cannot connect: {e}"),
                )
                .await;
                return;
            }
        };
        tracing::info!(server = %self.server, destination = %shown, "sandbox proxy: connected");
        let sent = match &upstream_head {
            None => {
                client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
            }
            Some(h) => upstream.write_all(h).await,
        };
        if sent.is_err() || (!rest.is_empty() && upstream.write_all(&rest).await.is_err()) {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }

    async fn denied(&self, what: &str, why: &str) {
        tracing::warn!(server = %self.server, destination = %what, reason = %why, "sandbox proxy: egress refused");
        let rec = SandboxRecord {
            at_ms: crate::stdio::now_ms(),
            kind: EventKind::Sandbox {
                server: self.server.clone(),
                what: "egress_denied".into(),
                detail: format!("{what}: {why}"),
            },
        };
        if let Err(e) = self.audit.record_sandbox(rec).await {
            tracing::error!(server = %self.server, error = %e, "cannot record the refused egress in the audit log");
        }
    }
}

async fn respond(client: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(msg.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_forward_heads_parse() {
        assert_eq!(
            parse_head(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
                .unwrap(),
            Request::Connect {
                authority: "example.com:443".into()
            }
        );
        let Request::Forward { url, head } = parse_head(
            b"GET http://203.0.113.2:8080/a?b=1 HTTP/1.1\r\nHost: 203.0.113.2:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(url.as_str(), "http://203.0.113.2:8080/a?b=1");
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            "GET /a?b=1 HTTP/1.1\r\nHost: 203.0.113.2:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn bad_heads_are_refused() {
        for head in [
            &b"GET /relative HTTP/1.1\r\n\r\n"[..],
            b"GET https://x/ HTTP/1.1\r\n\r\n",
            b"GET ftp://x/ HTTP/1.1\r\n\r\n",
            b"CONNECT user@host:443 HTTP/1.1\r\n\r\n",
            b"CONNECT host/x:443 HTTP/1.1\r\n\r\n",
            b"CONNECT  HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/2\r\n\r\n",
            b"get http://x/ HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
