//! The constitution: `deploy/config/guardrail/constitution.yaml`.
//!
//! Loading is two steps, as for the gateway config. [`RawConstitution`]
//! mirrors the YAML with `deny_unknown_fields`, so a misspelt key is an
//! error with its line instead of a silently ignored setting; validation
//! then applies defaults and cross-field rules into [`Constitution`]. Every
//! error names the file, the line (from the YAML parser, or found again by
//! walking the text for validation errors), the key and the fix.
//!
//! The crate reads no files: the caller passes the text and the path it
//! came from, which is only used in messages. Reloading (SIGHUP, ops API) is
//! therefore the caller's loop: read, [`Constitution::from_yaml`], build a
//! new [`crate::Guardrail`], swap an `Arc`; a file that fails validation
//! leaves the running guardrail in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aibox_core::audit::GuardAction;
use serde::{Deserialize, Serialize};

use crate::finding::Scanner;
use crate::normalize;
use crate::profile::Profile;
use aibox_core::yamlpath::{Seg, locate};

/// What the critique step does when the judge model times out, fails or
/// answers with something that is not a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let the text through (and record the failure).
    FailOpen,
    /// Refuse the text.
    FailClosed,
}

/// An action a topic may prescribe (`allow` is not one: remove the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicAction {
    /// Refuse the text.
    Block,
    /// Replace the matched phrase with a placeholder.
    Redact,
    /// Let the text through and record the match.
    Flag,
}

impl TopicAction {
    /// The audit action this maps to.
    pub fn guard_action(self) -> GuardAction {
        match self {
            TopicAction::Block => GuardAction::Block,
            TopicAction::Redact => GuardAction::Redact,
            TopicAction::Flag => GuardAction::Flag,
        }
    }
}

/// The YAML as written. Public so tools can inspect a file without
/// validating it; the guardrail only takes a validated [`Constitution`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConstitution {
    /// The global toggle.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The active profile.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Principles for the critique step.
    #[serde(default)]
    pub principles: Vec<RawPrinciple>,
    /// Blocked topics.
    #[serde(default)]
    pub blocked_topics: Vec<RawTopic>,
    /// Per-tenant overrides.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// The critique step.
    #[serde(default)]
    pub critique: Option<RawCritique>,
}

/// A principle as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrinciple {
    /// Short identifier the judge cites.
    pub id: String,
    /// The principle in plain language.
    pub text: String,
}

/// A blocked topic as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    /// Rule name in findings, audit and errors.
    pub name: String,
    /// Phrases that identify the topic.
    pub phrases: Vec<String>,
    /// Example requests, for the critique prompt and the tests.
    #[serde(default)]
    pub examples: Vec<String>,
    /// What to do on a match; the profile's topic action when absent.
    #[serde(default)]
    pub action: Option<TopicAction>,
}

/// A tenant override as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant's profile.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// The tenant's toggle.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Topics blocked for this tenant in addition to the global ones.
    #[serde(default)]
    pub blocked_topics: Vec<RawTopic>,
    /// Scanners switched off for this tenant.
    #[serde(default)]
    pub disabled_scanners: Vec<Scanner>,
}

/// The critique section as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCritique {
    /// Judge prompts.
    #[serde(default)]
    pub input: Option<bool>,
    /// Judge completions.
    #[serde(default)]
    pub output: Option<bool>,
    /// The judge model.
    #[serde(default)]
    pub model: Option<String>,
    /// Time box of one judge call.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Failure behaviour.
    #[serde(default)]
    pub on_error: Option<OnError>,
}

/// A principle the critique step judges against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principle {
    /// Short identifier (`[a-z0-9_-]`), cited by the judge's verdict.
    pub id: String,
    /// The principle in plain language.
    pub text: String,
}

/// A blocked topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedTopic {
    /// Rule name (`[a-z0-9_]`), used in findings, audit and client errors.
    pub name: String,
    /// Phrases, matched after normalisation at word boundaries.
    pub phrases: Vec<String>,
    /// Example requests (given to the judge model and tested to match).
    pub examples: Vec<String>,
    /// The topic's own action; `None` follows the profile.
    pub action: Option<TopicAction>,
}

/// Settings that differ for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantOverride {
    /// The tenant's profile, if not the global one.
    pub profile: Option<Profile>,
    /// The tenant's toggle, if not the global one.
    pub enabled: Option<bool>,
    /// Topics blocked in addition to the global ones.
    pub blocked_topics: Vec<BlockedTopic>,
    /// Scanners that do not run for this tenant.
    pub disabled_scanners: Vec<Scanner>,
}

