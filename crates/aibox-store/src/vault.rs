//! The secrets vault over the store: seal on write, open on read, re-wrap
//! on master key rotation.
//!
//! The cryptography lives in the pure `aibox-vault` crate; this module only
//! pairs it with rows. Every operation is scoped to one owner (tenant and
//! user): there is no call that reads another principal's secret, and the
//! owner is bound into the ciphertext, so even a row copied in the database
//! does not open for someone else.
//!
//! Rotation is resumable by construction: each row is re-wrapped in its own
//! conditional update, a row names the key version that wraps it, and every
//! version stays in the keyring until no row uses it. Killing a rotation
//! half-way leaves some rows under the old version and some under the new,
//! all of which open; running it again finishes the rest.

use aibox_core::keyring::Keyring;
use aibox_core::{TenantId, UserId};
use aibox_vault::{Binding, SealedSecret, VaultError};
use zeroize::Zeroizing;

use crate::{Rewrap, SecretMeta, Store, StoreError, StoredSecret};

/// Vault errors: the store's or the cryptography's.
#[derive(Debug, thiserror::Error)]
pub enum VaultStoreError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or opening failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A key version is still in use and cannot be retired.
    #[error(
        "SECRETS_MASTER_KEY version {kid} still wraps {count} secret(s); fix: run `aibox keys rotate secrets-master` to completion before removing it"
    )]
    InUse {
        /// The version.
        kid: String,
        /// How many rows use it.
        count: u64,
    },
}

/// The vault: a store and the `SECRETS_MASTER_KEY` keyring.
#[derive(Clone)]
pub struct Vault {
    store: Store,
    master: std::sync::Arc<Keyring>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.store.backend())
            .field("master_kid", &self.master.signing().id())
            .finish()
    }
}

