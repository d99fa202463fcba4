//! The in-memory limiter through the public API.

mod common;

use std::time::Duration;

use aibox_core::TenantId;
use aibox_limits::{LimitKind, Limiter, Scope};
use common::{fresh_local_window, limits, rate, who};

fn assert_retry_after_in_range(d: Duration) {
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d),
        "retry_after {d:?} outside 1..=60 s"
    );
}

#[tokio::test]
async fn tenant_rpm_is_shared_by_the_tenant_users() {
    fresh_local_window().await;
    let l = Limiter::in_memory(limits(rate(Some(3), None), rate(None, None)));
    assert_eq!(l.backend(), "memory");
    for u in ["a", "b", "c"] {
        assert!(l.admit(&who("acme", u)).await.is_ok(), "user {u}");
    }
    let d = l.admit(&who("acme", "d")).await.unwrap_err();
    assert_eq!(
        (d.scope, d.kind, d.limit),
        (Scope::Tenant, LimitKind::Requests, 3)
    );
    assert_retry_after_in_range(d.retry_after);
    assert!(l.admit(&who("other", "a")).await.is_ok(), "other tenant");
}

#[tokio::test]
async fn user_rpm_is_per_tenant_and_user() {
    fresh_local_window().await;
    let l = Limiter::in_memory(limits(rate(None, None), rate(Some(2), None)));
    let a = who("acme", "alice");
    assert!(l.admit(&a).await.is_ok());
    assert!(l.admit(&a).await.is_ok());
    let d = l.admit(&a).await.unwrap_err();
    assert_eq!(
        (d.scope, d.kind, d.limit),
        (Scope::User, LimitKind::Requests, 2)
    );
    assert_retry_after_in_range(d.retry_after);
    assert!(l.admit(&who("acme", "bob")).await.is_ok());
    assert!(
        l.admit(&who("other", "alice")).await.is_ok(),
        "the same user id in another tenant is another user"
    );
}

#[tokio::test]
async fn per_tenant_override_replaces_the_default() {
    fresh_local_window().await;
    let mut cfg = limits(rate(Some(1), None), rate(None, None));
    cfg.tenants
        .insert(TenantId::new("big").unwrap(), rate(Some(3), None));
    let l = Limiter::in_memory(cfg);
    for _ in 0..3 {
        assert!(l.admit(&who("big", "u")).await.is_ok());
    }
    let d = l.admit(&who("big", "u")).await.unwrap_err();
    assert_eq!(d.limit, 3);
    assert!(l.admit(&who("small", "u")).await.is_ok());
    let d = l.admit(&who("small", "u")).await.unwrap_err();
    assert_eq!((d.scope, d.limit), (Scope::Tenant, 1));
}

#[tokio::test]
async fn tpm_blocks_once_recorded_tokens_reach_the_limit() {
    fresh_local_window().await;
    let l = Limiter::in_memory(limits(rate(None, None), rate(None, Some(100))));
    let a = who("acme", "alice");
    assert!(l.admit(&a).await.is_ok());
    l.record_tokens(&a, 60).await;
    assert!(l.admit(&a).await.is_ok(), "60 of 100 used");
    l.record_tokens(&a, 50).await;
    let d = l.admit(&a).await.unwrap_err();
    assert_eq!(
        (d.scope, d.kind, d.limit),
        (Scope::User, LimitKind::Tokens, 100)
    );
    assert_retry_after_in_range(d.retry_after);
    assert!(l.admit(&who("acme", "bob")).await.is_ok());
}

#[tokio::test]
async fn issue_2_tokens_recorded_in_place_count_like_recorded_ones() {
    // The gateway records a turn's tokens in place, without spawning a
    // task, whenever the counters are in memory; they must count exactly
    // as `record_tokens` does.
    fresh_local_window().await;
    let l = Limiter::in_memory(limits(rate(None, None), rate(None, Some(100))));
    let a = who("acme", "alice");
    assert!(l.record_tokens_in_place(&a, 60), "in memory: recorded here");
    assert!(l.admit(&a).await.is_ok(), "60 of 100 used");
    assert!(l.record_tokens_in_place(&a, 40));
    let d = l.admit(&a).await.unwrap_err();
    assert_eq!(
        (d.scope, d.kind, d.limit),
        (Scope::User, LimitKind::Tokens, 100)
    );
    // Nothing to count is done at once too.
    let free = Limiter::in_memory(limits(rate(None, None), rate(None, None)));
    assert!(free.record_tokens_in_place(&a, 1_000_000));
    assert!(free.admit(&a).await.is_ok());
}

#[tokio::test]
async fn tenant_tpm_blocks_every_user_of_the_tenant() {
    fresh_local_window().await;
    let l = Limiter::in_memory(limits(rate(None, Some(10)), rate(None, None)));
    assert!(l.admit(&who("acme", "alice")).await.is_ok());
    l.record_tokens(&who("acme", "alice"), 10).await;
    let d = l.admit(&who("acme", "bob")).await.unwrap_err();
    assert_eq!((d.scope, d.kind), (Scope::Tenant, LimitKind::Tokens));
}

#[tokio::test]
async fn unlimited_never_denies() {
    let l = Limiter::in_memory(limits(rate(None, None), rate(None, None)));
    let a = who("acme", "alice");
    for _ in 0..10_000 {
        assert!(l.admit(&a).await.is_ok());
        l.record_tokens(&a, u64::MAX).await;
    }
    assert_eq!(l.fallbacks(), 0);
}
