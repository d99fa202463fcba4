//! Deterministic synthetic credentials for tests, the corpus and benches.
//!
//! No token-shaped literal sits in this repository: a string such as a
//! Stripe live key or a Slack token in a committed file would (rightly) be
//! flagged by push-protection scanners and would train everyone to click
//! such warnings away. Tests and the corpus instead write the fixed prefix
//! and ask for the random part, which is generated here from a seed
//! (splitmix64), so every run sees the same text.
//!
//! The corpus uses the template `⟦ALPHABET:N⟧` (for example `ghp_⟦a62:36⟧`),
//! expanded by [`expand`]; the brackets are chosen because they do not
//! occur in ordinary prompts.

/// A splitmix64 stream.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `n` characters from `alphabet` (which must not be empty), seeded by `seed`.
pub fn chars(alphabet: &str, n: usize, seed: u64) -> String {
    let a: Vec<char> = alphabet.chars().collect();
    if a.is_empty() {
        return String::new();
    }
    let mut r = Rng(seed);
    (0..n)
        .map(|_| a[(r.next_u64() % a.len() as u64) as usize])
        .collect()
}

/// Letters and digits.
pub const A62: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Lower-case hexadecimal.
pub const HEX: &str = "0123456789abcdef";
/// Standard base64 symbols.
pub const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// URL-safe base64 symbols.
pub const URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// RFC 4648 base32.
pub const B32: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Letters.
pub const ALPHA: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Upper-case letters and digits.
pub const UPPER36: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Bech32 symbols, upper case.
pub const BECH32: &str = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L";
/// Decimal digits.
pub const DIGITS: &str = "0123456789";
/// Lower-case letters and digits.
pub const LOWER36: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

fn alphabet(name: &str) -> Option<&'static str> {
    Some(match name {
        "a62" => A62,
        "hex" => HEX,
        "b64" => B64,
        "url" => URL,
        "b32" => B32,
        "alpha" => ALPHA,
        "upper36" => UPPER36,
        "lower36" => LOWER36,
        "bech32" => BECH32,
        "digits" => DIGITS,
        _ => return None,
    })
}

/// Expands every `⟦ALPHABET:N⟧` in `template` with characters generated
/// from `seed` (each occurrence continues the stream); an unknown alphabet
/// or a bad count is left as written, so the corpus test sees it.
pub fn expand(template: &str, seed: u64) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    let mut n = 0u64;
    while let Some(open) = rest.find('⟦') {
        out.push_str(&rest[..open]);
        let after = &rest[open + '⟦'.len_utf8()..];
        let Some(close) = after.find('⟧') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let spec = &after[..close];
        let parsed = spec
            .split_once(':')
            .and_then(|(a, c)| Some((alphabet(a)?, c.parse::<usize>().ok()?)));
        match parsed {
            Some((a, count)) if count <= 4096 => {
                n += 1;
                out.push_str(&chars(
                    a,
                    count,
                    seed.wrapping_mul(1_000_003).wrapping_add(n),
                ));
            }
            _ => out.push_str(&rest[open..open + '⟦'.len_utf8() + close + '⟧'.len_utf8()]),
        }
        rest = &after[close + '⟧'.len_utf8()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_deterministic_and_sized() {
        let a = expand("key ghp_⟦a62:36⟧ and ⟦hex:8⟧.", 7);
        let b = expand("key ghp_⟦a62:36⟧ and ⟦hex:8⟧.", 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), "key ghp_".len() + 36 + " and ".len() + 8 + 1);
        assert_ne!(a, expand("key ghp_⟦a62:36⟧ and ⟦hex:8⟧.", 8));
        assert_eq!(expand("⟦nope:3⟧ ⟦a62:x⟧ ⟦", 1), "⟦nope:3⟧ ⟦a62:x⟧ ⟦");
    }
}
