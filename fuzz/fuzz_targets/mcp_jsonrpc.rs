//! MCP JSON-RPC messages as `/mcp` receives them: the pure classification
//! (`aibox_mcp::protocol::classify`) and the whole Streamable HTTP handler
//! (body parsing, batches, session, dispatch of `initialize`, `tools/list`
//! and `tools/call` to the built-in `fetch` tool, whose egress refuses).
//!
//! Properties: a classified request or notification, written back out as
//! JSON-RPC, classifies to the same message; the handler answers every
//! body (no panic, no hang) with a status below 500.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use aibox_core::keyring::Keyring;
use aibox_core::{AuthMethod, Principal, RequestId, TenantId, UserId};
use aibox_identity::CapTokenVerifier;
use aibox_mcp::protocol::{Message, classify};
use aibox_mcp::{
    BoxFuture, McpDeps, McpGateway, McpSettings, NoGuard, NoSecrets, SandboxRecord, ToolAudit,
    ToolCallRecord, UncheckedEgress,
};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Keeps nothing: a recording sink would grow with every execution.
struct DropAudit;

impl ToolAudit for DropAudit {
    fn record_call(&self, _rec: ToolCallRecord) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn record_sandbox(&self, _rec: SandboxRecord) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    gw: Arc<McpGateway>,
    /// Fuzzed `initialize` calls open sessions too, and the oldest of an
    /// owner's sessions is dropped past the cap: renewed on a 404.
    session: Mutex<String>,
    principal: Principal,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aibox-fuzz-mcp-{}", std::process::id()));
        let mcp = dir.join("mcp");
        std::fs::create_dir_all(&mcp).expect("mcp dir");
        std::fs::write(
            mcp.join("registry.json"),
            json!({"servers": {"fetch": {"transport": "builtin", "allow_clients": ["*"]}}})
                .to_string(),
        )
        .expect("registry");
        std::fs::write(mcp.join("servers.txt"), "fetch\n").expect("servers.txt");
        let mut settings = McpSettings::new(&dir);
        settings.require_captoken = false;
        let ring = Keyring::parse("c1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio").expect("ring");
        let deps = McpDeps {
            captoken: CapTokenVerifier::new(&ring),
            audit: Arc::new(DropAudit),
            guard: Arc::new(NoGuard),
            egress: Arc::new(UncheckedEgress::new().expect("egress")),
            secrets: Arc::new(NoSecrets),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let gw = rt
            .block_on(McpGateway::start(settings, deps))
            .expect("gateway");
        let principal = Principal {
            tenant: TenantId::new("acme").expect("tenant"),
            user: UserId::new("alice").expect("user"),
            roles: vec!["tools".into()],
            auth: AuthMethod::ApiKey {
                key_id: "key-alice".into(),
            },
        };
        let f = Fixture {
            rt,
            gw,
            session: Mutex::new(String::new()),
            principal,
        };
        f.renew();
        f
    })
}

impl Fixture {
    fn renew(&self) {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "1"}}});
        let (status, session) = self.post(init.to_string().into_bytes(), None);
        assert!(status < 300, "initialize failed: {status}");
        *self.session.lock().expect("lock") = session.expect("a session id");
    }

    fn post(&self, body: Vec<u8>, session: Option<&str>) -> (u16, Option<String>) {
        let mut b = Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(s) = session {
            b = b.header("mcp-session-id", s);
        }
        let mut req = b.body(Body::from(body)).expect("request");
        req.extensions_mut().insert(self.principal.clone());
        req.extensions_mut()
            .insert(RequestId::new("req-fuzz").expect("request id"));
        self.rt.block_on(async {
            let resp = aibox_mcp::router(self.gw.clone())
                .oneshot(req)
                .await
                .expect("infallible");
            let status = resp.status().as_u16();
            let session = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = resp.into_body().collect().await;
            (status, session)
        })
    }
}

fn rebuilt(m: &Message) -> Option<Value> {
    let mut o = serde_json::Map::new();
    o.insert("jsonrpc".into(), json!("2.0"));
    match m {
        Message::Request { id, method, params } => {
            o.insert("id".into(), id.clone());
            o.insert("method".into(), json!(method));
            if let Some(p) = params {
                o.insert("params".into(), p.clone());
            }
        }
        Message::Notification { method, params } => {
            o.insert("method".into(), json!(method));
            if let Some(p) = params {
                o.insert("params".into(), p.clone());
            }
        }
        Message::Response { .. } => return None,
    }
    Some(Value::Object(o))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let items = match &v {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for item in items {
            if let Ok(m) = classify(item)
                && let Some(again) = rebuilt(&m)
            {
                assert_eq!(
                    classify(again).ok(),
                    Some(m),
                    "a message does not round-trip"
                );
            }
        }
    }
    let f = fixture();
    let session = f.session.lock().expect("lock").clone();
    let (status, _) = f.post(data.to_vec(), Some(&session));
    assert!(status < 500, "status {status} for a client's body");
    if status == 404 {
        f.renew();
    }
});