/// The critique step's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CritiqueConfig {
    /// Judge prompts before the model (default off: it adds a model call
    /// of latency to every turn).
    pub input: bool,
    /// Judge completions (default: on when `enabled` is on and there are
    /// principles).
    pub output: bool,
    /// The judge model, routed through the inference router; `None` uses
    /// the model of the request being judged.
    pub model: Option<String>,
    /// Time box of one judge call in milliseconds.
    pub timeout_ms: u64,
    /// Failure behaviour; `None` follows the profile (`fail_open` for
    /// permissive and standard, `fail_closed` for strict).
    pub on_error: Option<OnError>,
}

/// The default time box of a judge call.
pub const DEFAULT_CRITIQUE_TIMEOUT_MS: u64 = 3000;
/// The largest accepted time box of a judge call.
pub const MAX_CRITIQUE_TIMEOUT_MS: u64 = 60_000;

/// A validated constitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constitution {
    /// Where it was loaded from, for messages.
    pub source: String,
    /// The global toggle: when off, no scanner and no critique runs (unless
    /// a tenant override turns it on for that tenant).
    pub enabled: bool,
    /// The active profile.
    pub profile: Profile,
    /// Principles for the critique step.
    pub principles: Vec<Principle>,
    /// Topics blocked for every tenant.
    pub blocked_topics: Vec<BlockedTopic>,
    /// Per-tenant overrides, by tenant id.
    pub tenants: BTreeMap<String, TenantOverride>,
    /// The critique step.
    pub critique: CritiqueConfig,
}

impl Default for Constitution {
    /// The built-in default: scanners on with the `standard` profile, no
    /// topics, no principles and therefore no critique.
    fn default() -> Self {
        Constitution {
            source: "built-in default".to_owned(),
            enabled: true,
            profile: Profile::Standard,
            principles: Vec::new(),
            blocked_topics: Vec::new(),
            tenants: BTreeMap::new(),
            critique: CritiqueConfig {
                input: false,
                output: false,
                model: None,
                timeout_ms: DEFAULT_CRITIQUE_TIMEOUT_MS,
                on_error: None,
            },
        }
    }
}

/// Where a constitution error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or other source) name given to the loader.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// A constitution that cannot be used. Messages quote keys and names, never
/// phrases or principle texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstitutionError {
    /// Not YAML, or not the schema (unknown key, wrong type, bad enum value).
    #[error("{location}: key `{key}`: {message}; fix: {fix}")]
    Parse {
        /// File and line.
        location: Location,
        /// The dotted key path.
        key: String,
        /// What is wrong.
        message: String,
        /// What to do.
        fix: String,
    },
    /// Parsed, but a value is not acceptable.
    #[error("{location}: key `{key}`: {message}; fix: {fix}")]
    Invalid {
        /// File and line.
        location: Location,
        /// The dotted key path.
        key: String,
        /// What is wrong.
        message: String,
        /// What to do.
        fix: String,
    },
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, path: &[Seg<'_>], message: String, fix: &str) -> ConstitutionError {
        ConstitutionError::Invalid {
            location: Location {
                file: self.file.to_owned(),
                line: locate(self.text, path),
            },
            key: dotted(path),
            message,
            fix: fix.to_owned(),
        }
    }
}

fn dotted(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn is_ident(s: &str, allow_dash: bool) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (allow_dash && b == b'-')
        })
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    })
}

/// The shortest phrase (in folded bytes) a topic may use: shorter ones
/// match inside too much ordinary text.
pub const MIN_PHRASE_LEN: usize = 3;

impl Constitution {
    /// Parses and validates constitution YAML; `source` (the path) is used
    /// in error messages only. Empty text gives [`Constitution::default`].
    pub fn from_yaml(text: &str, source: &str) -> Result<Constitution, ConstitutionError> {
        let raw = parse_raw(text, source)?;
        validate(raw, &Ctx { text, file: source })
    }

    /// The topics in force for `tenant`: the global ones, then the tenant's.
    pub fn topics_for<'a>(&'a self, tenant: &str) -> impl Iterator<Item = &'a BlockedTopic> {
        let extra = self
            .tenants
            .get(tenant)
            .map(|t| t.blocked_topics.as_slice())
            .unwrap_or(&[]);
        self.blocked_topics.iter().chain(extra.iter())
    }
}

