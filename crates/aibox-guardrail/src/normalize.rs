//! The folded view of a text, for keyword and phrase matching.
//!
//! Attackers hide trigger words from naive matchers: `ıgnore` with a
//! dotless i, `іgnore` with a Cyrillic і, full-width `ｉｇｎｏｒｅ`,
//! `ig\u{200B}nore` with a zero-width space, `1gn0re`, `i.g.n.o.r.e`. The
//! injection and topic scanners (and the keyword prefilter of the secrets
//! scanner) therefore match against a *folded* copy of the text:
//!
//! 1. Per character: invisible characters (zero-width, soft hyphen,
//!    variation selectors, Unicode tag characters) and bidirectional
//!    controls are removed and counted; Cyrillic and Greek letters that
//!    look like Latin ones are mapped to them (the UTS #39 "skeleton"
//!    idea, restricted to the common confusables); everything else gets
//!    its Unicode compatibility decomposition (the K of NFKC, which maps
//!    full-width and mathematical letters, ligatures and circled letters
//!    to plain ones) with combining marks dropped (so `ignóre` and
//!    `ignore` meet), then lower case.
//! 2. Bounded ASCII clean-up: leetspeak digits inside words of letters
//!    (`1gn0r3` → `ignore`) and single characters separated by the same
//!    separator (`i.g.n.o.r.e`, `i g n o r e`, at least four) are joined.
//!
//! Patterns and phrases go through the same folding, so both sides meet.
//! An offset map leads every folded byte back to the original, so spans of
//! findings (and redactions) always refer to the original text. ASCII input
//! takes a fast path: one lower-casing copy, and no map unless step 2
//! changed lengths.
//!
//! Unicode tag characters (U+E0020..U+E007E) spell out hidden ASCII text
//! ("ASCII smuggling"); they are decoded into [`Normalized::hidden`] so the
//! injection scanner can scan what they say.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// Counts of suspicious characters seen while folding, with the original
/// offset of the first of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// Invisible characters removed (zero-width, soft hyphen, ...).
    pub invisible: u32,
    /// Of those, how many sat between two letters or digits (a hidden
    /// keyword split, rather than an emoji joiner).
    pub invisible_in_word: u32,
    /// Original offset of the first in-word invisible character.
    pub first_invisible_in_word: Option<usize>,
    /// Bidirectional control characters removed.
    pub bidi: u32,
    /// Original offset of the first bidi control.
    pub first_bidi: Option<usize>,
    /// Unicode tag characters (decoded into `hidden`).
    pub tags: u32,
    /// Original offset of the first tag character.
    pub first_tag: Option<usize>,
    /// Words that mix ASCII letters with Cyrillic or Greek look-alikes.
    pub homoglyph_words: u32,
    /// Original offset of the first look-alike in such a word.
    pub first_homoglyph_word: Option<usize>,
    /// Full-width or other compatibility letters folded to ASCII.
    pub compat_letters: u32,
    /// Original offset of the first of those.
    pub first_compat: Option<usize>,
    /// Separated single-character runs joined (`i.g.n.o.r.e`).
    pub collapsed_runs: u32,
    /// Words with leetspeak digits mapped to letters.
    pub leet_words: u32,
}

/// A point where the offset map changes: from folded offset `f` on,
/// folded bytes map to original offset `o` (all of them, for an `atomic`
/// segment produced by one original character; else `o + (pos - f)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    f: u32,
    o: u32,
    atomic: bool,
}

/// A sparse, monotone offset map: identity until the first checkpoint.
#[derive(Debug, Clone, Default)]
struct OffsetMap(Vec<Checkpoint>);

impl OffsetMap {
    fn lookup(&self, pos: usize) -> usize {
        let k = self.0.partition_point(|c| c.f as usize <= pos);
        if k == 0 {
            return pos;
        }
        let c = self.0[k - 1];
        if c.atomic {
            c.o as usize
        } else {
            c.o as usize + (pos - c.f as usize)
        }
    }

    fn push(&mut self, f: usize, o: usize, atomic: bool) {
        let cp = Checkpoint {
            f: f as u32,
            o: o as u32,
            atomic,
        };
        // A later checkpoint at the same folded offset supersedes.
        if let Some(last) = self.0.last_mut()
            && last.f == cp.f
        {
            *last = cp;
            return;
        }
        self.0.push(cp);
    }
}

