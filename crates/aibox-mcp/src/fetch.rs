//! The built-in `fetch` server: one tool that GETs an http(s) URL and
//! returns the answer as text.
//!
//! It is disabled by default: it runs only when `fetch` is listed in
//! `servers.txt` with `"transport": "builtin"` in the registry, and like
//! every server it is subject to `allow_clients`, the tool lists, the
//! CapToken (`tool:fetch/fetch`), the guardrail and the audit log.
//!
//! Its only way out is [`HttpEgress::fetch`], which `aibox serve` backs with
//! the SSRF-safe egress guard (`aibox-egress`): http(s) only, allowed ports
//! only, every resolved address and every redirect hop checked against the
//! blocked ranges and the operator's allow-list (`egress.allow_hosts`), the
//! body capped at `egress.max_response_bytes` and the exchange at
//! `egress.timeout_ms`. This module parses nothing but the URL syntax and
//! decodes the body; it never opens a connection itself. A refusal is a
//! tool error (`isError: true`) whose text names the rule that refused
//! (`refused by the egress rule 'loopback': ...`) and whose
//! `structuredContent` carries it as `rule`, so a model can tell a refused
//! URL from a failing site.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::seams::{BoxFuture, HttpEgress};
use crate::upstream::{CallError, ServerHealth, ToolInfo, Upstream};

/// The registry name of the built-in fetch server.
pub const FETCH_SERVER: &str = "fetch";
/// The tool's name.
pub const FETCH_TOOL: &str = "fetch";
/// The default number of characters returned.
pub const DEFAULT_MAX_LENGTH: u64 = 50_000;
/// The most characters a call may ask for.
pub const MAX_MAX_LENGTH: u64 = 1_000_000;
/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 8192;

/// The built-in fetch server.
pub struct FetchServer {
    egress: Arc<dyn HttpEgress>,
    tools: Arc<Vec<ToolInfo>>,
}

impl std::fmt::Debug for FetchServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchServer").finish_non_exhaustive()
    }
}

fn tool_error(text: impl Into<String>, structured: Value) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}], "structuredContent": structured, "isError": true})
}

/// Whether a body of this type is text the tool may return.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/")
        || mime == "application/json"
        || mime.ends_with("+json")
        || mime == "application/xml"
        || mime.ends_with("+xml")
        || mime == "application/javascript"
        || mime == "application/x-www-form-urlencoded"
}

/// The first `max` characters of `text`, and whether it was cut.
fn first_chars(text: &str, max: u64) -> (&str, bool) {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    match text.char_indices().nth(max) {
        Some((i, _)) => (&text[..i], true),
        None => (text, false),
    }
}

impl FetchServer {
    /// The server, sending through `egress`.
    pub fn new(egress: Arc<dyn HttpEgress>) -> Self {
        let def = json!({
            "name": FETCH_TOOL,
            "description": "Fetches an http(s) URL with GET and returns the response body as text. Internal, loopback and cloud metadata addresses are refused unless the operator allowed them; redirects are followed and checked.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "The http:// or https:// URL."},
                    "max_length": {
                        "type": "integer", "minimum": 1, "maximum": MAX_MAX_LENGTH,
                        "description": format!("The most characters returned (default {DEFAULT_MAX_LENGTH}).")
                    }
                },
                "required": ["url"],
                "additionalProperties": false
            }
        });
        Self {
            egress,
            tools: Arc::new(vec![ToolInfo::new(FETCH_TOOL.to_owned(), def)]),
        }
    }

    async fn run(&self, arguments: &Value) -> Value {
        let Some(raw) = arguments.get("url").and_then(Value::as_str) else {
            return tool_error(
                "the argument 'url' (an http:// or https:// URL) is required",
                json!({"rule": "bad-arguments"}),
            );
        };
        let max_length = match arguments.get("max_length") {
            None | Some(Value::Null) => DEFAULT_MAX_LENGTH,
            Some(v) => match v.as_u64().filter(|n| (1..=MAX_MAX_LENGTH).contains(n)) {
                Some(n) => n,
                None => {
                    return tool_error(
                        format!("'max_length' must be an integer from 1 to {MAX_MAX_LENGTH}"),
                        json!({"rule": "bad-arguments"}),
                    );
                }
            },
        };
        if raw.len() > MAX_URL_BYTES {
            return tool_error(
                format!("the URL is longer than {MAX_URL_BYTES} bytes"),
                json!({"rule": "invalid-url"}),
            );
        }
        // Syntax only: the scheme, host, port and address rules are the
        // egress guard's, so that one place decides them.
        let url = match url::Url::parse(raw.trim()) {
            Ok(u) => u,
            Err(e) => {
                return tool_error(
                    format!(
                        "refused by the egress rule 'invalid-url': the URL does not parse ({e})"
                    ),
                    json!({"rule": "invalid-url"}),
                );
            }
        };
        match self.egress.fetch(&url).await {
            Err(r) => {
                let text = if r.refusal {
                    format!("refused by the egress rule '{}': {}", r.rule, r.message)
                } else {
                    format!("the fetch failed ({}): {}", r.rule, r.message)
                };
                tool_error(text, json!({"rule": r.rule, "refused": r.refusal}))
            }
            Ok(f) => {
                if !is_text(f.content_type.as_deref()) {
                    return tool_error(
                        format!(
                            "{} answered HTTP {} with {} content, which the fetch tool does not return (text only)",
                            f.url,
                            f.status,
                            f.content_type.as_deref().unwrap_or("unknown")
                        ),
                        json!({"rule": "not-text", "status": f.status, "url": f.url}),
                    );
                }
                let body = String::from_utf8_lossy(&f.body);
                let (text, truncated) = first_chars(&body, max_length);
                let mut out = text.to_owned();
                if truncated {
                    out.push_str(&format!(
                        "\n\n[truncated at {max_length} characters; ask with a larger max_length]"
                    ));
                }
                let ok = (200..400).contains(&f.status);
                json!({
                    "content": [{"type": "text", "text": out}],
                    "structuredContent": {
                        "status": f.status,
                        "url": f.url,
                        "content_type": f.content_type,
                        "truncated": truncated,
                    },
                    "isError": !ok,
                })
            }
        }
    }
}

