//! Reading the doctor's inputs with line numbers: `.env` files, block YAML
//! (compose, gateway config) and JSON (realm exports, files under data/).
//!
//! The parsers that load these files for real (dotenvy, serde_yaml_ng,
//! serde_json) drop positions, and evidence without a line is much less
//! useful. So the values come from those parsers, and the lines from the
//! small position finders here, which only need to agree on where a key is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `NAME=value` line of an env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEntry {
    /// The variable.
    pub name: String,
    /// The value, unquoted.
    pub value: String,
    /// The 1-based line.
    pub line: usize,
}

/// An env file as lines.
#[derive(Debug, Clone, Default)]
pub struct EnvSource {
    /// The path, as given.
    pub path: PathBuf,
    /// Whether the file exists.
    pub exists: bool,
    /// Assignments in file order (a later one overrides an earlier one).
    pub entries: Vec<EnvEntry>,
}

impl EnvSource {
    /// Parses env file text (`NAME=value`, `export NAME=value`, quotes,
    /// `#` comments, ` #` inline comments after unquoted values).
    pub fn parse(path: &Path, text: &str) -> Self {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let Some((k, v)) = l.split_once('=') else {
                continue;
            };
            let name = k.trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                continue;
            }
            entries.push(EnvEntry {
                name: name.to_owned(),
                value: unquote(v.trim()),
                line: i + 1,
            });
        }
        Self {
            path: path.to_path_buf(),
            exists: true,
            entries,
        }
    }

    /// Reads `path`; a missing file gives an empty source with
    /// `exists == false`.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(path, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path: path.to_path_buf(),
                exists: false,
                entries: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// The last assignment of `name`.
    pub fn get(&self, name: &str) -> Option<&EnvEntry> {
        self.entries.iter().rev().find(|e| e.name == name)
    }

    /// The effective entries (last assignment of each name), by name.
    pub fn effective(&self) -> BTreeMap<&str, &EnvEntry> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            out.insert(e.name.as_str(), e);
        }
        out
    }

    /// Name → value of the effective entries.
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.effective()
            .into_iter()
            .map(|(k, e)| (k.to_owned(), e.value.clone()))
            .collect()
    }
}

fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'') {
        return inner.split('\'').next().unwrap_or("").to_owned();
    }
    if let Some(inner) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(o) => out.push(o),
                    None => break,
                },
                o => out.push(o),
            }
        }
        return out;
    }
    // Unquoted: an inline comment starts at " #".
    match v.find(" #") {
        Some(i) => v[..i].trim_end().to_owned(),
        None => v.to_owned(),
    }
}

/// One step of a path into a YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

fn yaml_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') || t == "---" || t == "..." {
                return None;
            }
            Some(Line {
                no: i + 1,
                indent: l.len() - t.len(),
                text: t,
            })
        })
        .collect()
}

fn key_matches(text: &str, key: &str) -> bool {
    let rest = text
        .strip_prefix(key)
        .or_else(|| {
            text.strip_prefix('"')
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix('"'))
        })
        .or_else(|| {
            text.strip_prefix('\'')
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix('\''))
        });
    rest.is_some_and(|r| r.trim_start().starts_with(':'))
}

/// The 1-based line of the deepest part of `path` that can be found in
/// block-style YAML: the key itself when it exists, else its closest
/// ancestor (so "service X has no cap_drop" points at service X). Flow
/// style (`[a, b]`, `{a: b}`) is not entered.
pub fn yaml_line(text: &str, path: &[Seg<'_>]) -> Option<usize> {
    let mut scope = yaml_lines(text);
    let mut found = None;
    for seg in path {
        let Some(base) = scope.first().map(|l| l.indent) else {
            break;
        };
        let (pos, own) = match seg {
            Seg::Key(k) => {
                let Some(p) = scope
                    .iter()
                    .position(|l| l.indent == base && key_matches(l.text, k))
                else {
                    break;
                };
                (p, None)
            }
            Seg::Index(n) => {
                let Some(p) = scope
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.indent == base && l.text.starts_with('-'))
                    .nth(*n)
                    .map(|(i, _)| i)
                else {
                    break;
                };
                let l = scope[p];
                let rest = l.text[1..].trim_start();
                let shift = l.text.len() - rest.len();
                (
                    p,
                    Some(Line {
                        no: l.no,
                        indent: l.indent + shift,
                        text: rest,
                    }),
                )
            }
        };
        let head = scope[pos];
        found = Some(head.no);
        let mut next: Vec<Line<'_>> = own.into_iter().filter(|l| !l.text.is_empty()).collect();
        for l in &scope[pos + 1..] {
            let child = l.indent > head.indent
                || (matches!(seg, Seg::Key(_))
                    && l.indent == head.indent
                    && l.text.starts_with('-'));
            if !child {
                break;
            }
            next.push(*l);
        }
        scope = next;
    }
    found
}