/// A folded text with its way back to the original.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The folded text (lower case, see the module documentation).
    pub text: String,
    /// Folded-after-step-1 offsets to original offsets.
    step1: OffsetMap,
    /// Final folded offsets to folded-after-step-1 offsets.
    step2: OffsetMap,
    /// The original length in bytes.
    orig_len: usize,
    /// What folding removed or changed.
    pub signals: Signals,
    /// Text spelled by Unicode tag characters, decoded to ASCII.
    pub hidden: String,
}

impl Normalized {
    /// The original offset of folded offset `pos` (clamped to the end).
    pub fn to_original(&self, pos: usize) -> usize {
        if pos >= self.text.len() {
            return self.orig_len;
        }
        self.step1.lookup(self.step2.lookup(pos)).min(self.orig_len)
    }

    /// How many leading folded bytes map to the same original offsets
    /// (before the first character that folding changed).
    pub fn identity_prefix(&self) -> usize {
        let first = |m: &OffsetMap| m.0.first().map_or(usize::MAX, |c| c.f as usize);
        let s2 = first(&self.step2);
        let s1 = first(&self.step1);
        // A step-1 change at offset `s1` appears in the final text no later
        // than `s1` (step 2 only removes bytes).
        s2.min(s1).min(self.text.len())
    }

    /// The original span of folded span `start..end`, widened to whole
    /// original characters.
    pub fn original_span(&self, original: &str, start: usize, end: usize) -> (usize, usize) {
        let s = self.to_original(start);
        if end <= start {
            return (s, s);
        }
        let last = self.to_original(end - 1);
        let e = original
            .get(last..)
            .and_then(|r| r.chars().next())
            .map_or(original.len(), |c| last + c.len_utf8());
        (s, e.max(s))
    }
}

/// Folds `text` (see the module documentation).
pub fn normalize(text: &str) -> Normalized {
    let mut signals = Signals::default();
    let mut hidden = String::new();
    let mut step1 = OffsetMap::default();
    let bytes = fold_chars(text, &mut signals, &mut hidden, &mut step1);
    let (bytes, step2) = clean_ascii(bytes, &mut signals);
    let text_out = match String::from_utf8(bytes) {
        Ok(s) => s,
        // Unreachable by construction (step 2 only rewrites ASCII bytes);
        // fall back to a lossy copy rather than failing a scan.
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Normalized {
        text: text_out,
        step1,
        step2,
        orig_len: text.len(),
        signals,
        hidden,
    }
}

/// Folds a topic phrase or keyword the way texts are folded.
pub fn fold_phrase(phrase: &str) -> String {
    normalize(phrase).text
}

/// Folds the non-ASCII characters of a regex pattern and keeps its ASCII
/// (escapes, classes, repetition counts) as written: patterns are written in
/// lower case and must not go through step 2.
pub(crate) fn fold_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            fold_one(c, &mut |d| out.push(d));
        }
    }
    out
}

/// What kind of character `c` is, for removal.
#[derive(PartialEq, Eq)]
enum Hidden {
    No,
    Invisible,
    Bidi,
    Tag(u8),
    Selector,
}

fn hidden_kind(c: char) -> Hidden {
    match c as u32 {
        0x200E | 0x200F | 0x061C | 0x202A..=0x202E | 0x2066..=0x2069 => Hidden::Bidi,
        0x00AD
        | 0x034F
        | 0x115F
        | 0x1160
        | 0x17B4
        | 0x17B5
        | 0x180B..=0x180F
        | 0x200B..=0x200D
        | 0x2060..=0x2064
        | 0x206A..=0x206F
        | 0x3164
        | 0xFEFF
        | 0xFFA0
        | 0x1D173..=0x1D17A => Hidden::Invisible,
        0xFE00..=0xFE0F => Hidden::Selector,
        0xE0100..=0xE01EF => Hidden::Invisible,
        cp @ 0xE0020..=0xE007E => Hidden::Tag((cp - 0xE0000) as u8),
        0xE0000..=0xE007F => Hidden::Invisible,
        _ => Hidden::No,
    }
}

