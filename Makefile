# Convenience targets; each is one command documented in the README.
.PHONY: serve test lint bench bootstrap

serve:
	cargo run --release -p aibox -- serve

bootstrap:
	cargo run --release -p aibox -- bootstrap

test:
	./scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	./bench/gateway.sh
