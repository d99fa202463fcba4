//! Findings: what a scanner matched, where, and what the profile does about it.
//!
//! A finding carries byte offsets into the *original* text (so redaction can
//! replace exactly the matched bytes) but never the matched text itself:
//! whatever leaves this crate towards logs and the audit log is built from
//! scanner and rule names and counts only.

use std::borrow::Cow;
use std::fmt;

use aibox_core::audit::GuardAction;
use serde::{Deserialize, Serialize};

/// The scanners of the guardrail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scanner {
    /// Personal data: e-mail, phone, card, IBAN, SSN, IP addresses.
    Pii,
    /// Credentials: API keys, tokens, private keys, passwords in assignments.
    Secrets,
    /// Prompt injection and jailbreak attempts, scored.
    PromptInjection,
    /// Blocked topics of the constitution.
    Topic,
}

impl Scanner {
    /// Every scanner, in the order the profile tables list them.
    pub const ALL: [Scanner; 4] = [
        Scanner::Pii,
        Scanner::Secrets,
        Scanner::PromptInjection,
        Scanner::Topic,
    ];

    /// The name used in the constitution, the audit log and client errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Scanner::Pii => "pii",
            Scanner::Secrets => "secrets",
            Scanner::PromptInjection => "prompt_injection",
            Scanner::Topic => "topic",
        }
    }

    /// Parses a scanner name as written in the constitution.
    pub fn parse(name: &str) -> Option<Scanner> {
        Scanner::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One match of one rule of one scanner.
///
/// `start..end` are byte offsets into the scanned (original) text and always
/// fall on character boundaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The scanner that matched.
    pub scanner: Scanner,
    /// The rule within the scanner (`email`, `aws_access_key_id`, a topic
    /// name, ...). Static for built-in rules, owned for constitution topics.
    pub rule: Cow<'static, str>,
    /// Start byte offset in the original text.
    pub start: usize,
    /// End byte offset (exclusive) in the original text.
    pub end: usize,
    /// Confidence or weight in `[0, 1]`; for prompt injection the rule's
    /// weight in the combined score, for the other scanners 1.0 for validated
    /// matches (checksums, formats) and lower for context-dependent ones.
    pub score: f32,
    /// What the active profile does with this finding at this stage.
    /// `Allow` means recorded only (for example an injection signal below the
    /// profile's threshold).
    pub action: GuardAction,
}

impl Finding {
    /// The scanner name as a string (`pii`, `secrets`, ...).
    pub fn scanner_name(&self) -> &'static str {
        self.scanner.as_str()
    }
}

/// Orders actions by severity: allow < flag < redact < block.
pub fn severity(a: GuardAction) -> u8 {
    match a {
        GuardAction::Allow => 0,
        GuardAction::Flag => 1,
        GuardAction::Redact => 2,
        GuardAction::Block => 3,
    }
}

/// The more severe of two actions.
pub fn max_action(a: GuardAction, b: GuardAction) -> GuardAction {
    if severity(b) > severity(a) { b } else { a }
}

/// The lower-case name of an action as the audit log and profile tables
/// write it.
pub fn action_name(a: GuardAction) -> &'static str {
    match a {
        GuardAction::Allow => "allow",
        GuardAction::Flag => "flag",
        GuardAction::Redact => "redact",
        GuardAction::Block => "block",
    }
}

/// The lower-case name of a stage as the audit log writes it.
pub fn stage_name(s: aibox_core::audit::GuardStage) -> &'static str {
    use aibox_core::audit::GuardStage;
    match s {
        GuardStage::Input => "input",
        GuardStage::Output => "output",
        GuardStage::ToolArguments => "tool_arguments",
        GuardStage::ToolResult => "tool_result",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn scanner_names_round_trip() {
        for s in Scanner::ALL {
            assert_eq!(Scanner::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scanner::parse("PII"), None);
        assert_eq!(Scanner::parse("secret"), None);
    }

    #[test]
    fn severity_orders_actions() {
        assert_eq!(
            max_action(GuardAction::Flag, GuardAction::Redact),
            GuardAction::Redact
        );
        assert_eq!(
            max_action(GuardAction::Block, GuardAction::Redact),
            GuardAction::Block
        );
        assert_eq!(
            max_action(GuardAction::Allow, GuardAction::Allow),
            GuardAction::Allow
        );
    }
}
