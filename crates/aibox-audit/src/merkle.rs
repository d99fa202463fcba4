//! RFC 6962 / RFC 9162 Merkle trees: hashing, roots, proofs and their
//! verification.
//!
//! Hashing (RFC 9162 §2.1.1), with SHA-256:
//!
//! - leaf hash: `SHA-256(0x00 || leaf data)`;
//! - node hash: `SHA-256(0x01 || left || right)`;
//! - the root of the empty tree: `SHA-256("")`;
//! - the root of `n > 1` leaves: `node(MTH(D[0:k]), MTH(D[k:n]))` where `k`
//!   is the largest power of two smaller than `n`.
//!
//! Proofs are lists of 32-byte hashes in the order of RFC 9162 §2.1.3.1
//! (inclusion: from the leaf's sibling up to the root's child) and §2.1.4.1
//! (consistency). Verification follows the algorithms of §2.1.3.2 and
//! §2.1.4.2 and, before running them, requires the proof to have exactly the
//! length that the tree sizes imply: a proof with an extra or a missing
//! element is refused even where the arithmetic could be made to work out.
//!
//! Three ways to produce proofs exist: the free functions over a slice of
//! leaf hashes (simple, linear time, the reference); [`Tree`], which keeps
//! every full subtree hash so that roots and proofs for any historical size
//! take `O(log² n)` hashes; and [`CoarseTree`], which keeps only the subtrees
//! of at least `2^shift` leaves and asks its caller for the few leaf hashes
//! below that level, so a reader's memory is a fraction of the leaves'.
//!
//! [`Frontier`] appends without proofs: it keeps only the right edge of the
//! tree (one hash per set bit of the size), which is all that appending and
//! the root of the current size need, in `O(log n)` memory.

use sha2::{Digest, Sha256};

/// The length of every hash in the tree, in bytes.
pub const HASH_LEN: usize = 32;

/// A SHA-256 digest: a leaf hash, a node hash or a root.
pub type Hash = [u8; HASH_LEN];

/// The domain-separation prefix of leaf hashes.
const LEAF_PREFIX: u8 = 0x00;
/// The domain-separation prefix of interior node hashes.
const NODE_PREFIX: u8 = 0x01;

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The proof has more or fewer elements than the sizes imply.
    #[error("the proof has {got} hashes; exactly {expected} are required")]
    WrongLength {
        /// The exact length the sizes imply.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A consistency proof was asked for from an empty tree.
    #[error("a consistency proof from the empty tree is meaningless")]
    EmptyOldTree,
    /// The old size is larger than the new one.
    #[error("old size {old_size} is larger than new size {new_size}")]
    SizeOrder {
        /// The old size.
        old_size: u64,
        /// The new size.
        new_size: u64,
    },
    /// A requested size is larger than the tree that was asked for a proof.
    #[error("size {size} is beyond the tree, which has {tree_size} leaves")]
    BeyondTree {
        /// The size asked for.
        size: u64,
        /// The size of the tree.
        tree_size: u64,
    },
    /// The proof is well formed but does not lead to the expected root(s).
    #[error("the proof does not match the root hash")]
    RootMismatch,
}

/// The RFC 6962 leaf hash of `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The RFC 6962 interior node hash of two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n`; `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    // For n >= 2, the highest set bit of n - 1 is the largest power of two
    // below n.
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash (MTH) of a list of leaf hashes.
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [only] => *only,
        _ => {
            let k = split_point(leaf_hashes.len() as u64) as usize;
            let (left, right) = leaf_hashes.split_at(k);
            node_hash(&root(left), &root(right))
        }
    }
}

/// The number of hashes in the inclusion proof of leaf `index` in a tree of
/// `size` leaves, or `None` when the index is not in the tree.
pub fn inclusion_proof_len(index: u64, size: u64) -> Option<usize> {
    if index >= size {
        return None;
    }
    // The proof has one hash per level where the paths to the leaf and to the
    // last leaf diverge ("inner"), plus one per left sibling above that point
    // ("border"); this is the decomposition that RFC 9162 §2.1.3.1 walks.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    Some((inner + border) as usize)
}

