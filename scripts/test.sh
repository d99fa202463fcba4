#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Runs the Rust unit and
# integration tests, then the end-to-end suite: the real aibox binary in front
# of the fake upstream, driven by the official `openai` Python SDK, with the
# real Redis on 127.0.0.1:6379 for the shared rate-limit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

cargo build -p aibox -p fake-upstream

# The venv is (re)installed whenever the pinned requirements change.
want="$(sha256sum tests/e2e/requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/pytest ] || [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want" ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
  echo "$want" > .venv/.requirements.sha256
fi

# The real OIDC provider (oidc-provider from the npm registry) for identity tests.
if [ ! -d tests/e2e/oidc/node_modules/oidc-provider ]; then
  npm ci --prefix tests/e2e/oidc --no-audit --no-fund
fi
.venv/bin/pytest -q tests/e2e
