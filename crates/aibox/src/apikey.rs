//! `aibox apikey`: create, list and revoke gateway API keys.
//!
//! The key is printed once, on stdout, at creation; only its hash is stored.
//! The commands work on the database the config names (SQLite or
//! PostgreSQL) and may run while `aibox serve` is running.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aibox_config::{Config, DatabaseUrl};
use aibox_core::{TenantId, UserId};
use aibox_identity::ApiKey;
use aibox_store::{ApiKeyRecord, Store};
use anyhow::{Context as _, bail};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses `30d`, `12h`, `45m` or `90s`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{text}' is not a duration; use e.g. 30d, 12h, 45m"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => bail!("'{text}' has no unit; use d, h, m or s (e.g. 30d)"),
    };
    match secs {
        Some(s) if s > 0 => Ok(Duration::from_secs(s)),
        _ => bail!("'{text}' is not a positive duration"),
    }
}

/// Opens the store the config names.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    Ok(match &cfg.database.url {
        DatabaseUrl::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Store::open_sqlite(&path)).await??
        }
        DatabaseUrl::Postgres(url) => {
            Store::connect_postgres_with_pool(
                url.expose(),
                usize::try_from(cfg.database.max_connections)
                    .unwrap_or(aibox_store::DEFAULT_PG_MAX_CONNECTIONS),
            )
            .await?
        }
    })
}

/// Creates a key and prints it once.
pub async fn create(
    cfg: &Config,
    tenant: &str,
    user: &str,
    roles: &[String],
    expires: Option<&str>,
) -> anyhow::Result<()> {
    let tenant = TenantId::new(tenant).context("--tenant")?;
    let user = UserId::new(user).context("--user")?;
    for r in roles {
        if r.is_empty() || r.contains(',') || r.chars().any(char::is_control) {
            bail!("--roles: '{r}' is not a role name");
        }
    }
    let expires_ms = match expires {
        None => None,
        Some(text) => {
            let d = parse_duration(text)?;
            Some(now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
    };
    let generated = ApiKey::generate()?;
    let store = open_store(cfg).await?;
    store
        .insert_api_key(ApiKeyRecord {
            id: generated.id.as_str().to_owned(),
            hash: generated.hash.as_str().to_owned(),
            tenant: tenant.clone(),
            user: user.clone(),
            roles: roles.to_vec(),
            created_ms: now_ms(),
            expires_ms,
            revoked_ms: None,
        })
        .await?;
    store.flush().await?;
    eprintln!(
        "created API key {} for tenant {tenant}, user {user}; it is shown once, store it now:",
        generated.id
    );
    println!("{}", generated.plain.expose());
    Ok(())
}

/// Lists keys (never secrets).
pub async fn list(cfg: &Config, tenant: Option<&str>) -> anyhow::Result<()> {
    let tenant = tenant.map(TenantId::new).transpose().context("--tenant")?;
    let store = open_store(cfg).await?;
    let now = now_ms();
    println!(
        "{:<16}  {:<16}  {:<24}  {:<20}  status",
        "id", "tenant", "user", "roles"
    );
    for k in store.list_api_keys(tenant.as_ref()).await? {
        let status = match (k.revoked_ms, k.expires_ms) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if e <= now => "expired",
            _ => "active",
        };
        println!(
            "{:<16}  {:<16}  {:<24}  {:<20}  {status}",
            k.id,
            k.tenant,
            k.user,
            k.roles.join(",")
        );
    }
    Ok(())
}

/// Revokes a key by id.
pub async fn revoke(cfg: &Config, id: &str) -> anyhow::Result<()> {
    let store = open_store(cfg).await?;
    if store.revoke_api_key(id, now_ms()).await? {
        store.flush().await?;
        println!("revoked {id}");
        Ok(())
    } else {
        bail!("no active API key with id '{id}' (`aibox apikey list` shows the ids)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "d", "10", "10y", "0d", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
