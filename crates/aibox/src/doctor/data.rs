//! Checks of the data directory (seed 004 §10, §11; seed 000 §1, §8):
//! plaintext secrets in JSON files, development keys, the filesystem MCP
//! server enabled on `/` or a home directory, and the audit log's key
//! versions.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::envcheck::AiboxEnv;
use super::model::{self, Finding, Location};
use super::secrets;
use super::sources::json_lines;

/// The largest JSON file the doctor reads.
const MAX_JSON_BYTES: u64 = 8 * 1024 * 1024;
/// The most JSON files it reads.
const MAX_JSON_FILES: usize = 5000;
/// How deep it walks.
const MAX_DEPTH: usize = 12;
/// The most bytes of JSON it reads in all (a data directory may hold large
/// stores; the doctor must stay quick).
const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

/// A plaintext secret found in a JSON document (pure; for tests and the
/// file walk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSecret {
    /// JSON pointer of the value.
    pub pointer: String,
    /// Dotted key path, for people.
    pub dotted: String,
    /// Why: "a value under a secret-named key (40 characters)" or a shape.
    pub why: String,
}

/// Finds plaintext secrets in a JSON value: strings under secret-named
/// keys that are not placeholders or references, and any string shaped
/// like a well-known token. Under an MCP server's `secrets` map the values
/// are vault names, so only token shapes count there.
pub fn find_json_secrets(doc: &Value) -> Vec<JsonSecret> {
    let mut out = Vec::new();
    walk(doc, "", "", None, false, &mut out);
    out
}

fn walk(
    v: &Value,
    ptr: &str,
    dotted: &str,
    key: Option<&str>,
    in_refs: bool,
    out: &mut Vec<JsonSecret>,
) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1"));
                let d = if dotted.is_empty() {
                    k.clone()
                } else {
                    format!("{dotted}.{k}")
                };
                let refs = in_refs || k == "secrets";
                walk(x, &p, &d, Some(k), refs, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(
                    x,
                    &format!("{ptr}/{i}"),
                    &format!("{dotted}[{i}]"),
                    key,
                    in_refs,
                    out,
                );
            }
        }
        Value::String(s) => {
            let why = if let Some(shape) = secrets::token_shape(s) {
                Some(format!(
                    "a value shaped like {shape} ({} characters)",
                    s.chars().count()
                ))
            } else if !in_refs
                && key.is_some_and(secrets::is_secret_key)
                && s.trim().chars().count() >= 8
                && !crate::bootstrap::is_placeholder(s)
                && !secrets::is_reference(s)
            {
                Some(format!(
                    "a plaintext value under a secret-named key ({} characters)",
                    s.chars().count()
                ))
            } else {
                None
            };
            if let Some(why) = why {
                out.push(JsonSecret {
                    pointer: ptr.to_owned(),
                    dotted: dotted.to_owned(),
                    why,
                });
            }
        }
        _ => {}
    }
}

fn json_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH || out.len() >= MAX_JSON_FILES {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            json_files(&p, depth + 1, out);
        } else if ft.is_file()
            && p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
        {
            out.push(p);
        }
    }
}

/// Walks `data_dir` for JSON files holding plaintext secrets.
pub fn check_json(data_dir: &Path, out: &mut Vec<Finding>) {
    let mut files = Vec::new();
    json_files(data_dir, 0, &mut files);
    let mut budget = MAX_TOTAL_BYTES;
    for f in files {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(u64::MAX);
        if len > MAX_JSON_BYTES || len > budget {
            continue;
        }
        budget -= len;
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Ok(doc) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let found = find_json_secrets(&doc);
        if found.is_empty() {
            continue;
        }
        let lines = json_lines(&text);
        for s in found {
            out.push(Finding::new(
                &model::DATA_PLAINTEXT_TOKEN,
                Some(Location::new(&f, lines.get(&s.pointer).copied())),
                format!("'{}' holds {}", s.dotted, s.why),
                "move the secret to the vault or the env file and reference it (MCP: `\"secrets\": {\"VAR\": \"vault-name\"}`), then rotate it",
            ));
        }
    }
}

/// Checks for development keys written by `aibox serve`.
pub fn check_dev_keys(data_dir: &Path, out: &mut Vec<Finding>) {
    let p = data_dir.join(crate::devkeys::DEV_KEYS_FILE);
    if p.is_file() {
        out.push(Finding::new(
            &model::SECRET_DEV_KEYS,
            Some(Location::new(&p, None)),
            "development keys generated by `aibox serve` are stored beside the data they protect",
            format!("configure real keys (`aibox bootstrap`), restart aibox, check it no longer logs USING DEVELOPMENT KEYS, then delete {}", p.display()),
        ));
    }
}

/// Lexically normalises an absolute path (`.`, `..`, repeated and
/// trailing slashes).
fn normalise(p: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// Why a `FILESYSTEM_ROOT` value would expose the whole host or a home
/// directory (pure).
pub fn fs_root_refusal(root: &str) -> Option<&'static str> {
    let r = root.trim();
    if r.is_empty() {
        return None;
    }
    if r == "~" || r == "$HOME" || r == "${HOME}" || r.trim_end_matches('/') == "~" {
        return Some("a home directory");
    }
    if !r.starts_with('/') {
        return None;
    }
    let n = normalise(r);
    let parts: Vec<&str> = n.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [] => Some("the filesystem root '/'"),
        ["root"] | ["home"] | ["Users"] => Some("a home directory"),
        ["home", _] | ["Users", _] => Some("a home directory"),
        _ => None,
    }
}

