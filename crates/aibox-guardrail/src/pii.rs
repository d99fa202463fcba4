//! Personal data: e-mail addresses, phone numbers, payment cards (Luhn),
//! IBANs (mod-97 and country lengths), US social security numbers, IPv4 and
//! IPv6 addresses.
//!
//! The scanner makes one pass over the original bytes with a byte-class
//! table: lower-case letters and spaces (most of any text) cost one table
//! look-up; a digit, `+` or `(` starts a number candidate, `@` an e-mail
//! check, `:` an IPv6 check and an upper-case pair followed by two digits an
//! IBAN check. Candidates are then validated with checksums and format
//! rules, never with a regex run over the whole text.
//!
//! Phone numbers are the hard case: order numbers, invoice numbers and
//! tracking ids look the same. International numbers (`+49 30 1234567`,
//! `0049 ...`) and formatted national numbers are accepted on format alone;
//! a bare digit run only with a phone keyword shortly before it (`tel`,
//! `call`, `Handy`, ...); and any number right after an identifier keyword
//! (`order`, `invoice`, `#`, `Bestellnummer`, ...) is not a phone number.
//! National formats and keywords are per locale: implement [`PiiLocale`] to
//! add one.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use aho_corasick::AhoCorasick;
use aibox_core::audit::GuardAction;

use crate::finding::{Finding, Scanner};

/// Rule names of this scanner.
pub mod rules {
    /// An e-mail address.
    pub const EMAIL: &str = "email";
    /// A phone number.
    pub const PHONE: &str = "phone_number";
    /// A payment card number that passes the Luhn check.
    pub const CREDIT_CARD: &str = "credit_card";
    /// An IBAN with a valid length and mod-97 check.
    pub const IBAN: &str = "iban";
    /// A US social security number with valid area, group and serial.
    pub const US_SSN: &str = "us_ssn";
    /// An IPv4 address.
    pub const IPV4: &str = "ipv4_address";
    /// An IPv6 address.
    pub const IPV6: &str = "ipv6_address";
}

/// A run of digits and separators found in the text, as a locale sees it.
#[derive(Debug)]
pub struct NumberCandidate<'a> {
    /// The candidate as written (digits, separators, `+`, parentheses).
    pub text: &'a str,
    /// The digits only.
    pub digits: &'a str,
    /// Lengths of the digit groups, in order.
    pub groups: &'a [usize],
    /// The separator before each group after the first (`b' '`, `b'-'`,
    /// `b'.'`, `b')'` for a closing parenthesis).
    pub separators: &'a [u8],
    /// Starts with `+`.
    pub plus: bool,
    /// A phone keyword is closer before it than an identifier keyword.
    pub phone_context: bool,
    /// A US social security keyword is shortly before it.
    pub ssn_context: bool,
}

/// A locale's national formats: what makes a number candidate a phone
/// number (or another national identifier) there.
pub trait PiiLocale: Send + Sync + fmt::Debug {
    /// A short name (`north_america`, `europe`).
    fn name(&self) -> &'static str;
    /// Lower-case words that, shortly before a number, mark it as a phone
    /// number. A word matches whole unless it ends with `*` (a stem:
    /// `telefon*` also matches `Telefonnummer`).
    fn phone_keywords(&self) -> &'static [&'static str];
    /// Lower-case words that, shortly before a number, mark it as an
    /// identifier (order, invoice, ticket) instead.
    fn id_keywords(&self) -> &'static [&'static str];
    /// Recognises a national format; returns the rule name and a score.
    fn classify(&self, c: &NumberCandidate<'_>) -> Option<(&'static str, f32)>;
}

/// North American numbering plan phones and US social security numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NorthAmerica;

