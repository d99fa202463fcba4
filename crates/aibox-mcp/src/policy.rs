//! Who may see and call which tool (pure).
//!
//! A server's `allow_clients` is a list of client selectors; a principal may
//! use the server when any selector matches. A selector is one or more
//! conditions joined by `&`, all of which must hold:
//!
//! | condition | matches |
//! |---|---|
//! | `*` | every principal (with authentication off: the anonymous one) |
//! | `tenant:NAME` | principals of tenant NAME |
//! | `user:TENANT/USER` | one user of one tenant |
//! | `role:NAME` | principals holding role NAME |
//! | `client:CLIENT_ID` | OIDC tokens issued to OAuth client CLIENT_ID (`azp`) |
//! | `apikey:KEY_ID` | one gateway API key (its public id) |
//!
//! so `tenant:acme&role:tools` is "role `tools` in tenant `acme`". An empty
//! list, or no `allow_clients` at all, admits nobody: a server is closed
//! until an operator opens it.
//!
//! A server's `tools` rules then narrow what an admitted principal sees and
//! calls: `deny` always wins; without `allow` every tool is allowed, with
//! `allow` only the listed ones (`allow: []` allows none). Patterns are exact
//! tool names (the server's own names, not namespaced) or end in `*` as a
//! prefix wildcard (`read_*`, or `*` alone).

use aibox_core::{AuthMethod, Principal};

/// Why a selector or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A selector is not one of the documented forms.
    #[error(
        "client selector '{selector}' is invalid: {why}; use '*', 'tenant:NAME', 'user:TENANT/USER', 'role:NAME', 'client:OAUTH_CLIENT_ID' or 'apikey:KEY_ID', optionally joined with '&'"
    )]
    BadSelector {
        /// The selector.
        selector: String,
        /// What is wrong with it.
        why: String,
    },
    /// A tool pattern is not a tool name with an optional trailing `*`.
    #[error(
        "tool pattern '{0}' is invalid: use a tool name from [A-Za-z0-9_-], optionally ending in '*'"
    )]
    BadPattern(String),
}

/// One condition of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Every principal.
    Any,
    /// A tenant.
    Tenant(String),
    /// One user of one tenant.
    User {
        /// The tenant.
        tenant: String,
        /// The user.
        user: String,
    },
    /// A role.
    Role(String),
    /// An OAuth client (the token's `azp`).
    Client(String),
    /// A gateway API key id.
    ApiKey(String),
}

impl Condition {
    fn matches(&self, p: &Principal) -> bool {
        match self {
            Self::Any => true,
            Self::Tenant(t) => p.tenant.as_str() == t,
            Self::User { tenant, user } => p.tenant.as_str() == tenant && p.user.as_str() == user,
            Self::Role(r) => p.has_role(r),
            Self::Client(c) => matches!(
                &p.auth,
                AuthMethod::Oidc { client_id: Some(id), .. } if id == c
            ),
            Self::ApiKey(k) => matches!(&p.auth, AuthMethod::ApiKey { key_id } if key_id == k),
        }
    }
}

/// A parsed client selector: all of its conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSelector {
    text: String,
    all: Vec<Condition>,
}

fn valid_value(v: &str) -> bool {
    // Identity values in aibox are [A-Za-z0-9._@:-]-ish; refusing whitespace,
    // separators and controls keeps a typo from silently matching nothing
    // it was not meant to.
    !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:+-".contains(&b))
}

impl ClientSelector {
    /// Parses one selector.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |why: &str| PolicyError::BadSelector {
            selector: crate::names::printable(text),
            why: why.to_owned(),
        };
        let mut all = Vec::new();
        for part in text.split('&') {
            let part = part.trim();
            if part == "*" {
                all.push(Condition::Any);
                continue;
            }
            let Some((kind, value)) = part.split_once(':') else {
                return Err(bad("a condition has no 'kind:' prefix"));
            };
            let cond = match kind {
                "tenant" if valid_value(value) => Condition::Tenant(value.to_owned()),
                "role" if valid_value(value) => Condition::Role(value.to_owned()),
                "client" if valid_value(value) => Condition::Client(value.to_owned()),
                "apikey" if valid_value(value) => Condition::ApiKey(value.to_owned()),
                "user" => match value.split_once('/') {
                    Some((t, u)) if valid_value(t) && valid_value(u) => Condition::User {
                        tenant: t.to_owned(),
                        user: u.to_owned(),
                    },
                    _ => return Err(bad("a user condition is 'user:TENANT/USER'")),
                },
                "tenant" | "role" | "client" | "apikey" => {
                    return Err(bad(
                        "the value is empty or has characters outside [A-Za-z0-9._@:+-]",
                    ));
                }
                _ => return Err(bad("unknown condition kind")),
            };
            all.push(cond);
        }
        Ok(Self {
            text: text.to_owned(),
            all,
        })
    }

    /// True when every condition holds for `p`.
    pub fn matches(&self, p: &Principal) -> bool {
        self.all.iter().all(|c| c.matches(p))
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// True when any selector admits `p`; an empty list admits nobody.
pub fn client_allowed(selectors: &[ClientSelector], p: &Principal) -> bool {
    selectors.iter().any(|s| s.matches(p))
}

/// A tool name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPattern(String);

impl ToolPattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let stem = text.strip_suffix('*').unwrap_or(text);
        let ok = (stem.is_empty() && text == "*") || crate::names::valid_tool(stem);
        if !ok {
            return Err(PolicyError::BadPattern(crate::names::printable(text)));
        }
        Ok(Self(text.to_owned()))
    }

    /// True when the pattern covers `tool`.
    pub fn matches(&self, tool: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => self.0 == tool,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A server's tool allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolRules {
    /// `None`: every tool; `Some([])`: none.
    pub allow: Option<Vec<ToolPattern>>,
    /// Always wins.
    pub deny: Vec<ToolPattern>,
}

