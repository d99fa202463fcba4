"""`aibox doctor` end to end (issue 7, items 4 and 5): the reference
deployment in deploy/ passes with an env file made by `aibox bootstrap`, and
each fixture (the reference with one thing changed, or a file from
doctor_fixtures/) trips exactly the check it is about. JSON output is
parsed, SARIF output is validated against the SARIF 2.1.0 JSON schema, no
secret ever appears in any output, and the exit status is 1 on a high
finding, 0 otherwise, 2 on unreadable inputs."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

from conftest import AIBOX_BIN, REPO_ROOT, _binary, clean_env, dead_port

DEPLOY = REPO_ROOT / "deploy"
FIXTURES = Path(__file__).resolve().parent / "doctor_fixtures"
SARIF_SCHEMA = FIXTURES / "sarif-schema-2.1.0.json"

#: The values only the operator knows (deploy/README.md, step 2).
OPERATOR = {
    "AIBOX_PUBLIC_URL": "https://ai.example.com",
    "KEYCLOAK_PUBLIC_URL": "https://auth.example.com",
    "WEBUI_SECRET_KEY": secrets.token_hex(32),
    "OPEN_WEBUI_AIBOX_API_KEY": "aibox_0123456789abcdef_"
    + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
}


def aibox(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary(AIBOX_BIN), *args],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def doctor(root: Path, *extra: str, fmt: str = "json") -> tuple[subprocess.CompletedProcess[str], Any]:
    r = aibox(["doctor", "--env-file", "deploy/.env", "--format", fmt, *extra], cwd=root)
    assert r.returncode in (0, 1), f"status {r.returncode}\n{r.stdout}\n{r.stderr}"
    doc = json.loads(r.stdout) if fmt in ("json", "sarif") else None
    return r, doc


def ids(doc: dict[str, Any], severity: str | None = None) -> set[str]:
    return {f["id"] for f in doc["findings"] if severity is None or f["severity"] == severity}


#: Published development defaults: the rules' help quotes them on purpose.
PUBLIC_DEFAULTS = {"pk-lf-1234567890", "sk-lf-1234567890"}


def env_values(root: Path) -> list[str]:
    """Every value of the reference's env file that is worth hiding."""
    out = []
    for line in (root / "deploy" / ".env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            v = line.split("=", 1)[1]
            if len(v) >= 8 and not v.startswith(("https://", "http://")) and v not in PUBLIC_DEFAULTS:
                out.append(v)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The reference deployment with an env file from `aibox bootstrap` plus
    the operator's four values, and an empty data directory."""
    root = tmp_path_factory.mktemp("doctor-reference")
    shutil.copytree(DEPLOY, root / "deploy", ignore=shutil.ignore_patterns(".env", ".env.*"))
    (root / "data").mkdir()
    r = aibox(
        ["bootstrap", "--env-file", "deploy/.env", "--config", "deploy/config/gateway/config.yaml",
         "--service", "aibox", "--service", "open-webui"],
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    with (root / "deploy" / ".env").open("a") as f:
        for k, v in OPERATOR.items():
            f.write(f"{k}={v}\n")
    return root


@pytest.fixture
def ref(template: Path, tmp_path: Path) -> Path:
    """A private copy of the reference deployment (modes kept)."""
    root = tmp_path / "case"
    shutil.copytree(template, root)
    return root


# --------------------------------------------------------------------------
# Editing helpers: each asserts that what it changes is there exactly once,
# so a change to deploy/ that moves the target fails loudly here.


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


def edit_service(root: Path, service: str, old: str, new: str) -> None:
    """Replaces `old` inside one service's block of the compose file."""
    path = root / "deploy" / "docker-compose.yml"
    text = path.read_text()
    m = re.search(rf"^  {re.escape(service)}:\n(?:(?:    .*|\s*)\n)+", text, re.M)
    assert m, f"service {service} not found"
    block = m.group(0)
    assert block.count(old) == 1, f"{old!r} occurs {block.count(old)} times in service {service}"
    path.write_text(text[: m.start()] + block.replace(old, new) + text[m.end():])


def set_env(root: Path, name: str, value: str | None) -> None:
    """Sets (or with None removes) a variable of the reference's env file."""
    path = root / "deploy" / ".env"
    lines = [l for l in path.read_text().splitlines() if not l.startswith(f"{name}=")]
    if value is not None:
        lines.append(f"{name}={value}")
    path.write_text("\n".join(lines) + "\n")


def edit_realm(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / "deploy" / "keycloak" / "realm-aibox.json"
    realm = json.loads(path.read_text())
    change(realm)
    path.write_text(json.dumps(realm, indent=2) + "\n")


def frontend(realm: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in realm["clients"] if c["clientId"] == "open-webui")


def keyring(byte: int) -> str:
    return "v1:" + base64.urlsafe_b64encode(bytes([byte]) * 32).decode().rstrip("=")


def audit_db(root: Path, *, tenant_keys: bool) -> None:
    """An audit database whose recorded key is not the env file's, with
    records; without tenant keys its envelopes cannot be verified."""
    db = sqlite3.connect(root / "data" / "audit.db")
    db.executescript(
        """
        CREATE TABLE audit_keys (version INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
        CREATE TABLE audit_tenant_keys (tenant TEXT, version INTEGER, checkpoint_key TEXT, envelope_key TEXT, created_ms INTEGER);
        CREATE TABLE audit_rows (tenant TEXT, seq INTEGER, turn TEXT, event TEXT, prev_row_hash BLOB, row_hash BLOB);
        CREATE TABLE audit_envelopes (tenant TEXT, leaf_index INTEGER, turn TEXT, first_seq INTEGER, last_seq INTEGER, key_version INTEGER, leaf_hash BLOB, note TEXT);
        CREATE TABLE audit_checkpoints (tenant TEXT, size INTEGER, key_version INTEGER, root BLOB, note TEXT, created_ms INTEGER);
        """
    )
    db.execute("INSERT INTO audit_keys VALUES (1, ?, 0)", (secrets.token_hex(32),))
    db.execute("INSERT INTO audit_rows VALUES ('default', 1, 't1', '{}', x'00', x'00')")
    db.execute("INSERT INTO audit_envelopes VALUES ('default', 0, 't1', 1, 1, 1, x'00', 'note')")
    if tenant_keys:
        db.execute("INSERT INTO audit_tenant_keys VALUES ('default', 1, 'k', 'k', 0)")
    db.commit()
    db.close()


def add_hardened_service(root: Path, name: str, extra: str) -> None:
    digest = "f" * 64
    edit(
        root / "deploy" / "docker-compose.yml",
        "\nnetworks:\n",
        f"""
  {name}:
    image: example/{name}:1.0@sha256:{digest}
    user: "1000:1000"
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    networks: [frontend]
{extra}
networks:
""",
    )


def git_track_env(root: Path) -> None:
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "deploy/.env"], cwd=root, check=True)


# --------------------------------------------------------------------------
# The table: (check id, how to trip it). High-severity ids must be the only
# failing high check; other severities must appear with no high finding.

COMPOSE = ("deploy", "docker-compose.yml")


def _p(root: Path, *parts: str) -> Path:
    return root.joinpath(*parts)


FIXTURES_TABLE: list[tuple[str, str, Callable[[Path], None]]] = [
    # Secrets (seed 000 §1, §9).
    ("AIBOX-SECRET-001", "placeholder password", lambda r: set_env(r, "POSTGRES_PASSWORD", "changeme")),
    ("AIBOX-SECRET-002", "aibox key not passed to the container",
     lambda r: edit_service(r, "aibox", "      AUDIT_SIGNING_KEY: ${AUDIT_SIGNING_KEY}\n", "")),
    ("AIBOX-SECRET-003", "short password", lambda r: set_env(r, "REDIS_PASSWORD", "short-pw-1")),
    ("AIBOX-SECRET-004", "development Langfuse keys", lambda r: (
        set_env(r, "LANGFUSE_PUBLIC_KEY", "pk-lf-1234567890"), set_env(r, "LANGFUSE_SECRET_KEY", "sk-lf-1234567890"))),
    ("AIBOX-SECRET-005", "development keys in data/", lambda r: _p(r, "data", "dev-keys.env").write_text("X=1\n")),
    ("AIBOX-SECRET-006", "secret written in the compose file", lambda r: edit_service(
        r, "aibox", "SERVICE_AIBOX_CLIENT_SECRET: ${SERVICE_AIBOX_CLIENT_SECRET}",
        "SERVICE_AIBOX_CLIENT_SECRET: Zq8rT3kLm9Pw2xVb7NcY4sHd6Jf1GaQ0")),
    # The env file itself.
    ("AIBOX-ENVFILE-001", "env file readable by others", lambda r: _p(r, "deploy", ".env").chmod(0o644)),
    ("AIBOX-ENVFILE-002", "env file tracked by git", git_track_env),
    # Gateway config (seed 000 §2, §3).
    ("AIBOX-CONFIG-001", "unknown config key", lambda r: edit(
        _p(r, *COMPOSE), "      redis_url: redis://redis:6379/0\n", "      redis_url: redis://redis:6379/0\n      bogus_key: 1\n")),
    ("AIBOX-AUTH-001", "auth disabled", lambda r: edit(_p(r, *COMPOSE), "        enabled: true\n", "        enabled: false\n")),
    ("AIBOX-AUTH-002", "http issuer", lambda r: set_env(r, "KEYCLOAK_PUBLIC_URL", "http://auth.example.com")),
    ("AIBOX-TLS-001", "JWKS over http to a public host", lambda r: edit(
        _p(r, *COMPOSE), "jwks_url: http://keycloak:8080/", "jwks_url: http://auth.example.com/")),
    ("AIBOX-GUARD-001", "constitution is not YAML", lambda r: shutil.copy(
        FIXTURES / "constitution-invalid.yaml", _p(r, "deploy", "config", "guardrail", "constitution.yaml"))),
    ("AIBOX-GUARD-002", "guardrail disabled", lambda r: edit(
        _p(r, "deploy", "config", "guardrail", "constitution.yaml"), "\nenabled: true\n", "\nenabled: false\n")),
    # Keycloak realm (seed 000 §3, §4).
    ("AIBOX-REALM-001", "password grants", lambda r: edit_realm(
        r, lambda realm: frontend(realm).update(directAccessGrantsEnabled=True))),
    ("AIBOX-REALM-002", "localhost redirect URI", lambda r: edit_realm(
        r, lambda realm: frontend(realm)["redirectUris"].append("http://localhost:3000/*"))),
    ("AIBOX-REALM-003", "TLS not required", lambda r: edit_realm(r, lambda realm: realm.update(sslRequired="none"))),
    ("AIBOX-REALM-004", "admin-cli with password grants", lambda r: edit_realm(
        r, lambda realm: realm["clients"].append({"clientId": "admin-cli", "publicClient": True, "directAccessGrantsEnabled": True}))),
    ("AIBOX-REALM-005", "wildcard redirect URI", lambda r: edit_realm(
        r, lambda realm: frontend(realm).update(redirectUris=["*"]))),
    ("AIBOX-REALM-006", "no PKCE", lambda r: edit_realm(
        r, lambda realm: frontend(realm)["attributes"].pop("pkce.code.challenge.method"))),
    ("AIBOX-REALM-007", "implicit flow", lambda r: edit_realm(
        r, lambda realm: frontend(realm).update(implicitFlowEnabled=True))),
    ("AIBOX-REALM-008", "client secret in the realm file", lambda r: edit_realm(
        r, lambda realm: frontend(realm).update(secret="Zq8rT3kLm9Pw2xVb7NcY4sHd6Jf1GaQ0"))),
    ("AIBOX-REALM-009", "realm variable not set", lambda r: edit_realm(
        r, lambda realm: frontend(realm)["redirectUris"].append("${OTHER_PUBLIC_URL}/*"))),
    ("AIBOX-REALM-010", "plain-http redirect URI", lambda r: edit_realm(
        r, lambda realm: frontend(realm)["redirectUris"].append("http://ai.example.com/cb"))),
    # Compose (seed 000 §5, seed 004 §2, §3, §7-§9).
    ("AIBOX-PORT-001", "PostgreSQL published", lambda r: edit_service(
        r, "postgres", "    networks: [backend]\n", "    networks: [backend]\n    ports: [\"5432:5432\"]\n")),
    ("AIBOX-PORT-002", "ops port published", lambda r: edit_service(
        r, "aibox", "      - \"127.0.0.1:8080:8080\"\n", "      - \"127.0.0.1:8080:8080\"\n      - \"127.0.0.1:9000:9000\"\n")),
    ("AIBOX-PORT-003", "a port on all interfaces", lambda r: add_hardened_service(r, "n8n", "    ports: [\"5678:5678\"]")),
    ("AIBOX-NET-001", "backend network not internal", lambda r: edit(
        _p(r, *COMPOSE), "  backend:\n    internal: true\n", "  backend: {}\n")),
    ("AIBOX-NET-002", "Redis on the frontend network", lambda r: edit_service(
        r, "redis", "    networks: [backend]\n", "    networks: [backend, frontend]\n")),
    ("AIBOX-HARDEN-001", "capabilities kept", lambda r: edit_service(r, "ollama", "    cap_drop: [ALL]\n", "")),
    ("AIBOX-HARDEN-002", "writable root filesystem", lambda r: edit_service(r, "ollama", "    read_only: true\n", "")),
    ("AIBOX-HARDEN-003", "no-new-privileges missing", lambda r: edit_service(
        r, "ollama", "    security_opt: [\"no-new-privileges:true\"]\n", "")),
    ("AIBOX-HARDEN-004", "root user", lambda r: edit_service(r, "ollama", "    user: \"1000:1000\"\n", "    user: \"0:0\"\n")),
    ("AIBOX-HARDEN-005", "privileged container", lambda r: edit_service(
        r, "ollama", "    read_only: true\n", "    read_only: true\n    privileged: true\n")),
    ("AIBOX-IMAGE-001", "image without digest", lambda r: edit_service(
        r, "ollama", "ollama/ollama:0.11.10@sha256:", "ollama/ollama:0.11.10#sha256:")),
    ("AIBOX-DANGER-001", "--danger flag", lambda r: edit_service(
        r, "aibox", "    working_dir: /srv/aibox\n",
        "    working_dir: /srv/aibox\n    command: [\"serve\", \"--danger-allow-unauthenticated-public-bind\"]\n")),
    ("AIBOX-KEYRING-001", "another service's principal keyring", None),  # see test_keyrings_differ
    ("AIBOX-COMPOSE-001", "compose variable not set", lambda r: edit_service(
        r, "open-webui", "      WEBUI_URL: ${AIBOX_PUBLIC_URL}\n", "      WEBUI_URL: ${WEBUI_PUBLIC_URL}\n")),
    # Seed 004 tokens.
    ("AIBOX-DASH-001", "dashboard auth unset", lambda r: set_env(r, "DASHBOARD_AUTH_TOKEN", "")),
    ("AIBOX-OPS-001", "ops token unset", lambda r: set_env(r, "OPS_CONTROLLER_TOKEN", None)),
    # Data directory (seed 004 §10, §11; seed 000 §8).
    ("AIBOX-DATA-001", "plaintext tokens in data/*.json", lambda r: shutil.copytree(
        FIXTURES / "data" / "openclaw", _p(r, "data", "openclaw"))),
    ("AIBOX-MCP-001", "filesystem server on /", lambda r: (
        shutil.copytree(FIXTURES / "data" / "mcp", _p(r, "data", "mcp")),
        edit_service(r, "aibox", "      AIBOX_CONFIG: /etc/aibox/config.yaml\n",
                     "      AIBOX_CONFIG: /etc/aibox/config.yaml\n      FILESYSTEM_ROOT: /\n"))),
    ("AIBOX-AUDIT-001", "audit key replaced", lambda r: audit_db(r, tenant_keys=True)),
    ("AIBOX-AUDIT-002", "audit records without verifier keys", lambda r: audit_db(r, tenant_keys=False)),
    # Dockerfile and systemd unit.
    ("AIBOX-SYSTEMD-001", "unit without NoNewPrivileges", lambda r: edit(
        _p(r, "deploy", "systemd", "aibox.service"), "NoNewPrivileges=yes\n", "")),
]

SEVERITY_OF_HIGH = {
    "AIBOX-SECRET-001", "AIBOX-SECRET-002", "AIBOX-SECRET-003", "AIBOX-SECRET-004", "AIBOX-ENVFILE-001",
    "AIBOX-ENVFILE-002", "AIBOX-CONFIG-001", "AIBOX-AUTH-001", "AIBOX-AUTH-002", "AIBOX-AUTH-003",
    "AIBOX-TLS-001", "AIBOX-GUARD-001", "AIBOX-REALM-001", "AIBOX-REALM-002", "AIBOX-REALM-003",
    "AIBOX-REALM-005", "AIBOX-REALM-007", "AIBOX-REALM-008", "AIBOX-PORT-001", "AIBOX-PORT-002",
    "AIBOX-NET-001", "AIBOX-HARDEN-001", "AIBOX-HARDEN-003", "AIBOX-HARDEN-004", "AIBOX-HARDEN-005",
    "AIBOX-DANGER-001", "AIBOX-KEYRING-001", "AIBOX-DASH-001", "AIBOX-OPS-001", "AIBOX-DATA-001",
    "AIBOX-MCP-001", "AIBOX-AUDIT-002",
}


def test_reference_deployment_passes(ref: Path):
    r, doc = doctor(ref)
    assert r.returncode == 0, r.stdout
    # Not only no high finding: nothing but the note that --online was not run.
    assert ids(doc) == {"AIBOX-DOCTOR-002"}, json.dumps(doc["findings"], indent=1)
    assert doc["summary"] == {"high": 0, "medium": 0, "low": 0, "info": 1, "total": 1,
                              "failed": False, "exit_status": 0}
    # Text says the same, and the config inline in the compose file was read.
    t = aibox(["doctor", "--env-file", "deploy/.env"], cwd=ref)
    assert t.returncode == 0
    assert "0 high, 0 medium, 0 low, 1 info: no high-severity finding" in t.stdout
    assert "deploy/docker-compose.yml:" in t.stdout
    for v in env_values(ref):
        assert v not in r.stdout and v not in t.stdout and v not in t.stderr


@pytest.mark.parametrize(
    "rule,mutate",
    [pytest.param(rule, mutate, id=f"{rule}-{what}") for rule, what, mutate in FIXTURES_TABLE if mutate],
)
def test_each_fixture_trips_its_check(ref: Path, rule: str, mutate: Callable[[Path], None]):
    mutate(ref)
    r, doc = doctor(ref)
    high = ids(doc, "high")
    if rule in SEVERITY_OF_HIGH:
        assert high == {rule}, json.dumps(doc["findings"], indent=1)
        assert r.returncode == 1
    else:
        assert rule in ids(doc), json.dumps(doc["findings"], indent=1)
        assert high == set(), json.dumps(doc["findings"], indent=1)
        assert r.returncode == 0
    for f in doc["findings"]:
        if f["id"] == rule:
            assert f["fix"] and f["evidence"] and f["title"]
            assert f["severity"] == ("high" if rule in SEVERITY_OF_HIGH else f["severity"])
    # Whatever tripped, no value of the env file is printed.
    for v in env_values(ref):
        assert v not in r.stdout, f"a secret of the env file appears in the output ({rule})"
    for weak in ("short-pw-1", "changeme", "Zq8rT3kLm9Pw2xVb7NcY", "fixture-gateway-token", "AAFixtureFixture"):
        assert weak not in r.stdout


def test_every_rule_has_a_fixture():
    """The table covers every check the doctor has (besides its own notes,
    the online ones, which test_online_issuer covers, and the --sandbox host
    probe, which test_sandbox.py covers)."""
    sarif = json.loads(aibox(["doctor", "--format", "sarif", "--deploy-dir", "/nonexistent",
                              "--data-dir", "/nonexistent"], cwd=Path("/")).stdout)
    rules = {r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]}
    covered = {rule for rule, _, _ in FIXTURES_TABLE} | {"AIBOX-AUTH-003", "AIBOX-AUTH-004",
                                                           "AIBOX-DOCTOR-001", "AIBOX-DOCTOR-002",
                                                           "AIBOX-SANDBOX-001", "AIBOX-SANDBOX-002"}
    assert rules == covered, rules ^ covered
    high_rules = {r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]
                  if r["defaultConfiguration"]["level"] == "error"}
    assert high_rules == SEVERITY_OF_HIGH


