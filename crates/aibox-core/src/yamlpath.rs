//! Best-effort mapping from a key path to the YAML line that wrote it.
//!
//! YAML parsers report positions for syntax and type errors, but the second,
//! validating step of a config (the gateway config, the guardrail
//! constitution) works on values that no longer carry positions. This walks
//! the block-style YAML text along the key path instead. It understands
//! `key:` mappings (quoted keys too) and `- ` sequence items; for anything
//! else (flow style, anchors) it returns `None` and the error simply omits
//! the line. Pure: text in, line number out.

/// One step of a key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

#[derive(Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// The 1-based line of `path` in `yaml`, if it can be found.
pub fn locate(yaml: &str, path: &[Seg<'_>]) -> Option<usize> {
    let mut scope: Vec<Line<'_>> = yaml
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let trimmed = l.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                return None;
            }
            Some(Line {
                no: i + 1,
                indent: l.len() - trimmed.len(),
                text: trimmed,
            })
        })
        .collect();
    let mut found = None;
    for seg in path {
        let base = scope.first()?.indent;
        let (start, own) = match seg {
            Seg::Key(k) => {
                let pos = scope.iter().position(|l| {
                    l.indent == base && {
                        let t = l.text.trim_start_matches(['"', '\'']);
                        t.strip_prefix(k).is_some_and(|rest| {
                            rest.trim_start_matches(['"', '\''])
                                .trim_start()
                                .starts_with(':')
                        })
                    }
                })?;
                (pos, None)
            }
            Seg::Index(n) => {
                let pos = scope
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.indent == base && l.text.starts_with('-'))
                    .nth(*n)
                    .map(|(i, _)| i)?;
                let l = scope[pos];
                let rest = l.text[1..].trim_start();
                let shift = l.text.len() - rest.len();
                (
                    pos,
                    Some(Line {
                        no: l.no,
                        indent: l.indent + shift,
                        text: rest,
                    }),
                )
            }
        };
        let head = scope[start];
        found = Some(head.no);
        let mut next: Vec<Line<'_>> = Vec::new();
        if let Some(first) = own.filter(|l| !l.text.is_empty()) {
            next.push(first);
        }
        next.extend(
            scope[start + 1..]
                .iter()
                .take_while(|l| l.indent > head.indent)
                .copied(),
        );
        scope = next;
        if scope.is_empty() {
            break;
        }
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const YAML: &str = "\
# comment
profile: standard
blocked_topics:
  - name: a
    phrases: [x]
  - name: b
    phrases:
      - y
tenants:
  acme:
    profile: strict
";

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(locate(YAML, &[Seg::Key("profile")]), Some(2));
        assert_eq!(
            locate(
                YAML,
                &[
                    Seg::Key("blocked_topics"),
                    Seg::Index(1),
                    Seg::Key("phrases")
                ]
            ),
            Some(7)
        );
        assert_eq!(
            locate(
                YAML,
                &[
                    Seg::Key("blocked_topics"),
                    Seg::Index(1),
                    Seg::Key("phrases"),
                    Seg::Index(0)
                ]
            ),
            Some(8)
        );
        assert_eq!(
            locate(
                YAML,
                &[Seg::Key("tenants"), Seg::Key("acme"), Seg::Key("profile")]
            ),
            Some(11)
        );
        assert_eq!(locate(YAML, &[Seg::Key("nope")]), None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod config_shaped_tests {
    use super::*;

    const YAML: &str = "\
# comment
server:
  listen: 127.0.0.1:8080

upstreams:
  - name: a
    base_url: http://x/v1
  - name: b
    timeouts:
      connect_ms: 5
models:
  -
    name: m
";

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        assert_eq!(
            locate(YAML, &[Seg::Key("server"), Seg::Key("listen")]),
            Some(3)
        );
        assert_eq!(
            locate(
                YAML,
                &[Seg::Key("upstreams"), Seg::Index(0), Seg::Key("base_url")]
            ),
            Some(7)
        );
        assert_eq!(
            locate(
                YAML,
                &[Seg::Key("upstreams"), Seg::Index(1), Seg::Key("name")]
            ),
            Some(8)
        );
        assert_eq!(
            locate(
                YAML,
                &[
                    Seg::Key("upstreams"),
                    Seg::Index(1),
                    Seg::Key("timeouts"),
                    Seg::Key("connect_ms")
                ]
            ),
            Some(10)
        );
        assert_eq!(
            locate(YAML, &[Seg::Key("models"), Seg::Index(0), Seg::Key("name")]),
            Some(13)
        );
    }

    #[test]
    fn missing_paths_give_none() {
        assert_eq!(locate(YAML, &[Seg::Key("nope")]), None);
        assert_eq!(locate(YAML, &[Seg::Key("upstreams"), Seg::Index(5)]), None);
        assert_eq!(locate("", &[Seg::Key("server")]), None);
    }
}
