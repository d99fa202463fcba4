//! Environment variable names, and `.env` loading.
//!
//! Every variable aibox reads is a constant here, so the README's table and
//! the code cannot drift apart silently and a grep finds every use.

use std::collections::BTreeMap;
use std::path::Path;

use crate::ConfigError;

/// Path of the gateway config file (overrides the default path).
pub const AIBOX_CONFIG: &str = "AIBOX_CONFIG";
/// `server.listen`.
pub const AIBOX_LISTEN: &str = "AIBOX_LISTEN";
/// `server.ops_listen`.
pub const AIBOX_OPS_LISTEN: &str = "AIBOX_OPS_LISTEN";
/// `server.data_dir`.
pub const AIBOX_DATA_DIR: &str = "AIBOX_DATA_DIR";
/// `server.max_body_bytes`.
pub const AIBOX_MAX_BODY_BYTES: &str = "AIBOX_MAX_BODY_BYTES";
/// `server.header_read_timeout_ms`.
pub const AIBOX_HEADER_READ_TIMEOUT_MS: &str = "AIBOX_HEADER_READ_TIMEOUT_MS";
/// `server.body_idle_timeout_ms`.
pub const AIBOX_BODY_IDLE_TIMEOUT_MS: &str = "AIBOX_BODY_IDLE_TIMEOUT_MS";
/// `server.first_byte_timeout_ms`.
pub const AIBOX_FIRST_BYTE_TIMEOUT_MS: &str = "AIBOX_FIRST_BYTE_TIMEOUT_MS";
/// `server.send_stall_timeout_ms`.
pub const AIBOX_SEND_STALL_TIMEOUT_MS: &str = "AIBOX_SEND_STALL_TIMEOUT_MS";
/// `dashboard.listen`.
pub const AIBOX_DASHBOARD_LISTEN: &str = "AIBOX_DASHBOARD_LISTEN";
/// `dashboard.enabled`.
pub const AIBOX_DASHBOARD_ENABLED: &str = "AIBOX_DASHBOARD_ENABLED";
/// The bearer token of the ops API (seed 004 §3, §5); rotates on SIGHUP.
pub const OPS_CONTROLLER_TOKEN: &str = "OPS_CONTROLLER_TOKEN";
/// A bearer token that logs in to the dashboard (seed 004 §4); rotates on SIGHUP.
pub const DASHBOARD_AUTH_TOKEN: &str = "DASHBOARD_AUTH_TOKEN";
/// The dashboard password, plain or an argon2 PHC hash (seed 004 §4); rotates on SIGHUP.
pub const DASHBOARD_PASSWORD: &str = "DASHBOARD_PASSWORD";
/// `telemetry.traces`.
pub const AIBOX_TRACES: &str = "AIBOX_TRACES";
/// `telemetry.otlp_endpoint`.
pub const AIBOX_OTLP_ENDPOINT: &str = "AIBOX_OTLP_ENDPOINT";
/// `telemetry.capture_content`.
pub const AIBOX_TRACES_CAPTURE_CONTENT: &str = "AIBOX_TRACES_CAPTURE_CONTENT";
/// `database.url`.
pub const AIBOX_DATABASE_URL: &str = "AIBOX_DATABASE_URL";
/// `database.max_connections`.
pub const AIBOX_DATABASE_MAX_CONNECTIONS: &str = "AIBOX_DATABASE_MAX_CONNECTIONS";
/// `database.audit_max_connections`.
pub const AIBOX_DATABASE_AUDIT_MAX_CONNECTIONS: &str = "AIBOX_DATABASE_AUDIT_MAX_CONNECTIONS";
/// `database.audit_checkpoint_interval_ms`.
pub const AIBOX_DATABASE_AUDIT_CHECKPOINT_INTERVAL_MS: &str =
    "AIBOX_DATABASE_AUDIT_CHECKPOINT_INTERVAL_MS";