impl PiiLocale for NorthAmerica {
    fn name(&self) -> &'static str {
        "north_america"
    }
    fn phone_keywords(&self) -> &'static [&'static str] {
        &[
            "phone*", "tel", "call*", "mobile", "cell*", "fax", "whatsapp", "sms", "text me",
            "reach me", "dial*", "contact*",
        ]
    }
    fn id_keywords(&self) -> &'static [&'static str] {
        &[
            "order*",
            "invoice*",
            "ticket*",
            "tracking",
            "ref",
            "reference",
            "account*",
            "acct",
            "sku",
            "serial*",
            "case",
            "transaction*",
            "txn",
            "id",
            "po",
            "confirmation",
            "booking",
            "customer",
            "member*",
            "policy",
            "part",
            "isbn",
            "build",
            "version",
            "receipt",
            "shipment",
            "parcel",
            "item",
            "no.",
            "nr.",
        ]
    }
    fn classify(&self, c: &NumberCandidate<'_>) -> Option<(&'static str, f32)> {
        let d = c.digits.as_bytes();
        // Social security numbers: AAA-GG-SSSS, or nine digits after a
        // keyword.
        let ssn_shape = (c.groups == [3, 2, 4]
            && c.separators.iter().all(|&s| s == c.separators[0])
            && matches!(c.separators[0], b'-' | b' '))
            || (c.groups == [9] && c.ssn_context);
        if ssn_shape && !c.plus {
            return ssn_valid(c.digits).then_some((rules::US_SSN, 1.0));
        }
        if c.plus {
            return None;
        }
        let (area, rest) = match (d.len(), c.groups) {
            (10, [3, 3, 4]) => (&d[0..3], &d[3..]),
            (11, [1, 3, 3, 4]) if d[0] == b'1' => (&d[1..4], &d[4..]),
            (10, [10]) if c.phone_context => (&d[0..3], &d[3..]),
            (7, [3, 4]) if c.phone_context => {
                return (d[0] >= b'2').then_some((rules::PHONE, 0.7));
            }
            _ => return None,
        };
        let ok = area[0] >= b'2' && rest[0] >= b'2' && !(area[1] == b'1' && area[2] == b'1');
        ok.then_some((rules::PHONE, if c.phone_context { 0.9 } else { 0.8 }))
    }
}

/// European national formats with a trunk prefix `0` (`030 1234567`,
/// `06 12 34 56 78`, `020 7946 0958`) and keywords in German, French,
/// Spanish, Italian, Dutch and Portuguese.
#[derive(Debug, Clone, Copy, Default)]
pub struct Europe;

impl PiiLocale for Europe {
    fn name(&self) -> &'static str {
        "europe"
    }
    fn phone_keywords(&self) -> &'static [&'static str] {
        &[
            "telefon*",
            "telefoon",
            "telefono",
            "teléfono",
            "téléphone",
            "tél",
            "handy",
            "mobil*",
            "móvil",
            "movil",
            "cellulare",
            "mobiel",
            "portable",
            "anrufen",
            "ruf",
            "appelez",
            "llama",
            "chiama",
            "bel ",
            "telemóvel",
        ]
    }
    fn id_keywords(&self) -> &'static [&'static str] {
        &[
            "bestell*",
            "rechnung*",
            "kundennummer",
            "auftrag*",
            "sendung*",
            "commande",
            "facture",
            "pedido",
            "factura",
            "ordine",
            "fattura",
            "bestelling",
            "factuur",
            "encomenda",
            "fatura",
            "referenz",
            "référence",
            "nº",
        ]
    }
    fn classify(&self, c: &NumberCandidate<'_>) -> Option<(&'static str, f32)> {
        let d = c.digits.as_bytes();
        if c.plus || d.first() != Some(&b'0') || d.get(1) == Some(&b'0') {
            return None;
        }
        if !(9..=11).contains(&d.len()) {
            return None;
        }
        let separated = c.groups.len() >= 2
            && c.groups[0] >= 2
            && c.groups[0] <= 5
            && c.groups.iter().all(|&g| g >= 2);
        if separated || c.phone_context {
            Some((rules::PHONE, if c.phone_context { 0.9 } else { 0.7 }))
        } else {
            None
        }
    }
}

