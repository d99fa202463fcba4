//! W3C Trace Context (`traceparent`, `tracestate`) in and out of aibox.
//!
//! In: [`set_remote_parent`] makes a caller's valid `traceparent` the parent
//! of aibox's server span. The header is parsed strictly by the rules of
//! the W3C Recommendation (§3.2, §4.3): exactly one `traceparent`; version
//! `00` is exactly `00-<32 hex>-<16 hex>-<2 hex>` in lowercase, a higher
//! version may carry more fields after a `-`, version `ff` is invalid; an
//! all-zero trace id or parent id is invalid. A malformed `traceparent` is
//! ignored (aibox starts a trace of its own), and so is its `tracestate`; a
//! malformed `tracestate` alone is dropped without touching the parent.
//!
//! Out: [`current_headers`] gives the `traceparent` (and `tracestate`) of
//! the current span for an outgoing request, so the upstream's spans hang
//! under aibox's client span.
//!
//! Without the OpenTelemetry layer (traces off), spans carry no context:
//! nothing is parented and nothing is injected.

use std::str::FromStr as _;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` kept (the Recommendation's minimum to propagate
/// is 512 characters; longer ones may be dropped).
const MAX_TRACESTATE: usize = 512;

fn hex_lower(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The span context of a `traceparent` value, or `None` when it is not
/// valid by the Recommendation's rules.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = value.get(0..2)?;
    if !hex_lower(version, 2) || version == "ff" {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may add fields,
    // each after a '-' (§4.3: parse what this version knows).
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
    if !hex_lower(trace, 32) || !hex_lower(parent, 16) || !hex_lower(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The `tracestate` of a request: its headers joined with commas (§3.3.1.1:
/// several are one list), or `None` when malformed or too long.
fn parse_tracestate(headers: &HeaderMap) -> Option<TraceState> {
    let mut joined = String::new();
    for v in headers.get_all(TRACESTATE) {
        let v = v.to_str().ok()?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
    }
    if joined.trim().is_empty() || joined.len() > MAX_TRACESTATE {
        return None;
    }
    TraceState::from_str(joined.trim()).ok()
}

/// The remote parent named by a request's headers, if valid.
pub fn remote_parent(headers: &HeaderMap) -> Option<SpanContext> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let (Some(one), None) = (all.next(), all.next()) else {
        return None;
    };
    let parent = parse_traceparent(one.to_str().ok()?)?;
    let state = parse_tracestate(headers).unwrap_or_default();
    Some(SpanContext::new(
        parent.trace_id(),
        parent.span_id(),
        parent.trace_flags(),
        true,
        state,
    ))
}

/// Makes the request's valid `traceparent` the parent of `span` (which
/// must not have been entered yet). Returns whether it did.
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) -> bool {
    let Some(parent) = remote_parent(headers) else {
        return false;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(parent);
    span.set_parent(cx).is_ok()
}

/// `traceparent` and `tracestate` for an outgoing request made in the
/// current span; empty without a span context (traces off).
pub fn current_headers() -> HeaderMap {
    let mut out = HeaderMap::new();
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return out;
    }
    let value = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        out.insert(TRACEPARENT, v);
    }
    let state = sc.trace_state().header();
    if !state.is_empty()
        && let Ok(v) = HeaderValue::from_str(&state)
    {
        out.insert(TRACESTATE, v);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendations_example_parses() {
        let sc = parse_traceparent(GOOD).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        // Unknown flags are cleared, the sampled bit kept.
        let sc = parse_traceparent(&GOOD.replace("-01", "-03")).unwrap();
        assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
        // A later version may carry more fields.
        assert!(parse_traceparent(&format!("{}-extra", GOOD.replacen("00", "01", 1))).is_some());
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn two_traceparents_are_none_and_a_bad_tracestate_only_drops_itself() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(GOOD));
        h.append(TRACESTATE, HeaderValue::from_static("vendor=a,other=b"));
        let sc = remote_parent(&h).unwrap();
        assert_eq!(sc.trace_state().get("vendor"), Some("a"));
        h.append(TRACESTATE, HeaderValue::from_static("third=c"));
        assert_eq!(
            remote_parent(&h).unwrap().trace_state().get("third"),
            Some("c")
        );
        h.insert(TRACESTATE, HeaderValue::from_static("not a list entry"));
        let sc = remote_parent(&h).unwrap();
        assert_eq!(sc.trace_state().header(), "");
        h.append(TRACEPARENT, HeaderValue::from_static(GOOD));
        assert!(remote_parent(&h).is_none());
    }

    #[test]
    fn nothing_is_injected_without_a_span_context() {
        assert!(current_headers().is_empty());
    }
}
