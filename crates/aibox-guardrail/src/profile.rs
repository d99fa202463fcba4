//! Scanner profiles: `permissive`, `standard` (the default) and `strict`.
//!
//! A profile is a table: for each scanner and each stage of a turn, the
//! action taken on a finding (`block`, `redact`, `flag`, or `allow` for a
//! scanner that is off at that stage), plus the prompt-injection score
//! threshold, the stream hold-back window and the critique's default
//! behaviour when the judge model fails.
//!
//! Stages come in two groups. *Input* is what goes towards the model or a
//! tool on behalf of the client: the prompt and the arguments of tool
//! calls. *Output* is what comes back: completions and tool results.
//! Indirect prompt injection arrives in tool results (a web page, a file, an
//! e-mail the tool read), which is why `standard` blocks injection there as
//! on the prompt, while a completion that merely *talks about* injection is
//! only flagged.
//!
//! The tables are the single source of truth: [`profile_table_markdown`]
//! renders them for the README, and a test checks the README against it.

use std::fmt;

use aibox_core::audit::{GuardAction, GuardStage};
use serde::{Deserialize, Serialize};

use crate::constitution::OnError;
use crate::finding::{Scanner, action_name};

/// A scanner profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Flags personal data, redacts secrets, blocks only clear injection.
    /// For trusted internal users and development.
    Permissive,
    /// The default: redacts personal data on the way in, blocks secrets
    /// and injection in prompts and tool results, redacts secrets in
    /// answers.
    #[default]
    Standard,
    /// For regulated or externally exposed deployments: redacts personal
    /// data everywhere, blocks secrets and injection everywhere, fails
    /// closed when the critique model fails, and releases streamed text
    /// only once it has been scanned in full context.
    Strict,
}

/// The actions of one scanner at the four stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageActions {
    /// On the prompt.
    pub input: GuardAction,
    /// On the arguments of a tool call.
    pub tool_arguments: GuardAction,
    /// On a completion.
    pub output: GuardAction,
    /// On the result of a tool call.
    pub tool_result: GuardAction,
}

impl StageActions {
    /// The action at one stage.
    pub fn at(&self, stage: GuardStage) -> GuardAction {
        match stage {
            GuardStage::Input => self.input,
            GuardStage::ToolArguments => self.tool_arguments,
            GuardStage::Output => self.output,
            GuardStage::ToolResult => self.tool_result,
        }
    }
}

/// The whole table of one profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileTable {
    /// Personal data.
    pub pii: StageActions,
    /// Credentials.
    pub secrets: StageActions,
    /// Prompt injection, applied when the combined score reaches
    /// `injection_threshold`.
    pub prompt_injection: StageActions,
    /// Blocked topics; a topic's own `action` in the constitution wins.
    pub topic: StageActions,
    /// The prompt-injection score (in `[0, 1]`) at or above which the
    /// injection actions apply.
    pub injection_threshold: f32,
    /// Bytes of a streamed completion held back after the newest byte.
    pub stream_holdback: usize,
    /// Whether streamed text is released only at token boundaries and
    /// after unbounded constructs (PEM blocks, long tokens) are complete.
    pub stream_release_scanned_only: bool,
    /// What the critique step does when the judge model fails, unless the
    /// constitution sets `critique.on_error`.
    pub critique_on_error: OnError,
}

impl ProfileTable {
    /// The actions of one scanner.
    pub fn scanner(&self, s: Scanner) -> &StageActions {
        match s {
            Scanner::Pii => &self.pii,
            Scanner::Secrets => &self.secrets,
            Scanner::PromptInjection => &self.prompt_injection,
            Scanner::Topic => &self.topic,
        }
    }
}

use GuardAction::{Block, Flag, Redact};

const fn row(
    input: GuardAction,
    tool_arguments: GuardAction,
    output: GuardAction,
    tool_result: GuardAction,
) -> StageActions {
    StageActions {
        input,
        tool_arguments,
        output,
        tool_result,
    }
}

/// Longest bounded match any rule can produce, plus margin. The longest
/// fixed-format credential (an Atlassian API token) is 192 bytes and an
/// e-mail address is at most 254; PEM blocks and JWTs are unbounded and
/// handled by holding whitespace-free runs and open findings.
const HOLDBACK_STANDARD: usize = 256;
/// Strict holds back longer so that context-dependent rules (phone-number
/// keywords, injection phrases spread over a sentence) see their context
/// before anything is released.
const HOLDBACK_STRICT: usize = 1024;

const PERMISSIVE: ProfileTable = ProfileTable {
    pii: row(Flag, Flag, Flag, Flag),
    secrets: row(Redact, Redact, Redact, Redact),
    prompt_injection: row(Block, Flag, Flag, Flag),
    topic: row(Block, Flag, Flag, Flag),
    injection_threshold: 0.85,
    stream_holdback: HOLDBACK_STANDARD,
    stream_release_scanned_only: false,
    critique_on_error: OnError::FailOpen,
};

