//! Prometheus metrics, served on the ops listener only.
//!
//! Label values are bounded: routes are the matched route templates (never
//! raw paths, which a client controls); models and tenants go through
//! [`Bounded`], which admits at most a fixed number of distinct values per
//! label and counts the rest as `_other`, so no client can grow the
//! exposition by inventing model names or tenants.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use aibox_core::audit::{AuditEvent, EventKind};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// At most this many distinct model label values.
pub const MAX_MODELS: usize = 64;
/// At most this many distinct tenant label values.
pub const MAX_TENANTS: usize = 256;
/// The label value of everything beyond the cap.
pub const OTHER: &str = "_other";

/// A label whose distinct values are capped.
pub struct Bounded {
    seen: Mutex<HashSet<String>>,
    cap: usize,
}

impl Bounded {
    /// Admits up to `cap` distinct values.
    pub fn new(cap: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            cap,
        }
    }

    /// Whether `value` already has a label value of its own.
    pub fn known(&self, value: &str) -> bool {
        self.seen.lock().is_ok_and(|s| s.contains(value))
    }

    /// `value` if it is known or there is room for it, else [`OTHER`].
    pub fn label(&self, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        let Ok(mut seen) = self.seen.lock() else {
            return OTHER.to_owned();
        };
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.cap {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

/// The model a handler routed the request to, set as a response extension
/// so that the edge can label the request metrics with it.
#[derive(Clone, Debug)]
pub struct ModelLabel(pub String);

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template.
    pub route: String,
    /// The model asked for (empty where there is none).
    pub model: String,
    /// The authenticated tenant (empty before authentication).
    pub tenant: String,
    /// The status code.
    pub status: String,
}

/// Upper bounds, in seconds, of the audit append histogram's buckets.
const AUDIT_APPEND_BUCKETS: [f64; 26] = [
    0.000_05, 0.000_075, 0.000_1, 0.000_125, 0.000_15, 0.000_175, 0.000_2, 0.000_25, 0.000_3,
    0.000_4, 0.000_5, 0.000_75, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1,
    0.25, 0.5, 1.0, 5.0,
];

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template.
    pub route: String,
    /// The model asked for (empty where there is none).
    pub model: String,
    /// The authenticated tenant (empty before authentication).
    pub tenant: String,
}

/// Labels of guardrail verdicts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `input`, `output`, `tool_input`, ...
    pub stage: String,
    /// `pass`, `redact`, `block`, ...
    pub action: String,
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

/// Labels naming why a credential was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason code the client got (`unknown_api_key`, `expired`, ...):
    /// a fixed set, from the code, never from the request.
    pub reason: String,
}

/// Labels of tool-call counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// The MCP server (a configured one, or `_other`).
    pub server: String,
    /// The tool (see [`ToolNames`]).
    pub tool: String,
    /// `ok`, `denied` or `failed`.
    pub verdict: String,
}

/// Labels of the tool-call duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolTimeLabels {
    /// The MCP server.
    pub server: String,
    /// The tool.
    pub tool: String,
}

/// At most this many tools per server get their own label value besides
/// those its allow and deny lists name.
pub const MAX_TOOLS_PER_SERVER: usize = 64;

/// The tool label values: only configured servers, and per server the tools
/// its lists name plus up to [`MAX_TOOLS_PER_SERVER`] others that answered
/// a call (so they exist on the server). A denied or failed call can name
/// anything, so an unnamed tool never seen to answer is `_other`, as is an
/// unknown server.
#[derive(Default)]
pub struct ToolNames {
    servers: std::sync::RwLock<std::collections::HashMap<String, (HashSet<String>, Bounded)>>,
}

