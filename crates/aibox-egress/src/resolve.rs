//! Name resolution, done by aibox rather than by the HTTP client, so every
//! address can be checked before anything connects to it.
//!
//! [`Resolve`] is the seam: [`SystemResolver`] reads the system's resolver
//! configuration (`/etc/resolv.conf`, `/etc/hosts`) through hickory-resolver
//! and asks for both A and AAAA records, so a name with a public A record and
//! an internal AAAA record is seen whole; tests inject their own resolver
//! ([`StaticResolver`], or one that changes its answers to simulate DNS
//! rebinding).
//!
//! Names are looked up as fully qualified names (a trailing dot is added), so
//! the search domains of `resolv.conf` never turn `wiki.example` into
//! `wiki.example.corp.internal`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;

/// A failed lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

/// The future a [`Resolve`] returns.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send + 'a>>;

/// Resolves a host name to all of its addresses.
pub trait Resolve: Send + Sync {
    /// Every address of `name` (normalised: lowercase, no trailing dot).
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

/// The system resolver: `/etc/resolv.conf` and `/etc/hosts`, A and AAAA.
#[derive(Clone)]
pub struct SystemResolver {
    inner: TokioResolver,
}

impl SystemResolver {
    /// Reads the system configuration.
    pub fn from_system_conf() -> Result<Self, ResolveError> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| {
            ResolveError(format!(
                "cannot read the system resolver configuration (/etc/resolv.conf): {e}"
            ))
        })?;
        // Both families: every record is checked, so none may stay unseen.
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = builder
            .build()
            .map_err(|e| ResolveError(format!("cannot start the resolver: {e}")))?;
        Ok(Self { inner })
    }
}

impl std::fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemResolver")
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            let lookup = self
                .inner
                .lookup_ip(fqdn.as_str())
                .await
                .map_err(|e| ResolveError(e.to_string()))?;
            Ok(lookup.iter().collect())
        })
    }
}

/// A fixed table of answers, for tests and for setups without DNS. A name
/// not in the table fails to resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    answers: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the answers for one name.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.answers.insert(
            crate::classify::normalize_name(name),
            addrs.into_iter().collect(),
        );
        self
    }

    /// As an `Arc<dyn Resolve>`.
    pub fn shared(self) -> Arc<dyn Resolve> {
        Arc::new(self)
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        let answer = self
            .answers
            .get(&crate::classify::normalize_name(name))
            .cloned()
            .ok_or_else(|| ResolveError(format!("{name}: no such name (static resolver)")));
        Box::pin(async move { answer })
    }
}