/// Which list refused a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolVerdict {
    /// Allowed.
    Allowed,
    /// A `deny` pattern matched.
    Denied,
    /// There is an `allow` list and nothing in it matched.
    NotAllowed,
}

impl ToolRules {
    /// The verdict for `tool`.
    pub fn verdict(&self, tool: &str) -> ToolVerdict {
        if self.deny.iter().any(|p| p.matches(tool)) {
            return ToolVerdict::Denied;
        }
        match &self.allow {
            Some(list) if !list.iter().any(|p| p.matches(tool)) => ToolVerdict::NotAllowed,
            _ => ToolVerdict::Allowed,
        }
    }

    /// True when `tool` is allowed.
    pub fn permits(&self, tool: &str) -> bool {
        self.verdict(tool) == ToolVerdict::Allowed
    }
}

/// Why a call was refused before it reached a tool. The `code` is stable
/// (audit reasons, JSON-RPC error data); `message` explains; `fix` names what
/// the caller or operator can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The name is not `SERVER__TOOL`.
    BadName(String),
    /// No enabled server has that name.
    UnknownServer(String),
    /// The server does not offer that tool (or it is not exposed).
    UnknownTool {
        /// The server.
        server: String,
        /// The tool.
        tool: String,
    },
    /// The principal matches none of the server's `allow_clients`.
    ClientNotAllowed {
        /// The server.
        server: String,
    },
    /// The registry's tool lists refuse the tool.
    ToolNotAllowed {
        /// The server.
        server: String,
        /// The tool.
        tool: String,
        /// Which list.
        verdict: ToolVerdict,
    },
    /// No CapToken was presented and one is required.
    CapTokenMissing {
        /// The operation that was needed.
        op: String,
    },
    /// The CapToken did not verify (signature, key, expiry, audience).
    CapTokenInvalid {
        /// The verifier's client-safe reason.
        why: String,
    },
    /// The CapToken verified but does not grant the operation.
    CapTokenOpNotGranted {
        /// The operation that was needed.
        op: String,
    },
    /// The CapToken was minted for another tenant or user.
    CapTokenWrongPrincipal,
    /// The guardrail blocked the arguments.
    GuardBlocked {
        /// `scanner/rule`, or a description.
        reason: String,
    },
    /// The guardrail refused the tool's definition (its description or
    /// schema carries what it blocks, e.g. instructions aimed at the
    /// model), so the tool is neither listed nor called.
    ToolDefinitionBlocked {
        /// The server.
        server: String,
        /// The tool.
        tool: String,
        /// `scanner/rule`, or a description.
        reason: String,
    },
    /// The resource URI is not `aibox://SERVER/URI`.
    BadUri(String),
    /// The registry's `resources` rules refuse the resource (or the server
    /// exposes no resources).
    ResourceNotAllowed {
        /// The server.
        server: String,
        /// The server's own URI.
        uri: String,
        /// Which list.
        verdict: ToolVerdict,
    },
    /// The registry's `prompts` rules refuse the prompt (or the server
    /// exposes no prompts).
    PromptNotAllowed {
        /// The server.
        server: String,
        /// The prompt.
        prompt: String,
        /// Which list.
        verdict: ToolVerdict,
    },
    /// The server did not announce resources (or prompts) when aibox
    /// initialized it.
    NotOffered {
        /// The server.
        server: String,
        /// `resources` or `prompts`.
        what: &'static str,
    },
}

