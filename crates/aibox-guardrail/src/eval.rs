//! Precision and recall of each scanner under each profile, over a labelled
//! corpus.
//!
//! The corpus (`corpus/*.jsonl`, see its README) has one JSON object per
//! line: `{"id", "text", "labels": [scanner names], "source"}` and
//! optionally `"stage"` (`input` by default; `tool_result` for indirect
//! injection in documents) and `"tenant"`. Texts may contain `⟦ALPHABET:N⟧`
//! templates for credentials, expanded by [`crate::synth::expand`] seeded by
//! the entry's id.
//!
//! A scanner *detects* an entry under a profile when the verdict holds a
//! finding of that scanner with an action other than `allow`: personal data
//! flagged or redacted, a secret redacted or blocked, an injection score at
//! or above the profile's threshold, a topic matched. That is what the
//! profile would do to real traffic, so the figures are per profile.

use std::collections::BTreeMap;
use std::fmt;

use aibox_core::audit::{GuardAction, GuardStage};
use serde::Deserialize;

use crate::engine::Guardrail;
use crate::finding::Scanner;
use crate::profile::Profile;
use crate::synth;

/// The corpus files, embedded (so evaluating needs no file access).
pub const CORPUS: &[&str] = &[
    include_str!("../corpus/benign.jsonl"),
    include_str!("../corpus/pii.jsonl"),
    include_str!("../corpus/secrets.jsonl"),
    include_str!("../corpus/injection.jsonl"),
    include_str!("../corpus/jailbreak.jsonl"),
    include_str!("../corpus/topics.jsonl"),
    include_str!("../corpus/mixed.jsonl"),
];

/// Entries written after the rules were tuned on [`CORPUS`], kept apart so
/// their figures show how the rules generalise.
pub const HOLDOUT: &str = include_str!("../corpus/holdout.jsonl");

/// The reference constitution the corpus is labelled against.
pub const REFERENCE_CONSTITUTION: &str =
    include_str!("../../../deploy/config/guardrail/constitution.yaml");

/// One corpus entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Unique id.
    pub id: String,
    /// The text (may hold `⟦ALPHABET:N⟧` templates).
    pub text: String,
    /// Scanners that must detect it.
    pub labels: Vec<Scanner>,
    /// Where the text comes from.
    pub source: String,
    /// The stage it is scanned at.
    #[serde(default)]
    pub stage: Option<GuardStage>,
    /// The tenant it is scanned for.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A corpus line that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Not an entry.
    #[error(
        "corpus line {line}: {reason}; fix: write one JSON object per line with id, text, labels and source"
    )]
    Line {
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// Two entries share an id.
    #[error("corpus line {line}: id `{id}` is used twice; fix: give every entry a unique id")]
    DuplicateId {
        /// 1-based line.
        line: usize,
        /// The id.
        id: String,
    },
}

/// Parses corpus text (JSON lines; blank lines and `#` comments skipped).
pub fn parse(corpus: &str) -> Result<Vec<Entry>, EvalError> {
    let mut out: Vec<Entry> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, line) in corpus.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let e: Entry = serde_json::from_str(t).map_err(|e| EvalError::Line {
            line: i + 1,
            reason: e.to_string(),
        })?;
        if !ids.insert(e.id.clone()) {
            return Err(EvalError::DuplicateId {
                line: i + 1,
                id: e.id,
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// The text of an entry with its templates expanded.
pub fn expanded_text(e: &Entry) -> String {
    // FNV-1a of the id: a stable seed per entry.
    let seed = e.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    synth::expand(&e.text, seed)
}

/// Confusion counts of one scanner under one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Labelled and detected.
    pub tp: u32,
    /// Detected, not labelled.
    pub fp: u32,
    /// Labelled, not detected.
    pub fn_: u32,
    /// Neither.
    pub tn: u32,
}

impl Counts {
    /// `tp / (tp + fp)`, 1.0 when nothing was detected.
    pub fn precision(&self) -> f64 {
        let d = self.tp + self.fp;
        if d == 0 {
            1.0
        } else {
            f64::from(self.tp) / f64::from(d)
        }
    }

    /// `tp / (tp + fn)`, 1.0 when nothing is labelled.
    pub fn recall(&self) -> f64 {
        let d = self.tp + self.fn_;
        if d == 0 {
            1.0
        } else {
            f64::from(self.tp) / f64::from(d)
        }
    }
}

/// A miss or a false alarm, for debugging the corpus or the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The profile.
    pub profile: Profile,
    /// The scanner.
    pub scanner: Scanner,
    /// The entry id.
    pub id: String,
    /// `true` for a false positive, `false` for a false negative.
    pub false_positive: bool,
}

/// The evaluation result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Entries evaluated.
    pub entries: usize,
    /// Counts by profile and scanner.
    pub counts: BTreeMap<(u8, Scanner), Counts>,
    /// Every miss and false alarm.
    pub errors: Vec<Error>,
}