def test_dockerfile_checks(ref: Path):
    dockerfile = ref / "deploy" / "Dockerfile"
    # The distroless :nonroot base runs as 65532 even without USER; an
    # explicit root user in the final stage is a finding.
    edit(dockerfile, "USER 65532:65532\n", "USER root\n")
    r, doc = doctor(ref)
    assert ids(doc, "high") == {"AIBOX-HARDEN-004"}
    assert any(f["location"] and f["location"]["file"].endswith("deploy/Dockerfile")
               for f in doc["findings"] if f["id"] == "AIBOX-HARDEN-004")
    text = dockerfile.read_text()
    text = text.replace("USER root\n", "USER 65532:65532\n")
    dockerfile.write_text(re.sub(r"(ARG RUNTIME_IMAGE=[^@]+)@sha256:[0-9a-f]{64}", r"\1", text))
    r, doc = doctor(ref)
    assert ids(doc, "high") == set() and "AIBOX-IMAGE-001" in ids(doc), json.dumps(doc["findings"], indent=1)


def test_systemd_danger_flag(ref: Path):
    edit(ref / "deploy" / "systemd" / "aibox.service", "ExecStart=/usr/local/bin/aibox serve\n",
         "ExecStart=/usr/local/bin/aibox serve --danger-allow-unauthenticated-public-bind\n")
    r, doc = doctor(ref)
    assert ids(doc, "high") == {"AIBOX-DANGER-001"} and r.returncode == 1


