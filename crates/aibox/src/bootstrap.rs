//! `aibox bootstrap`: strong random values for every secret of the stack.
//!
//! Writes the env file (default `.env`) with a value for every secret in
//! seed 000's table, the `SERVICE_<NAME>_CLIENT_SECRET` of every service the
//! config names, the `DIFY_*` secrets and seed 004's tokens. A value that is
//! already there and is not a placeholder is kept; placeholders (empty,
//! `change-me` and friends, an audit key under 32 characters) are replaced.
//! The file is written atomically with mode 0600, only the names are printed,
//! and a second run changes nothing.
//!
//! A keyring that is set but invalid is an error rather than a replacement:
//! `SECRETS_MASTER_KEY` wraps the vault, and silently swapping it would make
//! every stored secret unreadable.

use std::path::Path;

use aibox_config::env;
use aibox_core::keyring::{KeyEntry, Keyring, check_audit_signing_key};
use anyhow::bail;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::envfile::EnvFile;

/// How a variable's value is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 32 random bytes, base64url: passwords and client secrets.
    Password,
    /// 32 random bytes, hex (what seed 004 generates with `openssl rand -hex 32`).
    HexToken,
    /// A keyring with one `v1` entry.
    Keyring,
    /// The audit signing key.
    AuditKey,
}

/// The fixed secrets of seed 000 and seed 004.
const FIXED: &[(&str, Kind)] = &[
    ("POSTGRES_PASSWORD", Kind::Password),
    ("MINIO_ROOT_PASSWORD", Kind::Password),
    (env::REDIS_PASSWORD, Kind::Password),
    ("KEYCLOAK_ADMIN_PASSWORD", Kind::Password),
    (env::AUDIT_SIGNING_KEY, Kind::AuditKey),
    (env::AIBOX_PRINCIPAL_KEYS, Kind::Keyring),
    (env::AIBOX_CAPTOKEN_KEYS, Kind::Keyring),
    (env::SECRETS_MASTER_KEY, Kind::Keyring),
    // Dify's database, admin, plugin and sandbox secrets (seed 000 §1).
    ("DIFY_SECRET_KEY", Kind::Password),
    ("DIFY_DB_PASSWORD", Kind::Password),
    ("DIFY_INIT_PASSWORD", Kind::Password),
    ("DIFY_PLUGIN_DAEMON_KEY", Kind::Password),
    ("DIFY_PLUGIN_INNER_API_KEY", Kind::Password),
    ("DIFY_SANDBOX_API_KEY", Kind::Password),
    // Seed 004 §4 and §5.
    ("DASHBOARD_AUTH_TOKEN", Kind::HexToken),
    ("OPS_CONTROLLER_TOKEN", Kind::HexToken),
];

/// The internal services of seed 000 §5, each with a confidential client.
const SEED_SERVICES: &[&str] = &[
    "agent-runtime",
    "guardrail",
    "memory",
    "inference-router",
    "knowledge",
    "sandbox",
    "observability",
    "audit",
];

/// Values that mean "not set yet", compared case-insensitively after
/// removing separators.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change",
    "replaceme",
    "placeholder",
    "secret",
    "password",
    "example",
    "todo",
    "xxx",
    "null",
    "none",
    "default",
    "admin",
    "aiboxauditsigningkeychangeme",
];

/// True when `value` is a placeholder rather than a real secret.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return true;
    }
    let folded: String = v
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    if folded.is_empty() || folded.chars().all(|c| c == 'x') {
        return true;
    }
    PLACEHOLDERS.contains(&folded.as_str())
        || folded.contains("changeme")
        || folded.contains("replaceme")
        || (v.starts_with('<') && v.ends_with('>'))
        || (v.starts_with("${") && v.ends_with('}'))
}

/// `SERVICE_<NAME>_CLIENT_SECRET` for a service name.
pub fn service_secret_var(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SERVICE_{name}_CLIENT_SECRET")
}