impl Upstream for FetchServer {
    fn tools(&self) -> BoxFuture<'_, Result<Arc<Vec<ToolInfo>>, CallError>> {
        Box::pin(async move { Ok(self.tools.clone()) })
    }

    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move {
            if tool != FETCH_TOOL {
                return Err(CallError::Protocol(format!("no tool named '{tool}'")));
            }
            tokio::time::timeout(timeout, self.run(&arguments))
                .await
                .map_err(|_| CallError::Timeout(timeout))
        })
    }

    fn health(&self) -> ServerHealth {
        ServerHealth::builtin(FETCH_SERVER, self.tools.len())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::seams::{FetchRefused, Fetched};
    use std::sync::Mutex;

    /// Records the URLs it is asked for and answers from a script.
    struct ScriptedEgress {
        seen: Mutex<Vec<String>>,
        answer: Result<Fetched, FetchRefused>,
    }

    impl HttpEgress for ScriptedEgress {
        fn check(&self, _: &url::Url) -> Result<(), String> {
            Ok(())
        }
        fn client(&self) -> reqwest::Client {
            reqwest::Client::new()
        }
        fn resolve<'a>(
            &'a self,
            _: &'a url::Url,
        ) -> BoxFuture<'a, Result<Vec<std::net::SocketAddr>, String>> {
            Box::pin(async { Err("not used by these tests".to_owned()) })
        }
        fn fetch<'a>(&'a self, url: &'a url::Url) -> BoxFuture<'a, Result<Fetched, FetchRefused>> {
            self.seen.lock().unwrap().push(url.to_string());
            let a = self.answer.clone();
            Box::pin(async move { a })
        }
    }

    fn server(answer: Result<Fetched, FetchRefused>) -> (FetchServer, Arc<ScriptedEgress>) {
        let e = Arc::new(ScriptedEgress {
            seen: Mutex::new(Vec::new()),
            answer,
        });
        (FetchServer::new(e.clone()), e)
    }

    fn ok(body: &str, ct: Option<&str>) -> Result<Fetched, FetchRefused> {
        Ok(Fetched {
            status: 200,
            url: "https://example.com/".into(),
            content_type: ct.map(str::to_owned),
            body: bytes::Bytes::from(body.to_owned()),
        })
    }

    async fn call(s: &FetchServer, args: Value) -> Value {
        s.call(FETCH_TOOL, args, Duration::from_secs(5))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn text_is_returned_and_cut_at_max_length() {
        let (s, e) = server(ok("héllo world", Some("text/plain; charset=utf-8")));
        let v = call(&s, json!({"url": "https://example.com/"})).await;
        assert_eq!(v["isError"], false, "{v}");
        assert_eq!(v["content"][0]["text"], "héllo world");
        let v = call(&s, json!({"url": "https://example.com/", "max_length": 2})).await;
        assert!(
            v["content"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("hé\n\n[truncated"),
            "{v}"
        );
        assert_eq!(v["structuredContent"]["truncated"], true);
        assert_eq!(e.seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn refusals_name_the_rule_and_bad_input_never_reaches_the_egress() {
        let (s, e) = server(Err(FetchRefused {
            rule: "loopback".into(),
            refusal: true,
            message: "egress refused http://127.0.0.1/: 127.0.0.1 is loopback".into(),
        }));
        let v = call(&s, json!({"url": "http://127.0.0.1/"})).await;
        assert_eq!(v["isError"], true);
        assert!(
            v["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("rule 'loopback'"),
            "{v}"
        );
        assert_eq!(v["structuredContent"]["rule"], "loopback");
        for (args, rule) in [
            (json!({}), "bad-arguments"),
            (json!({"url": 5}), "bad-arguments"),
            (json!({"url": "not a url"}), "invalid-url"),
            (
                json!({"url": "https://example.com/", "max_length": 0}),
                "bad-arguments",
            ),
            (
                json!({"url": format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES))}),
                "invalid-url",
            ),
        ] {
            let v = call(&s, args.clone()).await;
            assert_eq!(v["isError"], true, "{args}: {v}");
            assert_eq!(v["structuredContent"]["rule"], rule, "{args}: {v}");
        }
        assert_eq!(
            e.seen.lock().unwrap().len(),
            1,
            "only the parsable URL went out"
        );
    }

    #[tokio::test]
    async fn binary_bodies_are_not_returned_and_the_default_egress_refuses() {
        let (s, _) = server(ok("\u{0}\u{1}PNG", Some("image/png")));
        let v = call(&s, json!({"url": "https://example.com/x.png"})).await;
        assert_eq!(v["isError"], true);
        assert_eq!(v["structuredContent"]["rule"], "not-text");

        let s = FetchServer::new(Arc::new(crate::seams::UncheckedEgress::new().unwrap()));
        let v = call(&s, json!({"url": "https://example.com/"})).await;
        assert_eq!(v["isError"], true);
        assert_eq!(v["structuredContent"]["rule"], "no-guarded-egress", "{v}");
    }
}
