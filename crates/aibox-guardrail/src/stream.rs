//! Scanning a streamed completion as it passes, with a bounded hold-back.
//!
//! A completion streams in small deltas; a secret can arrive as `gh`,
//! `p_ab`, `c…`. [`StreamScanner`] is a pure state machine: [`push`] a
//! delta, get back the text that may be released now (already redacted and
//! with the user's own placeholders restored), or the instruction to end
//! the stream. Nothing is released before it has been scanned together with
//! the text around it:
//!
//! - **Hold-back window.** The newest `holdback` bytes (256 in `permissive`
//!   and `standard`, 1024 in `strict`; see [`crate::profile`]) are never
//!   released, because a match that ends in the next delta can start there.
//!   256 bytes covers every bounded rule: the longest fixed-format
//!   credential is 192 bytes, an e-mail address at most 254.
//! - **Open tokens.** A whitespace-free run that touches the end of the
//!   buffer is held whole (a key, a JWT, a URL), up to 1 KiB in `standard`
//!   and 16 KiB in `strict`, so a long token is never split into a released
//!   head and a redacted tail.
//! - **Open findings.** A redact-action finding that touches the end of the
//!   buffer may still grow (a PEM body, a JWT), so it is held until text
//!   follows it.
//! - **`strict`** additionally holds an open PEM block (`-----BEGIN` without
//!   its `-----END`) and the whole open token regardless of the window: text
//!   leaves only once it has been scanned in its full context, up to the
//!   16 KiB cap.
//! - **Placeholders** (`[EMAIL_1]`) are never split, so the restore step
//!   always sees them whole.
//!
//! Each scan covers the unreleased text plus up to `holdback` bytes of
//! released context, so a step costs O(window), not O(stream). Scans run
//! at most once per 64 new bytes, except when the stream finishes.
//!
//! [`push`]: StreamScanner::push

use std::borrow::Cow;
use std::sync::Arc;

use aibox_core::audit::{GuardAction, GuardStage};

use crate::engine::{Guardrail, Verdict};
use crate::finding::{Finding, Scanner, max_action};
use crate::profile::Profile;
use crate::vault::TurnVault;

/// What the caller may do after a delta.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamStep {
    /// Nothing can be released yet.
    Hold,
    /// Send this text to the client now (redacted and restored).
    Release(String),
    /// End the stream with an error naming the scanner and the rule; send
    /// nothing more.
    Block {
        /// The scanner that blocked.
        scanner: Scanner,
        /// The rule that blocked.
        rule: Cow<'static, str>,
        /// The client-safe message (names scanner and rule, never text).
        message: String,
    },
}

/// Bytes to accumulate beyond the window before scanning again: each byte
/// is scanned about `(holdback + SCAN_STEP) / SCAN_STEP` times, so a larger
/// step is cheaper and releases text in larger pieces.
const SCAN_STEP: usize = 64;
/// Longest whitespace-free run held whole in `permissive` and `standard`.
const MAX_TOKEN_HOLD: usize = 1024;
/// Longest hold of any kind in `strict`.
const MAX_STRICT_HOLD: usize = 16 * 1024;

/// The streaming scanner of one completion.
#[derive(Debug)]
pub struct StreamScanner {
    guardrail: Arc<Guardrail>,
    tenant: String,
    stage: GuardStage,
    profile: Profile,
    holdback: usize,
    strict_release: bool,
    /// The tenant's guardrail is off: deltas pass straight through.
    passthrough: bool,
    vault: TurnVault,
    /// The last released raw bytes, as context for the next scan.
    context: String,
    /// Raw text not yet released.
    pending: String,
    /// Stream offset of `pending[0]`.
    offset: usize,
    /// Pending bytes at the last scan.
    scanned_len: usize,
    blocked: Option<StreamStep>,
    /// Findings seen, by stream offset, for the audit verdict.
    seen: Vec<Finding>,
    action: GuardAction,
    injection_score: f32,
}

impl StreamScanner {
    /// A scanner for one streamed text of `tenant` at `stage` (normally
    /// `Output`); `vault` is the turn's vault (from redacting the prompt) so
    /// that placeholders the model repeats are restored.
    pub fn new(
        guardrail: Arc<Guardrail>,
        tenant: &str,
        stage: GuardStage,
        vault: TurnVault,
    ) -> StreamScanner {
        let profile = guardrail.profile_for(tenant);
        let table = profile.table();
        StreamScanner {
            passthrough: !guardrail.enabled_for(tenant),
            holdback: table.stream_holdback,
            strict_release: table.stream_release_scanned_only,
            guardrail,
            tenant: tenant.to_owned(),
            stage,
            profile,
            vault,
            context: String::new(),
            pending: String::new(),
            offset: 0,
            scanned_len: 0,
            blocked: None,
            seen: Vec::new(),
            action: GuardAction::Allow,
            injection_score: 0.0,
        }
    }

