//! The guardrail on any text a client, a model or a tool can send: the
//! normalisation pass (NFKC, look-alikes, invisible characters, separated
//! letters, tag characters) with its offset map, the bounded decoding of
//! encoded payloads inside the injection scanner, every scanner under every
//! profile and stage, redaction and restoration, and the streaming scanner
//! fed in pieces.
//!
//! Properties: offsets map back inside the original text, monotonically,
//! and spans land on character boundaries; findings are character-aligned
//! spans of the text; restoring a redacted prompt without brackets gives the
//! prompt back.
#![no_main]

use std::sync::{Arc, OnceLock};

use aibox_guardrail::normalize::normalize;
use aibox_guardrail::{GuardAction, GuardStage, Guardrail, Profile, StreamScanner, TurnVault};
use libfuzzer_sys::fuzz_target;

fn guardrail() -> Arc<Guardrail> {
    static G: OnceLock<Arc<Guardrail>> = OnceLock::new();
    G.get_or_init(|| Arc::new(Guardrail::default_standard().expect("guardrail")))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let text = text.as_ref();

    let n = normalize(text);
    let mut last = 0;
    for pos in 0..=n.text.len() {
        let o = n.to_original(pos);
        assert!(o <= text.len(), "offset {o} beyond the text");
        assert!(o >= last, "offsets go backwards at {pos}");
        last = o;
    }
    // Spans of the folded text start and end on its character boundaries
    // (they come from matches on it).
    let floor = |mut i: usize| {
        while !n.text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    for (start, end) in [
        (0, n.text.len()),
        (floor(n.text.len() / 3), floor(n.text.len() / 2)),
    ] {
        let (s, e) = n.original_span(text, start, end);
        assert!(s <= e && e <= text.len());
        assert!(text.is_char_boundary(s) && text.is_char_boundary(e));
    }
    assert!(n.identity_prefix() <= n.text.len());

    let g = guardrail();
    let profile = [Profile::Permissive, Profile::Standard, Profile::Strict][usize::from(mode % 3)];
    let stage = [
        GuardStage::Input,
        GuardStage::ToolArguments,
        GuardStage::Output,
        GuardStage::ToolResult,
    ][usize::from(mode / 3 % 4)];
    let v = g.scan_as("acme", profile, stage, text);
    for f in &v.findings {
        assert!(
            f.start <= f.end && f.end <= text.len(),
            "finding out of bounds"
        );
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "finding inside a character"
        );
    }
    // A tool definition: the same bounds, and a redaction of it is applied
    // to this very text (the gateway parses the result as JSON).
    let d = g.scan_tool_definition("acme", text);
    for f in &d.findings {
        assert!(
            f.start <= f.end
                && f.end <= text.len()
                && text.is_char_boundary(f.start)
                && text.is_char_boundary(f.end),
            "tool-definition finding out of bounds or inside a character"
        );
    }
    if d.action == GuardAction::Redact {
        let _ = TurnVault::new().redact(text, &d);
    }

    // Only prompt redactions are restorable (secrets in answers stay out).
    if v.action == GuardAction::Redact && stage == GuardStage::Input {
        let mut vault = TurnVault::new();
        let redacted = vault.redact(text, &v);
        if !text.contains('[') {
            assert_eq!(
                vault.restore(&redacted),
                text,
                "restore does not undo redact"
            );
        }
    }

    // The stream: pieces of 1 to 32 bytes, cut on character boundaries.
    let mut s = StreamScanner::new(g, "acme", GuardStage::Output, TurnVault::new());
    let step = usize::from(mode % 32) + 1;
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + step).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let _ = s.push(&text[start..end]);
        start = end;
    }
    let _ = s.finish();
    let _ = s.verdict();
});
