//! Blocked topics of the constitution, matched after normalisation.
//!
//! Phrases are folded like texts (case, compatibility forms, homoglyphs,
//! zero-width characters, leetspeak, separated letters; see
//! [`crate::normalize`]) and found in the engine's one keyword pass over the
//! folded text, shared with the other scanners' keywords. A match counts at
//! word boundaries only (`kill` is not in `skill`), with a plural `s`
//! allowed (`pipe bombs` matches `pipe bomb`); phrases that start or end
//! with a non-ASCII character (Chinese, Japanese) skip the boundary check,
//! as those scripts do not separate words with spaces.

use std::borrow::Cow;

use aibox_core::audit::GuardAction;

use crate::constitution::{BlockedTopic, TopicAction};
use crate::finding::{Finding, Scanner};
use crate::normalize::{self, Normalized};

/// One topic, compiled.
#[derive(Debug, Clone)]
pub struct TopicEntry {
    /// The topic's name (the rule of its findings).
    pub name: String,
    /// The topic's own action, if it sets one.
    pub action: Option<TopicAction>,
    /// The folded phrases.
    pub phrases: Vec<String>,
}

/// The topics in force for one tenant.
#[derive(Debug, Clone, Default)]
pub struct TopicSet {
    /// The topics, global first.
    pub topics: Vec<TopicEntry>,
}

impl TopicSet {
    /// Compiles topics (folds their phrases).
    pub fn new<'a>(topics: impl IntoIterator<Item = &'a BlockedTopic>) -> TopicSet {
        TopicSet {
            topics: topics
                .into_iter()
                .map(|t| TopicEntry {
                    name: t.name.clone(),
                    action: t.action,
                    phrases: t
                        .phrases
                        .iter()
                        .map(|p| normalize::fold_phrase(p).trim().to_owned())
                        .filter(|p| !p.is_empty())
                        .collect(),
                })
                .collect(),
        }
    }

    /// Every (folded phrase, topic index), for the combined keyword index.
    pub fn phrases(&self) -> impl Iterator<Item = (&str, usize)> {
        self.topics
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.phrases.iter().map(move |p| (p.as_str(), i)))
    }

    /// Checks a phrase match at folded `span` (start, end) for word
    /// boundaries and pushes a finding (action: the topic's own, else
    /// `profile_action`).
    pub fn verify(
        &self,
        topic: usize,
        original: &str,
        norm: &Normalized,
        span: (usize, usize),
        profile_action: GuardAction,
        out: &mut Vec<Finding>,
    ) {
        let (start, end) = span;
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        let f = norm.text.as_bytes();
        let phrase = &norm.text[start..end];
        let first_ascii = phrase
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        let last_ascii = phrase
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        let word = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80;
        if first_ascii && start > 0 && word(f[start - 1]) {
            return;
        }
        let mut e = end;
        if last_ascii && e < f.len() && word(f[e]) {
            // A plural `s` or `es` is still the phrase.
            let plural = if f[e] == b's' {
                1
            } else if f[e] == b'e' && f.get(e + 1) == Some(&b's') {
                2
            } else {
                0
            };
            if plural == 0 || f.get(e + plural).is_some_and(|&b| word(b)) {
                return;
            }
            e += plural;
        }
        let (s, oe) = norm.original_span(original, start, e);
        out.push(Finding {
            scanner: Scanner::Topic,
            rule: Cow::Owned(t.name.clone()),
            start: s,
            end: oe,
            score: 1.0,
            action: t.action.map_or(profile_action, TopicAction::guard_action),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use aho_corasick::AhoCorasick;

    fn scan(phrases: &[&str], text: &str) -> Vec<String> {
        let topic = BlockedTopic {
            name: "t".into(),
            phrases: phrases.iter().map(|p| p.to_string()).collect(),
            examples: vec![],
            action: None,
        };
        let set = TopicSet::new([&topic]);
        let lits: Vec<(&str, usize)> = set.phrases().collect();
        let ac = AhoCorasick::new(lits.iter().map(|(p, _)| *p)).unwrap();
        let norm = normalize::normalize(text);
        let mut out = Vec::new();
        for m in ac.find_overlapping_iter(&norm.text) {
            set.verify(
                lits[m.pattern().as_usize()].1,
                text,
                &norm,
                (m.start(), m.end()),
                GuardAction::Block,
                &mut out,
            );
        }
        out.iter()
            .map(|f| text[f.start..f.end].to_owned())
            .collect()
    }

    #[test]
    fn phrases_match_after_normalisation() {
        let p = &["pipe bomb", "nerve agent", "炸弹"];
        // Table: text, expected matched original spans.
        let cases: &[(&str, &[&str])] = &[
            ("how to build a pipe bomb", &["pipe bomb"]),
            ("PIPE BOMBS at home", &["PIPE BOMBS"]),
            ("ｐｉｐｅ ｂｏｍｂ", &["ｐｉｐｅ ｂｏｍｂ"]),
            ("pi\u{200B}pe bo\u{200B}mb", &["pi\u{200B}pe bo\u{200B}mb"]),
            ("p1pe b0mb", &["p1pe b0mb"]),
            ("n.e.r.v.e agent", &["n.e.r.v.e agent"]),
            ("如何制作炸弹", &["炸弹"]),
            ("the pipe bombastic review", &[]),
            ("a nerve agentic workflow", &[]),
            ("unnerve agent", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(scan(p, text), *want, "text {text:?}");
        }
    }
}
