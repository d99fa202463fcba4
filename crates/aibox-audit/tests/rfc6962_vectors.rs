//! Data-driven tests over every inclusion and consistency vector of
//! transparency-dev/merkle (Apache-2.0), vendored in `testdata/` (from
//! `shared/testdata/rfc6962-vectors`) with their licence.
//!
//! Each vector is a JSON object with the proof's inputs and `wantErr`. Every
//! file is parsed with unknown fields refused, so a format change fails
//! loudly instead of being skipped, and every directory must contribute at
//! least one vector so the test cannot pass vacuously. The `subtree*`
//! directories (arbitrary-range subtree proofs, not RFC 9162 proofs) are not
//! exercised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aibox_audit::merkle::{self, CoarseTree, Frontier, Hash, Tree};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rfc6962-vectors");

/// Vectors whose reference outcome is success but which this crate refuses
/// because a hash in them is not 32 bytes long. The reference compares the
/// two roots of an equal-size consistency check as opaque byte strings;
/// this crate types every hash as 32 bytes, so a 12-byte "root" cannot even
/// be expressed. Listed by path so that any other divergence fails the test.
const STRICTER_THAN_REFERENCE: &[&str] =
    &["consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InclusionCase {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyCase {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

/// The leaves of the RFC 6962 reference tree that the happy-path vectors
/// are computed over.
fn reference_tree() -> Tree {
    let leaves: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    let mut tree = Tree::new();
    for l in leaves {
        tree.push_leaf(l);
    }
    tree
}

/// The checks of issue 9 on one happy-path vector: the writer's
/// [`Frontier`] over the first `size` reference leaves has the vector's
/// root, and a [`CoarseTree`] of every block width gives the same root and
/// proof as the full tree, with leaves served only from the blocks it names.
#[allow(clippy::unwrap_used)]
fn check_bounded_trees(tree: &Tree, size: u64, index: u64, old: Option<u64>, want_root: &Hash) {
    let leaves: Vec<Hash> = (0..size).filter_map(|i| tree.leaf_hash(i)).collect();
    assert_eq!(leaves.len() as u64, size);
    let frontier = Frontier::from_leaf_hashes(leaves.iter().copied());
    assert_eq!(&frontier.root(), want_root, "frontier at {size}");
    for shift in 0..=3u32 {
        let mut coarse = CoarseTree::new(shift);
        let full = ((size >> shift) << shift) as usize;
        for block in leaves[..full].chunks(1 << shift) {
            coarse.push_block(block).unwrap();
        }
        let blocks = coarse.proof_blocks(old.map_or(index, |m| m - 1), size);
        let serve = |a: u64, b: u64| {
            blocks
                .contains(&(a >> shift))
                .then(|| merkle::root(&leaves[a as usize..b as usize]))
        };
        assert_eq!(&coarse.root_at(size, serve).unwrap(), want_root);
        match old {
            None => assert_eq!(
                coarse.inclusion_proof(index, size, serve).unwrap(),
                tree.inclusion_proof(index, size).unwrap()
            ),
            Some(m) => assert_eq!(
                coarse.consistency_proof(m, size, serve).unwrap(),
                tree.consistency_proof(m, size).unwrap()
            ),
        }
    }
}

/// Every `.json` file below `dir`, in a stable order.
fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<PathBuf>>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            json_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// A hash as the vectors give it; `None` for anything that is not the
/// base64 of exactly 32 bytes (the vectors use "" and short strings as
/// deliberately malformed hashes).
fn hash(s: &str) -> Option<Hash> {
    Hash::try_from(STANDARD.decode(s).ok()?.as_slice()).ok()
}

/// A proof as the vectors give it (`null` is the empty proof); `None` when
/// any element is not 32 bytes.
fn proof(p: &Option<Vec<String>>) -> Option<Vec<Hash>> {
    p.iter().flatten().map(|h| hash(h)).collect()
}

/// Vector files by directory: (path relative to the vector root, contents).
type Groups = BTreeMap<String, Vec<(String, String)>>;

/// The vectors of `kind`, grouped by their directory below `kind`.
fn load(kind: &str) -> Result<Groups, String> {
    let root = Path::new(VECTORS);
    if !root.is_dir() {
        return Err(format!(
            "the vectors are missing at {}; they live in crates/aibox-audit/testdata",
            root.display()
        ));
    }
    let mut files = Vec::new();
    json_files(&root.join(kind), &mut files).map_err(|e| format!("reading {kind}: {e}"))?;
    let mut groups = Groups::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .replace('\\', "/");
        let group = rel
            .split('/')
            .nth(1)
            .ok_or_else(|| format!("{rel} is not inside a directory of {kind}"))?
            .to_owned();
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{rel}: {e}"))?;
        groups.entry(group).or_default().push((rel, text));
    }
    Ok(groups)
}