fn parse_raw(text: &str, file: &str) -> Result<RawConstitution, ConstitutionError> {
    if !has_content(text) {
        return Ok(RawConstitution::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        let line = inner.location().map(|l| l.line());
        let raw_msg = inner.to_string();
        // The parser appends " at line L column C"; the location says it.
        let message = raw_msg
            .split(" at line ")
            .next()
            .unwrap_or(&raw_msg)
            .to_owned();
        let fix = if let Some(rest) = message.strip_prefix("unknown field") {
            let expected = rest
                .split_once("expected")
                .map(|(_, e)| e.trim())
                .unwrap_or("");
            if expected.is_empty() {
                "remove the key; this section takes no keys".to_owned()
            } else {
                format!(
                    "remove the key or correct its spelling (expected {expected}); the reference constitution.yaml documents every key"
                )
            }
        } else if let Some(rest) = message.strip_prefix("unknown variant") {
            let expected = rest
                .split_once("expected")
                .map(|(_, e)| e.trim())
                .unwrap_or("one of the documented values");
            format!("use {expected}")
        } else if message.starts_with("missing field") {
            "add the missing key; the reference constitution.yaml documents every key".to_owned()
        } else if message.starts_with("invalid type") {
            "give a value of the expected type".to_owned()
        } else {
            "correct the YAML at that position".to_owned()
        };
        ConstitutionError::Parse {
            location: Location {
                file: file.to_owned(),
                line,
            },
            key: if key == "." {
                "(document)".to_owned()
            } else {
                key
            },
            message,
            fix,
        }
    })
}

fn validate_topics<'a>(
    raw: Vec<RawTopic>,
    base: &[Seg<'a>],
    taken: &BTreeSet<String>,
    ctx: &Ctx<'_>,
) -> Result<Vec<BlockedTopic>, ConstitutionError> {
    let mut seen = taken.clone();
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let at = |k: &'static str| {
            let mut p = base.to_vec();
            p.push(Seg::Index(i));
            p.push(Seg::Key(k));
            p
        };
        if !is_ident(&t.name, false) {
            return Err(ctx.invalid(
                &at("name"),
                format!("topic name `{}` is not a valid rule name", t.name.escape_debug()),
                "use 1-64 characters of a-z, 0-9 and _ (it appears in audit records and client errors)",
            ));
        }
        if !seen.insert(t.name.clone()) {
            return Err(ctx.invalid(
                &at("name"),
                format!("topic `{}` is defined twice", t.name),
                "give each topic a unique name, or merge the phrases into one topic",
            ));
        }
        if t.phrases.is_empty() {
            return Err(ctx.invalid(
                &at("phrases"),
                format!("topic `{}` has no phrases", t.name),
                "list at least one phrase that identifies the topic",
            ));
        }
        for (j, ph) in t.phrases.iter().enumerate() {
            let folded = normalize::fold_phrase(ph);
            if folded.trim().len() < MIN_PHRASE_LEN {
                let mut p = at("phrases");
                p.push(Seg::Index(j));
                return Err(ctx.invalid(
                    &p,
                    format!(
                        "phrase {j} of topic `{}` is shorter than {MIN_PHRASE_LEN} characters after normalisation",
                        t.name
                    ),
                    "use a longer, more specific phrase; short ones match inside ordinary words",
                ));
            }
        }
        out.push(BlockedTopic {
            name: t.name,
            phrases: t.phrases,
            examples: t.examples,
            action: t.action,
        });
    }
    Ok(out)
}