const STANDARD: ProfileTable = ProfileTable {
    pii: row(Redact, Flag, Flag, Redact),
    secrets: row(Block, Block, Redact, Redact),
    prompt_injection: row(Block, Flag, Flag, Block),
    topic: row(Block, Flag, Block, Flag),
    injection_threshold: 0.7,
    stream_holdback: HOLDBACK_STANDARD,
    stream_release_scanned_only: false,
    critique_on_error: OnError::FailOpen,
};

const STRICT: ProfileTable = ProfileTable {
    pii: row(Redact, Redact, Redact, Redact),
    secrets: row(Block, Block, Block, Block),
    prompt_injection: row(Block, Block, Block, Block),
    topic: row(Block, Block, Block, Block),
    injection_threshold: 0.5,
    stream_holdback: HOLDBACK_STRICT,
    stream_release_scanned_only: true,
    critique_on_error: OnError::FailClosed,
};

impl Profile {
    /// Every profile, from most lenient to strictest.
    pub const ALL: [Profile; 3] = [Profile::Permissive, Profile::Standard, Profile::Strict];

    /// The profile's table.
    pub fn table(self) -> &'static ProfileTable {
        match self {
            Profile::Permissive => &PERMISSIVE,
            Profile::Standard => &STANDARD,
            Profile::Strict => &STRICT,
        }
    }

    /// The action of `scanner` at `stage`.
    pub fn action(self, scanner: Scanner, stage: GuardStage) -> GuardAction {
        self.table().scanner(scanner).at(stage)
    }

    /// The name used in the constitution and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Permissive => "permissive",
            Profile::Standard => "standard",
            Profile::Strict => "strict",
        }
    }

    /// Parses a profile name.
    pub fn parse(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn on_error_name(o: OnError) -> &'static str {
    match o {
        OnError::FailOpen => "fail_open",
        OnError::FailClosed => "fail_closed",
    }
}

/// Renders every profile's table as Markdown, for the README (a test keeps
/// the two in step).
pub fn profile_table_markdown() -> String {
    let mut out = String::new();
    for p in Profile::ALL {
        let t = p.table();
        out.push_str(&format!("#### `{p}`\n\n"));
        out.push_str(
            "| scanner | input (prompt) | tool arguments | output (completion) | tool result |\n",
        );
        out.push_str("|---|---|---|---|---|\n");
        for s in Scanner::ALL {
            let a = t.scanner(s);
            let name = if s == Scanner::PromptInjection {
                format!("`{s}` (score ≥ {:.2})", t.injection_threshold)
            } else {
                format!("`{s}`")
            };
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                action_name(a.input),
                action_name(a.tool_arguments),
                action_name(a.output),
                action_name(a.tool_result)
            ));
        }
        out.push_str(&format!(
            "\nStream hold-back: {} bytes{}. Critique failure: `{}`.\n\n",
            t.stream_holdback,
            if t.stream_release_scanned_only {
                ", released only at token boundaries once fully scanned"
            } else {
                ""
            },
            on_error_name(t.critique_on_error)
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::finding::severity;

    #[test]
    fn names_round_trip_and_default_is_standard() {
        for p in Profile::ALL {
            assert_eq!(Profile::parse(p.as_str()), Some(p));
        }
        assert_eq!(Profile::default(), Profile::Standard);
        assert_eq!(Profile::parse("Strict"), None);
    }

    #[test]
    fn stricter_profiles_never_act_less() {
        let stages = [
            GuardStage::Input,
            GuardStage::ToolArguments,
            GuardStage::Output,
            GuardStage::ToolResult,
        ];
        for pair in Profile::ALL.windows(2) {
            for s in Scanner::ALL {
                for st in stages {
                    assert!(
                        severity(pair[1].action(s, st)) >= severity(pair[0].action(s, st)),
                        "{} is laxer than {} for {s} at {st:?}",
                        pair[1],
                        pair[0]
                    );
                }
            }
            assert!(pair[1].table().injection_threshold < pair[0].table().injection_threshold);
        }
    }

    #[test]
    fn standard_matches_the_documented_policy() {
        let p = Profile::Standard;
        assert_eq!(p.action(Scanner::Secrets, GuardStage::Input), Block);
        assert_eq!(p.action(Scanner::Secrets, GuardStage::Output), Redact);
        assert_eq!(p.action(Scanner::Pii, GuardStage::Input), Redact);
        assert_eq!(
            p.action(Scanner::PromptInjection, GuardStage::ToolResult),
            Block
        );
        assert_eq!(p.action(Scanner::Topic, GuardStage::Input), Block);
    }

    #[test]
    fn markdown_lists_every_profile_and_scanner() {
        let md = profile_table_markdown();
        for p in Profile::ALL {
            assert!(md.contains(&format!("#### `{p}`")));
        }
        assert_eq!(md.matches("| `pii` |").count(), 3);
        assert!(md.contains("`prompt_injection` (score ≥ 0.70)"));
    }
}