/// Checks each case's outcome against its expectation and returns the
/// number of cases run and the stricter-than-reference cases seen.
fn check_all<C>(
    groups: Groups,
    kind: &str,
    expected_groups: &[&str],
    parse: impl Fn(&str) -> C,
    run: impl Fn(&C) -> Result<(), String>,
    want_err: impl Fn(&C) -> bool,
    on_happy: impl Fn(&C),
) -> (usize, Vec<String>) {
    let names: Vec<&str> = groups.keys().map(String::as_str).collect();
    assert_eq!(names, expected_groups, "unexpected {kind} directories");
    let mut total = 0;
    let mut stricter = Vec::new();
    let mut failures = Vec::new();
    let (mut ok_count, mut err_count) = (0, 0);
    for (group, cases) in &groups {
        assert!(!cases.is_empty(), "{kind}/{group} has no vectors");
        for (path, text) in cases {
            let case = parse(text);
            let got = run(&case);
            let want = want_err(&case);
            total += 1;
            if got.is_ok() {
                ok_count += 1;
            } else {
                err_count += 1;
            }
            match (want, &got) {
                (true, Err(_)) => {}
                (false, Ok(())) => on_happy(&case),
                (false, Err(_)) if STRICTER_THAN_REFERENCE.contains(&path.as_str()) => {
                    stricter.push(path.clone());
                }
                (true, Ok(())) => failures.push(format!("{path}: accepted, but must fail")),
                (false, Err(e)) => failures.push(format!("{path}: refused ({e}), but must pass")),
            }
        }
        eprintln!("{kind}/{group}: {} vectors", cases.len());
    }
    assert!(
        failures.is_empty(),
        "{} {kind} vectors disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        ok_count > 0 && err_count > 0,
        "{kind}: {ok_count} accepted, {err_count} refused"
    );
    eprintln!("{kind}: {total} vectors, {ok_count} accepted, {err_count} refused");
    (total, stricter)
}

#[test]
fn every_inclusion_vector() {
    let tree = reference_tree();
    let (total, stricter) = check_all(
        load("inclusion").unwrap(),
        "inclusion",
        &["0", "1", "2", "3", "4", "additional", "single-entry"],
        |text| serde_json::from_str::<InclusionCase>(text).unwrap(),
        |c| {
            let (Some(leaf), Some(root), Some(p)) =
                (hash(&c.leaf_hash), hash(&c.root), proof(&c.proof))
            else {
                return Err(format!("{}: a hash is not 32 bytes", c.desc));
            };
            merkle::verify_inclusion(&leaf, c.leaf_idx, c.tree_size, &p, &root)
                .map_err(|e| e.to_string())
        },
        |c| c.want_err,
        |c| {
            // Happy paths come from the reference tree, except the
            // single-entry case whose lone leaf is arbitrary: where the leaf
            // is the reference tree's, proof generation must reproduce the
            // vector exactly.
            let leaf = hash(&c.leaf_hash).unwrap();
            if tree.leaf_hash(c.leaf_idx) == Some(leaf) {
                let generated = tree.inclusion_proof(c.leaf_idx, c.tree_size).unwrap();
                assert_eq!(Some(generated), proof(&c.proof), "{}", c.desc);
                assert_eq!(tree.root_at(c.tree_size).unwrap(), hash(&c.root).unwrap());
                check_bounded_trees(
                    &tree,
                    c.tree_size,
                    c.leaf_idx,
                    None,
                    &hash(&c.root).unwrap(),
                );
            } else {
                assert_eq!(c.tree_size, 1, "{}", c.desc);
            }
        },
    );
    assert_eq!(stricter, Vec::<String>::new());
    assert!(total >= 90, "only {total} inclusion vectors");
}

#[test]
fn every_consistency_vector() {
    let tree = reference_tree();
    let (total, stricter) = check_all(
        load("consistency").unwrap(),
        "consistency",
        &["0", "1", "2", "3", "4", "additional"],
        |text| serde_json::from_str::<ConsistencyCase>(text).unwrap(),
        |c| {
            let (Some(r1), Some(r2), Some(p)) = (hash(&c.root1), hash(&c.root2), proof(&c.proof))
            else {
                return Err(format!("{}: a hash is not 32 bytes", c.desc));
            };
            merkle::verify_consistency(c.size1, c.size2, &r1, &r2, &p).map_err(|e| e.to_string())
        },
        |c| c.want_err,
        |c| {
            // Every accepted consistency vector is over the reference tree.
            let generated = tree.consistency_proof(c.size1, c.size2).unwrap();
            assert_eq!(Some(generated), proof(&c.proof), "{}", c.desc);
            assert_eq!(tree.root_at(c.size1).unwrap(), hash(&c.root1).unwrap());
            assert_eq!(tree.root_at(c.size2).unwrap(), hash(&c.root2).unwrap());
            check_bounded_trees(&tree, c.size1, 0, None, &hash(&c.root1).unwrap());
            check_bounded_trees(&tree, c.size2, 0, Some(c.size1), &hash(&c.root2).unwrap());
        },
    );
    // The one known divergence must still be there and be the only one.
    assert_eq!(stricter, STRICTER_THAN_REFERENCE);
    assert!(total >= 90, "only {total} consistency vectors");
}