/// The number of hashes in the consistency proof from `old_size` to
/// `new_size`, or `None` for sizes that have no proof (`old_size == 0` or
/// `old_size > new_size`). Equal sizes have the empty proof.
pub fn consistency_proof_len(old_size: u64, new_size: u64) -> Option<usize> {
    if old_size == 0 || old_size > new_size {
        return None;
    }
    if old_size == new_size {
        return Some(0);
    }
    // The proof is the inclusion proof of the old tree's last leaf, less the
    // levels inside the old tree's rightmost full subtree, plus that
    // subtree's own hash unless it is the whole old tree.
    let shift = old_size.trailing_zeros();
    let inner = 64 - ((old_size - 1) ^ (new_size - 1)).leading_zeros();
    let border = (old_size - 1).checked_shr(inner).unwrap_or(0).count_ones();
    let seed = u32::from(!old_size.is_power_of_two());
    Some((seed + inner - shift + border) as usize)
}

/// Computes the root that an inclusion proof implies (RFC 9162 §2.1.3.2),
/// after checking that the proof has exactly the right length.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    let expected =
        inclusion_proof_len(index, size).ok_or(ProofError::IndexOutOfRange { index, size })?;
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let mut f = index;
    let mut s = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        // The length check above makes this unreachable; it stays because it
        // is the RFC's own guard against an over-long proof.
        if s == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    Ok(r)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves
/// whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    if &computed != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `old_size` leaves with root `old_root` is a
/// prefix of the tree of `new_size` leaves with root `new_root` (RFC 9162
/// §2.1.4.2).
///
/// `old_size` must be positive: a consistency proof from the empty tree is
/// refused as meaningless, as transparency-dev/merkle does. Equal sizes need
/// the empty proof and equal roots.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    let expected = consistency_proof_len(old_size, new_size).ok_or(ProofError::EmptyOldTree)?;
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    if old_size == new_size {
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    // RFC 9162 §2.1.4.2 step 2: when the old tree is a full subtree, its root
    // is the implicit first element of the path.
    let (first, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (first, rest),
            None => {
                return Err(ProofError::WrongLength { expected, got: 0 });
            }
        }
    };
    let mut f = old_size - 1;
    let mut s = new_size - 1;
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The RFC 9162 §2.1.3.1 `PATH(m, D[lo:hi])`, with subtree hashes supplied by
/// `mth`, appended to `out`.
fn path<E>(
    index: u64,
    lo: u64,
    hi: u64,
    mth: &impl Fn(u64, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    if hi - lo <= 1 {
        return Ok(());
    }
    let k = split_point(hi - lo);
    if index < lo + k {
        path(index, lo, lo + k, mth, out)?;
        out.push(mth(lo + k, hi)?);
    } else {
        path(index, lo + k, hi, mth, out)?;
        out.push(mth(lo, lo + k)?);
    }
    Ok(())
}

/// The RFC 9162 §2.1.4.1 `SUBPROOF(m, D[lo:hi], b)`, where `m` is the absolute
/// end of the old tree, appended to `out`.
fn subproof<E>(
    m: u64,
    lo: u64,
    hi: u64,
    complete: bool,
    mth: &impl Fn(u64, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    if m == hi {
        if !complete {
            out.push(mth(lo, hi)?);
        }
        return Ok(());
    }
    let k = split_point(hi - lo);
    if m <= lo + k {
        subproof(m, lo, lo + k, complete, mth, out)?;
        out.push(mth(lo + k, hi)?);
    } else {
        subproof(m, lo + k, hi, false, mth, out)?;
        out.push(mth(lo, lo + k)?);
    }
    Ok(())
}

/// Checks the arguments of an inclusion proof request against a tree of
/// `tree_size` leaves.
fn check_inclusion_args(index: u64, size: u64, tree_size: u64) -> Result<(), ProofError> {
    if size > tree_size {
        return Err(ProofError::BeyondTree { size, tree_size });
    }
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    Ok(())
}

/// Checks the arguments of a consistency proof request against a tree of
/// `tree_size` leaves.
fn check_consistency_args(old_size: u64, new_size: u64, tree_size: u64) -> Result<(), ProofError> {
    if new_size > tree_size {
        return Err(ProofError::BeyondTree {
            size: new_size,
            tree_size,
        });
    }
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    Ok(())
}

/// The inclusion proof of leaf `index` in the tree of all `leaf_hashes`.
///
/// This is the linear-time reference; [`Tree::inclusion_proof`] is the fast
/// one.
pub fn inclusion_proof(leaf_hashes: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaf_hashes.len() as u64;
    check_inclusion_args(index, size, size)?;
    let mut out = Vec::new();
    path(
        index,
        0,
        size,
        &|a, b| slice_root(leaf_hashes, a, b),
        &mut out,
    )?;
    Ok(out)
}

/// The consistency proof from the first `old_size` of `leaf_hashes` to all of
/// them. Equal sizes give the empty proof.
///
/// This is the linear-time reference; [`Tree::consistency_proof`] is the fast
/// one.
pub fn consistency_proof(leaf_hashes: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaf_hashes.len() as u64;
    check_consistency_args(old_size, size, size)?;
    let mut out = Vec::new();
    subproof(
        old_size,
        0,
        size,
        true,
        &|a, b| slice_root(leaf_hashes, a, b),
        &mut out,
    )?;
    Ok(out)
}

/// The root of `leaf_hashes[start..end]`, refusing ranges outside the slice.
fn slice_root(leaf_hashes: &[Hash], start: u64, end: u64) -> Result<Hash, ProofError> {
    let tree_size = leaf_hashes.len() as u64;
    leaf_hashes
        .get(start as usize..end as usize)
        .map(root)
        .ok_or(ProofError::BeyondTree {
            size: end,
            tree_size,
        })
}

/// An append-only Merkle tree that keeps the hash of every full subtree.
///
/// `levels[h][i]` is the root of the full subtree of `2^h` leaves that starts
/// at leaf `i * 2^h`; level 0 holds the leaf hashes. This takes about twice
/// the space of the leaf hashes (64 MiB per million leaves) and makes the root
/// of any prefix, and any inclusion or consistency proof, a matter of
/// combining at most `log2 n` stored hashes per proof element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of the given leaf hashes, in order.
    pub fn from_leaf_hashes(leaf_hashes: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Self::new();
        for h in leaf_hashes {
            tree.push_leaf_hash(h);
        }
        tree
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf by its data and returns its index.
    pub fn push_leaf(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// Appends a leaf by its leaf hash and returns its index.
    pub fn push_leaf_hash(&mut self, hash: Hash) -> u64 {
        let index = self.size();
        let mut level = 0;
        let mut carry = hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let Some(nodes) = self.levels.get_mut(level) else {
                // The push above guarantees the level exists.
                return index;
            };
            nodes.push(carry);
            // A level with an even number of nodes just completed a pair,
            // which is a full subtree one level up.
            if nodes.len() % 2 != 0 {
                return index;
            }
            match nodes.as_slice() {
                [.., left, right] => carry = node_hash(left, right),
                _ => return index,
            }
            level += 1;
        }
    }

    /// The leaf hash at `index`, if the tree has it.
    pub fn leaf_hash(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        // The whole tree is the full subtrees named by the set bits of its
        // size, and the one at level h is the last node stored at level h;
        // folding them from the smallest (rightmost) up gives the root.
        let size = self.size();
        let mut acc: Option<Hash> = None;
        for (h, level) in self.levels.iter().enumerate() {
            if (size >> h) & 1 == 0 {
                continue;
            }
            if let Some(node) = level.last() {
                acc = Some(match acc {
                    None => *node,
                    Some(right) => node_hash(node, &right),
                });
            }
        }
        acc.unwrap_or_else(empty_root)
    }

    /// The root of the tree as it was when it had `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.size() {
            return Err(ProofError::BeyondTree {
                size,
                tree_size: self.size(),
            });
        }
        self.range_hash(0, size)
    }

    /// The inclusion proof of leaf `index` in the tree as it was when it had
    /// `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        check_inclusion_args(index, size, self.size())?;
        let mut out = Vec::with_capacity(64);
        path(index, 0, size, &|a, b| self.range_hash(a, b), &mut out)?;
        Ok(out)
    }

    /// The consistency proof from the tree of `old_size` leaves to the tree
    /// of `new_size` leaves. Equal sizes give the empty proof.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        check_consistency_args(old_size, new_size, self.size())?;
        let mut out = Vec::with_capacity(64);
        subproof(
            old_size,
            0,
            new_size,
            true,
            &|a, b| self.range_hash(a, b),
            &mut out,
        )?;
        Ok(out)
    }

    /// The Merkle tree hash of leaves `[start, end)`.
    ///
    /// The ranges that roots and proofs need always start at a multiple of a
    /// power of two at least as large as the range, so they split, left to
    /// right, into full subtrees of strictly decreasing size, and their hash
    /// is the right-to-left fold of those subtrees' hashes.
    fn range_hash(&self, start: u64, end: u64) -> Result<Hash, ProofError> {
        let missing = ProofError::BeyondTree {
            size: end,
            tree_size: self.size(),
        };
        if start >= end {
            return if start == end && start == 0 {
                Ok(empty_root())
            } else {
                Err(missing)
            };
        }
        let mut chunks: Vec<Hash> = Vec::with_capacity(64);
        let mut p = start;
        while p < end {
            let h = 63 - (end - p).leading_zeros();
            let width = 1u64 << h;
            if !p.is_multiple_of(width) {
                // An unaligned range is not a subtree of the RFC 6962 shape;
                // no caller asks for one.
                return Err(missing);
            }
            let node = self
                .levels
                .get(h as usize)
                .and_then(|level| level.get(usize::try_from(p >> h).ok()?))
                .ok_or_else(|| missing.clone())?;
            chunks.push(*node);
            p += width;
        }
        let mut iter = chunks.iter().rev();
        let mut acc = *iter.next().ok_or(missing)?;
        for left in iter {
            acc = node_hash(left, &acc);
        }
        Ok(acc)
    }
}

