//! Compact JWS plumbing shared by the OIDC validator, the principal header
//! and CapTokens.
//!
//! Parsing is done here rather than by `jsonwebtoken::decode` for two
//! reasons: every check must use the caller's `now` (the library reads the
//! wall clock itself), and the header must be read with a deliberately small
//! schema so that `jku`, `x5u`, `jwk` and `x5c` are never even deserialised,
//! let alone used as a key source. Signature arithmetic stays in
//! `jsonwebtoken`'s crypto provider or in `ed25519-dalek`.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// The three parts of a compact JWS, still encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    /// The base64url header.
    pub header: &'a str,
    /// The base64url payload.
    pub payload: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
}

/// Splits a compact JWS into exactly three non-empty base64url parts.
///
/// Because `.` is outside the base64url alphabet, the alphabet check also
/// refuses tokens with more than three parts (such as JWE's five).
pub(crate) fn split(token: &str) -> Option<Parts<'_>> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let (header, payload) = signing_input.split_once('.')?;
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return None;
    }
    if !is_b64url(header) || !is_b64url(payload) || !is_b64url(signature) {
        return None;
    }
    Some(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes one unpadded base64url part.
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Encodes bytes as unpadded base64url.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends the unpadded base64url encoding of `bytes` to `out`.
pub(crate) fn b64_encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// The header fields aibox reads. Everything else (notably `jku`, `x5u`,
/// `jwk`, `x5c`) is skipped by serde without being parsed into anything.
#[derive(Debug, Deserialize)]
pub(crate) struct RawHeader<'a> {
    /// The signing algorithm as written in the token.
    #[serde(borrow, default)]
    pub alg: Option<Cow<'a, str>>,
    /// The key id.
    #[serde(borrow, default)]
    pub kid: Option<Cow<'a, str>>,
    /// RFC 7515 §4.1.11: a token that marks extensions as critical must be
    /// refused by a verifier that does not understand them, and aibox
    /// understands none.
    #[serde(default)]
    pub crit: Option<IgnoredAny>,
}

/// Decodes and parses a header part. Duplicate fields are refused by serde,
/// so a header cannot say two different things about `alg` or `kid`. The
/// whole header must be UTF-8 (RFC 7515 section 5.2), not only the members
/// aibox reads: serde skips ignored members without checking their bytes.
pub(crate) fn parse_header<'a>(decoded: &'a [u8]) -> Option<RawHeader<'a>> {
    let text = std::str::from_utf8(decoded).ok()?;
    let h: RawHeader<'a> = serde_json::from_str(text).ok()?;
    if h.crit.is_some() {
        return None;
    }
    Some(h)
}

/// Seconds since the Unix epoch; instants before it count as zero, which only
/// makes tokens look older (so expired rather than valid).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads a JSON NumericDate: a non-negative integer or finite number of
/// seconds. Fractions are truncated.
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    if (0.0..1.0e19).contains(&f) {
        // The range check above keeps the conversion in range; `as`
        // truncates the fraction, which RFC 7519 allows.
        let secs = f as u64;
        return Some(secs);
    }
    None
}

/// A printable, bounded rendering of attacker-controlled text for logs and
/// error hints: characters outside a conservative set become `?`, and the
/// result is cut at `max` characters.
pub(crate) fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_ascii_alphanumeric() || "._-:/@+ =".contains(c) {
            out.push(c);
        } else {
            out.push('?');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue9_fuzz_header_with_invalid_utf8_in_an_ignored_member_is_refused() {
        // Found by the `jwt` fuzz target: `typ` held the bytes D2 D2 ..., which
        // serde skipped unchecked, so the header parsed.
        let mut header = br#"{"alg": "EdDSA", "kid": "ed-1", "typ": ""#.to_vec();
        header.extend_from_slice(&[0xD2; 8]);
        header.extend_from_slice(br#"JWT"}"#);
        assert!(parse_header(&header).is_none());
        let fixed = br#"{"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"}"#;
        assert!(parse_header(fixed).is_some_and(|h| h.alg.as_deref() == Some("EdDSA")));
    }

    #[test]
    fn split_accepts_three_parts_only() {
        assert!(split("a.b.c").is_some());
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            ".b.c",
            "a..c",
            "a.b.",
            "a.b.c=",
            "a b.c.d",
            "a.b+.c",
        ] {
            assert!(split(bad).is_none(), "{bad:?} accepted");
        }
        let p = split("hh.pp.ss").unwrap();
        assert_eq!(p.signing_input, "hh.pp");
        assert_eq!(p.signature, "ss");
    }

    #[test]
    fn header_ignores_key_sources_and_refuses_crit_and_duplicates() {
        let h = parse_header(
            br#"{"alg":"RS256","kid":"k1","jku":"https://evil","jwk":{"kty":"oct"},"x5u":"x","x5c":["a"]}"#,
        )
        .unwrap();
        assert_eq!(h.alg.as_deref(), Some("RS256"));
        assert_eq!(h.kid.as_deref(), Some("k1"));
        assert!(parse_header(br#"{"alg":"RS256","crit":["b64"],"b64":false}"#).is_none());
        assert!(parse_header(br#"{"alg":"RS256","alg":"none"}"#).is_none());
        assert!(parse_header(br#"{"alg":5}"#).is_none());
        assert!(parse_header(b"not json").is_none());
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(numeric_date(&serde_json::json!(10)), Some(10));
        assert_eq!(numeric_date(&serde_json::json!(10.9)), Some(10));
        assert_eq!(numeric_date(&serde_json::json!(-1)), None);
        assert_eq!(numeric_date(&serde_json::json!("10")), None);
        assert_eq!(numeric_date(&serde_json::json!(1e300)), None);
    }

    #[test]
    fn printable_neutralises_and_bounds() {
        assert_eq!(printable("../../etc/passwd", 64), "../../etc/passwd");
        assert_eq!(printable("a\nb\u{1b}[31m", 64), "a?b??31m");
        assert_eq!(printable(&"x".repeat(100), 4), "xxxx...");
    }
}
