//! Redaction with stable placeholders, and restore, within one turn.
//!
//! A [`TurnVault`] lives for one turn (one request and its answer). Each
//! redacted value gets a placeholder named after its kind and numbered in
//! order of first appearance: `[EMAIL_1]`, `[EMAIL_2]`, `[PHONE_1]`,
//! `[SECRET_1]`. The same value always gets the same placeholder within the
//! turn, so the model can still tell that two mentions are one person.
//!
//! [`TurnVault::restore`] puts values back into the model's answer for the
//! same user (as LLM Guard's Vault and Deanonymize do), but only values that
//! the user supplied in the prompt (stage `input`). Values redacted from a
//! tool result or from the model's own output are never restored: the user
//! was not shown them, and restoring would leak what the redaction was for.
//!
//! Values are kept in zeroizing buffers that are wiped when the vault is
//! dropped; `Debug` prints counts only. The vault is never serialised: it
//! must not reach logs or the audit log.

use std::collections::HashMap;
use std::fmt;

use aibox_core::audit::{GuardAction, GuardStage};
use zeroize::Zeroizing;

use crate::engine::Verdict;
use crate::finding::{Finding, Scanner};

struct Entry {
    placeholder: String,
    label: &'static str,
    value: Zeroizing<String>,
    restorable: bool,
}

/// The per-turn store of redacted values.
#[derive(Default)]
pub struct TurnVault {
    entries: Vec<Entry>,
    by_placeholder: HashMap<String, usize>,
}

impl fmt::Debug for TurnVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnVault")
            .field("values", &self.entries.len())
            .field(
                "restorable",
                &self.entries.iter().filter(|e| e.restorable).count(),
            )
            .finish()
    }
}

/// The placeholder label of a finding's rule.
pub fn label(scanner: Scanner, rule: &str) -> &'static str {
    match (scanner, rule) {
        (Scanner::Pii, "email") => "EMAIL",
        (Scanner::Pii, "phone_number") => "PHONE",
        (Scanner::Pii, "credit_card") => "CREDIT_CARD",
        (Scanner::Pii, "iban") => "IBAN",
        (Scanner::Pii, "us_ssn") => "SSN",
        (Scanner::Pii, "ipv4_address" | "ipv6_address") => "IP_ADDRESS",
        (Scanner::Pii, _) => "PII",
        (Scanner::Secrets, _) => "SECRET",
        (Scanner::Topic, _) => "TOPIC",
        (Scanner::PromptInjection, _) => "REDACTED",
    }
}

/// Longest placeholder the restore step looks for.
const MAX_PLACEHOLDER: usize = 32;

impl TurnVault {
    /// An empty vault.
    pub fn new() -> TurnVault {
        TurnVault::default()
    }

    /// How many distinct values the vault holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the vault holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces the findings of `verdict` whose action is `redact` with
    /// their placeholders. `text` must be the text the verdict was made on.
    pub fn redact(&mut self, text: &str, verdict: &Verdict) -> String {
        self.redact_findings(text, &verdict.findings, 0, verdict.stage)
    }

    /// Replaces redact-action findings whose offsets, minus `offset`, fall
    /// inside `text`. Used by the stream scanner on released segments.
    pub(crate) fn redact_findings(
        &mut self,
        text: &str,
        findings: &[Finding],
        offset: usize,
        stage: GuardStage,
    ) -> String {
        let mut spans: Vec<(usize, usize, &'static str)> = findings
            .iter()
            .filter(|f| f.action == GuardAction::Redact)
            .filter_map(|f| {
                let s = f.start.checked_sub(offset)?;
                let e = f.end.checked_sub(offset)?;
                (e <= text.len() && s < e && text.is_char_boundary(s) && text.is_char_boundary(e))
                    .then_some((s, e, label(f.scanner, &f.rule)))
            })
            .collect();
        if spans.is_empty() {
            return text.to_owned();
        }
        spans.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
        let restorable = stage == GuardStage::Input;
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e, lab) in spans {
            if s < at {
                continue; // overlaps the previous redaction
            }
            out.push_str(&text[at..s]);
            let ph = self.placeholder_for(lab, &text[s..e], restorable);
            out.push_str(&ph);
            at = e;
        }
        out.push_str(&text[at..]);
        out
    }