/// Checks the filesystem MCP server (seed 004 §10).
pub fn check_mcp_fs(
    data_dir: &Path,
    aibox: &AiboxEnv,
    env_files: &[super::sources::EnvSource],
    out: &mut Vec<Finding>,
) {
    let servers = data_dir.join("mcp").join("servers.txt");
    let Ok(text) = std::fs::read_to_string(&servers) else {
        return;
    };
    let Some(line) = text.lines().position(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        l == "filesystem"
    }) else {
        return;
    };
    // aibox's environment first, then any env file that sets it.
    let mut roots: Vec<(String, Location)> = Vec::new();
    if let Some(v) = aibox.get("FILESYSTEM_ROOT") {
        roots.push((v.to_owned(), aibox.at("FILESYSTEM_ROOT")));
    }
    for f in env_files {
        if let Some(e) = f.get("FILESYSTEM_ROOT") {
            roots.push((e.value.clone(), Location::new(&f.path, Some(e.line))));
        }
    }
    let mut seen = BTreeMap::new();
    for (root, at) in roots {
        if seen.insert(root.clone(), ()).is_some() {
            continue;
        }
        if let Some(why) = fs_root_refusal(&root) {
            out.push(Finding::new(
                &model::MCP_FILESYSTEM_ROOT,
                Some(Location::new(&servers, Some(line + 1))),
                format!("'filesystem' is enabled and FILESYSTEM_ROOT ({at}) is '{root}', {why}"),
                "set FILESYSTEM_ROOT to one project directory, or remove 'filesystem' from data/mcp/servers.txt",
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn json_secrets_table() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (
                r#"{"gateway": {"auth": {"token": "3f9a1c0d5e7b2a4c6e8f0a1b"}}}"#,
                vec!["gateway.auth.token"],
            ),
            (
                r#"{"channels": {"telegram": {"botToken": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"}}}"#,
                vec!["channels.telegram.botToken"],
            ),
            (
                r#"{"skills": {"entries": {"x": {"apiKey": "sk-Zq8rT3kLm9Pw2xVb7NcY4sHd6Jf1Ga"}}}}"#,
                vec!["skills.entries.x.apiKey"],
            ),
            (
                r#"{"notes": ["see ghp_0123456789abcdefghijABCDEFGHIJ0123"]}"#,
                vec![],
            ),
            (
                r#"{"list": ["ghp_0123456789abcdefghijABCDEFGHIJ0123"]}"#,
                vec!["list[0]"],
            ),
            (
                r#"{"password": "changeme", "token": "${OPENCLAW_GATEWAY_TOKEN}", "secret": "****"}"#,
                vec![],
            ),
            (
                r#"{"token_url": "https://x/token", "max_tokens": "4096", "tokenizer": "cl100k_base_long"}"#,
                vec![],
            ),
            (
                r#"{"servers": {"gh": {"secrets": {"GITHUB_TOKEN": "github-token-name"}}}}"#,
                vec![],
            ),
            (
                r#"{"servers": {"gh": {"secrets": {"GITHUB_TOKEN": "ghp_0123456789abcdefghijABCDEFGHIJ0123"}}}}"#,
                vec!["servers.gh.secrets.GITHUB_TOKEN"],
            ),
            (
                r#"{"servers": {"gh": {"env": {"SLACK_BOT_TOKEN": "xoxb-1234567890-abcdefghij"}}}}"#,
                vec!["servers.gh.env.SLACK_BOT_TOKEN"],
            ),
        ];
        for (text, want) in cases {
            let doc: Value = serde_json::from_str(text).unwrap();
            let got: Vec<String> = find_json_secrets(&doc)
                .into_iter()
                .map(|s| s.dotted)
                .collect();
            assert_eq!(got, want, "{text}");
        }
        let doc: Value =
            serde_json::from_str(r#"{"a": {"token": "3f9a1c0d5e7b2a4c6e8f0a1b"}}"#).unwrap();
        let s = &find_json_secrets(&doc)[0];
        assert!(!s.why.contains("3f9a"), "{}", s.why);
        assert_eq!(s.pointer, "/a/token");
    }

    #[test]
    fn filesystem_roots() {
        let cases = [
            ("/", Some("the filesystem root '/'")),
            ("//", Some("the filesystem root '/'")),
            ("/srv/..", Some("the filesystem root '/'")),
            ("/root", Some("a home directory")),
            ("/home/alice/", Some("a home directory")),
            ("/home", Some("a home directory")),
            ("~", Some("a home directory")),
            ("$HOME", Some("a home directory")),
            ("/Users/bob", Some("a home directory")),
            ("/home/alice/project", None),
            ("/srv/shared", None),
            ("", None),
        ];
        for (root, want) in cases {
            assert_eq!(fs_root_refusal(root), want, "{root}");
        }
    }
}
