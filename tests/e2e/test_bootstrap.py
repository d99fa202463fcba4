"""`aibox bootstrap` end to end (issue 7): a fresh env file, an idempotent
second run, real values kept and placeholders replaced, mode 0600, no value
ever printed, and a gateway that starts on the result without development
keys."""

from __future__ import annotations

from conftest import Cluster, base_config, to_yaml
from identity_kit import read_env_file

SEED_NAMES = [
    "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD", "KEYCLOAK_ADMIN_PASSWORD",
    "AUDIT_SIGNING_KEY", "AIBOX_PRINCIPAL_KEYS", "AIBOX_CAPTOKEN_KEYS", "SECRETS_MASTER_KEY",
    "DASHBOARD_AUTH_TOKEN", "OPS_CONTROLLER_TOKEN", "DIFY_SECRET_KEY", "DIFY_DB_PASSWORD",
    "SERVICE_AGENT_RUNTIME_CLIENT_SECRET", "SERVICE_WEBUI_CLIENT_SECRET",
]


def test_bootstrap_fresh_idempotent_keeps_and_replaces(cluster: Cluster):
    cwd = cluster.aibox_dir()
    cfg = base_config()
    cfg["routes"] = [{"prefix": "/webui/", "upstream": "http://127.0.0.1:9", "audience": "webui"}]
    (cwd / "config.yaml").write_text(to_yaml(cfg))
    env_file = cwd / ".env"
    env_file.write_text("POSTGRES_PASSWORD=my-real-db-password-42\nMINIO_ROOT_PASSWORD=change-me\n")
    env_file.chmod(0o644)

    r = cluster.run_aibox(["bootstrap", "--config", "config.yaml"], cwd=cwd)
    assert r.returncode == 0, r.stderr
    values = read_env_file(env_file)
    for name in SEED_NAMES:
        assert values.get(name), f"{name} missing"
    assert values["POSTGRES_PASSWORD"] == "my-real-db-password-42"
    assert values["MINIO_ROOT_PASSWORD"] != "change-me" and len(values["MINIO_ROOT_PASSWORD"]) >= 32
    assert "replaced MINIO_ROOT_PASSWORD" in r.stdout
    assert "created  SERVICE_WEBUI_CLIENT_SECRET" in r.stdout
    for v in values.values():
        assert v not in r.stdout and v not in r.stderr
    assert (env_file.stat().st_mode & 0o777) == 0o600
    assert len(values["OPS_CONTROLLER_TOKEN"]) == 64 and int(values["OPS_CONTROLLER_TOKEN"], 16) >= 0

    before = env_file.read_text()
    again = cluster.run_aibox(["bootstrap", "--config", "config.yaml"], cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert env_file.read_text() == before
    assert "0 created, 0 replaced" in again.stdout

    # The gateway runs on these keys: no development keys are generated.
    gw = cluster.aibox(cfg, cwd=cwd)
    assert gw.ops().get("/readyz").status_code == 200
    assert "USING DEVELOPMENT KEYS" not in gw.stderr()
    assert not (cwd / "data" / "dev-keys.env").exists()
