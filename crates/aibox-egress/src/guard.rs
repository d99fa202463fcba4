//! The egress client: every outbound HTTP call a tool or a remote MCP server
//! can influence goes through an [`EgressGuard`].
//!
//! How it keeps the checks and the connection together:
//!
//! - The `reqwest` client is built with a DNS resolver of ours
//!   ([`CheckedDns`]): for every connection reqwest asks it for the host's
//!   addresses, and it resolves the name once, checks every address (any
//!   blocked one refuses the whole name: fail closed) and hands reqwest
//!   exactly the checked addresses. reqwest connects only to those. There is
//!   no second lookup, so an answer that changes between a check and the
//!   connection (DNS rebinding) cannot slip through.
//! - reqwest does not call a resolver for literal addresses
//!   (`http://10.0.0.5/`), so every URL is checked with
//!   [`check_url`](crate::check::check_url) before a request is sent.
//! - No proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`,
//!   `ALL_PROXY`): a proxy would make the connection on our behalf, to an
//!   address we never checked.
//! - Redirects are not followed by reqwest; [`EgressGuard::fetch`] follows
//!   them itself, checking every hop and capping the hops.
//! - The response body is read chunk by chunk and refused as soon as it
//!   passes the size cap; the whole call (all hops and the body) runs under
//!   one deadline.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::check::{CheckedHost, check_addr, check_name, check_url, parse_url};
use crate::error::{EgressError, redact};
use crate::policy::EgressPolicy;
use crate::resolve::{Resolve, SystemResolver};

/// A request for [`EgressGuard::fetch`].
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The method.
    pub method: Method,
    /// The URL.
    pub url: Url,
    /// Headers sent on every hop (credentials only while the origin stays
    /// the same).
    pub headers: HeaderMap,
    /// The body, if any (kept for 307 and 308 redirects).
    pub body: Option<Bytes>,
}

impl FetchRequest {
    /// A request with no headers and no body.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
        }
    }

    /// A GET request.
    pub fn get(url: Url) -> Self {
        Self::new(Method::GET, url)
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }
}

/// A complete response from [`EgressGuard::fetch`].
#[derive(Debug, Clone)]
pub struct FetchedResponse {
    /// The final status.
    pub status: StatusCode,
    /// The final headers.
    pub headers: HeaderMap,
    /// The URL that answered (after redirects).
    pub url: Url,
    /// The URLs that redirected, in order.
    pub redirects: Vec<Url>,
    /// The body, at most `egress.max_response_bytes` long.
    pub body: Bytes,
}

/// Resolves a name through the injected resolver and checks every address;
/// shared by [`CheckedDns`] and [`EgressGuard::resolve_checked`].
async fn resolve_and_check(
    policy: &EgressPolicy,
    resolver: &dyn Resolve,
    host: &str,
) -> Result<Vec<IpAddr>, EgressError> {
    let name = crate::classify::normalize_name(host);
    // The URL check refused names by name already; this repeats it for
    // callers that use `client()` directly.
    let allowed = check_name(policy, &name).map_err(|rule| EgressError::Blocked {
        url: host.to_owned(),
        host: host.to_owned(),
        address: None,
        rule,
    })?;
    let addrs = resolver
        .resolve(&name)
        .await
        .map_err(|e| EgressError::Resolve {
            url: host.to_owned(),
            host: host.to_owned(),
            cause: e.0,
        })?;
    if addrs.is_empty() {
        return Err(EgressError::NoAddresses {
            url: host.to_owned(),
            host: host.to_owned(),
        });
    }
    // Every record, not just the first: a name with one public and one
    // internal record is refused whole.
    for ip in &addrs {
        check_addr(policy, allowed, *ip).map_err(|rule| EgressError::Blocked {
            url: host.to_owned(),
            host: host.to_owned(),
            address: Some(*ip),
            rule,
        })?;
    }
    Ok(addrs)
}

/// The resolver reqwest calls for every new connection to a named host.
struct CheckedDns {
    policy: Arc<EgressPolicy>,
    resolver: Arc<dyn Resolve>,
}

