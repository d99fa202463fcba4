//! Resources and prompts through the gateway: `resources/list`,
//! `resources/templates/list`, `resources/read`, `prompts/list` and
//! `prompts/get`, with the policy model of tools.
//!
//! A server's resources and prompts are offered to a principal only when
//! the principal matches the server's `allow_clients`, the registry entry
//! exposes that kind (`resources`, `prompts`; hidden without the key) and
//! its allow and deny patterns admit the URI or name, and the server itself
//! announced the capability in its `initialize` answer. Identifiers are
//! namespaced ([`crate::passthrough`]): prompts `SERVER__PROMPT`, resource
//! URIs `aibox://SERVER/URI`.
//!
//! A `resources/read` or `prompts/get` is decided like a `tools/call` and
//! recorded like one: its own audit turn (`request_received`, guardrail
//! verdicts, `mcp_request` with the server, method, target, the hashes of
//! the request and of the result, outcome and duration, `turn_end`), durable
//! before the client gets the result. A prompt's arguments pass the
//! guardrail's argument scan before they reach the server, and every result
//! passes the output scan (stage `tool_result`), as tool results do. No
//! CapToken is asked for: in MCP, resources are chosen by the application
//! and prompts by the user, not by the model, and a CapToken binds what a
//! model's turn may do with tools. The lists are not audited (like
//! `tools/list`).

use std::time::Instant;

use aibox_core::audit::{EventKind, GuardStage, Sha256Hex};
use serde_json::{Map, Value, json};

use crate::gateway::{CallContext, McpGateway, Recorder, Server, Stop};
use crate::names;
use crate::passthrough::{self, wrap_uri};
use crate::policy::{self, Denial, ToolVerdict};
use crate::protocol::RpcError;
use crate::upstream::{CallError, Offers};

/// How long one page of a server's resource or prompt list may take.
const LIST_PAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The most pages read from one server for one list.
const MAX_PAGES: usize = 64;
/// The most entries passed on from one server for one list.
const MAX_ENTRIES: usize = 4096;

/// What is being listed or fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Resources and resource templates.
    Resources,
    /// Prompts.
    Prompts,
}

impl Kind {
    fn offered(self, o: Offers) -> bool {
        match self {
            Self::Resources => o.resources,
            Self::Prompts => o.prompts,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Resources => "resources",
            Self::Prompts => "prompts",
        }
    }
}

fn verdict(server: &Server, kind: Kind, id: &str) -> ToolVerdict {
    match kind {
        Kind::Resources => server.spec.extras.resource(id),
        Kind::Prompts => server.spec.extras.prompt(id),
    }
}

fn exposes(server: &Server, kind: Kind) -> bool {
    match kind {
        Kind::Resources => server.spec.extras.resources.is_some(),
        Kind::Prompts => server.spec.extras.prompts.is_some(),
    }
}