/// Cyrillic and Greek letters that render like Latin letters.
fn homoglyph(c: char) -> Option<char> {
    Some(match c {
        'а' | 'А' | 'α' | 'Α' => 'a',
        'В' | 'Β' | 'ь' => 'b',
        'с' | 'С' | 'ϲ' | 'Ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'Е' | 'ε' | 'Ε' => 'e',
        'һ' | 'Н' | 'Η' => 'h',
        'і' | 'І' | 'ι' | 'Ι' | 'ı' | 'ӏ' => 'i',
        'ј' | 'Ј' | 'ϳ' => 'j',
        'к' | 'К' | 'κ' | 'Κ' => 'k',
        'М' | 'Μ' => 'm',
        'Ν' => 'n',
        'о' | 'О' | 'ο' | 'Ο' | 'σ' => 'o',
        'р' | 'Р' | 'ρ' | 'Ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' | 'Ѕ' => 's',
        'Т' | 'τ' | 'Τ' => 't',
        'υ' | 'Υ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'Х' | 'χ' | 'Χ' => 'x',
        'у' | 'У' | 'γ' => 'y',
        'Ζ' => 'z',
        'ɡ' => 'g',
        _ => return None,
    })
}

/// Folds one non-ASCII character: homoglyph map, else compatibility
/// decomposition without combining marks, lower-cased.
fn fold_one(c: char, emit: &mut impl FnMut(char)) {
    if let Some(a) = homoglyph(c) {
        emit(a);
        return;
    }
    decompose_compatible(c, |d| {
        if is_combining_mark(d) {
            return;
        }
        if d.is_ascii() {
            emit(d.to_ascii_lowercase());
        } else if let Some(a) = homoglyph(d) {
            emit(a);
        } else {
            for l in d.to_lowercase() {
                emit(l);
            }
        }
    });
}

/// Whether the word around original offset `at` (within 32 bytes each
/// way) has an ASCII or full-width letter: a homoglyph there makes a
/// mixed-script word.
fn word_has_latin(text: &str, at: usize, len: usize) -> bool {
    let latin = |c: char| c.is_ascii_alphabetic() || ('\u{FF21}'..='\u{FF5A}').contains(&c);
    let mut from = at.saturating_sub(32);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let mut to = (at + len + 32).min(text.len());
    while !text.is_char_boundary(to) {
        to -= 1;
    }
    let before = text[from..at]
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || hidden_kind(*c) != Hidden::No)
        .any(latin);
    before
        || text[at + len..to]
            .chars()
            .take_while(|c| c.is_alphanumeric() || hidden_kind(*c) != Hidden::No)
            .any(latin)
}

