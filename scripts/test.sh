#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Runs the Rust unit and
# integration tests, then the end-to-end suite: the real aibox binary in front
# of the fake upstream, driven by the official `openai` Python SDK, with the
# real Redis on 127.0.0.1:6379 for the shared rate-limit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

cargo build -p aibox -p fake-upstream

# The sandbox tests (tests/e2e/test_sandbox.py) run an MCP server from this
# venv as uid nobody, so the venv is made from the system's python3 (a pyenv
# interpreter under /root is out of that user's reach) and lives where nobody
# can reach it: .venv when every parent directory is o+x, else /var/tmp.
py=python3
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  py=/usr/bin/python3
fi
reachable() {
  local d
  d=$(readlink -f "$1")
  while [ "$d" != / ]; do
    [ $(( 0$(stat -c %a "$d") & 1 )) -eq 1 ] || return 1
    d=$(dirname "$d")
  done
}
venv=.venv
if ! reachable "$PWD"; then
  venv=/var/tmp/aibox-e2e-venv-$(pwd | sha256sum | cut -c1-12)
fi
# The venv is (re)installed whenever the pinned requirements or the
# interpreter change.
want="$(cat tests/e2e/requirements.txt - <<<"$py" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/pytest" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
  echo "$want" > "$venv/.requirements.sha256"
  chmod -R o+rX "$venv"
fi

# The real OIDC provider (oidc-provider from the npm registry) for identity tests.
if [ ! -d tests/e2e/oidc/node_modules/oidc-provider ]; then
  npm ci --prefix tests/e2e/oidc --no-audit --no-fund
fi
"$venv/bin/pytest" -q tests/e2e