impl ToolNames {
    /// The (server, tool) label pair of one call.
    fn labels(&self, server: &str, tool: &str, verdict: &str) -> (String, String) {
        let Ok(servers) = self.servers.read() else {
            return (OTHER.to_owned(), OTHER.to_owned());
        };
        let Some((named, others)) = servers.get(server) else {
            return (OTHER.to_owned(), OTHER.to_owned());
        };
        let tool = if named.contains(tool) {
            tool.to_owned()
        } else if verdict == "ok" && !tool.is_empty() {
            others.label(tool)
        } else if others.known(tool) {
            tool.to_owned()
        } else {
            OTHER.to_owned()
        };
        (server.to_owned(), tool)
    }
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
    /// Ops API requests and dashboard logins refused for a missing or wrong credential.
    pub ops_auth_failures: Counter,
    /// Main-listener requests refused for their credential, by reason.
    pub auth_refusals: Family<ReasonLabels, Counter>,
    /// Guardrail verdicts recorded in model and route turns.
    pub guardrail_verdicts: Family<VerdictLabels, Counter>,
    /// Time from submitting a turn to the audit log to its commit.
    pub audit_append: Histogram,
    /// Turns submitted to the audit log and not yet committed.
    pub audit_pending: Gauge,
    /// Failed audit appends (the turn was refused with 503).
    pub audit_errors: Counter,
    /// MCP tool calls by server, tool and verdict.
    pub tool_calls: Family<ToolLabels, Counter>,
    /// MCP tool-call wall time by server and tool.
    pub tool_duration: Family<ToolTimeLabels, Histogram>,
    /// The tool label values.
    pub tool_names: ToolNames,
    /// The model label values.
    pub models: Bounded,
    /// The tenant label values.
    pub tenants: Bounded,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aibox");
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, model, tenant and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to response headers, by route, model and tenant",
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
            "Ops API requests and dashboard logins refused for a missing or wrong credential",
            ops_auth_failures.clone(),
        );
        let auth_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_refusals",
            "Requests to the main listener refused for a missing or bad credential, by reason",
            auth_refusals.clone(),
        );
        let guardrail_verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "guardrail_verdicts",
            "Guardrail verdicts by stage and action",
            guardrail_verdicts.clone(),
        );
        // Fine below a millisecond, where the turn's wait for its durable
        // record is judged (issue 4: at most 0.2 ms p50 in the gateway
        // benchmark, which reads these buckets), coarse above.
        let audit_append = Histogram::new(AUDIT_APPEND_BUCKETS.iter().copied());
        registry.register(
            "audit_append_duration_seconds",
            "Time from submitting a turn to the audit log to its durable commit",
            audit_append.clone(),
        );
        let audit_pending = Gauge::default();
        registry.register(
            "audit_pending_turns",
            "Turns submitted to the audit log and not yet committed (the writer's queue)",
            audit_pending.clone(),
        );
        let audit_errors = Counter::default();
        registry.register(
            "audit_append_errors",
            "Turns the audit log could not take",
            audit_errors.clone(),
        );
        let tool_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls by server, tool and verdict (ok, denied, failed)",
            tool_calls.clone(),
        );
        let tool_duration = Family::<ToolTimeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "mcp_tool_call_duration_seconds",
            "MCP tool-call wall time, policy and guard included, by server and tool",
            tool_duration.clone(),
        );
        Self {
            tool_calls,
            tool_duration,
            tool_names: ToolNames::default(),
            guardrail_verdicts,
            audit_append,
            audit_pending,
            audit_errors,
            models: Bounded::new(MAX_MODELS),
            tenants: Bounded::new(MAX_TENANTS),
            ops_auth_failures,
            auth_refusals,
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

    /// Counts the guardrail verdicts among a turn's events.
    pub fn observe_verdicts(&self, events: &[AuditEvent]) {
        for e in events {
            if let EventKind::GuardrailVerdict { stage, action, .. } = &e.kind {
                self.guardrail_verdicts
                    .get_or_create(&VerdictLabels {
                        stage: enum_label(stage),
                        action: enum_label(action),
                    })
                    .inc();
            }
        }
    }

    /// Sets the configured MCP servers and the tool names their lists name
    /// (see [`ToolNames`]).
    pub fn configure_tools(&self, servers: Vec<(String, Vec<String>)>) {
        let map = servers
            .into_iter()
            .map(|(server, tools)| {
                (
                    server,
                    (
                        tools.into_iter().collect(),
                        Bounded::new(MAX_TOOLS_PER_SERVER),
                    ),
                )
            })
            .collect();
        if let Ok(mut s) = self.tool_names.servers.write() {
            *s = map;
        }
    }

    /// Counts the tool calls among a tool turn's events.
    pub fn observe_tool_calls(&self, events: &[AuditEvent]) {
        for e in events {
            if let EventKind::ToolCall {
                server,
                tool,
                outcome,
                duration_ms,
                ..
            } = &e.kind
            {
                let verdict = match outcome {
                    aibox_core::audit::ToolOutcome::Ok => "ok",
                    aibox_core::audit::ToolOutcome::Denied { .. } => "denied",
                    aibox_core::audit::ToolOutcome::Failed { .. } => "failed",
                };
                let (server, tool) = self.tool_names.labels(server, tool, verdict);
                self.tool_calls
                    .get_or_create(&ToolLabels {
                        server: server.clone(),
                        tool: tool.clone(),
                        verdict: verdict.to_owned(),
                    })
                    .inc();
                self.tool_duration
                    .get_or_create(&ToolTimeLabels { server, tool })
                    .observe(std::time::Duration::from_millis(*duration_ms).as_secs_f64());
            }
        }
    }

    /// Runs an audit append, keeping the pending gauge and the latency
    /// histogram. The gauge goes down even when the caller's future is
    /// dropped mid-await.
    pub async fn time_audit<T, E>(
        &self,
        append: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        struct Pending<'a>(&'a Gauge);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.audit_pending.inc();
        let _pending = Pending(&self.audit_pending);
        let started = Instant::now();
        let result = append.await;
        self.audit_append.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.audit_errors.inc();
        }
        result
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