/// `redis_url`.
pub const AIBOX_REDIS_URL: &str = "AIBOX_REDIS_URL";
/// The Redis password, used when `redis_url` carries none (seed 000 §1).
pub const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
/// `log.format`.
pub const AIBOX_LOG_FORMAT: &str = "AIBOX_LOG_FORMAT";
/// `log.level`.
pub const AIBOX_LOG_LEVEL: &str = "AIBOX_LOG_LEVEL";
/// `egress.allow_hosts`, comma-separated; replaces the file's list.
pub const AIBOX_EGRESS_ALLOW_HOSTS: &str = "AIBOX_EGRESS_ALLOW_HOSTS";
/// `egress.allowed_ports`, comma-separated; replaces the file's list.
pub const AIBOX_EGRESS_ALLOWED_PORTS: &str = "AIBOX_EGRESS_ALLOWED_PORTS";
/// `auth.enabled`.
pub const AIBOX_AUTH_ENABLED: &str = "AIBOX_AUTH_ENABLED";
/// `auth.jwks_url`.
pub const AIBOX_AUTH_JWKS_URL: &str = "AIBOX_AUTH_JWKS_URL";
/// `auth.issuer`.
pub const AIBOX_AUTH_ISSUER: &str = "AIBOX_AUTH_ISSUER";
/// The audit signing key (seed 000 §1).
pub const AUDIT_SIGNING_KEY: &str = "AUDIT_SIGNING_KEY";
/// The principal-header keyring (seed 000 §1).
pub const AIBOX_PRINCIPAL_KEYS: &str = "AIBOX_PRINCIPAL_KEYS";
/// The CapToken keyring (seed 000 §1).
pub const AIBOX_CAPTOKEN_KEYS: &str = "AIBOX_CAPTOKEN_KEYS";
/// The vault master keyring (seed 000 §1).
pub const SECRETS_MASTER_KEY: &str = "SECRETS_MASTER_KEY";
/// The guardrail constitution file (default
/// `deploy/config/guardrail/constitution.yaml` when it exists).
pub const AIBOX_CONSTITUTION: &str = "AIBOX_CONSTITUTION";
/// The default constitution path, relative to the working directory.
pub const DEFAULT_CONSTITUTION_PATH: &str = "deploy/config/guardrail/constitution.yaml";

/// A snapshot of the environment. Loading reads from a snapshot rather than
/// from the process environment so that tests can give each case its own.
pub type Env = BTreeMap<String, String>;

/// Reads the process environment into a snapshot, skipping variables that are
/// not valid Unicode (none of aibox's are).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Reads a `.env` file into `env`, without overriding variables that are
/// already set (the real environment wins, as docker compose does). A missing
/// file is not an error.
pub fn merge_dotenv(path: &Path, env: &mut Env) -> Result<Vec<String>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(it) => it,
        Err(e) if e.not_found() => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError::DotEnv {
                path: path.to_path_buf(),
                message: dotenv_message(&e),
            });
        }
    };
    let mut loaded = Vec::new();
    for item in iter {
        let (k, v) = item.map_err(|e| ConfigError::DotEnv {
            path: path.to_path_buf(),
            message: dotenv_message(&e),
        })?;
        if let std::collections::btree_map::Entry::Vacant(slot) = env.entry(k) {
            loaded.push(slot.key().clone());
            slot.insert(v);
        }
    }
    Ok(loaded)
}

/// Describes a `.env` error by position only: the parser's own message can
/// quote the offending line, which may hold a secret.
fn dotenv_message(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(_, index) => {
            format!("cannot parse the line at byte {index}; each line must be NAME=VALUE")
        }
        dotenvy::Error::Io(io) => format!("cannot read it: {io}"),
        dotenvy::Error::EnvVar(_) => "an environment variable is not valid Unicode".to_owned(),
        _ => "cannot parse it".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_does_not_override_the_environment_and_never_echoes_values() {
        let dir = tempfile_dir();
        let path = dir.join(".env");
        std::fs::write(&path, "A=from-file\nB=from-file\n").unwrap();
        let mut env = Env::new();
        env.insert("A".into(), "from-env".into());
        let loaded = merge_dotenv(&path, &mut env).unwrap();
        assert_eq!(loaded, vec!["B".to_owned()]);
        assert_eq!(env["A"], "from-env");
        assert_eq!(env["B"], "from-file");

        std::fs::write(&path, "GOOD=1\nSECRET_LINE sup3rs3cret\n").unwrap();
        let err = merge_dotenv(&path, &mut Env::new())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sup3rs3cret"), "{err}");
        assert!(err.contains(".env"), "{err}");

        assert!(
            merge_dotenv(&dir.join("missing"), &mut Env::new())
                .unwrap()
                .is_empty()
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("aibox-env-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
