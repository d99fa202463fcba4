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