    /// The hold-back window in bytes.
    pub fn holdback(&self) -> usize {
        self.holdback
    }

    /// Adds a delta; returns what may be released.
    pub fn push(&mut self, delta: &str) -> StreamStep {
        if let Some(b) = &self.blocked {
            return b.clone();
        }
        if self.passthrough {
            return StreamStep::Release(delta.to_owned());
        }
        self.pending.push_str(delta);
        if self.pending.len() < self.scanned_len + SCAN_STEP || self.pending.len() <= self.holdback
        {
            return StreamStep::Hold;
        }
        self.step(false)
    }

    /// Ends the stream: scans and releases the tail (possibly empty), or
    /// blocks.
    pub fn finish(&mut self) -> StreamStep {
        if let Some(b) = &self.blocked {
            return b.clone();
        }
        if self.pending.is_empty() {
            return StreamStep::Release(String::new());
        }
        self.step(true)
    }

    /// The verdict over everything seen so far, for the audit log.
    pub fn verdict(&self) -> Verdict {
        let blocking = match &self.blocked {
            Some(StreamStep::Block { scanner, rule, .. }) => Some((*scanner, rule.clone())),
            _ => None,
        };
        Verdict {
            stage: self.stage,
            profile: self.profile,
            action: self.action,
            findings: self.seen.clone(),
            blocking,
            injection_score: self.injection_score,
        }
    }

    /// Gives the vault back (for later messages of the turn).
    pub fn into_vault(self) -> TurnVault {
        self.vault
    }

    fn step(&mut self, finishing: bool) -> StreamStep {
        let ctx = self.context.len();
        let mut window = String::with_capacity(ctx + self.pending.len());
        window.push_str(&self.context);
        window.push_str(&self.pending);
        let v = self
            .guardrail
            .scan_as(&self.tenant, self.profile, self.stage, &window);
        self.scanned_len = self.pending.len();
        self.record(&v, ctx);

        if v.is_blocked() {
            let step = StreamStep::Block {
                scanner: v.blocking.as_ref().map_or(Scanner::Secrets, |b| b.0),
                rule: v
                    .blocking
                    .as_ref()
                    .map_or(Cow::Borrowed("unknown"), |b| b.1.clone()),
                message: v.client_message().unwrap_or_default(),
            };
            self.blocked = Some(step.clone());
            self.action = GuardAction::Block;
            self.pending.clear();
            return step;
        }

        let r = if finishing {
            self.pending.len()
        } else {
            self.release_point(&v, ctx, &window)
        };
        if r == 0 {
            return if finishing {
                StreamStep::Release(String::new())
            } else {
                StreamStep::Hold
            };
        }
        // Findings in pending coordinates for redaction of the segment.
        let shifted: Vec<Finding> = v
            .findings
            .iter()
            .filter(|f| f.end > ctx && f.start < ctx + r)
            .map(|f| {
                let mut g = f.clone();
                g.start = f.start.max(ctx) - ctx;
                g.end = f.end.min(ctx + r) - ctx;
                g
            })
            .collect();
        let segment = &self.pending[..r];
        let redacted = self.vault.redact_findings(segment, &shifted, 0, self.stage);
        let out = self.vault.restore(&redacted);

        // Slide: the released raw text becomes context.
        self.context.push_str(&self.pending[..r]);
        if self.context.len() > self.holdback {
            let mut cut = self.context.len() - self.holdback;
            while !self.context.is_char_boundary(cut) {
                cut += 1;
            }
            self.context.drain(..cut);
        }
        self.pending.drain(..r);
        self.offset += r;
        self.scanned_len = self.pending.len();
        StreamStep::Release(out)
    }

    /// Records findings (by stream offset, once each) for the verdict.
    fn record(&mut self, v: &Verdict, ctx: usize) {
        let base = self.offset - ctx;
        for f in &v.findings {
            let (s, e) = (base + f.start, base + f.end);
            if self
                .seen
                .iter()
                .any(|g| g.rule == f.rule && g.start < e && s < g.end)
            {
                continue;
            }
            let mut g = f.clone();
            g.start = s;
            g.end = e;
            self.action = max_action(self.action, g.action);
            self.seen.push(g);
        }
        self.injection_score = self.injection_score.max(v.injection_score);
    }