/// What a rotation pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Rows moved to the current version.
    pub rewrapped: u64,
    /// Rows that changed under us and were re-read.
    pub raced: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Vault {
    /// A vault over `store` with the master keyring.
    pub fn new(store: Store, master: Keyring) -> Self {
        Self {
            store,
            master: std::sync::Arc::new(master),
        }
    }

    /// The master key version new secrets are wrapped under.
    pub fn current_kid(&self) -> &str {
        self.master.signing().id()
    }

    /// Seals and stores a secret, replacing one of the same name.
    pub async fn put(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
        value: &[u8],
    ) -> Result<(), VaultStoreError> {
        let binding = Binding {
            tenant: tenant.as_str(),
            user: user.as_str(),
            name,
        };
        let sealed = aibox_vault::seal(&self.master, &binding, value)?;
        let now = now_ms();
        self.store
            .put_secret(StoredSecret {
                tenant: tenant.clone(),
                user: user.clone(),
                name: name.to_owned(),
                master_kid: sealed.master_kid,
                wrapped_key: sealed.wrapped_key,
                ciphertext: sealed.ciphertext,
                created_ms: now,
                updated_ms: now,
            })
            .await?;
        Ok(())
    }

    /// Reads and opens a secret; `None` when the owner has none of that name.
    pub async fn get(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, VaultStoreError> {
        aibox_vault::validate_name(name)?;
        let Some(row) = self.store.get_secret(tenant, user, name).await? else {
            return Ok(None);
        };
        let sealed = SealedSecret {
            master_kid: row.master_kid,
            wrapped_key: row.wrapped_key,
            ciphertext: row.ciphertext,
        };
        let binding = Binding {
            tenant: tenant.as_str(),
            user: user.as_str(),
            name,
        };
        Ok(Some(aibox_vault::open(&self.master, &binding, &sealed)?))
    }

    /// Deletes a secret; false when there was none.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<bool, VaultStoreError> {
        aibox_vault::validate_name(name)?;
        Ok(self.store.delete_secret(tenant, user, name).await?)
    }

    /// Lists the owner's secret names and metadata.
    pub async fn list(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<SecretMeta>, VaultStoreError> {
        Ok(self.store.list_secrets(tenant, user).await?)
    }

    /// Re-wraps up to `batch` rows that are not under the current version;
    /// call until it reports zero. Each row commits on its own, so an
    /// interrupted pass loses nothing.
    pub async fn rewrap_batch(&self, batch: u32) -> Result<RewrapReport, VaultStoreError> {
        let kid = self.current_kid().to_owned();
        let rows = self.store.secrets_not_under(&kid, batch).await?;
        let mut report = RewrapReport::default();
        for row in &rows {
            let binding = Binding {
                tenant: row.tenant.as_str(),
                user: row.user.as_str(),
                name: &row.name,
            };
            let sealed = SealedSecret {
                master_kid: row.master_kid.clone(),
                wrapped_key: row.wrapped_key.clone(),
                ciphertext: row.ciphertext.clone(),
            };
            let Some(new) = aibox_vault::rewrap(&self.master, &binding, &sealed)? else {
                continue;
            };
            let stored = self
                .store
                .rewrap_secret(Rewrap {
                    old: row,
                    master_kid: &new.master_kid,
                    wrapped_key: &new.wrapped_key,
                })
                .await?;
            if stored {
                report.rewrapped += 1;
            } else {
                report.raced += 1;
            }
        }
        Ok(report)
    }

    /// How many secrets each master key version wraps.
    pub async fn usage_by_kid(&self) -> Result<Vec<(String, u64)>, VaultStoreError> {
        Ok(self.store.secrets_per_master_kid().await?)
    }

    /// Refuses when `kid` still wraps any secret.
    pub async fn check_retirable(&self, kid: &str) -> Result<(), VaultStoreError> {
        for (k, count) in self.usage_by_kid().await? {
            if k == kid && count > 0 {
                return Err(VaultStoreError::InUse { kid: k, count });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use aibox_core::keyring::KeyEntry;

    fn ring(entries: &[(&str, u8)]) -> Keyring {
        Keyring::from_entries(
            entries
                .iter()
                .map(|(id, b)| KeyEntry::new(*id, vec![*b; 32]).unwrap())
                .collect(),
        )
        .unwrap()
    }

    fn ids() -> (TenantId, UserId, UserId) {
        (
            TenantId::new("acme").unwrap(),
            UserId::new("alice").unwrap(),
            UserId::new("bob").unwrap(),
        )
    }

    #[tokio::test]
    async fn sqlite_round_trip_isolation_and_resumable_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("t.db")).unwrap();
        crate::vault::tests::exercise(store).await;
    }

    /// The shared scenario, run against each backend.
    pub(crate) async fn exercise(store: Store) {
        let (t, alice, bob) = ids();
        let v1 = Vault::new(store.clone(), ring(&[("v1", 1)]));
        v1.put(&t, &alice, "gh", b"ghp_secret").await.unwrap();
        v1.put(&t, &bob, "gh", b"bob-value").await.unwrap();
        for i in 0..25 {
            v1.put(
                &t,
                &alice,
                &format!("k{i}"),
                format!("value-{i}").as_bytes(),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            v1.get(&t, &alice, "gh").await.unwrap().unwrap().as_slice(),
            b"ghp_secret"
        );
        assert_eq!(
            v1.get(&t, &bob, "gh").await.unwrap().unwrap().as_slice(),
            b"bob-value"
        );
        assert!(v1.get(&t, &bob, "k1").await.unwrap().is_none());
        let names: Vec<String> = v1
            .list(&t, &alice)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names.len(), 26);
        assert!(names.contains(&"gh".to_owned()));

        // A wrong master key is a clear error, and the row is still there.
        let wrong = Vault::new(store.clone(), ring(&[("v1", 7)]));
        let e = wrong.get(&t, &alice, "gh").await.unwrap_err();
        assert!(
            e.to_string().contains("SECRETS_MASTER_KEY version v1"),
            "{e}"
        );
        assert!(v1.get(&t, &alice, "gh").await.unwrap().is_some());

        // Rotation: a first pass of 10 rows is "killed"; a new run finishes.
        let v2 = Vault::new(store.clone(), ring(&[("v2", 2), ("v1", 1)]));
        let first = v2.rewrap_batch(10).await.unwrap();
        assert_eq!(first.rewrapped, 10);
        let usage = v2.usage_by_kid().await.unwrap();
        assert_eq!(usage, vec![("v1".into(), 17), ("v2".into(), 10)]);
        assert!(matches!(
            v2.check_retirable("v1").await,
            Err(VaultStoreError::InUse { count: 17, .. })
        ));
        // Mid-rotation every secret still opens.
        for i in 0..25 {
            assert_eq!(
                v2.get(&t, &alice, &format!("k{i}"))
                    .await
                    .unwrap()
                    .unwrap()
                    .as_slice(),
                format!("value-{i}").as_bytes()
            );
        }
        loop {
            let r = v2.rewrap_batch(10).await.unwrap();
            if r.rewrapped == 0 && r.raced == 0 {
                break;
            }
        }
        v2.check_retirable("v1").await.unwrap();
        // Only v2 remains needed: the keyring without v1 opens everything.
        let only_v2 = Vault::new(store.clone(), ring(&[("v2", 2)]));
        assert_eq!(
            only_v2
                .get(&t, &bob, "gh")
                .await
                .unwrap()
                .unwrap()
                .as_slice(),
            b"bob-value"
        );
        assert!(v2.delete(&t, &alice, "gh").await.unwrap());
        assert!(!v2.delete(&t, &alice, "gh").await.unwrap());
        assert!(v2.get(&t, &alice, "gh").await.unwrap().is_none());
        assert!(matches!(
            v2.get(&t, &alice, "../x").await,
            Err(VaultStoreError::Vault(VaultError::BadName(_)))
        ));
    }

    #[tokio::test]
    async fn a_row_copied_to_another_owner_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("t.db")).unwrap();
        let (t, alice, bob) = ids();
        let v = Vault::new(store.clone(), ring(&[("v1", 1)]));
        v.put(&t, &alice, "gh", b"alice-only").await.unwrap();
        let mut row = store.get_secret(&t, &alice, "gh").await.unwrap().unwrap();
        row.user = bob.clone();
        store.put_secret(row).await.unwrap();
        let e = v.get(&t, &bob, "gh").await.unwrap_err();
        assert!(matches!(
            e,
            VaultStoreError::Vault(VaultError::Unwrap { .. })
        ));
        assert!(!e.to_string().contains("alice-only"));
        // Alice's own copy is untouched.
        assert_eq!(
            v.get(&t, &alice, "gh").await.unwrap().unwrap().as_slice(),
            b"alice-only"
        );
    }
}
