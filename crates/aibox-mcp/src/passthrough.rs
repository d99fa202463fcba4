//! Resources and prompts of the servers behind the gateway (pure): how
//! their identifiers are namespaced, and the registry rules that expose
//! them.
//!
//! Tools are named `SERVER__TOOL` ([`crate::names`]); prompts get the same
//! form (`SERVER__PROMPT`), because a prompt name is a plain name like a
//! tool's. Resources are identified by URIs, which have no room for a
//! separator that could never occur in them, so a resource's URI is
//! wrapped instead: `aibox://SERVER/ORIGINAL` (the original URI unchanged
//! after the server's name and one `/`). Server names never contain `/`, so
//! the first `/` after `aibox://` always ends the server name, and the rest
//! is the server's URI byte for byte. Resource templates are wrapped the
//! same way, so a client expanding `aibox://docs/notes://{id}` produces a
//! URI that unwraps to what the server's own template describes.
//!
//! A server's `resources` and `prompts` are hidden unless its registry
//! entry has the key: a resource can hold anything a server can read, and
//! an operator who opened a server for a few tools must not find its
//! resources readable after an upgrade. With the key, `deny` always wins,
//! and without `allow` everything not denied is exposed (the model of
//! `tools`). Resource patterns are URIs, or URI prefixes ending in `*`.

use crate::policy::{ToolPattern, ToolRules, ToolVerdict};

/// The scheme (with `//`) of namespaced resource URIs.
pub const URI_PREFIX: &str = "aibox://";
/// The longest resource URI or pattern accepted, in bytes.
pub const MAX_URI_BYTES: usize = 4096;

/// `aibox://SERVER/URI`.
pub fn wrap_uri(server: &str, uri: &str) -> String {
    format!("{URI_PREFIX}{server}/{uri}")
}

/// The server and its own URI of a namespaced resource URI, or `None` when
/// the URI is not one (no `aibox://` prefix, an invalid server name, an
/// empty inner URI).
pub fn unwrap_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (server, inner) = rest.split_once('/')?;
    (crate::names::valid_server(server) && !inner.is_empty()).then_some((server, inner))
}

/// True for a URI (or URI pattern) aibox passes on: not empty, at most
/// [`MAX_URI_BYTES`], no whitespace or control characters (which no valid
/// URI contains, and which would let a log line or a header be forged).
pub fn valid_uri(uri: &str) -> bool {
    !uri.is_empty()
        && uri.len() <= MAX_URI_BYTES
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Why a resource pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "resource pattern '{0}' is invalid: use a URI (or a URI prefix ending in '*') without whitespace, at most 4096 bytes"
)]
pub struct BadUriPattern(pub String);

/// A resource URI, or a prefix of one ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriPattern(String);

impl UriPattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Self, BadUriPattern> {
        if !valid_uri(text) {
            return Err(BadUriPattern(crate::names::printable(text)));
        }
        Ok(Self(text.to_owned()))
    }

    /// True when the pattern covers `uri` (the server's own URI).
    pub fn matches(&self, uri: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => uri.starts_with(prefix),
            None => self.0 == uri,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A server's resource allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRules {
    /// `None`: every resource; `Some([])`: none.
    pub allow: Option<Vec<UriPattern>>,
    /// Always wins.
    pub deny: Vec<UriPattern>,
}

impl ResourceRules {
    /// The verdict for the server's own `uri` (or URI template).
    pub fn verdict(&self, uri: &str) -> ToolVerdict {
        if self.deny.iter().any(|p| p.matches(uri)) {
            return ToolVerdict::Denied;
        }
        match &self.allow {
            Some(list) if !list.iter().any(|p| p.matches(uri)) => ToolVerdict::NotAllowed,
            _ => ToolVerdict::Allowed,
        }
    }
}

/// What a server exposes besides tools, from its registry entry; `None`
/// hides that kind entirely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraRules {
    /// `resources`: resources and resource templates.
    pub resources: Option<ResourceRules>,
    /// `prompts`: prompt names, with the patterns of `tools`.
    pub prompts: Option<ToolRules>,
}

impl ExtraRules {
    /// The verdict for a resource URI of the server; hidden resources are
    /// [`ToolVerdict::NotAllowed`].
    pub fn resource(&self, uri: &str) -> ToolVerdict {
        self.resources
            .as_ref()
            .map_or(ToolVerdict::NotAllowed, |r| r.verdict(uri))
    }

    /// The verdict for a prompt of the server; hidden prompts are
    /// [`ToolVerdict::NotAllowed`].
    pub fn prompt(&self, name: &str) -> ToolVerdict {
        self.prompts
            .as_ref()
            .map_or(ToolVerdict::NotAllowed, |r| r.verdict(name))
    }
}

/// Parses a prompt pattern list (the grammar of tool patterns).
pub fn prompt_patterns(list: &[String]) -> Result<Vec<ToolPattern>, crate::policy::PolicyError> {
    list.iter().map(|p| ToolPattern::parse(p)).collect()
}

/// Parses a resource pattern list.
pub fn uri_patterns(list: &[String]) -> Result<Vec<UriPattern>, BadUriPattern> {
    list.iter().map(|p| UriPattern::parse(p)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn uris_wrap_and_unwrap_exactly() {
        for (server, inner) in [
            ("docs", "file:///srv/a b%20c.txt"),
            ("docs", "notes://1"),
            ("a-1", "aibox://other/x"),
            ("x", "urn:isbn:0451450523"),
        ] {
            let w = wrap_uri(server, inner);
            assert_eq!(unwrap_uri(&w), Some((server, inner)), "{w}");
        }
        for bad in [
            "file:///etc/passwd",
            "aibox://",
            "aibox://docs",
            "aibox://docs/",
            "aibox://Docs/x",
            "aibox://do_cs/x",
            "aibox:///x",
            "AIBOX://docs/x",
        ] {
            assert_eq!(unwrap_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn resource_rules_table() {
        let rules = ResourceRules {
            allow: Some(
                uri_patterns(&["notes://*".into(), "file:///srv/readme.md".into()]).unwrap(),
            ),
            deny: uri_patterns(&["notes://secret*".into()]).unwrap(),
        };
        for (uri, want) in [
            ("notes://1", ToolVerdict::Allowed),
            ("notes://secret/1", ToolVerdict::Denied),
            ("file:///srv/readme.md", ToolVerdict::Allowed),
            ("file:///srv/readme.md.bak", ToolVerdict::NotAllowed),
            ("file:///etc/passwd", ToolVerdict::NotAllowed),
        ] {
            assert_eq!(rules.verdict(uri), want, "{uri}");
        }
        assert_eq!(
            ExtraRules::default().resource("notes://1"),
            ToolVerdict::NotAllowed
        );
        assert_eq!(
            ExtraRules::default().prompt("greet"),
            ToolVerdict::NotAllowed
        );
        let open = ExtraRules {
            resources: Some(ResourceRules::default()),
            prompts: Some(ToolRules::default()),
        };
        assert_eq!(open.resource("anything://x"), ToolVerdict::Allowed);
        assert_eq!(open.prompt("greet"), ToolVerdict::Allowed);
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "notes:// x", "a\nb", &"x".repeat(MAX_URI_BYTES + 1)] {
            assert!(UriPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(prompt_patterns(&["greet*".into()]).is_ok());
        assert!(prompt_patterns(&["gr eet".into()]).is_err());
    }
}