impl McpGateway {
    /// The servers `principal` may use that expose `kind` in the registry.
    fn exposing<'a>(
        &'a self,
        principal: &aibox_core::Principal,
        kind: Kind,
    ) -> impl Iterator<Item = &'a Server> {
        self.servers().iter().filter(move |s| {
            exposes(s, kind) && policy::client_allowed(&s.spec.allow_clients, principal)
        })
    }

    /// Every entry of a paginated list (`method`, array `key`) of one
    /// server, when the server announced `kind`.
    async fn upstream_list(
        &self,
        server: &Server,
        kind: Kind,
        method: &str,
        key: &str,
    ) -> Result<Vec<Value>, CallError> {
        if !kind.offered(server.upstream.offers().await?) {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = server
                .upstream
                .request(method, params, LIST_PAGE_TIMEOUT)
                .await?;
            let items = page.get(key).and_then(Value::as_array).ok_or_else(|| {
                CallError::Protocol(format!("{method} result has no {key} array"))
            })?;
            all.extend(items.iter().take(MAX_ENTRIES - all.len()).cloned());
            match page.get("nextCursor").and_then(Value::as_str) {
                Some(n) if all.len() < MAX_ENTRIES && Some(n) != cursor.as_deref() => {
                    cursor = Some(n.to_owned());
                }
                _ => break,
            }
        }
        Ok(all)
    }

    /// Lists of every admitted server, rewritten by `keep` (which drops an
    /// entry by returning `None`) and vetted by the guardrail
    /// ([`Self::vetted`]); servers that fail are skipped and logged.
    async fn gather(
        &self,
        principal: &aibox_core::Principal,
        kind: Kind,
        method: &str,
        key: &str,
        keep: impl Fn(&Server, Value) -> Option<Value>,
    ) -> Vec<Value> {
        let servers: Vec<&Server> = self.exposing(principal, kind).collect();
        let lists = futures_util::future::join_all(
            servers
                .iter()
                .map(|s| self.upstream_list(s, kind, method, key)),
        )
        .await;
        let mut out = Vec::new();
        for (server, list) in servers.into_iter().zip(lists) {
            match list {
                Ok(items) => out.extend(
                    items
                        .into_iter()
                        .filter_map(|v| keep(server, v))
                        .filter_map(|v| self.vetted(principal, server, kind, v)),
                ),
                Err(e) => {
                    tracing::warn!(server = %server.spec.name, %method, error = %e, "a list of an unavailable MCP server is not shown");
                }
            }
        }
        out
    }

    /// A list entry as the guardrail lets it pass: as it is, redacted, or
    /// not at all. A prompt's or resource's name and description reach
    /// the model as guidance wherever a client offers them to it, so a
    /// poisoned one is withheld, as a poisoned tool is from `tools/list`.
    /// Getting or reading it by name needs no check of its own: that
    /// result is the content, which passes the output scan.
    fn vetted(
        &self,
        principal: &aibox_core::Principal,
        server: &Server,
        kind: Kind,
        entry: Value,
    ) -> Option<Value> {
        let name = ["name", "uri", "uriTemplate"]
            .iter()
            .find_map(|k| entry.get(*k).and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        let text = serde_json::to_string(&entry).unwrap_or_default();
        self.listed(
            principal,
            &server.spec.name,
            kind.word(),
            &name,
            &text,
            &entry,
        )
    }

    /// `resources/list`: the resources `principal` may read, with
    /// namespaced URIs.
    pub async fn list_resources(&self, principal: &aibox_core::Principal) -> Value {
        let resources = self
            .gather(
                principal,
                Kind::Resources,
                "resources/list",
                "resources",
                |s, v| rewrite_uri_field(s, v, "uri"),
            )
            .await;
        json!({ "resources": resources })
    }

    /// `resources/templates/list`: the resource templates of the servers
    /// `principal` may read from, with namespaced URI templates.
    pub async fn list_resource_templates(&self, principal: &aibox_core::Principal) -> Value {
        let templates = self
            .gather(
                principal,
                Kind::Resources,
                "resources/templates/list",
                "resourceTemplates",
                |s, v| rewrite_uri_field(s, v, "uriTemplate"),
            )
            .await;
        json!({ "resourceTemplates": templates })
    }

    /// `prompts/list`: the prompts `principal` may get, named
    /// `SERVER__PROMPT`.
    pub async fn list_prompts(&self, principal: &aibox_core::Principal) -> Value {
        let prompts = self
            .gather(
                principal,
                Kind::Prompts,
                "prompts/list",
                "prompts",
                |s, mut v| {
                    let name = v.get("name").and_then(Value::as_str)?;
                    if verdict(s, Kind::Prompts, name) != ToolVerdict::Allowed {
                        return None;
                    }
                    let full = names::join(&s.spec.name, name).ok()?;
                    v.as_object_mut()?
                        .insert("name".into(), Value::String(full));
                    Some(v)
                },
            )
            .await;
        json!({ "prompts": prompts })
    }

    /// Runs one `resources/read`; returns the result (or the error) and
    /// its audit turn.
    pub async fn read_resource(
        &self,
        ctx: &CallContext<'_>,
        params: Option<&Value>,
    ) -> (Result<Value, RpcError>, aibox_core::TurnId) {
        let started = Instant::now();
        let mut rec = Recorder::new(ctx);
        let uri = params
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (server_name, inner) = passthrough::unwrap_uri(uri).unwrap_or(("", ""));
        let request_hash =
            Sha256Hex::of(&serde_json::to_vec(&json!({ "uri": inner })).unwrap_or_default());
        // The URI may carry personal data; the record names its scheme and
        // keeps the whole URI only as part of the request hash.
        let target = inner.split_once(':').map_or("", |(scheme, _)| scheme);
        let target = names::printable(&target.chars().take(64).collect::<String>());
        let mut result_hash = None;
        let outcome = async {
            if uri.is_empty() {
                return Err(Stop::BadArguments(
                    "params.uri (the resource) is required".into(),
                ));
            }
            if server_name.is_empty() || !passthrough::valid_uri(inner) {
                return Err(Stop::Denied(Denial::BadUri(names::printable(
                    &uri.chars().take(200).collect::<String>(),
                ))));
            }
            let server = self.admit(ctx, server_name, Kind::Resources, inner)?;
            let result = self
                .fetch_checked(
                    ctx,
                    &mut rec,
                    server,
                    Kind::Resources,
                    "resources/read",
                    json!({ "uri": inner }),
                    target.as_str(),
                    started,
                )
                .await?;
            let result_text = serde_json::to_string(&result).unwrap_or_default();
            result_hash = Some(Sha256Hex::of(result_text.as_bytes()));
            let mut result =
                self.guard_result_text(ctx, &mut rec, server_name, &target, result, &result_text)?;
            // The contents name the server's URIs; the client knows them
            // only namespaced.
            if let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) {
                for c in contents {
                    if let Some(o) = c.as_object_mut()
                        && let Some(Value::String(u)) = o.get("uri")
                    {
                        let wrapped = wrap_uri(server_name, u);
                        o.insert("uri".into(), Value::String(wrapped));
                    }
                }
            }
            Ok(result)
        }
        .await;
        let (server, what) = (server_name.to_owned(), target.clone());
        self.conclude(
            ctx,
            rec,
            started,
            outcome,
            server_name,
            &what,
            "resource read",
            None,
            move |outcome, duration_ms| EventKind::McpRequest {
                server,
                method: "resources/read".into(),
                target,
                request_sha256: request_hash,
                result_sha256: result_hash,
                outcome,
                duration_ms,
            },
        )
        .await
    }

    /// Runs one `prompts/get`; returns the result (or the error) and its
    /// audit turn.
    pub async fn get_prompt(
        &self,
        ctx: &CallContext<'_>,
        params: Option<&Value>,
    ) -> (Result<Value, RpcError>, aibox_core::TurnId) {
        let started = Instant::now();
        let mut rec = Recorder::new(ctx);
        let empty = Map::new();
        let params_obj = params.and_then(Value::as_object).unwrap_or(&empty);
        let name = params_obj.get("name").and_then(Value::as_str).unwrap_or("");
        // Absent and null both mean no arguments (the field is optional).
        let arguments = params_obj
            .get("arguments")
            .filter(|a| !a.is_null())
            .cloned()
            .unwrap_or_else(|| json!({}));
        let request_hash = Sha256Hex::of(&serde_json::to_vec(&arguments).unwrap_or_default());
        let (server_name, prompt) = match names::split(name) {
            Ok((s, p)) => (s.to_owned(), p.to_owned()),
            Err(_) => (String::new(), names::printable(name)),
        };
        let mut result_hash = None;
        let outcome = async {
            if name.is_empty() {
                return Err(Stop::BadArguments(
                    "params.name (the prompt) is required".into(),
                ));
            }
            // MCP prompt arguments are a map of strings.
            if !arguments
                .as_object()
                .is_some_and(|o| o.values().all(Value::is_string))
            {
                return Err(Stop::BadArguments(
                    "params.arguments must be an object of strings".into(),
                ));
            }
            if server_name.is_empty() {
                return Err(Stop::Denied(Denial::BadName(names::printable(name))));
            }
            let server = self.admit(ctx, &server_name, Kind::Prompts, &prompt)?;
            let arguments = self.guard_stage(
                ctx,
                &mut rec,
                GuardStage::ToolArguments,
                &server_name,
                &prompt,
                arguments.clone(),
                |reason| Stop::Denied(Denial::GuardBlocked { reason }),
            )?;
            let result = self
                .fetch_checked(
                    ctx,
                    &mut rec,
                    server,
                    Kind::Prompts,
                    "prompts/get",
                    json!({ "name": prompt, "arguments": arguments }),
                    &prompt,
                    started,
                )
                .await?;
            let result_text = serde_json::to_string(&result).unwrap_or_default();
            result_hash = Some(Sha256Hex::of(result_text.as_bytes()));
            self.guard_result_text(ctx, &mut rec, &server_name, &prompt, result, &result_text)
        }
        .await;
        let (server, target) = (server_name.clone(), prompt.clone());
        self.conclude(
            ctx,
            rec,
            started,
            outcome,
            &server_name,
            &prompt,
            "prompt get",
            None,
            move |outcome, duration_ms| EventKind::McpRequest {
                server,
                method: "prompts/get".into(),
                target,
                request_sha256: request_hash,
                result_sha256: result_hash,
                outcome,
                duration_ms,
            },
        )
        .await
    }

    /// The policy of a read or get: a known server, the principal in its
    /// `allow_clients`, the registry exposing `id`.
    fn admit(
        &self,
        ctx: &CallContext<'_>,
        server_name: &str,
        kind: Kind,
        id: &str,
    ) -> Result<&Server, Stop> {
        let Some(server) = self.server(server_name) else {
            return Err(Stop::Denied(Denial::UnknownServer(server_name.to_owned())));
        };
        if !policy::client_allowed(&server.spec.allow_clients, ctx.principal) {
            return Err(Stop::Denied(Denial::ClientNotAllowed {
                server: server_name.to_owned(),
            }));
        }
        let v = verdict(server, kind, id);
        if v != ToolVerdict::Allowed {
            let (server, id) = (server_name.to_owned(), names::printable(id));
            return Err(Stop::Denied(match kind {
                Kind::Resources => Denial::ResourceNotAllowed {
                    server,
                    uri: id,
                    verdict: v,
                },
                Kind::Prompts => Denial::PromptNotAllowed {
                    server,
                    prompt: id,
                    verdict: v,
                },
            }));
        }
        Ok(server)
    }

    /// Sends an admitted request to the server (which must have announced
    /// `kind`) within the server's timeout; the result must be an object.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_checked(
        &self,
        ctx: &CallContext<'_>,
        rec: &mut Recorder<'_>,
        server: &Server,
        kind: Kind,
        method: &str,
        params: Value,
        target: &str,
        started: Instant,
    ) -> Result<Value, Stop> {
        let name = server.spec.name.as_str();
        let offers = server
            .upstream
            .offers()
            .await
            .map_err(|e| crate::gateway::upstream_stop(name, e))?;
        if !kind.offered(offers) {
            return Err(Stop::Denied(Denial::NotOffered {
                server: name.to_owned(),
                what: kind.word(),
            }));
        }
        let timeout = server.spec.timeout.unwrap_or(self.settings().call_timeout);
        let remaining = timeout.saturating_sub(started.elapsed());
        match server.upstream.request(method, params, remaining).await {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(crate::gateway::upstream_stop(
                name,
                CallError::Protocol("the result is not an object".into()),
            )),
            Err(CallError::Rpc(e)) => Err(self.upstream_error(ctx, rec, name, target, &e)),
            Err(CallError::Timeout(_)) => Err(crate::gateway::upstream_stop(
                name,
                CallError::Timeout(timeout),
            )),
            Err(e) => Err(crate::gateway::upstream_stop(name, e)),
        }
    }
}

/// Rewrites `field` (a URI or URI template of the server) to its namespaced
/// form; drops entries without a valid one and those the registry hides.
fn rewrite_uri_field(server: &Server, mut v: Value, field: &str) -> Option<Value> {
    let uri = v.get(field).and_then(Value::as_str)?;
    if !passthrough::valid_uri(uri) || verdict(server, Kind::Resources, uri) != ToolVerdict::Allowed
    {
        return None;
    }
    let wrapped = wrap_uri(&server.spec.name, uri);
    v.as_object_mut()?
        .insert(field.into(), Value::String(wrapped));
    Some(v)
}