/// The personal-data scanner.
#[derive(Debug)]
pub struct PiiScanner {
    locales: Vec<Box<dyn PiiLocale>>,
    /// Phone, identifier and SSN keywords of every locale, one automaton.
    keywords: Option<AhoCorasick>,
    keyword_kind: Vec<Kw>,
    /// Whether each keyword is a stem (may be followed by letters).
    keyword_stem: Vec<bool>,
}

#[derive(Debug, Clone, Copy)]
enum Kw {
    Phone,
    Id,
    Ssn,
}

impl Default for PiiScanner {
    fn default() -> Self {
        PiiScanner::new(vec![Box::new(NorthAmerica), Box::new(Europe)])
    }
}

const C_NONE: u8 = 0;
const C_DIGIT: u8 = 1;
const C_PLUS: u8 = 2;
const C_AT: u8 = 3;
const C_COLON: u8 = 4;
const C_UPPER: u8 = 5;

static CLASS: [u8; 256] = {
    let mut t = [C_NONE; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_digit() {
            C_DIGIT
        } else if b == b'+' || b == b'(' {
            C_PLUS
        } else if b == b'@' {
            C_AT
        } else if b == b':' {
            C_COLON
        } else if b.is_ascii_uppercase() {
            C_UPPER
        } else {
            C_NONE
        };
        i += 1;
    }
    t
};

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl PiiScanner {
    /// A scanner with the given locales (their keywords are merged; each
    /// classifies national formats in order).
    pub fn new(locales: Vec<Box<dyn PiiLocale>>) -> Self {
        let mut words: Vec<&'static str> = Vec::new();
        let mut keyword_kind = Vec::new();
        let mut keyword_stem = Vec::new();
        let mut add = |w: &'static str, k: Kw| {
            let stem = w.ends_with('*');
            words.push(w.trim_end_matches('*'));
            keyword_kind.push(k);
            keyword_stem.push(stem);
        };
        for l in &locales {
            for w in l.phone_keywords() {
                add(w, Kw::Phone);
            }
            for w in l.id_keywords() {
                add(w, Kw::Id);
            }
        }
        for w in ["ssn", "social security", "soc. sec", "ss#"] {
            add(w, Kw::Ssn);
        }
        // Keywords are a handful of short literals, far below the
        // automaton's limits; if building failed anyway, numbers are
        // classified without context (format rules only).
        let keywords = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&words)
            .ok();
        PiiScanner {
            locales,
            keywords,
            keyword_kind,
            keyword_stem,
        }
    }

    /// The names of the configured locales.
    pub fn locale_names(&self) -> Vec<&'static str> {
        self.locales.iter().map(|l| l.name()).collect()
    }

    /// Appends the personal data found in `text` to `out` (action `Allow`;
    /// the engine assigns the profile's action).
    pub fn scan(&self, text: &str, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        let n = b.len();
        let first = out.len();
        let mut i = 0;
        let mut ipv6_until = 0;
        while i < n {
            match CLASS[b[i] as usize] {
                // Nothing starts with lower case, space or most
                // punctuation: skip such stretches eight bytes at a time.
                C_NONE => i = crate::swar::next_in(b, i + 1, b'(', b'Z'),
                C_DIGIT | C_PLUS => {
                    if i > 0 && is_word(b[i - 1]) {
                        // Digits inside a word (`abc123`, a token): skip it.
                        i += 1;
                        while i < n && is_word(b[i]) {
                            i += 1;
                        }
                        continue;
                    }
                    i = self.number(text, i, out).max(i + 1);
                }
                C_AT => {
                    email(text, i, out);
                    i += 1;
                }
                C_COLON => {
                    if i >= ipv6_until {
                        ipv6_until = ipv6(text, i, out);
                    }
                    i += 1;
                }
                _ => {
                    // Upper case: an IBAN starts with two letters and two
                    // digits after a non-word byte.
                    if (i == 0 || !is_word(b[i - 1]))
                        && i + 4 < n
                        && b[i + 1].is_ascii_uppercase()
                        && b[i + 2].is_ascii_digit()
                        && b[i + 3].is_ascii_digit()
                        && let Some(end) = iban_at(text, i, out)
                    {
                        i = end;
                        continue;
                    }
                    i += 1;
                    while i < n && is_word(b[i]) {
                        i += 1;
                    }
                }
            }
        }
        resolve_overlaps(out, first);
    }

    /// Looks for keywords in the 40 bytes before `start`: returns (phone,
    /// identifier, ssn) context, the nearer of phone and identifier winning.
    fn context(&self, text: &str, start: usize) -> (bool, bool, bool) {
        let b = text.as_bytes();
        let mut from = start.saturating_sub(40);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let window = &b[from..start];
        let mut phone: Option<usize> = None;
        let mut id: Option<usize> = None;
        let mut ssn = false;
        let Some(ac) = &self.keywords else {
            return (false, false, false);
        };
        for m in ac.find_overlapping_iter(window) {
            let k = m.pattern().as_usize();
            if m.start() > 0 && window[m.start() - 1].is_ascii_alphabetic() {
                continue;
            }
            if !self.keyword_stem[k]
                && m.end() < window.len()
                && window[m.end()].is_ascii_alphabetic()
            {
                continue;
            }
            let slot = match self.keyword_kind[k] {
                Kw::Phone => &mut phone,
                Kw::Id => &mut id,
                Kw::Ssn => {
                    ssn = true;
                    continue;
                }
            };
            *slot = Some(slot.map_or(m.end(), |e| e.max(m.end())));
        }
        // `#1234` and `No 1234` are identifiers.
        let trimmed = text[from..start].trim_end();
        if trimmed.ends_with('#') || trimmed.ends_with("No") || trimmed.ends_with("Nr") {
            id = Some(window.len());
        }
        match (phone, id) {
            (Some(p), Some(q)) => (p > q, q >= p, ssn),
            (p, q) => (p.is_some(), q.is_some(), ssn),
        }
    }

    /// Reads a number candidate at `start`; returns where it ends.
    fn number(&self, text: &str, start: usize, out: &mut Vec<Finding>) -> usize {
        let b = text.as_bytes();
        let n = b.len();
        let mut i = start;
        let plus = b[i] == b'+';
        if plus || b[i] == b'(' {
            if i + 1 >= n || !b[i + 1].is_ascii_digit() {
                return start + 1;
            }
            i += 1;
        }
        // An identifier glued with `-` or `_` to a word (`ORD-5551234567`).
        if start >= 2 && matches!(b[start - 1], b'-' | b'_' | b'/') && is_word(b[start - 2]) {
            while i < n && (is_word(b[i]) || b[i] == b'-') {
                i += 1;
            }
            return i;
        }
        // Fixed buffers: a candidate is at most 40 bytes.
        let mut digit_buf = [0u8; 40];
        let mut nd = 0usize;
        let mut group_buf = [0usize; 40];
        let mut ng = 0usize;
        let mut sep_buf = [0u8; 40];
        let mut ns = 0usize;
        let mut cur = 0usize;
        let mut end = i;
        while i < n && i - start < 40 {
            let c = b[i];
            if c.is_ascii_digit() {
                digit_buf[nd] = c;
                nd += 1;
                cur += 1;
                i += 1;
                end = i;
                continue;
            }
            // A separator run of one or two bytes, followed by a digit or
            // an opening parenthesis and a digit.
            let mut j = i;
            let mut sep = 0u8;
            while j < n && j - i < 2 && matches!(b[j], b' ' | b'-' | b'.' | b'(' | b')') {
                if sep == 0 || b[j] == b')' || sep == b'(' {
                    sep = b[j];
                }
                j += 1;
            }
            if j == i || j >= n || !b[j].is_ascii_digit() || cur == 0 {
                break;
            }
            group_buf[ng] = cur;
            ng += 1;
            sep_buf[ns] = sep;
            ns += 1;
            cur = 0;
            i = j;
        }
        if cur > 0 {
            group_buf[ng] = cur;
            ng += 1;
        }
        let groups = &group_buf[..ng];
        let seps = &sep_buf[..ns];
        // Only ASCII digits were stored.
        let digits = std::str::from_utf8(&digit_buf[..nd]).unwrap_or("");
        // A number glued to letters (`123abc`, `5kg`) is not a candidate.
        if end < n && b[end].is_ascii_alphabetic() {
            let mut k = end;
            while k < n && is_word(b[k]) {
                k += 1;
            }
            return k;
        }
        let cand_text = &text[start..end];
        // IPv4: four dot-separated groups.
        if groups.len() == 4 && seps.iter().all(|&s| s == b'.') && !plus {
            let preceded_by_version = start > 0 && matches!(b[start - 1], b'v' | b'V');
            // A network in CIDR notation (`10.0.0.0/8`) is not a host.
            let cidr = b.get(end) == Some(&b'/') && b.get(end + 1).is_some_and(u8::is_ascii_digit);
            if !preceded_by_version
                && !cidr
                && cand_text.parse::<Ipv4Addr>().is_ok()
                && !self.context(text, start).1
            {
                push(out, rules::IPV4, start, end, 0.9);
            }
            return end;
        }
        if nd < 7 {
            return end;
        }
        if seps.contains(&b'.') && groups.len() > 2 && !plus {
            // Version numbers, decimals and dotted dates are not phones,
            // except European dotted phone formats handled by context.
            let (phone_ctx, _, _) = self.context(text, start);
            if !phone_ctx {
                return end;
            }
        }

        // Payment cards: 13-19 digits, no separators or consistent spaces
        // or hyphens in card-like groups, Luhn, known issuer prefixes.
        if (13..=19).contains(&nd) && !plus && card_shape(groups, seps) {
            if luhn_valid(digits) && issuer_ok(digits) {
                push(out, rules::CREDIT_CARD, start, end, 1.0);
            }
            return end;
        }

        let (phone_context, id_context, ssn_context) = self.context(text, start);
        let cand = NumberCandidate {
            text: cand_text,
            digits,
            groups,
            separators: seps,
            plus,
            phone_context,
            ssn_context,
        };
        for l in &self.locales {
            if let Some((rule, score)) = l.classify(&cand) {
                if rule == rules::PHONE && id_context {
                    return end;
                }
                push(out, rule, start, end, score);
                return end;
            }
        }
        if id_context {
            return end;
        }
        // International: `+CC ...` with 8-15 digits, or `00CC ...`.
        if plus && (8..=15).contains(&nd) && digits.as_bytes()[0] != b'0' {
            push(out, rules::PHONE, start, end, 0.9);
        } else if digits.starts_with("00")
            && digits.as_bytes().get(2).is_some_and(|&c| c != b'0')
            && (10..=17).contains(&nd)
            && groups.len() >= 2
        {
            push(out, rules::PHONE, start, end, 0.8);
        } else if phone_context && (7..=15).contains(&nd) {
            push(out, rules::PHONE, start, end, 0.7);
        }
        end
    }
}

