//! The incremental tree at a million leaves: proofs stay logarithmic.
//!
//! The bound asserted here is loose on purpose (CI machines are small and
//! shared, and tests run unoptimised): it separates `O(log² n)` proof
//! generation, which takes microseconds, from any accidental `O(n)` path,
//! which at this size takes hundreds of milliseconds. The measured times are
//! printed for the record.

use std::time::{Duration, Instant};

use aibox_audit::merkle::{self, Tree};

const LEAVES: u64 = 1_000_000;

#[test]
fn proofs_at_a_million_leaves_are_fast_and_verify() {
    let mut tree = Tree::new();
    let started = Instant::now();
    for i in 0..LEAVES {
        tree.push_leaf(&i.to_be_bytes());
    }
    eprintln!("built {LEAVES} leaves in {:?}", started.elapsed());
    assert_eq!(tree.size(), LEAVES);

    let root = tree.root();
    let old_size = LEAVES - 12_345;
    let old_root = tree.root_at(old_size).unwrap();

    // A spread of indices, including both ends and the old tree's edge.
    let indices: Vec<u64> = (0..200u64)
        .map(|k| (k * 4_999_963) % LEAVES)
        .chain([0, 1, LEAVES - 1, old_size - 1, old_size])
        .collect();

    let started = Instant::now();
    let proofs: Vec<_> = indices
        .iter()
        .map(|&i| tree.inclusion_proof(i, LEAVES).unwrap())
        .collect();
    let per_inclusion = started.elapsed() / indices.len() as u32;

    let started = Instant::now();
    let consistency: Vec<_> = (1..=100u64)
        .map(|k| {
            let m = k * 9_973;
            (m, tree.consistency_proof(m, LEAVES).unwrap())
        })
        .collect();
    let per_consistency = started.elapsed() / consistency.len() as u32;
    eprintln!(
        "inclusion proof: {per_inclusion:?} each; consistency proof: {per_consistency:?} each"
    );

    for (&i, p) in indices.iter().zip(&proofs) {
        let leaf = merkle::leaf_hash(&i.to_be_bytes());
        merkle::verify_inclusion(&leaf, i, LEAVES, p, &root).unwrap();
    }
    for (m, p) in &consistency {
        let r = tree.root_at(*m).unwrap();
        merkle::verify_consistency(*m, LEAVES, &r, &root, p).unwrap();
    }
    let p = tree.consistency_proof(old_size, LEAVES).unwrap();
    merkle::verify_consistency(old_size, LEAVES, &old_root, &root, &p).unwrap();

    let bound = Duration::from_millis(25);
    assert!(
        per_inclusion < bound,
        "inclusion proofs take {per_inclusion:?}"
    );
    assert!(
        per_consistency < bound,
        "consistency proofs take {per_consistency:?}"
    );
}