fn profile_key(p: Profile) -> u8 {
    match p {
        Profile::Permissive => 0,
        Profile::Standard => 1,
        Profile::Strict => 2,
    }
}

fn key_profile(k: u8) -> Profile {
    match k {
        0 => Profile::Permissive,
        1 => Profile::Standard,
        _ => Profile::Strict,
    }
}

impl Report {
    /// The counts of one scanner under one profile.
    pub fn get(&self, profile: Profile, scanner: Scanner) -> Counts {
        self.counts
            .get(&(profile_key(profile), scanner))
            .copied()
            .unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} entries", self.entries)?;
        writeln!(
            f,
            "{:<11} {:<17} {:>5} {:>5} {:>5} {:>5} {:>9} {:>7}",
            "profile", "scanner", "tp", "fp", "fn", "tn", "precision", "recall"
        )?;
        for (&(p, s), c) in &self.counts {
            writeln!(
                f,
                "{:<11} {:<17} {:>5} {:>5} {:>5} {:>5} {:>9.3} {:>7.3}",
                key_profile(p).as_str(),
                s.as_str(),
                c.tp,
                c.fp,
                c.fn_,
                c.tn,
                c.precision(),
                c.recall()
            )?;
        }
        Ok(())
    }
}

/// Evaluates `guardrail` on `corpus` under each of `profiles`.
pub fn run(corpus: &str, guardrail: &Guardrail, profiles: &[Profile]) -> Result<Report, EvalError> {
    let entries = parse(corpus)?;
    let mut report = Report {
        entries: entries.len(),
        ..Report::default()
    };
    for e in &entries {
        let text = expanded_text(e);
        let stage = e.stage.unwrap_or(GuardStage::Input);
        let tenant = e.tenant.as_deref().unwrap_or("eval");
        for &p in profiles {
            let v = guardrail.scan_as(tenant, p, stage, &text);
            for s in Scanner::ALL {
                let detected = v
                    .findings
                    .iter()
                    .any(|f| f.scanner == s && f.action != GuardAction::Allow);
                let labelled = e.labels.contains(&s);
                let c = report.counts.entry((profile_key(p), s)).or_default();
                match (labelled, detected) {
                    (true, true) => c.tp += 1,
                    (false, true) => c.fp += 1,
                    (true, false) => c.fn_ += 1,
                    (false, false) => c.tn += 1,
                }
                if labelled != detected {
                    report.errors.push(Error {
                        profile: p,
                        scanner: s,
                        id: e.id.clone(),
                        false_positive: detected,
                    });
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::constitution::Constitution;

    const REFERENCE: &str = include_str!("../../../deploy/config/guardrail/constitution.yaml");

    #[test]
    fn parse_rejects_bad_lines() {
        assert!(parse("{\"id\":\"a\"}").is_err());
        let two = "{\"id\":\"a\",\"text\":\"x\",\"labels\":[],\"source\":\"s\"}\n";
        assert!(matches!(
            parse(&format!("{two}{two}")),
            Err(EvalError::DuplicateId { line: 2, .. })
        ));
        let bad_label = "{\"id\":\"a\",\"text\":\"x\",\"labels\":[\"secret\"],\"source\":\"s\"}";
        assert!(parse(bad_label).is_err());
    }

    #[test]
    fn a_tiny_corpus_counts_right() {
        let corpus = r#"
# comment
{"id":"p1","text":"mail a@example.org","labels":["pii"],"source":"test"}
{"id":"b1","text":"hello world","labels":[],"source":"test"}
{"id":"s1","text":"key ghp_⟦a62:36⟧","labels":["secrets"],"source":"test"}
"#;
        let g = Guardrail::new(&Constitution::from_yaml(REFERENCE, "c").unwrap()).unwrap();
        let r = run(corpus, &g, &[Profile::Standard]).unwrap();
        assert_eq!(r.entries, 3);
        let pii = r.get(Profile::Standard, Scanner::Pii);
        assert_eq!((pii.tp, pii.fp, pii.fn_, pii.tn), (1, 0, 0, 2));
        let sec = r.get(Profile::Standard, Scanner::Secrets);
        assert_eq!((sec.tp, sec.fp, sec.fn_, sec.tn), (1, 0, 0, 2));
        let shown = r.to_string();
        assert!(shown.contains("standard") && shown.contains("precision"));
    }
}
