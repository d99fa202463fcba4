"""The vault, end to end (issue 7): per-user secrets over HTTP with gateway
API keys, on SQLite and on the real PostgreSQL, and master key rotation with
`aibox keys rotate secrets-master`, including a rotation interrupted after the
new key was saved and then resumed.

A principal only reaches its own secrets; the owner is never taken from the
request. Every access is in the audit log (owner, name, operation), and the
value appears nowhere but in the owner's GET: not in logs, not in the audit
export, not in the database file in clear.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest

from conftest import Aibox, Cluster, base_config, fresh_postgres_database
from identity_kit import keyring_value, new_secret, parse_keyring, read_env_file


def api_key(cluster: Cluster, gw: Aibox, tenant: str, user: str) -> str:
    r = cluster.run_aibox(
        ["apikey", "create", "--config", str(gw.cwd / "config.yaml"), "--tenant", tenant, "--user", user],
        cwd=gw.cwd,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def gateway(cluster: Cluster, env: dict[str, str], database: str | None = None, cwd: Path | None = None) -> Aibox:
    cfg = base_config()
    cfg["log"] = {"format": "json"}
    cfg["auth"] = {"enabled": True, "api_keys": True}
    if database:
        cfg["database"] = {"url": database}
    return cluster.aibox(cfg, env=env, cwd=cwd)


def exercise(cluster: Cluster, gw: Aibox) -> None:
    alice = {"Authorization": f"Bearer {api_key(cluster, gw, 'acme', 'alice')}"}
    bob = {"Authorization": f"Bearer {api_key(cluster, gw, 'acme', 'bob')}"}
    h = gw.http()
    value = "ghp_" + uuid.uuid4().hex + "VaultE2E"

    assert h.put("/v1/secrets/github-token", json={"value": value}).status_code == 401
    r = h.put("/v1/secrets/github-token", json={"value": value}, headers=alice)
    assert r.status_code == 204, r.text
    assert r.headers["cache-control"] == "no-store"
    got = h.get("/v1/secrets/github-token", headers=alice)
    assert got.status_code == 200, got.text
    assert got.json() == {"object": "secret", "name": "github-token", "value": value}
    assert got.headers["cache-control"] == "no-store"

    # Bob has no such secret, cannot read, list or delete Alice's.
    assert h.get("/v1/secrets/github-token", headers=bob).status_code == 404
    assert h.get("/v1/secrets", headers=bob).json()["data"] == []
    assert h.delete("/v1/secrets/github-token", headers=bob).status_code == 404
    names = [s["name"] for s in h.get("/v1/secrets", headers=alice).json()["data"]]
    assert names == ["github-token"]
    # Smuggled identity headers change nothing.
    spoof = dict(bob, **{"X-Aibox-User": "alice", "X-User-Id": "alice"})
    assert h.get("/v1/secrets/github-token", headers=spoof).status_code == 404

    # Bad input: a clear 400/413, nothing stored.
    bad = h.put("/v1/secrets/..%2Fetc", json={"value": "x"}, headers=alice)
    assert bad.status_code in (400, 404), bad.text
    bad = h.put("/v1/secrets/a%20b", json={"value": "x"}, headers=alice)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_secret_name"
    assert h.put("/v1/secrets/x", json={"val": "x"}, headers=alice).status_code == 400
    big = h.put("/v1/secrets/x", json={"value": "a" * 70_000}, headers=alice)
    assert big.status_code == 413, big.text
    assert [s["name"] for s in h.get("/v1/secrets", headers=alice).json()["data"]] == ["github-token"]

    # Bob's own secret of the same name is separate.
    assert h.put("/v1/secrets/github-token", json={"value": "bobs"}, headers=bob).status_code == 204
    assert h.get("/v1/secrets/github-token", headers=alice).json()["value"] == value
    assert h.delete("/v1/secrets/github-token", headers=bob).status_code == 204
    assert h.get("/v1/secrets/github-token", headers=bob).status_code == 404

    # The audit log has every access, never the value.
    out = gw.cwd / "acme.bundle"
    r = cluster.run_aibox(
        ["audit", "export", "--tenant", "acme", "--out", str(out), "--config", str(gw.cwd / "config.yaml")],
        cwd=gw.cwd,
    )
    assert r.returncode == 0, r.stderr
    bundle = out.read_text()
    events = [json.loads(r["event"]) for r in json.loads(bundle)["rows"] if "event" in r]
    access = [(e["owner"], e["name"], e["op"]) for e in events if e["type"] == "secret_access"]
    assert ("alice", "github-token", "put") in access
    assert ("alice", "github-token", "get") in access
    assert ("bob", "github-token", "delete") in access
    # Refused reads are recorded too, with their error code.
    assert access.count(("bob", "github-token", "get")) >= 3, access
    assert value not in bundle
    assert value not in gw.stderr() and value not in gw.proc.stdout()


def test_vault_round_trip_isolation_and_audit_on_sqlite(cluster: Cluster):
    gw = gateway(cluster, {})
    exercise(cluster, gw)
    db = (gw.cwd / "data").glob("*.db*")
    for f in db:
        assert b"VaultE2E" not in f.read_bytes(), f"value in clear in {f}"


def test_vault_on_postgres(cluster: Cluster):
    with fresh_postgres_database("aibox_vault") as url:
        gw = gateway(cluster, {}, database=url)
        exercise(cluster, gw)
        with psycopg.connect(url) as c:
            rows = c.execute("SELECT user_id, name, master_kid, ciphertext FROM vault_secrets").fetchall()
        assert [(r[0], r[1]) for r in rows] == [("alice", "github-token")]
        assert b"VaultE2E" not in bytes(rows[0][3])
        gw.proc.stop(10.0)


def test_master_key_rotation_resumes_and_loses_nothing(cluster: Cluster):
    cwd = cluster.aibox_dir()
    env_file = cwd / ".env"
    env_file.write_text(f"SECRETS_MASTER_KEY={keyring_value([('m1', new_secret())])}\n")
    env_file.chmod(0o600)
    gw = gateway(cluster, {}, cwd=cwd)
    key = {"Authorization": f"Bearer {api_key(cluster, gw, 'acme', 'alice')}"}
    h = gw.http()
    values = {f"s{i}": f"value-{i}-{uuid.uuid4().hex}" for i in range(40)}
    for n, v in values.items():
        assert h.put(f"/v1/secrets/{n}", json={"value": v}, headers=key).status_code == 204
    assert gw.proc.stop(10.0) == 0
    cluster.gateways.remove(gw)
    cfg = str(cwd / "config.yaml")

    # A rotation that died right after saving the new version: the file has
    # m2 in front, every row is still under m1.
    ring = list(parse_keyring(read_env_file(env_file)["SECRETS_MASTER_KEY"]).items())
    env_file.write_text(f"SECRETS_MASTER_KEY={keyring_value([('m2', new_secret()), *ring])}\n")
    # m1 still wraps every secret: it cannot be retired yet.
    r = cluster.run_aibox(["keys", "retire", "secrets-master", "m1", "--env-file", str(env_file), "--config", cfg], cwd=cwd)
    assert r.returncode != 0 and "still wraps 40 secret(s)" in r.stderr, r.stderr
    r = cluster.run_aibox(["keys", "rotate", "secrets-master", "--env-file", str(env_file), "--config", cfg], cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "m2" in r.stdout, r.stdout
    assert list(parse_keyring(read_env_file(env_file)["SECRETS_MASTER_KEY"])) == ["m2", "m1"]
    for v in values.values():
        assert v not in r.stdout + r.stderr

    # m1 is now unused and can be retired; m2 cannot.
    r = cluster.run_aibox(["keys", "retire", "secrets-master", "m2", "--env-file", str(env_file), "--config", cfg], cwd=cwd)
    assert r.returncode != 0 and "current version" in r.stderr
    r = cluster.run_aibox(["keys", "retire", "secrets-master", "m1", "--env-file", str(env_file), "--config", cfg], cwd=cwd)
    assert r.returncode == 0, r.stderr

    # A full rotation adds m3 and re-wraps everything.
    r = cluster.run_aibox(["keys", "rotate", "secrets-master", "--env-file", str(env_file), "--config", cfg], cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "re-wrapped 40" in r.stdout, r.stdout
    assert (env_file.stat().st_mode & 0o777) == 0o600

    # Every secret still opens after the restart.
    gw = gateway(cluster, {}, cwd=cwd)
    key = {"Authorization": f"Bearer {api_key(cluster, gw, 'acme', 'alice')}"}
    h = gw.http()
    for n, v in values.items():
        got = h.get(f"/v1/secrets/{n}", headers=key)
        assert got.status_code == 200 and got.json()["value"] == v, got.text

    # With a wrong master key the server says which version and how to fix it.
    gw.proc.stop(10.0)
    cluster.gateways.remove(gw)
    ring = parse_keyring(read_env_file(env_file)["SECRETS_MASTER_KEY"])
    wrong = [(k, new_secret()) for k in ring]
    env_file.write_text(f"SECRETS_MASTER_KEY={keyring_value(wrong)}\n")
    gw = gateway(cluster, {}, cwd=cwd)
    key = {"Authorization": f"Bearer {api_key(cluster, gw, 'acme', 'alice')}"}
    bad = gw.http().get("/v1/secrets/s1", headers=key)
    assert bad.status_code == 500
    err = bad.json()["error"]
    assert err["code"] == "vault_key_error" and "SECRETS_MASTER_KEY version" in err["message"]
    assert values["s1"] not in bad.text