impl reqwest::dns::Resolve for CheckedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let resolver = Arc::clone(&self.resolver);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_and_check(&policy, resolver.as_ref(), &host)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            // Port 0: reqwest puts in the URL's port (explicit or default).
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The SSRF-safe egress client. Cheap to clone.
#[derive(Clone)]
pub struct EgressGuard {
    policy: Arc<EgressPolicy>,
    resolver: Arc<dyn Resolve>,
    client: reqwest::Client,
}

impl std::fmt::Debug for EgressGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressGuard")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl EgressGuard {
    /// Builds the guard with a resolver (tests inject their own).
    pub fn new(policy: EgressPolicy, resolver: Arc<dyn Resolve>) -> Result<Self, EgressError> {
        // reqwest is built without a default TLS provider; install ring once
        // per process (a second install is refused harmlessly).
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(CheckedDns {
                policy: Arc::clone(&policy),
                resolver: Arc::clone(&resolver),
            }))
            .connect_timeout(policy.connect_timeout)
            .https_only(policy.https_only)
            .referer(false)
            .build()
            .map_err(|e| EgressError::Client {
                cause: describe(&e.without_url()),
            })?;
        Ok(Self {
            policy,
            resolver,
            client,
        })
    }

    /// Builds the guard with the system resolver.
    pub fn with_system_resolver(policy: EgressPolicy) -> Result<Self, EgressError> {
        let resolver =
            SystemResolver::from_system_conf().map_err(|e| EgressError::Client { cause: e.0 })?;
        Self::new(policy, Arc::new(resolver))
    }

    /// The policy.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Parses and checks a URL (no IO).
    pub fn parse_url(&self, input: &str) -> Result<Url, EgressError> {
        let url = parse_url(input)?;
        self.check_url(&url)?;
        Ok(url)
    }

    /// Checks a URL without IO: scheme, literal address or name, port,
    /// credentials. Names are checked again, with their addresses, when the
    /// client connects.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressError> {
        check_url(&self.policy, url).map(|_| ())
    }

    /// Checks a URL and resolves its host, checking every address: the
    /// addresses a connection would use. For diagnostics; the client
    /// resolves again when it connects, and checks again.
    pub async fn resolve_checked(&self, url: &Url) -> Result<Vec<SocketAddr>, EgressError> {
        let checked = check_url(&self.policy, url)?;
        let shown = redact(url);
        let ips = match checked.host {
            CheckedHost::Ip(ip) => vec![ip],
            CheckedHost::Name { name, .. } => {
                resolve_and_check(&self.policy, self.resolver.as_ref(), &name)
                    .await
                    .map_err(|e| e.at(&shown))?
            }
        };
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, checked.port))
            .collect())
    }

    /// The underlying client: DNS through the checks, no proxy, no
    /// redirects. Literal addresses bypass any resolver, so a caller that
    /// uses it directly must pass every URL (and every redirect target)
    /// through [`check_url`](Self::check_url) first; [`execute`](Self::execute)
    /// and [`fetch`](Self::fetch) do.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Checks the URL and sends one request; redirects are returned, not
    /// followed, and the body is the caller's to read (for streams such as
    /// MCP's SSE). The deadline `egress.timeout_ms` covers the wait for the
    /// response headers.
    pub async fn execute(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, EgressError> {
        self.check_url(request.url())?;
        let shown = redact(request.url());
        match tokio::time::timeout(self.policy.timeout, self.client.execute(request)).await {
            Err(_) => Err(EgressError::Timeout {
                url: shown,
                after: self.policy.timeout,
            }),
            Ok(Err(e)) => Err(from_reqwest(&shown, e)),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Sends a request, following redirects (each hop checked, at most
    /// `egress.max_redirects`), and reads the body up to
    /// `egress.max_response_bytes`, all within `egress.timeout_ms`.
    pub async fn fetch(&self, request: FetchRequest) -> Result<FetchedResponse, EgressError> {
        let shown = redact(&request.url);
        let result = match tokio::time::timeout(self.policy.timeout, self.fetch_hops(request)).await
        {
            Err(_) => Err(EgressError::Timeout {
                url: shown,
                after: self.policy.timeout,
            }),
            Ok(r) => r,
        };
        if let Err(e) = &result
            && e.is_refusal()
        {
            tracing::warn!(reason = %e.reason(), "{e}");
        }
        result
    }

    async fn fetch_hops(&self, mut request: FetchRequest) -> Result<FetchedResponse, EgressError> {
        let mut redirects: Vec<Url> = Vec::new();
        loop {
            let checked = check_url(&self.policy, &request.url);
            let checked = match (checked, redirects.last()) {
                (Ok(c), _) => c,
                (Err(e), None) => return Err(e),
                (Err(e), Some(from)) => {
                    return Err(EgressError::Redirect {
                        from: redact(from),
                        source: Box::new(e),
                    });
                }
            };
            let url = checked.url;
            let shown = redact(&url);
            let mut builder = self
                .client
                .request(request.method.clone(), url.clone())
                .headers(request.headers.clone());
            if let Some(body) = &request.body {
                builder = builder.body(body.clone());
            }
            let response = builder.send().await.map_err(|e| {
                let e = from_reqwest(&shown, e);
                match redirects.last() {
                    Some(from) if e.is_refusal() => EgressError::Redirect {
                        from: redact(from),
                        source: Box::new(e),
                    },
                    _ => e,
                }
            })?;
            let status = response.status();
            let location = response.headers().get(header::LOCATION).cloned();
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            if let (true, Some(location)) = (is_redirect, location) {
                if redirects.len() >= self.policy.max_redirects as usize {
                    return Err(EgressError::TooManyRedirects {
                        url: shown,
                        max: self.policy.max_redirects,
                    });
                }
                let next = location
                    .to_str()
                    .map_err(|_| "the Location header is not ASCII".to_owned())
                    .and_then(|l| url.join(l).map_err(|e| e.to_string()))
                    .map_err(|cause| EgressError::BadRedirect {
                        url: shown.clone(),
                        cause,
                    })?;
                // Browsers' rules: 303 always, and 301/302 after a POST,
                // turn into a GET without a body.
                let to_get = status == StatusCode::SEE_OTHER
                    || matches!(status.as_u16(), 301 | 302) && request.method == Method::POST;
                if to_get {
                    request.method = Method::GET;
                    request.body = None;
                    request.headers.remove(header::CONTENT_TYPE);
                    request.headers.remove(header::CONTENT_LENGTH);
                }
                if next.origin() != url.origin() {
                    for h in [
                        header::AUTHORIZATION,
                        header::COOKIE,
                        header::PROXY_AUTHORIZATION,
                    ] {
                        request.headers.remove(h);
                    }
                }
                redirects.push(url);
                request.url = next;
                continue;
            }
            let headers = response.headers().clone();
            let body = read_capped(response, self.policy.max_response_bytes, &shown).await?;
            return Ok(FetchedResponse {
                status,
                headers,
                url,
                redirects,
                body,
            });
        }
    }
}

/// Reads a body chunk by chunk, refusing it as soon as it passes `max`.
async fn read_capped(
    mut response: reqwest::Response,
    max: u64,
    shown: &str,
) -> Result<Bytes, EgressError> {
    let too_large = || EgressError::TooLarge {
        url: shown.to_owned(),
        max,
    };
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| from_reqwest(shown, e))? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Maps a reqwest error, finding our own refusal when the resolver raised
/// it inside reqwest.
fn from_reqwest(shown: &str, e: reqwest::Error) -> EgressError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(ours) = s.downcast_ref::<EgressError>() {
            return ours.clone().at(shown);
        }
        source = s.source();
    }
    let e = e.without_url();
    let cause = describe(&e);
    if e.is_timeout() {
        EgressError::Connect {
            url: shown.to_owned(),
            cause: format!("timed out ({cause}); the connect limit is egress.connect_timeout_ms"),
        }
    } else if e.is_connect() {
        EgressError::Connect {
            url: shown.to_owned(),
            cause,
        }
    } else {
        EgressError::Http {
            url: shown.to_owned(),
            cause,
        }
    }
}

/// The error and its causes on one line (the URL is removed before).
fn describe(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