fn push(out: &mut Vec<Finding>, rule: &'static str, start: usize, end: usize, score: f32) {
    out.push(Finding {
        scanner: Scanner::Pii,
        rule: rule.into(),
        start,
        end,
        score,
        action: GuardAction::Allow,
    });
}

fn priority(rule: &str) -> u8 {
    match rule {
        rules::EMAIL => 7,
        rules::IBAN => 6,
        rules::CREDIT_CARD => 5,
        rules::US_SSN => 4,
        rules::IPV6 => 3,
        rules::IPV4 => 2,
        _ => 1,
    }
}

/// Keeps the higher-priority finding where two overlap.
fn resolve_overlaps(out: &mut Vec<Finding>, first: usize) {
    if out.len() - first < 2 {
        return;
    }
    let mut mine: Vec<Finding> = out.drain(first..).collect();
    mine.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(mine.len());
    for f in mine {
        if let Some(last) = kept.last_mut()
            && f.start < last.end
        {
            if priority(&f.rule) > priority(&last.rule) {
                *last = f;
            }
            continue;
        }
        kept.push(f);
    }
    out.extend(kept);
}

/// Card-like grouping: one group, or groups of four (the last 1-4), or the
/// 4-6-5 / 4-6-4 shapes of American Express and Diners, with one separator
/// kind (space or hyphen).
fn card_shape(groups: &[usize], seps: &[u8]) -> bool {
    if groups.len() == 1 {
        return true;
    }
    if !seps.iter().all(|&s| s == seps[0]) || !matches!(seps[0], b' ' | b'-') {
        return false;
    }
    let fours = groups[..groups.len() - 1].iter().all(|&g| g == 4)
        && (1..=4).contains(&groups[groups.len() - 1]);
    fours || groups == [4, 6, 5] || groups == [4, 6, 4]
}

