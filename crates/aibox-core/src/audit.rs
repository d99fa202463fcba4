//! The audit event model shared by every part of aibox.
//!
//! Each trust boundary reports what passed through it as [`AuditEvent`]s: the
//! edge (requests, refused authentications), the router (upstream responses),
//! the guardrail (verdicts), the MCP gateway (tool calls, sandbox events), the
//! vault (secret access, never values) and the operator surfaces (ops
//! actions, key rotations). The audit crate chains these per tenant, groups
//! them per turn under a Merkle root and signs the result.
//!
//! Invariant: an event never carries a secret or raw content by default.
//! Prompts, completions, tool arguments and results appear as SHA-256 hashes;
//! content appears only when the operator opted in, and then only after
//! guardrail redaction.
//!
//! Invariant: [`AuditEvent::canonical_bytes`] is the one byte encoding that is
//! hashed and signed. It is the `serde_json` serialisation of the event, whose
//! field order is the declaration order below and which contains no maps and
//! no floating-point numbers, so it is deterministic across processes and
//! versions. Changing a field's name or order is a format change.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{RequestId, TenantId, TurnId, UserId};
use crate::principal::AuthMethod;

/// A lowercase hex SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_digest(Sha256::digest(data).into())
    }

    /// Wraps a digest computed elsewhere (for example incrementally over a
    /// stream).
    pub fn from_digest(digest: [u8; 32]) -> Self {
        let mut s = String::with_capacity(64);
        for b in digest {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        Self(s)
    }

    /// The hex string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Token usage of one model call, as the OpenAI API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens in the completion.
    pub completion_tokens: u64,
    /// Their sum as reported by the upstream.
    pub total_tokens: u64,
}

/// Where in a turn a guardrail ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardStage {
    /// The prompt, before the model.
    Input,
    /// The completion, after the model.
    Output,
    /// Arguments of a tool call, before the tool.
    ToolArguments,
    /// The result of a tool call, before the model sees it.
    ToolResult,
}

/// What a guardrail decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Nothing found, or nothing that matters.
    Allow,
    /// Passed on, but recorded.
    Flag,
    /// Passed on with the findings replaced by placeholders.
    Redact,
    /// Refused.
    Block,
}

/// One kind of finding of a guardrail scan, counted; never the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingCount {
    /// The scanner (`pii`, `secrets`, `prompt_injection`, `topic`, ...).
    pub scanner: String,
    /// The rule within the scanner (`email`, `aws_access_key`, ...).
    pub rule: String,
    /// How many times it matched.
    pub count: u32,
}

/// The outcome of a tool call at the MCP gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ToolOutcome {
    /// Policy allowed the call and the tool answered.
    Ok,
    /// Policy refused the call; the tool never saw it.
    Denied {
        /// The policy rule that refused it.
        reason: String,
    },
    /// The tool failed or timed out.
    Failed {
        /// A description without tool output.
        reason: String,
    },
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TurnStatus {
    /// The client received a complete answer.
    Ok,
    /// The turn failed; `code` is the OpenAI error code sent to the client.
    Error {
        /// The error code.
        code: String,
    },
    /// The client went away before the answer was complete.
    ClientGone,
}