/// The services a config file names: route audiences and the variable of
/// `service_auth.client_secret_env`. Read from the raw YAML, because the
/// validated config needs the very secrets bootstrap is about to create.
pub fn configured_services(yaml: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml)
        .map_err(|e| anyhow::anyhow!("the config file is not valid YAML: {e}"))?;
    let mut services = Vec::new();
    if let Some(routes) = doc.get("routes").and_then(|r| r.as_sequence()) {
        for r in routes {
            if let Some(a) = r.get("audience").and_then(|a| a.as_str()) {
                services.push(a.to_owned());
            }
        }
    }
    let mut vars = Vec::new();
    if let Some(v) = doc
        .get("service_auth")
        .and_then(|s| s.get("client_secret_env"))
        .and_then(|v| v.as_str())
    {
        vars.push(v.to_owned());
    }
    Ok((services, vars))
}

/// Every variable bootstrap manages, in file order.
fn variables(
    config_yaml: Option<&str>,
    extra_services: &[String],
) -> anyhow::Result<Vec<(String, Kind)>> {
    let mut out: Vec<(String, Kind)> = FIXED.iter().map(|(n, k)| ((*n).to_owned(), *k)).collect();
    let mut services: Vec<String> = SEED_SERVICES.iter().map(|s| (*s).to_owned()).collect();
    let (configured, mut vars_from_config) = match config_yaml {
        Some(y) => configured_services(y)?,
        None => (Vec::new(), Vec::new()),
    };
    services.extend(configured);
    services.extend(extra_services.iter().cloned());
    let mut vars: Vec<String> = services.iter().map(|s| service_secret_var(s)).collect();
    vars.append(&mut vars_from_config);
    for v in vars {
        if !out.iter().any(|(n, _)| *n == v) {
            out.push((v, Kind::Password));
        }
    }
    Ok(out)
}

fn random32() -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    Ok(b)
}

fn generate(kind: Kind) -> anyhow::Result<String> {
    let bytes = random32()?;
    Ok(match kind {
        Kind::Password | Kind::AuditKey => URL_SAFE_NO_PAD.encode(bytes),
        Kind::HexToken => hex::encode(bytes),
        Kind::Keyring => Keyring::from_entries(vec![KeyEntry::new("v1", bytes)?])?
            .to_env_value()
            .to_string(),
    })
}

/// Decides whether an existing value is kept. Errors on a set but invalid
/// keyring (never replaced: it may wrap data).
fn keep(name: &str, kind: Kind, value: &str) -> anyhow::Result<bool> {
    if is_placeholder(value) {
        return Ok(false);
    }
    match kind {
        Kind::AuditKey => Ok(check_audit_signing_key(value).is_ok()),
        Kind::Keyring => match Keyring::parse(value) {
            Ok(_) => Ok(true),
            Err(e) => bail!(
                "{name} is set but is not a valid keyring ({e}); bootstrap does not replace it because keys may still protect data. Fix: correct it to KEY_ID:BASE64URL[,...], or delete the line if nothing uses it, then run bootstrap again"
            ),
        },
        Kind::Password | Kind::HexToken => Ok(true),
    }
}

/// What a run did, by name only.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Variables that had no value.
    pub created: Vec<String>,
    /// Variables whose placeholder was replaced.
    pub replaced: Vec<String>,
    /// Variables kept as they were.
    pub kept: Vec<String>,
}

/// Fills `path` with every secret; see the module docs.
pub fn run(
    config_yaml: Option<&str>,
    path: &Path,
    extra_services: &[String],
) -> anyhow::Result<Outcome> {
    let mut file = EnvFile::load(path)?;
    let mut out = Outcome::default();
    for (name, kind) in variables(config_yaml, extra_services)? {
        match file.get(&name) {
            Some(v) if keep(&name, kind, &v)? => out.kept.push(name),
            Some(_) => {
                file.set(&name, &generate(kind)?);
                out.replaced.push(name);
            }
            None => {
                file.set(&name, &generate(kind)?);
                out.created.push(name);
            }
        }
    }
    if !out.created.is_empty() || !out.replaced.is_empty() {
        file.save()?;
    } else {
        // Nothing new, but the file must still not be readable by others.
        restrict(path)?;
    }
    Ok(out)
}