impl Denial {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName(_) => "bad_tool_name",
            Self::UnknownServer(_) => "unknown_server",
            Self::UnknownTool { .. } => "unknown_tool",
            Self::ClientNotAllowed { .. } => "client_not_allowed",
            Self::ToolNotAllowed { .. } => "tool_not_allowed",
            Self::CapTokenMissing { .. } => "captoken_missing",
            Self::CapTokenInvalid { .. } => "captoken_invalid",
            Self::CapTokenOpNotGranted { .. } => "captoken_op_not_granted",
            Self::CapTokenWrongPrincipal => "captoken_wrong_principal",
            Self::GuardBlocked { .. } => "guardrail_blocked",
            Self::ToolDefinitionBlocked { .. } => "tool_definition_blocked",
            Self::BadUri(_) => "bad_resource_uri",
            Self::ResourceNotAllowed { .. } => "resource_not_allowed",
            Self::PromptNotAllowed { .. } => "prompt_not_allowed",
            Self::NotOffered { .. } => "not_offered",
        }
    }

    /// What happened, safe to show the caller.
    pub fn message(&self) -> String {
        match self {
            Self::BadName(n) => {
                format!("'{n}' is not a tool or prompt name of this gateway (SERVER__NAME)")
            }
            Self::UnknownServer(s) => format!("unknown tool server '{s}'"),
            Self::UnknownTool { server, tool } => {
                format!("unknown tool '{tool}' on server '{server}'")
            }
            Self::ClientNotAllowed { server } => {
                format!("you are not allowed to use server '{server}'")
            }
            Self::ToolNotAllowed { server, tool, .. } => {
                format!("tool '{tool}' of server '{server}' is not enabled for clients")
            }
            Self::CapTokenMissing { op } => {
                format!("this call needs a CapToken granting '{op}', and none was presented")
            }
            Self::CapTokenInvalid { why } => format!("the CapToken was refused: {why}"),
            Self::CapTokenOpNotGranted { op } => {
                format!("the CapToken does not grant '{op}'")
            }
            Self::CapTokenWrongPrincipal => {
                "the CapToken was minted for another tenant or user".to_owned()
            }
            Self::GuardBlocked { reason } => {
                format!("the guardrail blocked the arguments ({reason})")
            }
            Self::ToolDefinitionBlocked {
                server,
                tool,
                reason,
            } => format!(
                "tool '{tool}' of server '{server}' is withheld: the guardrail refused its definition ({reason})"
            ),
            Self::BadUri(u) => {
                format!("'{u}' is not a resource URI of this gateway (aibox://SERVER/URI)")
            }
            Self::ResourceNotAllowed { server, uri, .. } => {
                format!("resource '{uri}' of server '{server}' is not enabled for clients")
            }
            Self::PromptNotAllowed { server, prompt, .. } => {
                format!("prompt '{prompt}' of server '{server}' is not enabled for clients")
            }
            Self::NotOffered { server, what } => {
                format!("server '{server}' offers no {what}")
            }
        }
    }

    /// What the caller or the operator can do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            Self::BadName(_) | Self::UnknownTool { .. } => {
                "call tools/list (or prompts/list) and use one of the names it returns"
            }
            Self::UnknownServer(_) => {
                "call tools/list, resources/list or prompts/list and use one of the names or URIs it returns"
            }
            Self::ClientNotAllowed { .. } => {
                "ask an operator to add a selector for you to the server's allow_clients in data/mcp/registry.json"
            }
            Self::ToolNotAllowed { .. } => {
                "ask an operator to change the server's tools.allow / tools.deny in data/mcp/registry.json"
            }
            Self::CapTokenMissing { .. } => {
                "send the turn's CapToken (minted by aibox) in params._meta[\"aibox/captoken\"] or the X-Aibox-Captoken header"
            }
            Self::CapTokenInvalid { .. } => {
                "use the current turn's CapToken as minted by aibox; expired tokens need a new turn"
            }
            Self::CapTokenOpNotGranted { .. } => {
                "the turn was not granted this tool; mint the turn with the tool:SERVER/TOOL operation"
            }
            Self::CapTokenWrongPrincipal => {
                "present a CapToken minted for your own turn, with your own credentials"
            }
            Self::GuardBlocked { .. } => {
                "remove the flagged content from the arguments, or ask an operator about the guardrail profile"
            }
            Self::ToolDefinitionBlocked { .. } => {
                "ask an operator to review the tool server: a description that instructs the model (tool poisoning) is never passed on; remove the server from data/mcp/servers.txt or deny the tool in data/mcp/registry.json until it is fixed"
            }
            Self::BadUri(_) => "call resources/list and use one of the URIs it returns",
            Self::ResourceNotAllowed { .. } => {
                "ask an operator to change the server's resources.allow / resources.deny in data/mcp/registry.json (no \"resources\" key exposes none)"
            }
            Self::PromptNotAllowed { .. } => {
                "ask an operator to change the server's prompts.allow / prompts.deny in data/mcp/registry.json (no \"prompts\" key exposes none)"
            }
            Self::NotOffered { .. } => {
                "call resources/list or prompts/list to see what the servers offer"
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use aibox_core::{TenantId, UserId};

    fn principal(tenant: &str, user: &str, roles: &[&str], auth: AuthMethod) -> Principal {
        Principal {
            tenant: TenantId::new(tenant).unwrap(),
            user: UserId::new(user).unwrap(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            auth,
        }
    }

    fn key(id: &str) -> AuthMethod {
        AuthMethod::ApiKey {
            key_id: id.to_owned(),
        }
    }

    fn oidc(client: Option<&str>) -> AuthMethod {
        AuthMethod::Oidc {
            issuer: "https://idp".into(),
            client_id: client.map(str::to_owned),
        }
    }

    #[test]
    fn selector_table() {
        let alice = principal("acme", "alice", &["tools"], key("k1"));
        let bob = principal("acme", "bob", &[], oidc(Some("agent")));
        let carol = principal("globex", "alice", &["tools"], oidc(None));
        let anon = Principal::anonymous();
        // (selector, alice, bob, carol, anonymous)
        let cases: &[(&str, [bool; 4])] = &[
            ("*", [true, true, true, true]),
            ("tenant:acme", [true, true, false, false]),
            ("tenant:globex", [false, false, true, false]),
            ("user:acme/alice", [true, false, false, false]),
            ("user:globex/alice", [false, false, true, false]),
            ("role:tools", [true, false, true, false]),
            ("tenant:acme&role:tools", [true, false, false, false]),
            ("tenant:acme & role:tools", [true, false, false, false]),
            ("client:agent", [false, true, false, false]),
            ("client:other", [false, false, false, false]),
            ("apikey:k1", [true, false, false, false]),
            ("apikey:k2", [false, false, false, false]),
            ("tenant:default", [false, false, false, true]),
            ("user:default/anonymous", [false, false, false, true]),
        ];
        for (text, expect) in cases {
            let s = ClientSelector::parse(text).unwrap();
            let got = [
                s.matches(&alice),
                s.matches(&bob),
                s.matches(&carol),
                s.matches(&anon),
            ];
            assert_eq!(&got, expect, "{text}");
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in [
            "",
            "acme",
            "tenant:",
            "tenant:ac me",
            "user:alice",
            "user:/alice",
            "user:acme/",
            "group:x",
            "role:a&",
            "tenant:acme&&role:x",
            "role:a\nb",
        ] {
            assert!(ClientSelector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_list_admits_nobody() {
        assert!(!client_allowed(&[], &Principal::anonymous()));
        let any = [ClientSelector::parse("*").unwrap()];
        assert!(client_allowed(&any, &Principal::anonymous()));
    }

    fn rules(allow: Option<&[&str]>, deny: &[&str]) -> ToolRules {
        ToolRules {
            allow: allow.map(|a| a.iter().map(|p| ToolPattern::parse(p).unwrap()).collect()),
            deny: deny
                .iter()
                .map(|p| ToolPattern::parse(p).unwrap())
                .collect(),
        }
    }

    #[test]
    fn tool_rules_table() {
        use ToolVerdict::*;
        let cases: &[(ToolRules, &str, ToolVerdict)] = &[
            (rules(None, &[]), "anything", Allowed),
            (rules(Some(&[]), &[]), "anything", NotAllowed),
            (rules(Some(&["read_file"]), &[]), "read_file", Allowed),
            (rules(Some(&["read_file"]), &[]), "read_file2", NotAllowed),
            (rules(Some(&["read_*"]), &[]), "read_dir", Allowed),
            (rules(Some(&["read_*"]), &[]), "write_file", NotAllowed),
            (rules(None, &["write_*"]), "write_file", Denied),
            (rules(None, &["write_*"]), "read_file", Allowed),
            (rules(Some(&["*"]), &["delete"]), "delete", Denied),
            (rules(Some(&["delete"]), &["delete"]), "delete", Denied),
            (rules(None, &["*"]), "x", Denied),
        ];
        for (r, tool, want) in cases {
            assert_eq!(r.verdict(tool), *want, "{r:?} {tool}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "a*b", "**", "re ad", "a.b", "a/b*"] {
            assert!(ToolPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ToolPattern::parse("*").is_ok());
        assert!(ToolPattern::parse("read_*").is_ok());
    }

    #[test]
    fn denials_have_codes_and_fixes() {
        let d = Denial::CapTokenMissing {
            op: "tool:files/read".into(),
        };
        assert_eq!(d.code(), "captoken_missing");
        assert!(d.message().contains("tool:files/read"));
        assert!(d.fix().contains("aibox/captoken"));
    }
}
