//! Criterion benchmarks of aibox's hot paths live in `benches/`; this crate
//! has no library code. Run them with `cargo bench -p aibox-bench`.