impl Tree {
    /// The stored root of the full subtree of `2^level` leaves that starts
    /// at leaf `index * 2^level`.
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.levels
            .get(usize::try_from(level).ok()?)?
            .get(usize::try_from(index).ok()?)
            .copied()
    }
}

/// The right edge of an append-only Merkle tree: the roots of the full
/// subtrees that the tree splits into (one per set bit of its size, largest
/// first) and the last leaf hash.
///
/// Appending a leaf merges the equal-sized subtrees at the edge, like a
/// binary counter's carry, so memory is `O(log n)` hashes (at most 64) and
/// each append takes amortised one node hash. This is all a log writer
/// needs: the root of the current size for its checkpoint and the last leaf
/// to chain the next envelope to. Proofs need more and come from [`Tree`]
/// or [`CoarseTree`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Full subtree roots, leftmost (largest) first.
    peaks: Vec<Hash>,
    last_leaf: Option<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The frontier of the tree of the given leaf hashes, in order.
    pub fn from_leaf_hashes(leaf_hashes: impl IntoIterator<Item = Hash>) -> Self {
        let mut f = Self::new();
        f.extend(leaf_hashes);
        f
    }

    /// The number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hash of the last leaf appended, if any.
    pub fn last_leaf_hash(&self) -> Option<Hash> {
        self.last_leaf
    }

    /// Appends a leaf by its data and returns its index.
    pub fn push_leaf(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// Appends a leaf by its leaf hash and returns its index.
    pub fn push_leaf_hash(&mut self, hash: Hash) -> u64 {
        let index = self.size;
        let mut carry = hash;
        // Each trailing one bit of the old size is a full subtree of the
        // same size as the carry; merging them is what makes the new size's
        // bit pattern.
        let mut bits = index;
        while bits & 1 == 1 {
            let Some(left) = self.peaks.pop() else {
                break;
            };
            carry = node_hash(&left, &carry);
            bits >>= 1;
        }
        self.peaks.push(carry);
        self.size = index.wrapping_add(1);
        self.last_leaf = Some(hash);
        index
    }

    /// Appends leaves by their leaf hashes, in order.
    pub fn extend(&mut self, leaf_hashes: impl IntoIterator<Item = Hash>) {
        for h in leaf_hashes {
            self.push_leaf_hash(h);
        }
    }

    /// The root of the tree of every leaf appended.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        let mut acc = *last;
        for left in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// An append-only Merkle tree that stores only the full subtrees of at
/// least `2^shift` leaves ("blocks" and everything above them) and asks the
/// caller for the leaf hashes below that level.
///
/// Memory is `64 / 2^shift` bytes per leaf (a quarter byte per leaf at
/// `shift` 8), instead of [`Tree`]'s 64. Any root, inclusion or consistency
/// proof then needs leaf hashes from at most two blocks: for an inclusion
/// proof of leaf `i` in a tree of `n` leaves, block `i >> shift` and block
/// `(n - 1) >> shift`; for a consistency proof from `m` to `n`, blocks
/// `(m - 1) >> shift` and `(n - 1) >> shift` (see [`CoarseTree::proof_blocks`]).
/// The last block of a size that is not a multiple of `2^shift` is partial and
/// is never stored here; its leaves always come from the caller.
///
/// The caller supplies leaves through a function from an aligned range
/// `[start, end)` narrower than a block to the Merkle tree hash of those
/// leaves, or `None` when it does not have them, which makes the proof fail
/// with [`ProofError::BeyondTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoarseTree {
    shift: u32,
    /// Leaf `b` of this tree is the root of block `b`.
    blocks: Tree,
}