fn validate(raw: RawConstitution, ctx: &Ctx<'_>) -> Result<Constitution, ConstitutionError> {
    let enabled = raw.enabled.unwrap_or(true);
    let profile = raw.profile.unwrap_or_default();

    let mut principles = Vec::with_capacity(raw.principles.len());
    let mut ids = BTreeSet::new();
    for (i, p) in raw.principles.into_iter().enumerate() {
        let at = |k| [Seg::Key("principles"), Seg::Index(i), Seg::Key(k)];
        if !is_ident(&p.id, true) {
            return Err(ctx.invalid(
                &at("id"),
                format!(
                    "principle id `{}` is not a valid identifier",
                    p.id.escape_debug()
                ),
                "use 1-64 characters of a-z, 0-9, _ and - (the judge model cites it)",
            ));
        }
        if !ids.insert(p.id.clone()) {
            return Err(ctx.invalid(
                &at("id"),
                format!("principle `{}` is defined twice", p.id),
                "give each principle a unique id",
            ));
        }
        if p.text.trim().is_empty() {
            return Err(ctx.invalid(
                &at("text"),
                format!("principle `{}` has no text", p.id),
                "write the principle in one or two plain sentences",
            ));
        }
        principles.push(Principle {
            id: p.id,
            text: p.text.trim().to_owned(),
        });
    }

    let blocked_topics = validate_topics(
        raw.blocked_topics,
        &[Seg::Key("blocked_topics")],
        &BTreeSet::new(),
        ctx,
    )?;
    let global_names: BTreeSet<String> = blocked_topics.iter().map(|t| t.name.clone()).collect();

    let mut tenants = BTreeMap::new();
    for (name, t) in raw.tenants {
        // Borrow the key for the path from the map we iterate, then move.
        let key: &str = &name;
        if aibox_core::TenantId::new(key).is_err() {
            return Err(ctx.invalid(
                &[Seg::Key("tenants"), Seg::Key(key)],
                format!("`{}` is not a valid tenant id", key.escape_debug()),
                "use the tenant id exactly as the identity provider issues it (letters, digits, `-`, `_`, `.`)",
            ));
        }
        let topics = validate_topics(
            t.blocked_topics,
            &[
                Seg::Key("tenants"),
                Seg::Key(key),
                Seg::Key("blocked_topics"),
            ],
            &global_names,
            ctx,
        )?;
        let mut disabled = t.disabled_scanners;
        disabled.sort();
        disabled.dedup();
        tenants.insert(
            name.clone(),
            TenantOverride {
                profile: t.profile,
                enabled: t.enabled,
                blocked_topics: topics,
                disabled_scanners: disabled,
            },
        );
    }

    let rc = raw.critique.unwrap_or_default();
    let critique = CritiqueConfig {
        input: rc.input.unwrap_or(false),
        // Without principles there is nothing to judge against, so the
        // default follows `enabled` only when there are some; an explicit
        // `output: true` without principles is an error below.
        output: rc.output.unwrap_or(enabled && !principles.is_empty()),
        model: rc.model,
        timeout_ms: rc.timeout_ms.unwrap_or(DEFAULT_CRITIQUE_TIMEOUT_MS),
        on_error: rc.on_error,
    };
    if let Some(m) = &critique.model
        && m.trim().is_empty()
    {
        return Err(ctx.invalid(
            &[Seg::Key("critique"), Seg::Key("model")],
            "the judge model name is empty".to_owned(),
            "name a model the inference router serves, or remove the key to judge with the request's own model",
        ));
    }
    if critique.timeout_ms == 0 || critique.timeout_ms > MAX_CRITIQUE_TIMEOUT_MS {
        return Err(ctx.invalid(
            &[Seg::Key("critique"), Seg::Key("timeout_ms")],
            format!(
                "timeout_ms {} is outside 1..={MAX_CRITIQUE_TIMEOUT_MS}",
                critique.timeout_ms
            ),
            "give the judge call a time box in milliseconds, e.g. 3000",
        ));
    }
    if (critique.input || critique.output) && principles.is_empty() {
        let key = if critique.input { "input" } else { "output" };
        return Err(ctx.invalid(
            &[Seg::Key("critique")],
            format!(
                "critique.{key} is on (output defaults to `enabled`) but there are no principles to judge against"
            ),
            "add `principles`, or set `critique.input: false` and `critique.output: false`",
        ));
    }

    Ok(Constitution {
        source: ctx.file.to_owned(),
        enabled,
        profile,
        principles,
        blocked_topics,
        tenants,
        critique,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../../deploy/config/guardrail/constitution.yaml");
    const PATH: &str = "deploy/config/guardrail/constitution.yaml";

    #[test]
    fn reference_file_loads() {
        let c = Constitution::from_yaml(REFERENCE, PATH).unwrap();
        assert!(c.enabled);
        assert_eq!(c.profile, Profile::Standard);
        assert!(c.principles.len() >= 4);
        assert!(c.blocked_topics.len() >= 3);
        assert!(!c.critique.input, "input critique is off by default");
        assert!(c.critique.output, "output critique follows `enabled`");
        assert!(!c.tenants.is_empty());
    }

    #[test]
    fn empty_text_is_the_default() {
        let c = Constitution::from_yaml("# nothing\n", "x.yaml").unwrap();
        assert_eq!(c.profile, Profile::Standard);
        assert!(c.enabled);
        assert!(!c.critique.output);
    }

    #[test]
    fn output_critique_follows_enabled() {
        let y = "enabled: false\nprinciples:\n  - id: p\n    text: Be kind.\n";
        let c = Constitution::from_yaml(y, "x.yaml").unwrap();
        assert!(!c.critique.output);
        let c = Constitution::from_yaml("profile: strict\n", "x.yaml").unwrap();
        assert!(!c.critique.output, "no principles, no default critique");
        let y = "principles:\n  - id: p\n    text: Be kind.\n";
        let c = Constitution::from_yaml(y, "x.yaml").unwrap();
        assert!(c.critique.output);
    }

    fn err(y: &str) -> String {
        Constitution::from_yaml(y, "c.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_line_key_and_fix() {
        // Table: YAML, expected substrings of the message.
        let cases: &[(&str, &[&str])] = &[
            (
                "profil: strict\n",
                &["c.yaml:1", "profil", "fix:", "expected"],
            ),
            (
                "profile: paranoid\n",
                &["c.yaml:1", "`profile`", "paranoid", "permissive"],
            ),
            (
                "enabled: true\nblocked_topics:\n  - name: Bad Name\n    phrases: [abc]\n",
                &["c.yaml:3", "blocked_topics[0].name", "a-z"],
            ),
            (
                "blocked_topics:\n  - name: a\n    phrases: [abcd]\n  - name: a\n    phrases: [efgh]\n",
                &["c.yaml:4", "blocked_topics[1].name", "twice"],
            ),
            (
                "blocked_topics:\n  - name: a\n    phrases:\n      - ok phrase\n      - \"x\"\n",
                &["c.yaml:5", "blocked_topics[0].phrases[1]", "longer"],
            ),
            (
                "blocked_topics:\n  - name: a\n    phrases: []\n",
                &["c.yaml:3", "no phrases"],
            ),
            (
                "principles:\n  - id: p1\n    text: a\n  - id: p1\n    text: b\n",
                &["c.yaml:4", "principles[1].id", "twice"],
            ),
            (
                "principles:\n  - id: p1\n    text: a\ncritique:\n  timeout_ms: 0\n",
                &["c.yaml:5", "critique.timeout_ms", "milliseconds"],
            ),
            (
                "critique:\n  output: true\n",
                &["c.yaml:1", "no principles", "critique.output: false"],
            ),
            (
                "tenants:\n  acme:\n    disabled_scanners: [pii, secret]\n",
                &["c.yaml:3", "secret", "prompt_injection"],
            ),
            (
                "tenants:\n  \"a b\":\n    profile: strict\n",
                &["c.yaml:2", "tenant id"],
            ),
            (
                "blocked_topics:\n  - name: a\n    phrases: [abcd]\ntenants:\n  acme:\n    blocked_topics:\n      - name: a\n        phrases: [efgh]\n",
                &["c.yaml:7", "tenants.acme.blocked_topics[0].name", "twice"],
            ),
            ("enabled: [\n", &["c.yaml", "fix:"]),
        ];
        for (yaml, needles) in cases {
            let msg = err(yaml);
            for n in *needles {
                assert!(msg.contains(n), "{msg:?} lacks {n:?} (yaml {yaml:?})");
            }
        }
    }

    #[test]
    fn tenant_overrides_are_kept() {
        let y = "blocked_topics:\n  - name: g\n    phrases: [global thing]\ntenants:\n  bank:\n    profile: strict\n    enabled: true\n    disabled_scanners: [topic, pii, pii]\n    blocked_topics:\n      - name: t\n        phrases: [tenant thing]\n        action: flag\n";
        let c = Constitution::from_yaml(y, "c.yaml").unwrap();
        let t = &c.tenants["bank"];
        assert_eq!(t.profile, Some(Profile::Strict));
        assert_eq!(t.disabled_scanners, vec![Scanner::Pii, Scanner::Topic]);
        assert_eq!(t.blocked_topics[0].action, Some(TopicAction::Flag));
        let names: Vec<_> = c.topics_for("bank").map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["g", "t"]);
        let names: Vec<_> = c.topics_for("other").map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["g"]);
    }
}
