//! Prometheus metrics, served on the ops listener only.
//!
//! Label values are bounded: routes are the matched route templates (never
//! raw paths, which a client controls), models are the configured or
//! discovered names that passed resolution, and tenants are validated ids.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template.
    pub route: String,
    /// The status code.
    pub status: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template.
    pub route: String,
}

/// Labels of token counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The tenant.
    pub tenant: String,
    /// The model the client asked for.
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: String,
}

/// Labels naming an upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream's name.
    pub upstream: String,
}

/// Labels naming a limit scope.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    /// `tenant` or `user`.
    pub scope: String,
}

/// All metrics of the gateway.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<HttpLabels, Counter>,
    /// Latency until response headers, by route.
    pub latency: Family<RouteLabels, Histogram>,
    /// Tokens by tenant, model and kind.
    pub tokens: Family<TokenLabels, Counter>,
    /// Failed upstream attempts and broken streams.
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// Rate-limit refusals.
    pub rate_limited: Family<ScopeLabels, Counter>,
    /// Requests being forwarded upstream or streamed back now.
    pub inflight: Gauge,
    /// Times the Redis limiter fell back to memory.
    pub limiter_fallbacks: Gauge<u64, AtomicU64>,
    /// Requests and streams refused by the guardrail.
    pub guardrail_blocks: Counter,
    /// Ops API requests refused for a missing or wrong token.
    pub ops_auth_failures: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aibox");
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to response headers",
            latency.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens by tenant, model and kind", tokens.clone());
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream attempts and broken streams",
            upstream_errors.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "Requests being forwarded upstream or streamed back",
            inflight.clone(),
        );
        let limiter_fallbacks = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "ratelimit_redis_fallbacks",
            "Rate-limit decisions taken in memory because Redis was unreachable",
            limiter_fallbacks.clone(),
        );
        let guardrail_blocks = Counter::default();
        registry.register(
            "guardrail_blocks",
            "Requests and streams refused by the guardrail",
            guardrail_blocks.clone(),
        );
        let ops_auth_failures = Counter::default();
        registry.register(
            "ops_auth_failures",
            "Ops API requests refused for a missing or wrong OPS_CONTROLLER_TOKEN",
            ops_auth_failures.clone(),
        );
        Self {
            ops_auth_failures,
            guardrail_blocks,
            registry,
            requests,
            latency,
            tokens,
            upstream_errors,
            rate_limited,
            inflight,
            limiter_fallbacks,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