    fn placeholder_for(&mut self, label: &'static str, value: &str, restorable: bool) -> String {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.label == label && e.value.as_str() == value)
        {
            e.restorable |= restorable;
            return e.placeholder.clone();
        }
        let n = self.entries.iter().filter(|e| e.label == label).count() + 1;
        let placeholder = format!("[{label}_{n}]");
        self.by_placeholder
            .insert(placeholder.clone(), self.entries.len());
        self.entries.push(Entry {
            placeholder: placeholder.clone(),
            label,
            value: Zeroizing::new(value.to_owned()),
            restorable,
        });
        placeholder
    }

    /// Puts back the values of restorable placeholders (those redacted from
    /// the user's own prompt); other placeholders stay as they are.
    pub fn restore(&self, text: &str) -> String {
        if self.entries.iter().all(|e| !e.restorable) {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            let close = tail
                .as_bytes()
                .iter()
                .take(MAX_PLACEHOLDER)
                .position(|&b| b == b']');
            if let Some(c) = close
                && let Some(&i) = self.by_placeholder.get(&tail[..=c])
                && self.entries[i].restorable
            {
                out.push_str(&self.entries[i].value);
                rest = &tail[c + 1..];
                continue;
            }
            out.push('[');
            rest = &tail[1..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::engine::Guardrail;
    use crate::profile::Profile;

    fn scan(stage: GuardStage, text: &str) -> Verdict {
        Guardrail::default_standard()
            .unwrap()
            .scan_as("t", Profile::Strict, stage, text)
    }

    #[test]
    fn placeholders_are_stable_within_a_turn() {
        let text = "alice@example.org wrote to bob@example.org, then alice@example.org again; call +49 30 1234567";
        let v = scan(GuardStage::Input, text);
        let mut vault = TurnVault::new();
        let red = vault.redact(text, &v);
        assert_eq!(
            red,
            "[EMAIL_1] wrote to [EMAIL_2], then [EMAIL_1] again; call [PHONE_1]"
        );
        assert_eq!(vault.len(), 3);
        // A second message of the same turn reuses the numbering.
        let text2 = "and cc bob@example.org and carol@example.org";
        let v2 = scan(GuardStage::Input, text2);
        assert_eq!(vault.redact(text2, &v2), "and cc [EMAIL_2] and [EMAIL_3]");
    }

    #[test]
    fn restore_puts_back_only_the_users_own_values() {
        let mut vault = TurnVault::new();
        let prompt = "My email is jane@example.org.";
        let red = vault.redact(prompt, &scan(GuardStage::Input, prompt));
        assert_eq!(red, "My email is [EMAIL_1].");
        let tool = "Customer record: sam@example.org";
        let red_tool = vault.redact(tool, &scan(GuardStage::ToolResult, tool));
        assert_eq!(red_tool, "Customer record: [EMAIL_2]");
        let answer = "I will write to [EMAIL_1] and not to [EMAIL_2] or [EMAIL_9] [x";
        assert_eq!(
            vault.restore(answer),
            "I will write to jane@example.org and not to [EMAIL_2] or [EMAIL_9] [x"
        );
    }

    #[test]
    fn debug_never_prints_values() {
        let mut vault = TurnVault::new();
        let prompt = "reach me at jane@example.org";
        vault.redact(prompt, &scan(GuardStage::Input, prompt));
        let dbg = format!("{vault:?}");
        assert!(!dbg.contains("jane"), "{dbg}");
        assert!(dbg.contains("values: 1"), "{dbg}");
    }

    #[test]
    fn nothing_to_redact_returns_the_text() {
        let mut vault = TurnVault::new();
        let t = "nothing here";
        assert_eq!(vault.redact(t, &scan(GuardStage::Input, t)), t);
        assert!(vault.is_empty());
        assert_eq!(vault.restore("[EMAIL_1]"), "[EMAIL_1]");
    }
}
