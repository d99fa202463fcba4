//! `aibox keys rotate secrets-master` and `aibox keys retire secrets-master`:
//! master key rotation of the vault, resumable.
//!
//! Rotation has two steps. First a new version goes in front of
//! `SECRETS_MASTER_KEY` in the env file, keeping every older version.
//! Then every secret's data key is re-wrapped under it, one row per
//! commit. If the second step is interrupted, the next run sees rows still
//! under an older version and resumes instead of adding yet another version;
//! every row opens at every moment, because each row names the version that
//! wraps it and all versions stay in the keyring. A version can be retired
//! only when no row uses it.

use std::path::Path;

use aibox_config::Config;
use aibox_config::env;
use aibox_core::keyring::{KeyEntry, Keyring};
use aibox_store::vault::Vault;
use anyhow::{Context as _, bail};

use crate::envfile::EnvFile;

/// Rows re-wrapped per database round trip.
const BATCH: u32 = 256;

/// Finds the keyring to rotate: the env file's, or, when the file has none
/// yet, the effective one (development keys included), so that no version
/// that wraps a secret is ever dropped.
fn current_ring(file: &EnvFile, effective: &env::Env) -> anyhow::Result<Keyring> {
    let value = file
        .get(env::SECRETS_MASTER_KEY)
        .filter(|v| !v.is_empty())
        .or_else(|| effective.get(env::SECRETS_MASTER_KEY).cloned())
        .context("SECRETS_MASTER_KEY is not set anywhere; run `aibox bootstrap` (or `aibox serve` once for development keys) first")?;
    Keyring::parse(&value)
        .context("SECRETS_MASTER_KEY is not a valid keyring; fix it before rotating")
}

/// The next free `vN`.
fn next_id(ring: &Keyring) -> String {
    let max = ring
        .entries()
        .iter()
        .filter_map(|e| e.id().strip_prefix('v').and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    format!("v{}", max + 1)
}

/// Refuses a rotation the running server would not see: the process
/// environment overrides the env file.
fn check_not_overridden(process: &env::Env, file: &Path) -> anyhow::Result<()> {
    if process.contains_key(env::SECRETS_MASTER_KEY) {
        bail!(
            "SECRETS_MASTER_KEY is set in this process's environment, which overrides {}; a rotation written to the file would not be used and the re-wrapped secrets would not open. Fix: unset SECRETS_MASTER_KEY in the environment and keep it only in the env file, then run this again",
            file.display()
        );
    }
    Ok(())
}

/// Rotates (or resumes rotating) the master key and re-wraps every secret.
pub async fn rotate(
    cfg: &Config,
    process: &env::Env,
    effective: &env::Env,
    env_file: &Path,
) -> anyhow::Result<()> {
    check_not_overridden(process, env_file)?;
    let mut file = EnvFile::load(env_file)?;
    let mut ring = current_ring(&file, effective)?;
    let store = crate::apikey::open_store(cfg).await?;
    let probe = Vault::new(store.clone(), ring.clone());
    let pending: u64 = probe
        .usage_by_kid()
        .await?
        .iter()
        .filter(|(kid, _)| kid != ring.signing().id())
        .map(|(_, n)| n)
        .sum();
    if pending > 0 {
        println!(
            "{}: resuming an interrupted rotation to {} ({pending} secret(s) still under older versions)",
            env::SECRETS_MASTER_KEY,
            ring.signing().id()
        );
    } else {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
        let mut entries = vec![KeyEntry::new(next_id(&ring), secret)?];
        entries.extend(ring.entries().iter().cloned());
        ring = Keyring::from_entries(entries)?;
        // The file is written before any row moves: a row is never wrapped
        // under a version that is not saved anywhere.
        file.set(env::SECRETS_MASTER_KEY, &ring.to_env_value());
        file.save()?;
        println!(
            "{}: new version {} ({}) written to {}; older versions kept",
            env::SECRETS_MASTER_KEY,
            ring.signing().id(),
            ring.signing().fingerprint(),
            env_file.display()
        );
    }
    let vault = Vault::new(store, ring.clone());
    let mut total = 0u64;
    loop {
        let r = vault.rewrap_batch(BATCH).await?;
        total += r.rewrapped;
        if r.rewrapped == 0 && r.raced == 0 {
            break;
        }
        println!("re-wrapped {total} secret(s)");
    }
    let usage = vault.usage_by_kid().await?;
    let old: Vec<&str> = ring
        .entries()
        .iter()
        .skip(1)
        .map(KeyEntry::id)
        .filter(|id| !usage.iter().any(|(k, n)| k == id && *n > 0))
        .collect();
    println!(
        "done: every secret is wrapped under {} ({total} re-wrapped now)",
        ring.signing().id()
    );
    if !old.is_empty() {
        println!(
            "older versions no longer used: {}; restart aibox, then retire them with `aibox keys retire secrets-master ID`",
            old.join(", ")
        );
    }
    Ok(())
}

/// Removes a version from the env file once no secret uses it.
pub async fn retire(
    cfg: &Config,
    process: &env::Env,
    effective: &env::Env,
    env_file: &Path,
    kid: &str,
) -> anyhow::Result<()> {
    check_not_overridden(process, env_file)?;
    let mut file = EnvFile::load(env_file)?;
    let ring = current_ring(&file, effective)?;
    if ring.get(kid).is_none() {
        bail!("{} has no version {kid}", env::SECRETS_MASTER_KEY);
    }
    if ring.signing().id() == kid {
        bail!(
            "{kid} is the current version of {}; rotate first (`aibox keys rotate secrets-master`)",
            env::SECRETS_MASTER_KEY
        );
    }
    let store = crate::apikey::open_store(cfg).await?;
    Vault::new(store, ring.clone()).check_retirable(kid).await?;
    let kept: Vec<KeyEntry> = ring
        .entries()
        .iter()
        .filter(|e| e.id() != kid)
        .cloned()
        .collect();
    let ring = Keyring::from_entries(kept)?;
    file.set(env::SECRETS_MASTER_KEY, &ring.to_env_value());
    file.save()?;
    println!(
        "{}: version {kid} retired; {} version(s) remain",
        env::SECRETS_MASTER_KEY,
        ring.entries().len()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn next_id_skips_used_versions() {
        let ring = Keyring::from_entries(vec![
            KeyEntry::new("dev1", vec![1; 32]).unwrap(),
            KeyEntry::new("v3", vec![2; 32]).unwrap(),
        ])
        .unwrap();
        assert_eq!(next_id(&ring), "v4");
    }

    #[test]
    fn a_process_override_is_refused() {
        let mut process = env::Env::new();
        process.insert(env::SECRETS_MASTER_KEY.into(), "x".into());
        let e = check_not_overridden(&process, Path::new(".env")).unwrap_err();
        assert!(e.to_string().contains("unset SECRETS_MASTER_KEY"));
        check_not_overridden(&env::Env::new(), Path::new(".env")).unwrap();
    }
}