#[cfg(unix)]
fn restrict(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| anyhow::anyhow!("cannot set mode 0600 on {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Prints what a run did: names, never values.
pub fn report(path: &Path, o: &Outcome) {
    for n in &o.created {
        println!("created  {n}");
    }
    for n in &o.replaced {
        println!("replaced {n} (was a placeholder)");
    }
    println!(
        "{}: {} created, {} replaced, {} kept (mode 0600); values are never printed",
        path.display(),
        o.created.len(),
        o.replaced.len(),
        o.kept.len()
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const CFG: &str = "routes:\n  - prefix: /webui/\n    upstream: http://127.0.0.1:3000\n    audience: webui\nservice_auth:\n  client_id: aibox\n  client_secret_env: SERVICE_AIBOX_CLIENT_SECRET\n";

    #[test]
    fn services_come_from_routes_and_service_auth() {
        let (services, vars) = configured_services(CFG).unwrap();
        assert_eq!(services, vec!["webui".to_owned()]);
        assert_eq!(vars, vec!["SERVICE_AIBOX_CLIENT_SECRET".to_owned()]);
        assert!(configured_services("routes: [").is_err());
    }

    #[test]
    fn placeholders_are_recognised_and_real_values_are_not() {
        for p in [
            "",
            "  ",
            "changeme",
            "change-me",
            "CHANGE_ME",
            "aibox-audit-signing-key-change-me",
            "<your-password>",
            "${POSTGRES_PASSWORD}",
            "xxxxxxxx",
            "password",
            "replace-me-please",
        ] {
            assert!(is_placeholder(p), "{p:?}");
        }
        for real in ["hunter2-but-long-Zq8", "3f9a1c0d5e", "Tr0ub4dor&3"] {
            assert!(!is_placeholder(real), "{real:?}");
        }
    }

    #[test]
    fn service_names_become_variables() {
        assert_eq!(
            service_secret_var("agent-runtime"),
            "SERVICE_AGENT_RUNTIME_CLIENT_SECRET"
        );
    }

    #[test]
    fn fresh_file_idempotent_kept_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(
            &p,
            "# mine\nPOSTGRES_PASSWORD=keep-this-value-123\nREDIS_PASSWORD=changeme\nAUDIT_SIGNING_KEY=aibox-audit-signing-key-change-me\nOTHER=untouched\n",
        )
        .unwrap();
        let first = run(Some(CFG), &p, &["extra".into()]).unwrap();
        assert!(first.kept.contains(&"POSTGRES_PASSWORD".to_owned()));
        assert!(first.replaced.contains(&"REDIS_PASSWORD".to_owned()));
        assert!(first.replaced.contains(&"AUDIT_SIGNING_KEY".to_owned()));
        assert!(first.created.contains(&"SECRETS_MASTER_KEY".to_owned()));
        assert!(
            first
                .created
                .contains(&"SERVICE_WEBUI_CLIENT_SECRET".to_owned())
        );
        for v in [
            "SERVICE_AGENT_RUNTIME_CLIENT_SECRET",
            "SERVICE_EXTRA_CLIENT_SECRET",
            "SERVICE_AIBOX_CLIENT_SECRET",
            "DIFY_SECRET_KEY",
            "DASHBOARD_AUTH_TOKEN",
        ] {
            assert!(first.created.contains(&v.to_owned()), "{v}");
        }
        let f = EnvFile::load(&p).unwrap();
        assert_eq!(f.get("POSTGRES_PASSWORD").unwrap(), "keep-this-value-123");
        assert_eq!(f.get("OTHER").unwrap(), "untouched");
        check_audit_signing_key(&f.get("AUDIT_SIGNING_KEY").unwrap()).unwrap();
        Keyring::parse(&f.get("AIBOX_CAPTOKEN_KEYS").unwrap()).unwrap();
        assert_eq!(f.get("OPS_CONTROLLER_TOKEN").unwrap().len(), 64);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("# mine\n"));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let second = run(Some(CFG), &p, &["extra".into()]).unwrap();
        assert!(second.created.is_empty() && second.replaced.is_empty());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn an_invalid_master_keyring_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "SECRETS_MASTER_KEY=v1:tooshort\n").unwrap();
        let e = run(None, &p, &[]).unwrap_err().to_string();
        assert!(e.contains("SECRETS_MASTER_KEY") && e.contains("does not replace"));
        assert!(!e.contains("tooshort"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "SECRETS_MASTER_KEY=v1:tooshort\n"
        );
    }
}