def test_keyrings_differ(ref: Path):
    """A second service's env file whose principal keyring lacks the key the
    gateway signs with (same id, other key)."""
    other = ref / "memory.env"
    other.write_text(f"AIBOX_PRINCIPAL_KEYS={keyring(7)}\n")
    other.chmod(0o600)
    r, doc = doctor(ref, "--env-file", "memory.env")
    assert ids(doc, "high") == {"AIBOX-KEYRING-001"}, json.dumps(doc["findings"], indent=1)
    f = next(f for f in doc["findings"] if f["id"] == "AIBOX-KEYRING-001")
    assert f["location"]["file"] == "memory.env" and f["location"]["line"] == 1
    assert "different key under id 'v1'" in f["evidence"]
    # The same keyring in both: fine.
    principal = next(l for l in (ref / "deploy" / ".env").read_text().splitlines()
                     if l.startswith("AIBOX_PRINCIPAL_KEYS="))
    other.write_text(principal + "\n")
    r, doc = doctor(ref, "--env-file", "memory.env")
    assert ids(doc, "high") == set()


def test_filesystem_root_elsewhere_is_fine(ref: Path):
    shutil.copytree(FIXTURES / "data" / "mcp", ref / "data" / "mcp")
    edit_service(ref, "aibox", "      AIBOX_CONFIG: /etc/aibox/config.yaml\n",
                 "      AIBOX_CONFIG: /etc/aibox/config.yaml\n      FILESYSTEM_ROOT: /srv/shared\n")
    r, doc = doctor(ref)
    assert ids(doc, "high") == set(), json.dumps(doc["findings"], indent=1)