/// Step 1: runs of ASCII are copied and lower-cased in bulk; each other
/// character is folded on its own, with a checkpoint in the offset map
/// when its folded bytes differ from the original ones.
fn fold_chars(text: &str, sig: &mut Signals, hidden: &mut String, map: &mut OffsetMap) -> Vec<u8> {
    let b = text.as_bytes();
    let n = b.len();
    let mut out: Vec<u8> = Vec::with_capacity(n + 16);
    let mut last_alnum = false;
    let mut pending_invisible: Option<usize> = None;
    // Whether the current word was already counted as mixed-script.
    let mut glyph_word_counted = false;
    let mut buf = [0u8; 4];
    let mut i = 0;
    while i < n {
        let s = i;
        i = crate::swar::next_non_ascii(b, i);
        if i > s {
            let o = out.len();
            out.extend_from_slice(&b[s..i]);
            out[o..].make_ascii_lowercase();
            if let Some(at) = pending_invisible.take()
                && b[s].is_ascii_alphanumeric()
            {
                sig.invisible_in_word += 1;
                sig.first_invisible_in_word.get_or_insert(at);
            }
            if glyph_word_counted && b[s..i].iter().any(|c| !c.is_ascii_alphanumeric()) {
                glyph_word_counted = false;
            }
            last_alnum = b[i - 1].is_ascii_alphanumeric();
        }
        if i >= n {
            break;
        }
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        let clen = c.len_utf8();
        match hidden_kind(c) {
            Hidden::No => {}
            kind => {
                match kind {
                    Hidden::Invisible => {
                        sig.invisible += 1;
                        if last_alnum {
                            pending_invisible.get_or_insert(i);
                        }
                    }
                    Hidden::Bidi => {
                        sig.bidi += 1;
                        sig.first_bidi.get_or_insert(i);
                    }
                    Hidden::Tag(t) => {
                        sig.tags += 1;
                        sig.first_tag.get_or_insert(i);
                        if hidden.len() < 4096 {
                            hidden.push(t as char);
                        }
                    }
                    Hidden::Selector | Hidden::No => {}
                }
                map.push(out.len(), i + clen, false);
                i += clen;
                continue;
            }
        }
        let cp = c as u32;
        // CJK ideographs have no compatibility form and no case: copy.
        if (0x4E00..=0x9FFF).contains(&cp) || (0x3400..=0x4DBF).contains(&cp) {
            out.extend_from_slice(&b[i..i + clen]);
            if let Some(at) = pending_invisible.take() {
                sig.invisible_in_word += 1;
                sig.first_invisible_in_word.get_or_insert(at);
            }
            last_alnum = true;
            i += clen;
            continue;
        }
        let glyph = homoglyph(c).is_some();
        if (0xFF21..=0xFF5A).contains(&cp) || (0x1D400..=0x1D7FF).contains(&cp) {
            sig.compat_letters += 1;
            sig.first_compat.get_or_insert(i);
        }
        let f0 = out.len();
        let mut any_alnum = false;
        fold_one(c, &mut |d| {
            any_alnum |= d.is_alphanumeric();
            out.extend_from_slice(d.encode_utf8(&mut buf).as_bytes());
        });
        if glyph && !glyph_word_counted && word_has_latin(text, i, clen) {
            sig.homoglyph_words += 1;
            sig.first_homoglyph_word.get_or_insert(i);
            glyph_word_counted = true;
        }
        if any_alnum {
            if let Some(at) = pending_invisible.take() {
                sig.invisible_in_word += 1;
                sig.first_invisible_in_word.get_or_insert(at);
            }
        } else {
            pending_invisible = None;
            glyph_word_counted = false;
        }
        last_alnum = any_alnum;
        if out[f0..] != b[i..i + clen] {
            if out.len() > f0 {
                map.push(f0, i, true);
            }
            map.push(out.len(), i + clen, false);
        }
        i += clen;
    }
    out
}

fn leet(b: u8) -> Option<u8> {
    Some(match b {
        b'0' => b'o',
        b'1' => b'i',
        b'3' => b'e',
        b'4' => b'a',
        b'5' => b's',
        b'7' => b't',
        b'@' => b'a',
        b'$' => b's',
        _ => return None,
    })
}

fn is_sep(b: u8) -> bool {
    matches!(
        b,
        b'.' | b'-' | b'_' | b' ' | b'*' | b'/' | b'|' | b'+' | b','
    )
}

/// Shortest separated run that is joined (`a.b.c.d`).
const MIN_COLLAPSE: usize = 4;
/// Longest word leetspeak is undone in.
const MAX_LEET_WORD: usize = 24;

/// Step-2 byte classes: not part of a word, a letter, a leetspeak
/// character, another digit.
const T_NONE: u8 = 0;
const T_LETTER: u8 = 1;
const T_LEET: u8 = 2;
const T_DIGIT: u8 = 4;

static TOK: [u8; 256] = {
    let mut t = [T_NONE; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_lowercase() {
            T_LETTER
        } else if matches!(b, b'0' | b'1' | b'3' | b'4' | b'5' | b'7' | b'@' | b'$') {
            T_LEET
        } else if b.is_ascii_digit() {
            T_DIGIT
        } else {
            T_NONE
        };
        i += 1;
    }
    t
};