/// The first 1-based line of `text` that contains `needle`.
pub fn line_containing(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The line of every key in a JSON document, by JSON pointer
/// (`/clients/3/redirectUris/0`). Array elements get the line where they
/// start. Invalid JSON gives whatever was collected before the error.
pub fn json_lines(text: &str) -> BTreeMap<String, usize> {
    let mut s = JsonScan {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        out: BTreeMap::new(),
    };
    s.value(String::new(), 0);
    s.out
}

struct JsonScan<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
    out: BTreeMap<String, usize>,
}

impl JsonScan<'_> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\n' => {
                    self.line += 1;
                    self.i += 1;
                }
                b' ' | b'\t' | b'\r' => self.i += 1,
                _ => break,
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.b.get(self.i) {
            self.i += 1;
            match c {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    if let Some(&e) = self.b.get(self.i) {
                        self.i += 1;
                        out.push(match e {
                            b'n' => b'\n',
                            b't' => b'\t',
                            other => other,
                        });
                    }
                }
                b'\n' => {
                    self.line += 1;
                    out.push(c);
                }
                other => out.push(other),
            }
        }
        None
    }

    fn value(&mut self, ptr: String, depth: usize) {
        if depth > 128 {
            return;
        }
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                loop {
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b'}') => {
                            self.i += 1;
                            return;
                        }
                        Some(b',') => self.i += 1,
                        Some(b'"') => {
                            let line = self.line;
                            let Some(k) = self.string() else { return };
                            let p = format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1"));
                            self.out.insert(p.clone(), line);
                            self.ws();
                            if self.b.get(self.i) != Some(&b':') {
                                return;
                            }
                            self.i += 1;
                            self.value(p, depth + 1);
                        }
                        _ => return,
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut n = 0usize;
                loop {
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b']') => {
                            self.i += 1;
                            return;
                        }
                        Some(b',') => self.i += 1,
                        Some(_) => {
                            let p = format!("{ptr}/{n}");
                            self.out.insert(p.clone(), self.line);
                            let before = self.i;
                            self.value(p, depth + 1);
                            if self.i == before {
                                return;
                            }
                            n += 1;
                        }
                        None => return,
                    }
                }
            }
            Some(b'"') => {
                let _ = self.string();
            }
            Some(_) => {
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
            }
            None => {}
        }
    }
}

/// A variable reference found while interpolating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    /// The variable.
    pub name: String,
    /// Whether the reference supplies a value of its own when the
    /// variable is unset (`${X:-d}`, `${X-d}`, `${X:+a}`).
    pub has_default: bool,
}

/// Docker Compose variable interpolation: `$$`, `$NAME`, `${NAME}`,
/// `${NAME:-default}`, `${NAME-default}`, `${NAME:?err}`, `${NAME?err}`,
/// `${NAME:+alt}`, `${NAME+alt}`; defaults are interpolated too. Unset
/// variables become empty strings, as compose does. Every reference is
/// appended to `refs`.
pub fn interpolate(s: &str, vars: &BTreeMap<String, String>, refs: &mut Vec<VarRef>) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // Find the matching brace, allowing nested ${...} in defaults.
                let mut depth = 0usize;
                let mut j = i + 1;
                let mut end = None;
                while j < chars.len() {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let Some(end) = end else {
                    out.extend(&chars[i..]);
                    break;
                };
                let inner: String = chars[i + 2..end].iter().collect();
                out.push_str(&expand(&inner, vars, refs));
                i = end + 1;
            }
            Some(n) if n.is_ascii_alphabetic() || *n == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                refs.push(VarRef {
                    name: name.clone(),
                    has_default: false,
                });
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    out
}