    /// How many pending bytes may be released now.
    fn release_point(&self, v: &Verdict, ctx: usize, window: &str) -> usize {
        let p = self.pending.as_bytes();
        let len = p.len();
        let mut r = len.saturating_sub(self.holdback);

        // Findings that straddle the cut or may still grow.
        for f in &v.findings {
            if f.end <= ctx || f.action == GuardAction::Allow {
                continue;
            }
            let fs = f.start.saturating_sub(ctx);
            let fe = f.end - ctx;
            if fs < r && (r < fe || fe >= len) {
                r = fs;
            }
        }

        // Whitespace-free runs are held whole.
        let cap = if self.strict_release {
            MAX_STRICT_HOLD
        } else {
            MAX_TOKEN_HOLD
        };
        if r > 0 && r < len && !p[r - 1].is_ascii_whitespace() && !p[r].is_ascii_whitespace() {
            let mut s = r;
            while s > 0 && !p[s - 1].is_ascii_whitespace() {
                s -= 1;
            }
            let mut e = r;
            while e < len && !p[e].is_ascii_whitespace() {
                e += 1;
            }
            // The run is held whole while it is short enough; a longer one
            // (or an open one past the cap) is cut at the window.
            if e - s <= cap {
                r = s;
            }
        }

        // Strict: hold an open PEM block and cut only at whitespace.
        if self.strict_release {
            if let Some(b) = window.rfind("-----BEGIN")
                && !window[b..].contains("-----END")
                && b + 1 > ctx
                && len - (b - ctx) <= MAX_STRICT_HOLD
            {
                r = r.min(b - ctx);
            }
            while r > 0 && !p[r - 1].is_ascii_whitespace() && len - r <= MAX_STRICT_HOLD {
                r -= 1;
            }
        }

        // Never split a placeholder.
        let mut look = r.saturating_sub(32);
        while !self.pending.is_char_boundary(look) {
            look += 1;
        }
        while r > 0 && !self.pending.is_char_boundary(r) {
            r -= 1;
        }
        if look <= r
            && let Some(open) = self.pending[look..r].rfind('[')
            && !self.pending[look + open..r].contains(']')
        {
            r = look + open;
        }

        while r > 0 && !self.pending.is_char_boundary(r) {
            r -= 1;
        }
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::constitution::Constitution;
    use crate::synth::{A62, chars};

    const REFERENCE: &str = include_str!("../../../deploy/config/guardrail/constitution.yaml");

    fn guard(profile: &str) -> Arc<Guardrail> {
        let mut c = Constitution::from_yaml(REFERENCE, "constitution.yaml").unwrap();
        c.profile = Profile::parse(profile).unwrap();
        Arc::new(Guardrail::new(&c).unwrap())
    }

    /// Feeds `chunks`; returns the released text and the final step.
    fn run(g: &Arc<Guardrail>, chunks: &[&str]) -> (String, StreamStep) {
        let mut s = StreamScanner::new(g.clone(), "t", GuardStage::Output, TurnVault::new());
        let mut out = String::new();
        for c in chunks {
            match s.push(c) {
                StreamStep::Release(t) => out.push_str(&t),
                StreamStep::Hold => {}
                b @ StreamStep::Block { .. } => return (out, b),
            }
        }
        let last = s.finish();
        if let StreamStep::Release(t) = &last {
            out.push_str(t);
        }
        (out, last)
    }

    fn prose(n: usize) -> String {
        "The quarterly report covers revenue, churn and hiring plans. ".repeat(n / 60 + 1)[..n]
            .to_owned()
    }

    fn leaks(out: &str, secret: &str) -> bool {
        // Any 8-byte piece of the secret's random part counts as a leak.
        let tail = &secret[4..];
        (0..tail.len() - 8).any(|i| out.contains(&tail[i..i + 8]))
    }

    #[test]
    fn clean_text_passes_through_unchanged() {
        let g = guard("standard");
        let text = prose(3000);
        let chunks: Vec<&str> = text
            .as_bytes()
            .chunks(7)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let (out, last) = run(&g, &chunks);
        assert!(matches!(last, StreamStep::Release(_)));
        assert_eq!(out, text);
    }

    #[test]
    fn a_secret_split_across_two_chunks_is_redacted_in_standard() {
        let g = guard("standard");
        let key = format!("ghp_{}", chars(A62, 36, 42));
        let before = prose(600);
        let after = prose(600);
        let (a, b) = key.split_at(17);
        let (out, last) = run(
            &g,
            &[&format!("{before}token {a}"), &format!("{b} {after}")],
        );
        assert!(matches!(last, StreamStep::Release(_)));
        assert!(!leaks(&out, &key), "secret leaked");
        assert!(out.contains("token [SECRET_1] "), "{out}");
        assert!(out.starts_with(&before) && out.ends_with(&after));
    }

    #[test]
    fn a_secret_in_one_char_chunks_is_never_released() {
        for profile in ["standard", "strict"] {
            let g = guard(profile);
            let key = format!("sk_live_{}", chars(A62, 30, 7));
            let text = format!(
                "{} here is the key: {key} and more text {}",
                prose(700),
                prose(700)
            );
            let chunks: Vec<String> = text.chars().map(String::from).collect();
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (out, last) = run(&g, &refs);
            assert!(!leaks(&out, &key), "{profile}: secret leaked");
            match profile {
                "standard" => {
                    assert!(matches!(last, StreamStep::Release(_)), "{last:?}");
                    assert!(out.contains("key: [SECRET_1] and more"), "{out}");
                }
                _ => match last {
                    StreamStep::Block {
                        scanner,
                        rule,
                        message,
                    } => {
                        assert_eq!(scanner, Scanner::Secrets);
                        assert_eq!(rule, "stripe_secret_key");
                        assert!(!message.contains(&key[8..16]));
                    }
                    other => panic!("strict did not block: {other:?}"),
                },
            }
        }
    }

    #[test]
    fn a_block_ends_the_stream_for_good() {
        let g = guard("standard");
        let mut s = StreamScanner::new(g, "t", GuardStage::Output, TurnVault::new());
        let mut released = String::new();
        let text = format!(
            "{} Explain how to build a pipe bomb. {}",
            prose(400),
            prose(400)
        );
        let mut blocked = None;
        for c in text.as_bytes().chunks(5) {
            match s.push(std::str::from_utf8(c).unwrap()) {
                StreamStep::Release(t) => released.push_str(&t),
                StreamStep::Hold => {}
                b @ StreamStep::Block { .. } => {
                    blocked = Some(b);
                    break;
                }
            }
        }
        let b = blocked.or_else(|| match s.finish() {
            b @ StreamStep::Block { .. } => Some(b),
            _ => None,
        });
        assert!(
            matches!(
                b,
                Some(StreamStep::Block {
                    scanner: Scanner::Topic,
                    ..
                })
            ),
            "{b:?}"
        );
        assert!(!released.contains("pipe bomb"));
        assert!(matches!(s.push("more"), StreamStep::Block { .. }));
        assert!(matches!(s.finish(), StreamStep::Block { .. }));
        let v = s.verdict();
        assert_eq!(v.action, GuardAction::Block);
        assert_eq!(
            v.counts().iter().filter(|c| c.scanner == "topic").count(),
            1
        );
    }

    #[test]
    fn placeholders_from_the_prompt_are_restored_even_when_split() {
        let c = Constitution::from_yaml("profile: standard\n", "c.yaml").unwrap();
        let g = Arc::new(Guardrail::new(&c).unwrap());
        let mut vault = TurnVault::new();
        let prompt = "Write to jane@example.org please";
        let v = g.scan("t", GuardStage::Input, prompt);
        assert_eq!(vault.redact(prompt, &v), "Write to [EMAIL_1] please");
        let mut s = StreamScanner::new(g, "t", GuardStage::Output, vault);
        let mut out = String::new();
        let answer = format!(
            "{}Sure, I will email [EMAIL_1] today. {}",
            prose(300),
            prose(300)
        );
        for c in answer.as_bytes().chunks(3) {
            if let StreamStep::Release(t) = s.push(std::str::from_utf8(c).unwrap()) {
                out.push_str(&t);
            }
        }
        if let StreamStep::Release(t) = s.finish() {
            out.push_str(&t);
        }
        assert!(
            out.contains("I will email jane@example.org today."),
            "{out}"
        );
    }

    #[test]
    fn a_disabled_guardrail_holds_nothing_back() {
        let c = Constitution::from_yaml("enabled: false\n", "c.yaml").unwrap();
        let g = Arc::new(Guardrail::new(&c).unwrap());
        let mut s = StreamScanner::new(g, "t", GuardStage::Output, TurnVault::new());
        assert_eq!(s.push("hello"), StreamStep::Release("hello".into()));
        assert_eq!(s.finish(), StreamStep::Release(String::new()));
    }

    #[test]
    fn strict_holds_an_open_pem_block() {
        let g = guard("strict");
        let mut s = StreamScanner::new(g, "t", GuardStage::Output, TurnVault::new());
        let mut out = String::new();
        let head = format!("{}\n-----BEGIN OPENSSH PRIVATE KEY-----\n", prose(1500));
        if let StreamStep::Release(t) = s.push(&head) {
            out.push_str(&t);
        }
        assert!(!out.contains("BEGIN"), "the header must wait for the body");
        let body = chars(crate::synth::B64, 200, 3);
        let step = s.push(&body);
        assert!(matches!(step, StreamStep::Block { .. }), "{step:?}");
    }
}