/// The Luhn check over ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for c in digits.bytes().rev() {
        if !c.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Issuer prefixes and lengths of the major card networks, and no
/// single-digit repeats (`0000 0000 0000 0000` passes Luhn).
fn issuer_ok(d: &str) -> bool {
    let b = d.as_bytes();
    if b.iter().all(|&c| c == b[0]) {
        return false;
    }
    let p2: u32 = d[..2].parse().unwrap_or(0);
    let p4: u32 = d[..4].parse().unwrap_or(0);
    let len = d.len();
    match b[0] {
        b'4' => matches!(len, 13 | 16 | 19),
        b'5' => (51..=55).contains(&p2) && len == 16,
        b'2' => (2221..=2720).contains(&p4) && len == 16,
        b'3' => {
            (matches!(p2, 34 | 37) && len == 15)
                || (matches!(p2, 30 | 36 | 38 | 39) && (14..=16).contains(&len))
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        }
        b'6' => (16..=19).contains(&len),
        _ => false,
    }
}

/// US SSN validity: nine digits, area not 000, 666 or 900-999, group not
/// 00, serial not 0000, and not one of the numbers published as examples.
pub fn ssn_valid(digits: &str) -> bool {
    if digits.len() != 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let area: u32 = digits[0..3].parse().unwrap_or(0);
    let group: u32 = digits[3..5].parse().unwrap_or(0);
    let serial: u32 = digits[5..9].parse().unwrap_or(0);
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return false;
    }
    !matches!(digits, "078051120" | "219099999" | "123456789")
}