/// What happened. The variants cover every part of the plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A request entered a turn.
    RequestReceived {
        /// The user within the event's tenant.
        user: UserId,
        /// The roles of the principal.
        roles: Vec<String>,
        /// How the principal authenticated.
        auth: AuthMethod,
        /// The route (`/v1/chat/completions`, a downstream prefix, `/mcp`).
        route: String,
        /// The model the client asked for, if the route has one.
        model: Option<String>,
        /// The hash of the request body.
        body_sha256: Sha256Hex,
        /// The redacted content, only when the operator enabled content capture.
        content: Option<String>,
    },
    /// The edge refused an authentication attempt (recorded in the
    /// `_aibox` system tenant, at a bounded rate).
    AuthRefused {
        /// Why, as the error code the client got, without token contents.
        reason: String,
        /// The route the request was for (the router's pattern, not the
        /// raw path).
        route: String,
        /// The presented gateway API key's public id, when the credential
        /// parsed as one (never its secret part).
        key_id: Option<String>,
        /// The IP address of the connection's peer (behind a load
        /// balancer, the balancer's).
        peer: Option<String>,
        /// Refusals since the previous record that were not recorded one
        /// by one (the rate limit); each is counted here, so the records
        /// account for every refusal.
        suppressed: u64,
    },
    /// A guardrail scan finished.
    GuardrailVerdict {
        /// Where in the turn it ran.
        stage: GuardStage,
        /// The active profile.
        profile: String,
        /// What it decided.
        action: GuardAction,
        /// What it found, counted.
        findings: Vec<FindingCount>,
    },
    /// A tool call at the MCP gateway.
    ToolCall {
        /// The MCP server.
        server: String,
        /// The tool, without the server namespace.
        tool: String,
        /// The hash of the JSON arguments.
        arguments_sha256: Sha256Hex,
        /// The hash of the result, when there is one.
        result_sha256: Option<Sha256Hex>,
        /// Policy and execution outcome.
        outcome: ToolOutcome,
        /// Wall time in milliseconds.
        duration_ms: u64,
        /// The model turn whose CapToken authorised the call, when one did.
        /// The tool call is recorded as its own turn; this links the two.
        parent_turn: Option<TurnId>,
    },
    /// A resource read or prompt fetch at the MCP gateway (`resources/read`,
    /// `prompts/get`); tool calls are [`EventKind::ToolCall`].
    McpRequest {
        /// The MCP server.
        server: String,
        /// The MCP method.
        method: String,
        /// The prompt name, or the resource URI's scheme (a URI may carry
        /// personal data; it is covered by `request_sha256`).
        target: String,
        /// The hash of the request's JSON (`{"uri": ...}` or the prompt's
        /// arguments).
        request_sha256: Sha256Hex,
        /// The hash of the result, when there is one.
        result_sha256: Option<Sha256Hex>,
        /// Policy and execution outcome.
        outcome: ToolOutcome,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// An upstream model answered (or failed to).
    UpstreamResponse {
        /// The configured upstream's name.
        upstream: String,
        /// The model name sent upstream.
        model: String,
        /// The HTTP status, or 0 when no response arrived.
        status: u16,
        /// 1 for the first target, 2 for the first fallback, and so on.
        attempt: u32,
        /// The hash of the response body (all SSE data for streams).
        body_sha256: Option<Sha256Hex>,
        /// Token usage, when the upstream reported it.
        usage: Option<Usage>,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// A turn ended; this is the last event of the turn.
    TurnEnd {
        /// How it ended.
        status: TurnStatus,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// An operator acted through the ops API, the dashboard or the CLI.
    OpsAction {
        /// Who (token name, dashboard user or `cli`).
        actor: String,
        /// What (`reload_config`, `restart_mcp_server`, ...).
        action: String,
        /// On what.
        target: String,
        /// Whether it worked.
        ok: bool,
    },
    /// A keyring gained a new signing version.
    KeyRotated {
        /// `audit`, `principal`, `captoken` or `secrets-master`.
        keyring: String,
        /// The new signing key id.
        new_key_id: String,
    },
    /// A tool process was spawned or its sandbox refused something.
    Sandbox {
        /// The MCP server.
        server: String,
        /// `spawn`, `degraded` or `violation`.
        what: String,
        /// What was denied or is missing, never tool data.
        detail: String,
    },
    /// A vault secret was used; never its value.
    SecretAccess {
        /// The user who owns the secret.
        owner: UserId,
        /// The secret's name.
        name: String,
        /// `put`, `get`, `delete` or `inject`.
        op: String,
    },
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The tenant whose chain the event joins.
    pub tenant: TenantId,
    /// The turn it belongs to; operator and refusal events have none.
    pub turn: Option<TurnId>,
    /// The request that caused it, if any.
    pub request_id: Option<RequestId>,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl AuditEvent {
    /// The canonical encoding that is hashed, chained and signed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditEvent {
        AuditEvent {
            tenant: TenantId::new("acme").unwrap(),
            turn: Some(TurnId::new("0190a5b2-0000-7000-8000-000000000001").unwrap()),
            request_id: Some(RequestId::new("r1").unwrap()),
            at_ms: 1_700_000_000_000,
            kind: EventKind::UpstreamResponse {
                upstream: "ollama".into(),
                model: "llama3".into(),
                status: 200,
                attempt: 1,
                body_sha256: Some(Sha256Hex::of(b"{}")),
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 5,
                    total_tokens: 8,
                }),
                duration_ms: 12,
            },
        }
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(
            Sha256Hex::of(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn canonical_bytes_are_stable_and_round_trip() {
        let e = sample();
        let a = e.canonical_bytes().unwrap();
        let b = e.clone().canonical_bytes().unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a.clone()).unwrap();
        // Field order is part of the format: tenant first, the kind's tag next.
        assert!(text.starts_with(r#"{"tenant":"acme","turn":"#), "{text}");
        assert!(text.contains(r#""type":"upstream_response""#), "{text}");
        let back: AuditEvent = serde_json::from_slice(&a).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.canonical_bytes().unwrap(), a);
    }

    #[test]
    fn a_changed_field_changes_the_encoding() {
        let e = sample();
        let mut f = e.clone();
        f.at_ms += 1;
        assert_ne!(e.canonical_bytes().unwrap(), f.canonical_bytes().unwrap());
    }
}
