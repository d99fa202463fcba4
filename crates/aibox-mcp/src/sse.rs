//! An incremental Server-Sent Events parser (pure), for the answers of
//! remote MCP servers that reply to a POST with `text/event-stream`.
//!
//! Only `data` matters to MCP: each event's data lines, joined with `\n`,
//! are one JSON-RPC message. `event`, `id` and `retry` are ignored, comment
//! lines (`:`) too. Lines end in `\n`, `\r\n` or `\r`, possibly split across
//! chunks. The parser holds at most `max_event_bytes` of one event, so a
//! server cannot make the gateway buffer without bound.

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event of the stream exceeds {0} bytes")]
pub struct EventTooLarge(pub usize);

/// The parser state.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    last_was_cr: bool,
    max_event_bytes: usize,
}

impl SseParser {
    /// A parser that refuses events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            last_was_cr: false,
            max_event_bytes,
        }
    }

    /// Feeds a chunk; returns the data of every event it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<String>, EventTooLarge> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.last_was_cr {
                self.last_was_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.last_was_cr = true;
                    self.end_line(&mut out);
                }
                b'\n' => self.end_line(&mut out),
                _ => {
                    self.line.push(b);
                    if self.line.len() + self.data.len() > self.max_event_bytes {
                        return Err(EventTooLarge(self.max_event_bytes));
                    }
                }
            }
        }
        Ok(out)
    }

    fn end_line(&mut self, out: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                out.push(String::from_utf8_lossy(&self.data).into_owned());
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::new(1024);
        chunks.iter().flat_map(|c| p.feed(c).unwrap()).collect()
    }

    #[test]
    fn events_table() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"data: {\"a\":1}\n\n"], &["{\"a\":1}"]),
            (&[b"event: message\r\ndata: x\r\n\r\n"], &["x"]),
            (&[b"data: x\r\rdata: y\r\r"], &["x", "y"]),
            (&[b"data: a\ndata: b\n\n"], &["a\nb"]),
            (&[b"da", b"ta: sp", b"lit\r", b"\n\r\n"], &["split"]),
            (
                &[b": keepalive\n\n", b"id: 7\ndata:nospace\n\n"],
                &["nospace"],
            ),
            (&[b"event: ping\n\n"], &[]),
            (&[b"data\n\n"], &[""]),
            (&[b"data: unterminated"], &[]),
        ];
        for (chunks, want) in cases {
            assert_eq!(all(chunks), *want, "{chunks:?}");
        }
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789\n").is_ok());
        assert!(p.feed(b"data: 0123456789\n").is_err());
    }
}