/// IBAN lengths by country (ISO 13616 registry).
fn iban_length(cc: &[u8]) -> Option<usize> {
    let len = match cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(len)
}

/// IBAN validity of a compact (no spaces), upper-case IBAN: country length
/// and the ISO 7064 mod-97-10 check.
pub fn iban_valid(iban: &str) -> bool {
    let b = iban.as_bytes();
    if b.len() < 5
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return false;
    }
    if iban_length(&b[..2]) != Some(b.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(b[..4].iter()) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

/// Reads an IBAN at `start` (letters, check digits, then the BBAN with
/// optional single spaces); returns its end when valid.
fn iban_at(text: &str, start: usize, out: &mut Vec<Finding>) -> Option<usize> {
    let b = text.as_bytes();
    let want = iban_length(&b[start..start + 2])?;
    let mut compact = String::with_capacity(want);
    let mut i = start;
    let mut end = start;
    while i < b.len() && compact.len() < want {
        let c = b[i];
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            compact.push(c as char);
            i += 1;
            end = i;
        } else if c == b' ' && i + 1 < b.len() && b[i + 1].is_ascii_alphanumeric() {
            i += 1;
        } else {
            break;
        }
    }
    if compact.len() != want || (end < b.len() && b[end].is_ascii_alphanumeric()) {
        return None;
    }
    if !iban_valid(&compact) {
        return None;
    }
    push(out, rules::IBAN, start, end, 1.0);
    Some(end)
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Checks for an e-mail address around the `@` at `at`.
fn email(text: &str, at: usize, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut s = at;
    while s > 0 && at - s < 64 && is_local(b[s - 1]) {
        s -= 1;
    }
    while s < at && matches!(b[s], b'.' | b'-' | b'+') {
        s += 1;
    }
    if s == at || b[at - 1] == b'.' {
        return;
    }
    let mut e = at + 1;
    while e < b.len()
        && e - at <= 253
        && (b[e].is_ascii_alphanumeric() || matches!(b[e], b'.' | b'-'))
    {
        e += 1;
    }
    while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &text[at + 1..e];
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-') || l.len() > 63)
    {
        return;
    }
    let tld = labels[labels.len() - 1];
    if tld.len() < 2 || !tld.bytes().all(|c| c.is_ascii_alphabetic()) {
        return;
    }
    push(out, rules::EMAIL, s, e, 1.0);
}

/// Checks for an IPv6 address around the `:` at `colon`; returns the end
/// of the run examined so later colons in it are not re-examined.
fn ipv6(text: &str, colon: usize, out: &mut Vec<Finding>) -> usize {
    let b = text.as_bytes();
    let ok = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut s = colon;
    while s > 0 && colon - s < 45 && ok(b[s - 1]) {
        s -= 1;
    }
    let mut e = colon;
    while e < b.len() && e - s < 45 && ok(b[e]) {
        e += 1;
    }
    // Not part of a longer word (`std::fmt`, `a::b::c` in code).
    if (s > 0 && is_word(b[s - 1])) || (e < b.len() && is_word(b[e])) {
        return e;
    }
    while e > s && b[e - 1] == b'.' {
        e -= 1;
    }
    let run = &text[s..e];
    let colons = run.bytes().filter(|&c| c == b':').count();
    if colons < 2 {
        return e;
    }
    let groups = run.split(':').filter(|g| !g.is_empty()).count();
    let has_digit = run.bytes().any(|c| c.is_ascii_digit());
    let plausible = colons >= 4 || (run.contains("::") && groups >= 2 && has_digit);
    if plausible && run.parse::<Ipv6Addr>().is_ok() {
        push(out, rules::IPV6, s, e, 0.9);
    }
    e
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        PiiScanner::default().scan(text, &mut out);
        out.iter()
            .map(|f| (f.rule.to_string(), text[f.start..f.end].to_owned()))
            .collect()
    }

    fn rules_of(text: &str) -> Vec<String> {
        found(text).into_iter().map(|(r, _)| r).collect()
    }

    #[test]
    fn luhn_edge_cases() {
        for (d, ok) in [
            ("4111111111111111", true),
            ("4111111111111112", false),
            ("79927398713", true),
            ("79927398710", false),
            ("0", true),
            ("", false),
            ("4242424242424242", true),
            ("378282246310005", true),
            ("12a4", false),
        ] {
            assert_eq!(luhn_valid(d), ok, "{d}");
        }
    }

    #[test]
    fn iban_edge_cases() {
        for (iban, ok) in [
            ("DE89370400440532013000", true),
            ("GB82WEST12345698765432", true),
            ("FR1420041010050500013M02606", true),
            ("NL91ABNA0417164300", true),
            ("NO9386011117947", true),
            ("DE89370400440532013001", false), // check digits
            ("DE8937040044053201300", false),  // length
            ("XX89370400440532013000", false), // country
            ("de89370400440532013000", false), // case
            ("GB82WEST1234569876543!", false),
        ] {
            assert_eq!(iban_valid(iban), ok, "{iban}");
        }
    }

    #[test]
    fn ssn_edge_cases() {
        for (d, ok) in [
            ("536225018", true),
            ("000225018", false),
            ("666225018", false),
            ("900225018", false),
            ("999225018", false),
            ("536005018", false),
            ("536220000", false),
            ("078051120", false),
            ("123456789", false),
            ("53622501", false),
        ] {
            assert_eq!(ssn_valid(d), ok, "{d}");
        }
    }

    #[test]
    fn detects_personal_data_in_context() {
        // Table: text, expected (rule, matched text) pairs.
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "Mail jane.doe+work@mail.example.org.",
                &[("email", "jane.doe+work@mail.example.org")],
            ),
            (
                "card 4111 1111 1111 1111 exp 12/27",
                &[("credit_card", "4111 1111 1111 1111")],
            ),
            (
                "amex 3782-822463-10005 ok",
                &[("credit_card", "3782-822463-10005")],
            ),
            (
                "IBAN: DE89 3704 0044 0532 0130 00, thanks",
                &[("iban", "DE89 3704 0044 0532 0130 00")],
            ),
            (
                "GB82WEST12345698765432",
                &[("iban", "GB82WEST12345698765432")],
            ),
            ("SSN 536-22-5018", &[("us_ssn", "536-22-5018")]),
            ("my ssn is 536225018", &[("us_ssn", "536225018")]),
            (
                "Call +49 30 1234567 today",
                &[("phone_number", "+49 30 1234567")],
            ),
            ("call (415) 555-0132", &[("phone_number", "(415) 555-0132")]),
            (
                "reach me at 415-555-0132",
                &[("phone_number", "415-555-0132")],
            ),
            ("Tel. 030 12345678", &[("phone_number", "030 12345678")]),
            (
                "appelez le 06 12 34 56 78",
                &[("phone_number", "06 12 34 56 78")],
            ),
            ("phone: 4155550132", &[("phone_number", "4155550132")]),
            ("+14155550132", &[("phone_number", "+14155550132")]),
            (
                "server 192.168.10.24 is down",
                &[("ipv4_address", "192.168.10.24")],
            ),
            (
                "host 2001:db8:85a3::8a2e:370:7334 answered",
                &[("ipv6_address", "2001:db8:85a3::8a2e:370:7334")],
            ),
            (
                "fe80::1ff:fe23:4567:890a%eth0",
                &[("ipv6_address", "fe80::1ff:fe23:4567:890a")],
            ),
        ];
        for (text, want) in cases {
            let got = found(text);
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(r, t)| (r.to_string(), t.to_string()))
                .collect();
            assert_eq!(got, want, "text {text:?}");
        }
    }

    #[test]
    fn lookalikes_are_not_personal_data() {
        for text in [
            "Order 4155550132 shipped",
            "order #4155550132",
            "Invoice no. 030 12345678",
            "Bestellnummer 030 12345678",
            "tracking 1Z999AA10123456784",
            "ORD-4155550132",
            "card 4111 1111 1111 1112",
            "0000 0000 0000 0000",
            "SSN 000-22-5018",
            "the year 2024-01-15 and 15.01.2024",
            "version 10.2.3.4 and v1.2.3.4",
            "use std::fmt::Display; a::b",
            "pi is 3.14159265358979",
            "DE89 3704 0044 0532 0130 01",
            "ratio 12:30:45 at noon",
            "timestamp 1700000000123",
            "@alice and bob@ and @home",
            "size 1 234 567 bytes",
        ] {
            assert!(rules_of(text).is_empty(), "{text:?} gave {:?}", found(text));
        }
    }

    #[test]
    fn custom_locales_plug_in() {
        #[derive(Debug)]
        struct Digits8;
        impl PiiLocale for Digits8 {
            fn name(&self) -> &'static str {
                "test"
            }
            fn phone_keywords(&self) -> &'static [&'static str] {
                &["fone"]
            }
            fn id_keywords(&self) -> &'static [&'static str] {
                &[]
            }
            fn classify(&self, c: &NumberCandidate<'_>) -> Option<(&'static str, f32)> {
                (c.digits.len() == 8 && c.phone_context).then_some((rules::PHONE, 0.5))
            }
        }
        let s = PiiScanner::new(vec![Box::new(Digits8)]);
        let mut out = Vec::new();
        s.scan("fone 9123 4567", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.locale_names(), ["test"]);
    }
}