def test_plaintext_token_evidence_points_at_the_line(ref: Path):
    shutil.copytree(FIXTURES / "data" / "openclaw", ref / "data" / "openclaw")
    r, doc = doctor(ref)
    found = {(f["location"]["line"], f["evidence"].split("'")[1]) for f in doc["findings"] if f["id"] == "AIBOX-DATA-001"}
    # The token (line 6) and the Telegram bot token (line 12); not the ${VAR}
    # reference nor maxTokens.
    assert found == {(6, "gateway.auth.token"), (12, "channels.telegram.botToken")}, found


class _Discovery(BaseHTTPRequestHandler):
    issuer = ""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.endswith("/.well-known/openid-configuration"):
            body = json.dumps({"issuer": type(self).issuer, "jwks_uri": "x"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


def test_online_issuer(ref: Path):
    server = HTTPServer(("127.0.0.1", 0), _Discovery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        set_env(ref, "KEYCLOAK_PUBLIC_URL", base)
        # The provider names another issuer: every login would fail.
        _Discovery.issuer = "https://other.example.com/realms/aibox"
        r, doc = doctor(ref, "--online")
        assert ids(doc, "high") == {"AIBOX-AUTH-002", "AIBOX-AUTH-003"}, json.dumps(doc["findings"], indent=1)
        assert "AIBOX-DOCTOR-002" not in ids(doc)
        # It names the same one: only the http issuer remains.
        _Discovery.issuer = f"{base}/realms/aibox"
        r, doc = doctor(ref, "--online")
        assert ids(doc, "high") == {"AIBOX-AUTH-002"}
        assert "AIBOX-AUTH-004" not in ids(doc)
    finally:
        server.shutdown()
        server.server_close()
    # Nobody answers: a medium finding, not a crash.
    set_env(ref, "KEYCLOAK_PUBLIC_URL", f"http://127.0.0.1:{dead_port()}")
    r, doc = doctor(ref, "--online")
    assert "AIBOX-AUTH-004" in ids(doc) and ids(doc, "high") == {"AIBOX-AUTH-002"}


def _validator() -> jsonschema.Draft4Validator:
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


def test_sarif_is_valid_sarif_2_1_0(ref: Path):
    validator = _validator()
    # The passing reference, then a deployment with many findings.
    r, sarif = doctor(ref, fmt="sarif")
    assert r.returncode == 0
    assert not list(validator.iter_errors(sarif))
    set_env(ref, "POSTGRES_PASSWORD", "changeme")
    edit_realm(ref, lambda realm: frontend(realm).update(directAccessGrantsEnabled=True))
    edit(ref / "deploy" / "docker-compose.yml", "  backend:\n    internal: true\n", "  backend: {}\n")
    shutil.copytree(FIXTURES / "data" / "openclaw", ref / "data" / "openclaw")
    r, sarif = doctor(ref, fmt="sarif")
    assert r.returncode == 1
    errors = [e.message for e in validator.iter_errors(sarif)]
    assert not errors, errors
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert {x["ruleId"] for x in results} >= {"AIBOX-SECRET-001", "AIBOX-REALM-001", "AIBOX-NET-001", "AIBOX-DATA-001"}
    for res in results:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note")
        for loc in res.get("locations", []):
            uri = loc["physicalLocation"]["artifactLocation"]["uri"]
            assert (ref / uri).exists(), uri
            assert loc["physicalLocation"].get("region", {"startLine": 1})["startLine"] >= 1
    # JSON says the same as SARIF.
    _, doc = doctor(ref)
    assert sorted(f["id"] for f in doc["findings"]) == sorted(x["ruleId"] for x in results)
    # The validator does reject what is not SARIF 2.1.0 (the check can fail).
    broken = json.loads(json.dumps(sarif))
    broken["version"] = "2.0.0"
    assert list(validator.iter_errors(broken))
    broken = json.loads(json.dumps(sarif))
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert list(validator.iter_errors(broken))


def test_errors_exit_2_without_secrets(ref: Path):
    r = aibox(["doctor", "--env-file", "deploy/missing.env"], cwd=ref)
    assert r.returncode == 2 and "missing.env" in r.stderr and "aibox bootstrap" in r.stderr
    r = aibox(["doctor", "--env-file", "deploy/.env", "--format", "xml"], cwd=ref)
    assert r.returncode == 2
    r = aibox(["doctor", "--env-file", "deploy/.env", "--realm", "nope.json"], cwd=ref)
    assert r.returncode == 2 and "nope.json" in r.stderr
    # A compose file that does not parse: the position, never the content.
    compose = ref / "deploy" / "docker-compose.yml"
    compose.write_text(compose.read_text() + "\nbroken: [SECRET_LOOKING_VALUE_Zq8rT3k\n")
    r = aibox(["doctor", "--env-file", "deploy/.env"], cwd=ref)
    assert r.returncode == 2, r.stdout
    assert "docker-compose.yml" in r.stderr and "line" in r.stderr
    assert "SECRET_LOOKING_VALUE" not in r.stderr


def test_repository_defaults_run(tmp_path: Path):
    """From the repository root with no arguments the doctor runs on
    deploy/ and data/ (whatever they hold) and never crashes."""
    r = aibox(["doctor", "--data-dir", str(tmp_path)], cwd=REPO_ROOT)
    assert r.returncode in (0, 1), r.stderr
    assert "aibox doctor:" in r.stdout