/// Step 2: leetspeak and separated single characters, on ASCII bytes, in
/// one pass over the words.
fn clean_ascii(mut bytes: Vec<u8>, sig: &mut Signals) -> (Vec<u8>, OffsetMap) {
    let n = bytes.len();
    // Non-ASCII bytes count as word bytes: an ASCII letter produced by a
    // homoglyph inside a Cyrillic word is not a single character.
    let word = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    // The open run of separated single characters: start, separator,
    // count, end of its last character.
    let mut run: Option<(usize, u8, usize, usize)> = None;
    let mut prev_single: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < n {
        if TOK[usize::from(bytes[i])] == T_NONE {
            i += 1;
            continue;
        }
        let s = i;
        let mut kinds = 0u8;
        // Whole words of lower-case letters first, eight bytes at a time.
        let j = crate::swar::end_of_lower(&bytes, i);
        if j > i {
            kinds |= T_LETTER;
            i = j;
        }
        while i < n {
            let k = TOK[usize::from(bytes[i])];
            if k == T_NONE {
                break;
            }
            kinds |= k;
            i += 1;
        }
        let len = i - s;
        // Leetspeak: a word of at least three bytes with at least two
        // letters and no more leet characters than letters (`4k`, `3d`,
        // `h264` stay). Counted only for words that mix both.
        if kinds & T_LEET != 0 && kinds & T_LETTER != 0 && (3..=MAX_LEET_WORD).contains(&len) && {
            let letters = bytes[s..i]
                .iter()
                .filter(|c| c.is_ascii_lowercase())
                .count();
            let leets = bytes[s..i]
                .iter()
                .filter(|&&c| TOK[usize::from(c)] == T_LEET)
                .count();
            letters >= 2 && leets <= letters
        } {
            for c in &mut bytes[s..i] {
                if let Some(l) = leet(*c) {
                    *c = l;
                }
            }
            sig.leet_words += 1;
        }
        let single = len == 1
            && bytes[s].is_ascii_alphanumeric()
            && (s == 0 || !word(bytes[s - 1]))
            && (i >= n || !word(bytes[i]));
        if single {
            let extended = match run {
                Some((rs, sep, count, last_end))
                    if s == last_end + 1 && bytes[s - 1] == sep && count < 64 =>
                {
                    run = Some((rs, sep, count + 1, i));
                    true
                }
                _ => false,
            };
            if !extended {
                if let Some((rs, _, count, last_end)) = run.take()
                    && count >= MIN_COLLAPSE
                {
                    runs.push((rs, last_end));
                }
                // A run starts with the previous single character when
                // exactly one separator lies between the two.
                if let Some((ps, pe)) = prev_single
                    && s == pe + 1
                    && is_sep(bytes[s - 1])
                {
                    run = Some((ps, bytes[s - 1], 2, i));
                }
            }
            prev_single = Some((s, i));
        } else {
            if let Some((rs, _, count, last_end)) = run.take()
                && count >= MIN_COLLAPSE
            {
                runs.push((rs, last_end));
            }
            prev_single = None;
        }
    }
    if let Some((rs, _, count, last_end)) = run
        && count >= MIN_COLLAPSE
    {
        runs.push((rs, last_end));
    }
    let mut map = OffsetMap::default();
    if runs.is_empty() {
        return (bytes, map);
    }
    sig.collapsed_runs += runs.len() as u32;
    let mut out = Vec::with_capacity(n);
    let mut p = 0;
    for (s, e) in runs {
        // Runs can touch or overlap ("w w w w" is one long run seen twice);
        // a run that starts before the previous one ended is skipped, so the
        // slices below are always in order and never panic.
        if s < p || e < s || e > bytes.len() {
            continue;
        }
        out.extend_from_slice(&bytes[p..s]);
        let mut q = s;
        while q < e {
            map.push(out.len(), q, true);
            out.push(bytes[q]);
            q += 2;
        }
        map.push(out.len(), e, false);
        p = e;
    }
    out.extend_from_slice(&bytes[p..]);
    (out, map)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn evasions_fold_to_the_plain_word() {
        // Table: obfuscated input, expected folded text.
        let cases: &[(&str, &str)] = &[
            ("IGNORE", "ignore"),
            ("ig\u{200B}nore", "ignore"),
            ("ig\u{200D}no\u{2060}re", "ignore"),
            ("ign\u{00AD}ore", "ignore"),
            ("ｉｇｎｏｒｅ", "ignore"),
            ("ＩＧＮＯＲＥ", "ignore"),
            ("іgnоre", "ignore"),
            ("ıgnore", "ignore"),
            ("ignóre", "ignore"),
            ("𝐢𝐠𝐧𝐨𝐫𝐞", "ignore"),
            ("1gn0r3", "ignore"),
            ("i.g.n.o.r.e", "ignore"),
            ("i g n o r e all", "ignore all"),
            ("i-g-n-o-r-e", "ignore"),
            ("ＰＡＳＳＷＯＲＤ", "password"),
            ("ﬁlter", "filter"),
            ("ⓘⓖⓝⓞⓡⓔ", "ignore"),
            ("ig\u{202E}nore", "ignore"),
            ("Ρrompt", "prompt"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).text, *want, "input {input:?}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for s in [
            "the 4 cats and 3 dogs",
            "version 1.2.3 released",
            "call 555-0100 now",
            "a b c",
            "h264 4k 3d b2b x86",
            "U.S.A. and e.g.",
        ] {
            let n = normalize(s);
            assert_eq!(n.text, s.to_lowercase(), "{s:?}");
            assert_eq!(n.signals.collapsed_runs, 0);
        }
    }

    #[test]
    fn signals_are_counted_with_positions() {
        let s = "please ig\u{200B}nore this";
        let n = normalize(s);
        assert_eq!(n.signals.invisible, 1);
        assert_eq!(n.signals.invisible_in_word, 1);
        assert_eq!(n.signals.first_invisible_in_word, Some(9));

        let n = normalize("emoji 👩\u{200D}💻 joiner");
        assert_eq!(n.signals.invisible, 1);
        assert_eq!(
            n.signals.invisible_in_word, 0,
            "emoji ZWJ is not a split word"
        );

        let n = normalize("pаypal login");
        assert_eq!(n.signals.homoglyph_words, 1);
        assert_eq!(n.signals.first_homoglyph_word, Some(1));

        let n = normalize("привет мир");
        assert_eq!(n.signals.homoglyph_words, 0, "plain Russian is not mixed");

        let n = normalize("a\u{202E}b");
        assert_eq!(n.signals.bidi, 1);
        assert_eq!(n.signals.first_bidi, Some(1));
    }

    #[test]
    fn tag_characters_are_decoded_as_hidden_text() {
        let smuggled: String = "hi"
            .chars()
            .chain(
                "ignore"
                    .chars()
                    .map(|c| char::from_u32(0xE0000 + c as u32).unwrap()),
            )
            .collect();
        let n = normalize(&smuggled);
        assert_eq!(n.text, "hi");
        assert_eq!(n.hidden, "ignore");
        assert_eq!(n.signals.tags, 6);
    }

    #[test]
    fn offsets_map_back_to_the_original() {
        let s = "Say ｉｇｎｏｒｅ now";
        let n = normalize(s);
        let at = n.text.find("ignore").unwrap();
        let (a, b) = n.original_span(s, at, at + 6);
        assert_eq!(&s[a..b], "ｉｇｎｏｒｅ");

        let s = "x i.g.n.o.r.e y";
        let n = normalize(s);
        assert_eq!(n.text, "x ignore y");
        let (a, b) = n.original_span(s, 2, 8);
        assert_eq!(&s[a..b], "i.g.n.o.r.e");
        assert_eq!(n.to_original(n.text.len()), s.len());

        let s = "ig\u{200B}nore ß ﬁ";
        let n = normalize(s);
        let (a, b) = n.original_span(s, 0, 6);
        assert_eq!(&s[a..b], "ig\u{200B}nore");
        let fi = n.text.find("fi").unwrap();
        let (a, b) = n.original_span(s, fi, fi + 1);
        assert_eq!(
            &s[a..b],
            "ﬁ",
            "a partial expansion widens to the whole char"
        );
    }

    #[test]
    fn patterns_keep_their_ascii() {
        assert_eq!(fold_pattern(r"\s+(?:prompt){0,3}"), r"\s+(?:prompt){0,3}");
        assert_eq!(fold_pattern("instruções"), "instrucoes");
        assert_eq!(
            fold_pattern("システムプロンプト"),
            normalize("システムプロンプト").text
        );
    }
}
