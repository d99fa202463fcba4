//! `aibox keys`: list and rotate the keyrings kept in the environment file.
//!
//! Rotation puts a fresh key in front of the keyring (it signs from now on)
//! and keeps every older version (they still verify), as seed 000 §1 asks.
//! Nothing here prints key material: only key ids and fingerprints.

use std::path::Path;

use aibox_config::env;
use aibox_core::keyring::{KeyEntry, Keyring};
use anyhow::{Context as _, bail};

use crate::envfile::EnvFile;

/// Which keyring to rotate.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// `AIBOX_PRINCIPAL_KEYS`.
    Principal,
    /// `AIBOX_CAPTOKEN_KEYS`.
    Captoken,
    /// `AUDIT_SIGNING_KEY` (a single secret; the audit log records the
    /// public keys of every version, so old records keep verifying).
    Audit,
    /// `SECRETS_MASTER_KEY`: a new version, then every vault data key is
    /// re-wrapped under it (resumable).
    SecretsMaster,
}

impl Which {
    fn var(self) -> &'static str {
        match self {
            Which::Principal => env::AIBOX_PRINCIPAL_KEYS,
            Which::Captoken => env::AIBOX_CAPTOKEN_KEYS,
            Which::Audit => env::AUDIT_SIGNING_KEY,
            Which::SecretsMaster => env::SECRETS_MASTER_KEY,
        }
    }
}

/// The next free key id of the form `vN`.
fn next_id(ring: Option<&Keyring>) -> String {
    let used: Vec<&str> = ring
        .map(|r| r.entries().iter().map(KeyEntry::id).collect())
        .unwrap_or_default();
    let max = used
        .iter()
        .filter_map(|id| id.strip_prefix('v').and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    let mut n = max + 1;
    while used.contains(&format!("v{n}").as_str()) {
        n += 1;
    }
    format!("v{n}")
}

/// Rotates one keyring in `env_file`.
pub fn rotate(which: Which, env_file: &Path) -> anyhow::Result<()> {
    let var = which.var();
    let mut file = EnvFile::load(env_file)?;
    if let Which::Audit = which {
        use base64::Engine as _;
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret);
        file.set(var, &value);
        file.save()?;
        println!("{var}: new value written to {}", env_file.display());
        println!(
            "restart aibox: it registers a new audit key version; records signed with earlier versions keep verifying \
             with the public keys the log recorded (`aibox audit keys` lists them; publish the new one to your verifiers)"
        );
        return Ok(());
    }
    let current = match file.get(var) {
        Some(v) if !v.is_empty() => Some(Keyring::parse(&v).with_context(|| {
            format!(
                "{var} in {} is not a valid keyring; fix it before rotating",
                env_file.display()
            )
        })?),
        _ => None,
    };
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    let id = next_id(current.as_ref());
    let mut entries = vec![KeyEntry::new(id.clone(), secret)?];
    entries.extend(current.iter().flat_map(|r| r.entries().iter().cloned()));
    let ring = Keyring::from_entries(entries)?;
    file.set(var, &ring.to_env_value());
    file.save()?;
    println!(
        "{var}: new signing key {id} ({}); {} older version(s) kept for verification",
        ring.signing().fingerprint(),
        ring.entries().len() - 1
    );
    println!("restart aibox (and every service that verifies {var}) to pick it up");
    Ok(())
}

/// Lists key ids and fingerprints of every keyring in the environment.
pub fn list(envs: &env::Env) -> anyhow::Result<()> {
    for var in [
        env::AIBOX_PRINCIPAL_KEYS,
        env::AIBOX_CAPTOKEN_KEYS,
        env::SECRETS_MASTER_KEY,
    ] {
        match envs.get(var) {
            None => println!("{var}: not set"),
            Some(v) => {
                let ring =
                    Keyring::parse(v).with_context(|| format!("{var} is not a valid keyring"))?;
                for (i, e) in ring.entries().iter().enumerate() {
                    let role = if i == 0 { "signs" } else { "verifies" };
                    println!("{var}: {} {} ({role})", e.id(), e.fingerprint());
                }
            }
        }
    }
    match envs.get(env::AUDIT_SIGNING_KEY) {
        None => println!("{}: not set", env::AUDIT_SIGNING_KEY),
        Some(_) => println!("{}: set", env::AUDIT_SIGNING_KEY),
    }
    Ok(())
}

/// Refuses to rotate keys the process would not find: a rotation written to
/// a file that is not the one aibox loads would silently do nothing.
pub fn check_env_file(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a directory; give the .env file aibox loads (--env-file)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_adds_a_signing_key_in_front_and_keeps_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        rotate(Which::Principal, &p).unwrap();
        let first = Keyring::parse(
            &EnvFile::load(&p)
                .unwrap()
                .get(env::AIBOX_PRINCIPAL_KEYS)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first.signing().id(), "v1");
        rotate(Which::Principal, &p).unwrap();
        let second = Keyring::parse(
            &EnvFile::load(&p)
                .unwrap()
                .get(env::AIBOX_PRINCIPAL_KEYS)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(second.signing().id(), "v2");
        assert_eq!(second.entries().len(), 2);
        assert_eq!(
            second.get("v1").unwrap().fingerprint(),
            first.signing().fingerprint()
        );
        assert!(
            EnvFile::load(&p)
                .unwrap()
                .get(env::AIBOX_CAPTOKEN_KEYS)
                .is_none()
        );
    }

    #[test]
    fn audit_rotation_writes_a_valid_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "AUDIT_SIGNING_KEY=aibox-audit-signing-key-change-me\n").unwrap();
        rotate(Which::Audit, &p).unwrap();
        let first = EnvFile::load(&p)
            .unwrap()
            .get(env::AUDIT_SIGNING_KEY)
            .unwrap();
        assert!(aibox_core::keyring::check_audit_signing_key(&first).is_ok());
        rotate(Which::Audit, &p).unwrap();
        let second = EnvFile::load(&p)
            .unwrap()
            .get(env::AUDIT_SIGNING_KEY)
            .unwrap();
        assert_ne!(first, second);
    }
}
