//! Eight-bytes-at-a-time skipping for the byte loops of the scanners
//! ("SIMD within a register"), without `unsafe` and without a SIMD crate.
//!
//! Every scanner walks its text once; most of any text is lower-case
//! letters and spaces, which none of them acts on. These helpers let the
//! loops jump over such stretches a word (eight bytes) at a time.

const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

#[inline(always)]
fn load(b: &[u8], i: usize) -> Option<u64> {
    let c = b.get(i..i + 8)?;
    Some(u64::from_le_bytes([
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
    ]))
}

/// Repeats a byte across a word.
const fn splat(b: u8) -> u64 {
    (b as u64) * 0x0101_0101_0101_0101
}

/// High bit set in each lane of `x` that is an ASCII byte in `lo..=hi`
/// (`lo >= 1`, `hi < 0x7F`).
#[inline(always)]
fn lanes_in(x: u64, lo: u8, hi: u8) -> u64 {
    let y = x & LOW7;
    let ge_lo = y.wrapping_add(splat(0x80 - lo));
    let gt_hi = y.wrapping_add(splat(0x7F - hi));
    ge_lo & !gt_hi & !x & HIGH
}

/// The first offset at or after `i` of a byte that is not ASCII (or
/// `b.len()`).
#[inline]
pub(crate) fn next_non_ascii(b: &[u8], mut i: usize) -> usize {
    while let Some(x) = load(b, i) {
        let m = x & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] < 0x80 {
        i += 1;
    }
    i
}

/// The first offset at or after `i` of a byte that is not an ASCII
/// lower-case letter (or `b.len()`).
#[inline]
pub(crate) fn end_of_lower(b: &[u8], mut i: usize) -> usize {
    while let Some(x) = load(b, i) {
        let m = !lanes_in(x, b'a', b'z') & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i].is_ascii_lowercase() {
        i += 1;
    }
    i
}

/// The first offset at or after `i` of an ASCII byte in `lo..=hi` (or
/// `b.len()`).
#[inline]
pub(crate) fn next_in(b: &[u8], mut i: usize, lo: u8, hi: u8) -> usize {
    while let Some(x) = load(b, i) {
        let m = lanes_in(x, lo, hi);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !(lo..=hi).contains(&b[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn lane_predicate_matches_the_byte_predicate() {
        // Every byte value in every lane position against the scalar rule.
        for lane in 0..8 {
            for v in 0..=255u8 {
                let mut w = *b"abcdefgh";
                w[lane] = v;
                let x = u64::from_le_bytes(w);
                let m = lanes_in(x, b'(', b'Z');
                for (k, &c) in w.iter().enumerate() {
                    let want = (b'('..=b'Z').contains(&c);
                    assert_eq!(m >> (8 * k + 7) & 1 == 1, want, "{v:#x}@{lane} lane {k}");
                }
            }
        }
    }

    #[test]
    fn finders_stop_at_the_first_byte() {
        let t = "abcdefghijklmnopQrstuvwxyz and more é text";
        let b = t.as_bytes();
        assert_eq!(end_of_lower(b, 0), 16);
        assert_eq!(end_of_lower(b, 17), 26);
        assert_eq!(end_of_lower(b"abc", 0), 3);
        assert_eq!(next_non_ascii(b, 0), t.find('é').unwrap());
        assert_eq!(next_non_ascii(b"abc", 0), 3);
        assert_eq!(next_in(b, 0, b'(', b'Z'), 16);
        assert_eq!(
            next_in(b"no match here at all, really none", 0, b'(', b'Z'),
            20
        );
        assert_eq!(next_in(b"abc", 0, b'(', b'Z'), 3);
    }
}