impl CoarseTree {
    /// The largest `shift` accepted: blocks of `2^32` leaves.
    pub const MAX_SHIFT: u32 = 32;

    /// An empty tree with blocks of `2^shift` leaves (`shift` is capped at
    /// [`Self::MAX_SHIFT`]).
    pub fn new(shift: u32) -> Self {
        Self {
            shift: shift.min(Self::MAX_SHIFT),
            blocks: Tree::new(),
        }
    }

    /// The base-two logarithm of the block width.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// The number of leaves in one block.
    pub fn block_len(&self) -> u64 {
        1u64 << self.shift
    }

    /// The number of complete blocks stored.
    pub fn complete_blocks(&self) -> u64 {
        self.blocks.size()
    }

    /// The number of leaves the stored blocks cover.
    pub fn covered_leaves(&self) -> u64 {
        self.blocks.size() << self.shift
    }

    /// Appends the next block, given the leaf hashes of its `2^shift`
    /// leaves; a slice of any other length is refused and nothing changes.
    pub fn push_block(&mut self, leaf_hashes: &[Hash]) -> Result<(), ProofError> {
        if leaf_hashes.len() as u64 != self.block_len() {
            return Err(ProofError::WrongLength {
                expected: usize::try_from(self.block_len()).unwrap_or(usize::MAX),
                got: leaf_hashes.len(),
            });
        }
        self.blocks.push_leaf_hash(root(leaf_hashes));
        Ok(())
    }

    /// The blocks whose leaves a proof at `size` for leaf (or old tree end)
    /// `index` may need: the block of `index` and the block of the tree's
    /// last leaf (equal when they coincide). For a consistency proof from
    /// `m`, pass `m - 1` as `index`.
    pub fn proof_blocks(&self, index: u64, size: u64) -> [u64; 2] {
        [index >> self.shift, size.saturating_sub(1) >> self.shift]
    }

    /// The root of the tree as it was when it had `size` leaves.
    pub fn root_at(
        &self,
        size: u64,
        leaves: impl Fn(u64, u64) -> Option<Hash>,
    ) -> Result<Hash, ProofError> {
        self.range_hash(0, size, &leaves)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        leaves: impl Fn(u64, u64) -> Option<Hash>,
    ) -> Result<Vec<Hash>, ProofError> {
        check_inclusion_args(index, size, u64::MAX)?;
        let mut out = Vec::with_capacity(64);
        path(
            index,
            0,
            size,
            &|a, b| self.range_hash(a, b, &leaves),
            &mut out,
        )?;
        Ok(out)
    }

