//! Server-Sent Events from upstreams: the router's `SseScanner` (finds
//! `[DONE]` and the usage chunk of a relayed stream), its
//! `UsageEventFilter` (cuts the stream at event boundaries and drops the
//! usage-only event the client did not ask for), `parse_usage`, and the MCP
//! gateway's `SseParser` (answers of remote MCP servers).
//!
//! Property: the chunking of the bytes never changes the result. The first
//! two bytes choose the chunk sizes; the rest is the stream.
#![no_main]

use aibox_mcp::sse::SseParser;
use aibox_router::sse::{SseScanner, UsageEventFilter, parse_usage};
use libfuzzer_sys::fuzz_target;

/// Cuts `bytes` into chunks of sizes cycling through `sizes`.
fn chunks<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [a, b, stream @ ..] = data else {
        return;
    };
    let sizes = [usize::from(*a) + 1, usize::from(*b) + 1, 1];
    let pieces = chunks(stream, &sizes);

    let _ = parse_usage(stream);

    let mut whole = SseScanner::default();
    whole.feed(stream);
    let mut split = SseScanner::default();
    for p in &pieces {
        split.feed(p);
    }
    assert_eq!(whole.done(), split.done(), "[DONE] depends on chunking");
    assert_eq!(whole.usage(), split.usage(), "usage depends on chunking");

    let mut whole = UsageEventFilter::default();
    let mut out_whole = whole.push(stream).to_vec();
    out_whole.extend_from_slice(&whole.finish());
    let mut split = UsageEventFilter::default();
    let mut out_split = Vec::new();
    for p in &pieces {
        out_split.extend_from_slice(&split.push(p));
    }
    out_split.extend_from_slice(&split.finish());
    assert_eq!(
        out_whole, out_split,
        "the filtered stream depends on chunking"
    );
    assert!(out_whole.len() <= stream.len(), "the filter added bytes");

    let mut whole = SseParser::new(4096);
    let events_whole = whole.feed(stream);
    let mut split = SseParser::new(4096);
    let mut events_split = Ok(Vec::new());
    for p in &pieces {
        match split.feed(p) {
            Ok(mut ev) => {
                if let Ok(all) = events_split.as_mut() {
                    all.append(&mut ev);
                }
            }
            Err(e) => {
                events_split = Err(e);
                break;
            }
        }
    }
    match (events_whole, events_split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "MCP SSE events depend on chunking"),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("MCP SSE outcome depends on chunking: {a:?} vs {b:?}"),
    }
});
