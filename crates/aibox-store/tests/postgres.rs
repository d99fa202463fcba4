//! The PostgreSQL backend against the real server on 127.0.0.1:5432.
//!
//! Each test creates its own database and drops it afterwards, so tests run
//! in parallel without seeing each other's rows. A server that is down fails
//! the test with a message; it is never skipped.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aibox_core::audit::Usage;
use aibox_core::{TenantId, UserId};
use aibox_store::{ApiKeyRecord, Store, UsageRecord};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

struct TempDb {
    name: String,
}

impl TempDb {
    async fn new() -> Self {
        let name = format!("aibox_test_{}", uuid_like());
        let (client, conn) = tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (see .ci/run)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn drop_db(self) {
        let (client, conn) = tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}_{}", std::process::id(), nanos)
}

#[tokio::test]
async fn api_keys_and_usage_on_real_postgres() {
    let db = TempDb::new().await;
    let store = Store::connect_postgres(&db.url()).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    store.ping().await.unwrap();

    let rec = ApiKeyRecord {
        id: "fedcba9876543210".into(),
        hash: "cd".repeat(32),
        tenant: TenantId::new("acme").unwrap(),
        user: UserId::new("svc").unwrap(),
        roles: vec!["admin".into()],
        created_ms: 1,
        expires_ms: None,
        revoked_ms: None,
    };
    store.insert_api_key(rec.clone()).await.unwrap();
    assert!(
        store.insert_api_key(rec.clone()).await.is_err(),
        "duplicate id accepted"
    );
    assert_eq!(
        store.api_key("fedcba9876543210").await.unwrap(),
        Some(rec.clone())
    );
    assert_eq!(store.api_key("x' OR '1'='1").await.unwrap(), None);
    assert_eq!(store.list_api_keys(None).await.unwrap(), vec![rec.clone()]);
    assert!(store.revoke_api_key("fedcba9876543210", 9).await.unwrap());
    assert!(!store.revoke_api_key("fedcba9876543210", 10).await.unwrap());

    for _ in 0..50 {
        store.record_usage(UsageRecord {
            at_ms: 2,
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("svc").unwrap(),
            model: "m".into(),
            upstream: "u".into(),
            request_id: "r".into(),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            },
        });
    }
    store.flush().await.unwrap();
    let t = store
        .usage_totals(
            &TenantId::new("acme").unwrap(),
            &UserId::new("svc").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (t.requests, t.prompt_tokens, t.completion_tokens),
        (50, 50, 100)
    );

    // A second replica connecting to the same database applies no migration
    // twice and sees the same rows.
    let replica = Store::connect_postgres(&db.url()).await.unwrap();
    assert_eq!(
        replica
            .api_key("fedcba9876543210")
            .await
            .unwrap()
            .unwrap()
            .revoked_ms,
        Some(9)
    );
    drop((store, replica));
    db.drop_db().await;
}

#[tokio::test]
async fn unreachable_postgres_names_the_target_not_the_password() {
    let err = Store::connect_postgres("postgres://aibox:s3cretpw@127.0.0.1:1/aibox")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("127.0.0.1:1/aibox"), "{err}");
    assert!(err.contains("AIBOX_DATABASE_URL"), "{err}");
    assert!(!err.contains("s3cretpw"), "{err}");
}

/// Issue 7: the vault on PostgreSQL: round trip, a row moved to another
/// owner, and a master rotation interrupted half-way then resumed.
#[tokio::test]
async fn vault_round_trip_and_resumable_rotation_on_real_postgres() {
    use aibox_core::keyring::{KeyEntry, Keyring};
    use aibox_store::vault::{Vault, VaultStoreError};

    fn ring(entries: &[(&str, u8)]) -> Keyring {
        Keyring::from_entries(
            entries
                .iter()
                .map(|(id, b)| KeyEntry::new(*id, vec![*b; 32]).unwrap())
                .collect(),
        )
        .unwrap()
    }

    let db = TempDb::new().await;
    let store = Store::connect_postgres(&db.url()).await.unwrap();
    let t = TenantId::new("acme").unwrap();
    let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
    let v1 = Vault::new(store.clone(), ring(&[("v1", 1)]));
    for i in 0..12 {
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
        v1.get(&t, &alice, "k3").await.unwrap().unwrap().as_slice(),
        b"value-3"
    );
    assert!(v1.get(&t, &bob, "k3").await.unwrap().is_none());

    // A row copied to Bob does not open for Bob.
    let mut row = store.get_secret(&t, &alice, "k0").await.unwrap().unwrap();
    row.user = bob.clone();
    store.put_secret(row).await.unwrap();
    assert!(v1.get(&t, &bob, "k0").await.is_err());
    assert!(store.delete_secret(&t, &bob, "k0").await.unwrap());

    let v2 = Vault::new(store.clone(), ring(&[("v2", 2), ("v1", 1)]));
    assert_eq!(v2.rewrap_batch(5).await.unwrap().rewrapped, 5);
    for i in 0..12 {
        assert_eq!(
            v2.get(&t, &alice, &format!("k{i}"))
                .await
                .unwrap()
                .unwrap()
                .as_slice(),
            format!("value-{i}").as_bytes()
        );
    }
    assert!(matches!(
        v2.check_retirable("v1").await,
        Err(VaultStoreError::InUse { count: 7, .. })
    ));
    while v2.rewrap_batch(5).await.unwrap().rewrapped > 0 {}
    v2.check_retirable("v1").await.unwrap();
    let only_v2 = Vault::new(store.clone(), ring(&[("v2", 2)]));
    assert_eq!(
        only_v2
            .get(&t, &alice, "k11")
            .await
            .unwrap()
            .unwrap()
            .as_slice(),
        b"value-11"
    );
    drop(store);
    db.drop_db().await;
}
