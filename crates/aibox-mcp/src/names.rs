//! Namespaced tool names (pure).
//!
//! Every tool the gateway exposes is named `SERVER__TOOL`: the registry name
//! of its MCP server, two underscores, and the tool's own name. The result
//! must be a valid OpenAI function name (`^[A-Za-z0-9_-]{1,64}$`), because
//! agents hand MCP tools to models as functions, and a valid CapToken
//! operation `tool:SERVER/TOOL`.
//!
//! Server names are `[a-z0-9]` with inner `-` and never contain `_`, so the
//! first `__` of a namespaced name is always the separator: splitting is
//! unambiguous and two different (server, tool) pairs can never produce the
//! same name. What can still collide is case: `Read` and `read` are
//! different MCP tools but one name to a careless client or a human reading
//! an audit log, so names are compared ASCII case-insensitively and the
//! second of such a pair is refused.

use std::collections::HashMap;

/// The separator between the server and the tool.
pub const SEPARATOR: &str = "__";
/// The longest server name.
pub const MAX_SERVER_CHARS: usize = 32;
/// The longest namespaced name (the OpenAI function-name limit).
pub const MAX_NAMESPACED_CHARS: usize = 64;

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A server name outside the grammar.
    #[error(
        "server name '{0}' is invalid: use 1-32 characters from [a-z0-9-], starting and ending with a letter or digit (no '_', which separates server and tool)"
    )]
    BadServer(String),
    /// A tool name outside the grammar.
    #[error(
        "tool name '{0}' is invalid: MCP tools exposed by aibox must be named with [A-Za-z0-9_-]"
    )]
    BadTool(String),
    /// The namespaced name is too long.
    #[error(
        "the namespaced tool name '{0}' is longer than 64 characters (the OpenAI function-name limit); shorten the server name"
    )]
    TooLong(String),
    /// The name has no `SERVER__` prefix.
    #[error("'{0}' is not a namespaced tool name (SERVER__TOOL)")]
    NotNamespaced(String),
}

/// True for a valid server name.
pub fn valid_server(name: &str) -> bool {
    let b = name.as_bytes();
    let inner_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_SERVER_CHARS
        && b.iter().all(inner_ok)
        && b.first().is_some_and(edge_ok)
        && b.last().is_some_and(edge_ok)
}

/// True for a valid (server-local) tool name.
pub fn valid_tool(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// `SERVER__TOOL`, checked.
pub fn join(server: &str, tool: &str) -> Result<String, NameError> {
    if !valid_server(server) {
        return Err(NameError::BadServer(printable(server)));
    }
    if !valid_tool(tool) {
        return Err(NameError::BadTool(printable(tool)));
    }
    let name = format!("{server}{SEPARATOR}{tool}");
    if name.len() > MAX_NAMESPACED_CHARS {
        return Err(NameError::TooLong(name));
    }
    Ok(name)
}

/// Splits `SERVER__TOOL` at the first separator; both halves are checked.
pub fn split(name: &str) -> Result<(&str, &str), NameError> {
    let Some((server, tool)) = name.split_once(SEPARATOR) else {
        return Err(NameError::NotNamespaced(printable(name)));
    };
    if !valid_server(server) {
        return Err(NameError::BadServer(printable(server)));
    }
    if !valid_tool(tool) {
        return Err(NameError::BadTool(printable(tool)));
    }
    if name.len() > MAX_NAMESPACED_CHARS {
        return Err(NameError::TooLong(printable(name)));
    }
    Ok((server, tool))
}

/// Two tools whose namespaced names are equal ignoring ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool name collision: '{first}' and '{second}' differ only in case")]
pub struct Collision {
    /// The name that was kept.
    pub first: String,
    /// The name that was refused.
    pub second: String,
}

/// Collects namespaced names and refuses case-insensitive duplicates.
#[derive(Debug, Default)]
pub struct Namespace {
    seen: HashMap<String, String>,
}

impl Namespace {
    /// An empty namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name`; a name equal to an earlier one ignoring case is refused.
    pub fn insert(&mut self, name: &str) -> Result<(), Collision> {
        let key = name.to_ascii_lowercase();
        if let Some(first) = self.seen.get(&key) {
            return Err(Collision {
                first: first.clone(),
                second: name.to_owned(),
            });
        }
        self.seen.insert(key, name.to_owned());
        Ok(())
    }
}

/// A client-controlled string made safe for an error message or a log line:
/// at most 64 characters, control characters replaced.
pub fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn server_name_table() {
        let cases: &[(&str, bool)] = &[
            ("files", true),
            ("a", true),
            ("web-search", true),
            ("s3", true),
            ("", false),
            ("-files", false),
            ("files-", false),
            ("my_files", false),
            ("Files", false),
            ("fi les", false),
            ("fi/les", false),
            ("fi.les", false),
            (&"a".repeat(32), true),
            (&"a".repeat(33), false),
        ];
        for (name, ok) in cases {
            assert_eq!(valid_server(name), *ok, "{name}");
        }
    }

    #[test]
    fn join_and_split_round_trip() {
        let cases = [
            ("files", "read_file"),
            ("a", "_x"),
            ("a", "x__y"),
            ("web-search", "Search-2"),
        ];
        for (s, t) in cases {
            let n = join(s, t).unwrap();
            assert_eq!(split(&n).unwrap(), (s, t), "{n}");
        }
        assert_eq!(join("a", "_x").unwrap(), "a___x");
    }

    #[test]
    fn refused_names() {
        assert!(matches!(
            join("files", "read.file"),
            Err(NameError::BadTool(_))
        ));
        assert!(matches!(join("files", ""), Err(NameError::BadTool(_))));
        assert!(matches!(
            join("my_files", "x"),
            Err(NameError::BadServer(_))
        ));
        assert!(matches!(
            join("files", &"x".repeat(60)),
            Err(NameError::TooLong(_))
        ));
        for bad in [
            "files",
            "files_read",
            "__read",
            "Files__read",
            "files__",
            "files__re/ad",
            "files__re\nad",
        ] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn case_collisions_are_refused() {
        let mut ns = Namespace::new();
        ns.insert("files__read").unwrap();
        ns.insert("files__write").unwrap();
        ns.insert("web__read").unwrap();
        let c = ns.insert("files__Read").unwrap_err();
        assert_eq!(c.first, "files__read");
        assert_eq!(c.second, "files__Read");
    }

    #[test]
    fn printable_truncates_and_hides_controls() {
        assert_eq!(printable("a\nb"), "a?b");
        assert_eq!(printable(&"x".repeat(70)).chars().count(), 65);
    }
}