fn expand(inner: &str, vars: &BTreeMap<String, String>, refs: &mut Vec<VarRef>) -> String {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let name = &inner[..name_len];
    let op = &inner[name_len..];
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (has_default, result) = if let Some(d) = op.strip_prefix(":-") {
        let d = interpolate(d, vars, refs);
        (
            true,
            if set_nonempty {
                value.cloned()
            } else {
                Some(d)
            },
        )
    } else if let Some(d) = op.strip_prefix(":+") {
        let d = interpolate(d, vars, refs);
        (true, Some(if set_nonempty { d } else { String::new() }))
    } else if let Some(d) = op.strip_prefix('-') {
        let d = interpolate(d, vars, refs);
        (true, Some(value.cloned().unwrap_or(d)))
    } else if let Some(d) = op.strip_prefix('+') {
        let d = interpolate(d, vars, refs);
        (true, Some(if value.is_some() { d } else { String::new() }))
    } else {
        // ${X}, ${X:?err}, ${X?err}: no value of their own.
        (false, value.cloned())
    };
    refs.push(VarRef {
        name: name.to_owned(),
        has_default,
    });
    result.unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_with_lines_quotes_and_comments() {
        let text =
            "# c\n\nA=1\nexport B=\"two words\"\nC='lit $X'\nD=val # note\nE=\nbad line\nA=2\n";
        let s = EnvSource::parse(Path::new(".env"), text);
        let cases = [
            ("A", "2", 9),
            ("B", "two words", 4),
            ("C", "lit $X", 5),
            ("D", "val", 6),
            ("E", "", 7),
        ];
        for (name, value, line) in cases {
            let e = s.get(name).unwrap();
            assert_eq!((e.value.as_str(), e.line), (value, line), "{name}");
        }
        assert!(s.get("bad line").is_none());
        assert_eq!(s.vars().len(), 5);
    }

    const COMPOSE: &str = "services:\n  aibox:\n    image: x\n    ports:\n      - \"8080:8080\"\n      - 9000:9000\n  db:\n    image: postgres\n    environment:\n      A: b\nnetworks:\n  backend:\n    internal: true\n";

    #[test]
    fn yaml_lines_follow_key_paths_and_fall_back_to_ancestors() {
        use Seg::{Index, Key};
        let cases: &[(&[Seg<'_>], Option<usize>)] = &[
            (
                &[Key("services"), Key("aibox"), Key("ports"), Index(1)],
                Some(6),
            ),
            (
                &[Key("services"), Key("aibox"), Key("ports"), Index(0)],
                Some(5),
            ),
            (
                &[Key("services"), Key("db"), Key("environment"), Key("A")],
                Some(10),
            ),
            (&[Key("services"), Key("db"), Key("cap_drop")], Some(7)),
            (
                &[Key("networks"), Key("backend"), Key("internal")],
                Some(13),
            ),
            (&[Key("nothing")], None),
        ];
        for (path, want) in cases {
            assert_eq!(yaml_line(COMPOSE, path), *want, "{path:?}");
        }
        // Sequences at the same indent as their key, and "- key: v" items.
        let y = "list:\n- name: a\n  x: 1\n- name: b\n  x: 2\n";
        assert_eq!(yaml_line(y, &[Key("list"), Index(1), Key("x")]), Some(5));
    }

    #[test]
    fn json_lines_index_keys_and_elements() {
        let j = "{\n  \"clients\": [\n    {\n      \"clientId\": \"a\",\n      \"x\": true\n    },\n    {\"clientId\": \"b\", \"redirectUris\": [\n      \"http://localhost/*\"]}\n  ],\n  \"a/b\": 1\n}";
        let m = json_lines(j);
        assert_eq!(m["/clients"], 2);
        assert_eq!(m["/clients/0/x"], 5);
        assert_eq!(m["/clients/1/clientId"], 7);
        assert_eq!(m["/clients/1/redirectUris/0"], 8);
        assert_eq!(m["/a~1b"], 10);
    }

    #[test]
    fn interpolation_follows_compose_rules() {
        let vars: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cases = [
            ("a${SET}b", "avb", false),
            ("$SET/x", "v/x", false),
            ("$$SET", "$SET", false),
            ("${UNSET}", "", false),
            ("${UNSET:-d}", "d", true),
            ("${EMPTY:-d}", "d", true),
            ("${EMPTY-d}", "", true),
            ("${UNSET-${SET}}", "v", true),
            ("${SET:+alt}", "alt", true),
            ("${UNSET:?must be set}", "", false),
            ("cost $5", "cost $5", false),
        ];
        for (input, want, default) in cases {
            let mut refs = Vec::new();
            assert_eq!(interpolate(input, &vars, &mut refs), want, "{input}");
            if input.contains("${") || input.starts_with("$S") {
                assert_eq!(refs[refs.len() - 1].has_default, default, "{input}");
            }
        }
    }
}