    /// The consistency proof from the tree of `old_size` leaves to the tree
    /// of `new_size` leaves. Equal sizes give the empty proof.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
        leaves: impl Fn(u64, u64) -> Option<Hash>,
    ) -> Result<Vec<Hash>, ProofError> {
        check_consistency_args(old_size, new_size, u64::MAX)?;
        let mut out = Vec::with_capacity(64);
        subproof(
            old_size,
            0,
            new_size,
            true,
            &|a, b| self.range_hash(a, b, &leaves),
            &mut out,
        )?;
        Ok(out)
    }

    /// The Merkle tree hash of leaves `[start, end)`, split as in
    /// [`Tree`]'s `range_hash` into aligned full subtrees of decreasing
    /// size: those of a block or more come from the stored blocks, smaller
    /// ones from the caller.
    fn range_hash(
        &self,
        start: u64,
        end: u64,
        leaves: &impl Fn(u64, u64) -> Option<Hash>,
    ) -> Result<Hash, ProofError> {
        let missing = ProofError::BeyondTree {
            size: end,
            tree_size: self.covered_leaves(),
        };
        if start >= end {
            return if start == end && start == 0 {
                Ok(empty_root())
            } else {
                Err(missing)
            };
        }
        let mut chunks: Vec<Hash> = Vec::with_capacity(64);
        let mut p = start;
        while p < end {
            let h = 63 - (end - p).leading_zeros();
            let width = 1u64 << h;
            if !p.is_multiple_of(width) {
                return Err(missing);
            }
            let node = if h >= self.shift {
                self.blocks.node(h - self.shift, p >> h)
            } else {
                leaves(p, p + width)
            };
            chunks.push(node.ok_or_else(|| missing.clone())?);
            p += width;
        }
        let mut iter = chunks.iter().rev();
        let mut acc = *iter.next().ok_or(missing)?;
        for left in iter {
            acc = node_hash(left, &acc);
        }
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(root(&[]), empty_root());
        assert_eq!(Tree::new().root(), empty_root());
    }

    #[test]
    fn leaf_hash_of_empty_data_matches_rfc6962_test_tree() {
        // The first leaf of the RFC 6962 reference tree is the empty string.
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn tree_matches_reference_for_every_size_index_and_old_size() {
        let all = leaves(70);
        let mut tree = Tree::new();
        for (i, h) in all.iter().enumerate() {
            assert_eq!(tree.push_leaf_hash(*h), i as u64);
        }
        for n in 0..=70u64 {
            let prefix = &all[..n as usize];
            let r = root(prefix);
            assert_eq!(tree.root_at(n).unwrap(), r, "root at {n}");
            for i in 0..n {
                let p = inclusion_proof(prefix, i).unwrap();
                assert_eq!(
                    tree.inclusion_proof(i, n).unwrap(),
                    p,
                    "inclusion {i} of {n}"
                );
                assert_eq!(Some(p.len()), inclusion_proof_len(i, n));
                verify_inclusion(&all[i as usize], i, n, &p, &r).unwrap();
                // One more or one fewer element is refused.
                let mut longer = p.clone();
                longer.push(r);
                assert!(verify_inclusion(&all[i as usize], i, n, &longer, &r).is_err());
                if !p.is_empty() {
                    assert!(verify_inclusion(&all[i as usize], i, n, &p[1..], &r).is_err());
                    assert!(
                        verify_inclusion(&all[i as usize], i, n, &p[..p.len() - 1], &r).is_err()
                    );
                }
                // A different leaf or index is refused.
                assert!(verify_inclusion(&leaf_hash(b"x"), i, n, &p, &r).is_err());
                if n > 1 {
                    assert!(verify_inclusion(&all[i as usize], (i + 1) % n, n, &p, &r).is_err());
                }
            }
            for m in 1..=n {
                let p = consistency_proof(prefix, m).unwrap();
                assert_eq!(
                    tree.consistency_proof(m, n).unwrap(),
                    p,
                    "consistency {m}->{n}"
                );
                assert_eq!(Some(p.len()), consistency_proof_len(m, n));
                let old = root(&all[..m as usize]);
                verify_consistency(m, n, &old, &r, &p).unwrap();
                let mut longer = p.clone();
                longer.push(r);
                assert!(verify_consistency(m, n, &old, &r, &longer).is_err());
                if !p.is_empty() {
                    assert!(verify_consistency(m, n, &old, &r, &p[..p.len() - 1]).is_err());
                    assert!(verify_consistency(m, n, &old, &leaf_hash(b"x"), &p).is_err());
                    assert!(verify_consistency(m, n, &leaf_hash(b"x"), &r, &p).is_err());
                }
            }
        }
    }

    #[test]
    fn refuses_impossible_arguments() {
        let all = leaves(5);
        let tree = Tree::from_leaf_hashes(all.iter().copied());
        let r = tree.root();
        assert_eq!(
            verify_inclusion(&all[0], 5, 5, &[], &r),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            verify_inclusion(&all[0], 0, 0, &[], &empty_root()),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            verify_consistency(0, 5, &empty_root(), &r, &[]),
            Err(ProofError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(0, 0, &empty_root(), &empty_root(), &[]),
            Err(ProofError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(5, 4, &r, &r, &[]),
            Err(ProofError::SizeOrder {
                old_size: 5,
                new_size: 4
            })
        );
        assert_eq!(
            verify_consistency(5, 5, &r, &r, &[r]),
            Err(ProofError::WrongLength {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(verify_consistency(5, 5, &r, &r, &[]), Ok(()));
        assert_eq!(
            verify_consistency(5, 5, &r, &all[0], &[]),
            Err(ProofError::RootMismatch)
        );
        assert!(matches!(
            tree.inclusion_proof(0, 6),
            Err(ProofError::BeyondTree {
                size: 6,
                tree_size: 5
            })
        ));
        assert!(matches!(
            tree.consistency_proof(0, 5),
            Err(ProofError::EmptyOldTree)
        ));
        assert!(matches!(
            tree.consistency_proof(3, 2),
            Err(ProofError::SizeOrder { .. })
        ));
        assert!(tree.root_at(6).is_err());
        assert!(inclusion_proof(&all, 5).is_err());
        assert!(consistency_proof(&all, 6).is_err());
        assert_eq!(tree.leaf_hash(4), Some(all[4]));
        assert_eq!(tree.leaf_hash(5), None);
    }

    #[test]
    fn proof_lengths_handle_the_full_u64_range() {
        // The last leaf of 2^64 - 1 leaves is a lone subtree at depth 63.
        assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), Some(63));
        assert_eq!(inclusion_proof_len(0, (1 << 63) + 1), Some(64));
        assert_eq!(inclusion_proof_len(u64::MAX, u64::MAX), None);
        assert_eq!(consistency_proof_len(1, u64::MAX), Some(64));
        assert_eq!(
            consistency_proof_len(u64::MAX - 1, u64::MAX).map(|n| n > 0),
            Some(true)
        );
        // Huge sizes with short proofs fail cleanly, without overflow.
        let h = leaf_hash(b"");
        assert!(verify_inclusion(&h, u64::MAX - 1, u64::MAX, &[h], &h).is_err());
        assert!(verify_consistency(u64::MAX - 1, u64::MAX, &h, &h, &[h]).is_err());
    }

    /// A deterministic pseudo-random sequence (xorshift64*), so that the
    /// property tests below cover many sizes reproducibly without a
    /// dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn issue_9_frontier_matches_the_full_tree_at_every_size() {
        // Every size up to 1100 (several carries through ten levels), one
        // leaf at a time, checked against the full tree and the reference.
        let all = leaves(1100);
        let mut frontier = Frontier::new();
        let mut tree = Tree::new();
        assert_eq!(frontier.root(), empty_root());
        assert_eq!(frontier.last_leaf_hash(), None);
        for (i, h) in all.iter().enumerate() {
            assert_eq!(frontier.push_leaf_hash(*h), i as u64);
            tree.push_leaf_hash(*h);
            let n = i as u64 + 1;
            assert_eq!(frontier.size(), n);
            assert_eq!(frontier.root(), tree.root(), "root at {n}");
            assert_eq!(frontier.last_leaf_hash(), Some(*h));
            // The edge holds one hash per set bit of the size, no more.
            assert_eq!(frontier.peaks.len() as u32, n.count_ones(), "peaks at {n}");
            if n <= 70 {
                assert_eq!(frontier.root(), root(&all[..i + 1]));
            }
        }
        // Built in one go or in chunks, the frontier is the same.
        let mut chunked = Frontier::new();
        for chunk in all.chunks(37) {
            chunked.extend(chunk.iter().copied());
        }
        assert_eq!(chunked, frontier);
        assert_eq!(Frontier::from_leaf_hashes(all.iter().copied()), frontier);
    }

    #[test]
    fn issue_9_frontier_matches_the_full_tree_at_random_sizes() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..40 {
            let n = xorshift(&mut state) % 5000;
            let all: Vec<Hash> = (0..n)
                .map(|_| leaf_hash(&xorshift(&mut state).to_le_bytes()))
                .collect();
            let frontier = Frontier::from_leaf_hashes(all.iter().copied());
            let tree = Tree::from_leaf_hashes(all.iter().copied());
            assert_eq!(frontier.size(), n);
            assert_eq!(frontier.root(), tree.root(), "size {n}");
            assert_eq!(frontier.last_leaf_hash(), all.last().copied());
        }
    }

    /// A coarse tree over `all` with blocks of `2^shift` leaves, and a leaf
    /// source that serves only the two blocks a proof may need.
    fn coarse(all: &[Hash], shift: u32, size: u64) -> CoarseTree {
        let mut t = CoarseTree::new(shift);
        let full = (size >> shift) << shift;
        for block in all[..full as usize].chunks(1 << shift) {
            t.push_block(block).unwrap();
        }
        t
    }

    fn serve<'a>(
        all: &'a [Hash],
        shift: u32,
        allowed: [u64; 2],
        size: u64,
    ) -> impl Fn(u64, u64) -> Option<Hash> + 'a {
        move |a, b| {
            assert!(b - a < 1 << shift, "asked for [{a}, {b}) at shift {shift}");
            assert!(b <= size, "asked for [{a}, {b}) beyond {size}");
            if !allowed.contains(&(a >> shift)) {
                return None;
            }
            Some(root(&all[a as usize..b as usize]))
        }
    }

    #[test]
    fn issue_9_coarse_tree_proofs_match_the_full_tree() {
        // Every size, index and old size up to 70 leaves, for block widths
        // from one leaf to 32, with the leaf source limited to the blocks
        // `proof_blocks` names: any other request fails the proof.
        let all = leaves(70);
        let tree = Tree::from_leaf_hashes(all.iter().copied());
        for shift in 0..=5u32 {
            for n in 1..=70u64 {
                let t = coarse(&all, shift, n);
                let tail = t.proof_blocks(n - 1, n);
                assert_eq!(
                    t.root_at(n, serve(&all, shift, tail, n)).unwrap(),
                    tree.root_at(n).unwrap(),
                    "root at {n}, shift {shift}"
                );
                for i in 0..n {
                    let blocks = t.proof_blocks(i, n);
                    assert_eq!(
                        t.inclusion_proof(i, n, serve(&all, shift, blocks, n))
                            .unwrap(),
                        tree.inclusion_proof(i, n).unwrap(),
                        "inclusion {i} of {n}, shift {shift}"
                    );
                }
                for m in 1..=n {
                    let blocks = t.proof_blocks(m - 1, n);
                    assert_eq!(
                        t.consistency_proof(m, n, serve(&all, shift, blocks, n))
                            .unwrap(),
                        tree.consistency_proof(m, n).unwrap(),
                        "consistency {m}->{n}, shift {shift}"
                    );
                }
            }
        }
    }

    #[test]
    fn issue_9_coarse_tree_proofs_match_at_random_sizes() {
        // Larger trees with the production block width (256 leaves) and a
        // small one, at random sizes, indexes and old sizes.
        let all = leaves(20_000);
        let tree = Tree::from_leaf_hashes(all.iter().copied());
        let mut state = 0x0123_4567_89ab_cdef;
        for shift in [3u32, 8] {
            for _ in 0..25 {
                let n = 1 + xorshift(&mut state) % all.len() as u64;
                let t = coarse(&all, shift, n);
                for _ in 0..20 {
                    let i = xorshift(&mut state) % n;
                    let blocks = t.proof_blocks(i, n);
                    let p = t
                        .inclusion_proof(i, n, serve(&all, shift, blocks, n))
                        .unwrap();
                    assert_eq!(p, tree.inclusion_proof(i, n).unwrap(), "{i} of {n}");
                    let r = t
                        .root_at(n, serve(&all, shift, t.proof_blocks(n - 1, n), n))
                        .unwrap();
                    verify_inclusion(&all[i as usize], i, n, &p, &r).unwrap();
                    let m = 1 + xorshift(&mut state) % n;
                    let blocks = t.proof_blocks(m - 1, n);
                    assert_eq!(
                        t.consistency_proof(m, n, serve(&all, shift, blocks, n))
                            .unwrap(),
                        tree.consistency_proof(m, n).unwrap(),
                        "{m} -> {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn issue_9_coarse_tree_refuses_what_it_cannot_prove() {
        let all = leaves(40);
        let t = coarse(&all, 3, 40);
        assert_eq!(t.complete_blocks(), 5);
        assert_eq!(t.covered_leaves(), 40);
        // A block of the wrong width is refused and changes nothing.
        let mut u = t.clone();
        assert!(u.push_block(&all[..7]).is_err());
        assert_eq!(u, t);
        // Beyond the stored blocks, with no leaves from the caller.
        assert!(matches!(
            t.inclusion_proof(0, 48, |_, _| None),
            Err(ProofError::BeyondTree { .. })
        ));
        // Leaves withheld by the caller.
        assert!(t.inclusion_proof(3, 40, |_, _| None).is_err());
        assert!(matches!(
            t.inclusion_proof(40, 40, |_, _| None),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            t.consistency_proof(0, 40, |_, _| None),
            Err(ProofError::EmptyOldTree)
        ));
        assert_eq!(t.root_at(0, |_, _| None), Ok(empty_root()));
    }
}