/// Rewrites an OpenMetrics exposition as the Prometheus text format 0.0.4,
/// for scrapers and tools that do not ask for OpenMetrics (`promtool check
/// metrics`, older Prometheus servers): counter families are named with
/// their `_total` suffix, and `# EOF` and `# UNIT` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(prefix);
                    out.push_str(name);
                    out.push_str("_total ");
                    out.push_str(tail);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The serde name of a unit enum variant (`input`, `block`, ...).
fn enum_label<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total_and_drops_eof() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn tool_labels_keep_only_configured_names() {
        let m = Metrics::new();
        m.configure_tools(vec![("local".into(), vec!["echo".into(), "danger".into()])]);
        let n = &m.tool_names;
        assert_eq!(
            n.labels("local", "echo", "ok"),
            ("local".into(), "echo".into())
        );
        assert_eq!(
            n.labels("local", "danger", "denied"),
            ("local".into(), "danger".into())
        );
        // A denied or failed call may name anything: no value of its own.
        assert_eq!(
            n.labels("local", "invented", "denied"),
            ("local".into(), OTHER.into())
        );
        assert_eq!(
            n.labels("local", "invented", "failed"),
            ("local".into(), OTHER.into())
        );
        assert_eq!(
            n.labels("nosuch", "echo", "ok"),
            (OTHER.into(), OTHER.into())
        );
        // A tool that answered keeps its name, for its failures too.
        assert_eq!(n.labels("local", "add", "ok").1, "add");
        assert_eq!(n.labels("local", "add", "failed").1, "add");
        // Tools beyond the lists are capped per server.
        for i in 1..MAX_TOOLS_PER_SERVER {
            assert_eq!(n.labels("local", &format!("t{i}"), "ok").1, format!("t{i}"));
        }
        assert_eq!(n.labels("local", "one-more", "ok").1, OTHER);
    }

    #[test]
    fn bounded_labels_cap_distinct_values() {
        let b = Bounded::new(2);
        assert_eq!(b.label("a"), "a");
        assert_eq!(b.label("b"), "b");
        assert_eq!(b.label("c"), OTHER);
        assert_eq!(b.label("a"), "a");
        assert_eq!(b.label(""), "");
    }
}
