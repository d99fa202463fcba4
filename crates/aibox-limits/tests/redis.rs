//! The Redis-backed limiter against the real Redis at 127.0.0.1:6379.
//!
//! These tests do not skip when Redis is down: shared limits that were never
//! exercised must show up as a failure, not as a green run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aibox_core::Secret;
use aibox_limits::{LimitError, LimitKind, Limiter, Scope};
use common::{fresh_redis_window, keys_with_ttl, limits, rate, redis_limiter, unique_prefix, who};

#[tokio::test]
async fn two_instances_share_one_user_rpm() {
    let prefix = unique_prefix();
    let cfg = limits(rate(None, None), rate(Some(5), None));
    let a = redis_limiter(cfg.clone(), &prefix).await;
    let b = redis_limiter(cfg, &prefix).await;
    assert_eq!(a.backend(), "redis");
    fresh_redis_window().await;
    let alice = who("acme", "alice");
    for i in 0..5 {
        let l = if i % 2 == 0 { &a } else { &b };
        assert!(l.admit(&alice).await.is_ok(), "admit {i}");
    }
    for l in [&a, &b] {
        let d = l.admit(&alice).await.unwrap_err();
        assert_eq!(
            (d.scope, d.kind, d.limit),
            (Scope::User, LimitKind::Requests, 5)
        );
        assert!((Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d.retry_after));
    }
    assert!(a.admit(&who("acme", "bob")).await.is_ok());
    assert_eq!(a.fallbacks() + b.fallbacks(), 0, "Redis served every call");
}

#[tokio::test]
async fn keys_follow_the_documented_layout_and_expire() {
    let prefix = unique_prefix();
    let cfg = limits(rate(Some(10), Some(1000)), rate(Some(10), Some(1000)));
    let l = redis_limiter(cfg, &prefix).await;
    fresh_redis_window().await;
    let p = who("acme", "alice@example.com");
    l.admit(&p).await.unwrap();
    l.record_tokens(&p, 42).await;
    let keys = keys_with_ttl(&prefix).await;
    let names: Vec<String> = keys
        .iter()
        .map(|(k, _)| {
            // Replaces the window number so the shape can be compared.
            let mut parts: Vec<&str> = k.split(':').collect();
            assert_eq!(parts[1], "rl", "{k}");
            assert!(parts[2].parse::<u64>().is_ok(), "{k}");
            parts[2] = "W";
            parts.join(":")
        })
        .collect();
    assert_eq!(
        names,
        vec![
            format!("{prefix}:rl:W:t:k:acme"),
            format!("{prefix}:rl:W:t:r:acme"),
            format!("{prefix}:rl:W:u:k:acme:alice@example.com"),
            format!("{prefix}:rl:W:u:r:acme:alice@example.com"),
        ]
    );
    for (k, ttl) in keys {
        assert!((1..=120_000).contains(&ttl), "{k} has TTL {ttl}");
    }
}

#[tokio::test]
async fn two_instances_share_tpm() {
    let prefix = unique_prefix();
    let cfg = limits(rate(None, None), rate(None, Some(100)));
    let a = redis_limiter(cfg.clone(), &prefix).await;
    let b = redis_limiter(cfg, &prefix).await;
    fresh_redis_window().await;
    let alice = who("acme", "alice");
    assert!(a.admit(&alice).await.is_ok());
    // Issue 2: shared budgets must reach Redis, so the in-place path (which
    // the gateway tries first) refuses them and counts nothing; had it
    // counted, the admit below would see 120 of 100.
    assert!(
        !a.record_tokens_in_place(&alice, 60),
        "Redis needs the network"
    );
    a.record_tokens(&alice, 60).await;
    assert!(b.admit(&alice).await.is_ok(), "60 of 100 used");
    b.record_tokens(&alice, 40).await;
    for l in [&a, &b] {
        let d = l.admit(&alice).await.unwrap_err();
        assert_eq!(
            (d.scope, d.kind, d.limit),
            (Scope::User, LimitKind::Tokens, 100)
        );
    }
    assert!(a.admit(&who("acme", "bob")).await.is_ok());
}

#[tokio::test]
async fn a_denied_request_counts_nothing_in_redis() {
    let prefix = unique_prefix();
    let l = redis_limiter(limits(rate(Some(3), None), rate(Some(1), None)), &prefix).await;
    fresh_redis_window().await;
    assert!(l.admit(&who("t", "a")).await.is_ok());
    assert_eq!(
        l.admit(&who("t", "a")).await.unwrap_err().scope,
        Scope::User
    );
    assert!(l.admit(&who("t", "b")).await.is_ok());
    assert!(l.admit(&who("t", "c")).await.is_ok());
    let d = l.admit(&who("t", "d")).await.unwrap_err();
    assert_eq!(
        (d.scope, d.kind, d.limit),
        (Scope::Tenant, LimitKind::Requests, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admits_never_exceed_the_limit() {
    let prefix = unique_prefix();
    let cfg = limits(rate(Some(7), None), rate(None, None));
    let a = Arc::new(redis_limiter(cfg.clone(), &prefix).await);
    let b = Arc::new(redis_limiter(cfg, &prefix).await);
    fresh_redis_window().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            l.admit(&who("acme", &format!("u{i}"))).await.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 7);
}

#[tokio::test]
async fn unreachable_redis_falls_back_to_memory_limits() {
    let cfg = limits(rate(None, None), rate(Some(2), None));
    let l = Limiter::with_redis_lazy(cfg, &Secret::new("redis://127.0.0.1:1"), &unique_prefix())
        .await
        .unwrap();
    assert_eq!(l.backend(), "redis");
    common::fresh_local_window().await;
    let alice = who("acme", "alice");
    assert!(l.admit(&alice).await.is_ok());
    assert!(l.admit(&alice).await.is_ok());
    let d = l.admit(&alice).await.unwrap_err();
    assert_eq!(
        (d.scope, d.kind, d.limit),
        (Scope::User, LimitKind::Requests, 2)
    );
    assert!(l.fallbacks() >= 3, "fallbacks = {}", l.fallbacks());
}

#[tokio::test]
async fn unreachable_redis_still_enforces_tpm_from_memory() {
    let cfg = limits(rate(None, Some(10)), rate(None, None));
    let l = Limiter::with_redis_lazy(cfg, &Secret::new("redis://127.0.0.1:1"), &unique_prefix())
        .await
        .unwrap();
    common::fresh_local_window().await;
    let alice = who("acme", "alice");
    assert!(l.admit(&alice).await.is_ok());
    l.record_tokens(&alice, 10).await;
    let d = l.admit(&who("acme", "bob")).await.unwrap_err();
    assert_eq!((d.scope, d.kind), (Scope::Tenant, LimitKind::Tokens));
    assert!(l.fallbacks() >= 3);
}

#[tokio::test]
async fn no_limits_never_touch_redis() {
    let l = Limiter::with_redis_lazy(
        limits(rate(None, None), rate(None, None)),
        &Secret::new("redis://127.0.0.1:1"),
        &unique_prefix(),
    )
    .await
    .unwrap();
    let alice = who("acme", "alice");
    for _ in 0..100 {
        assert!(l.admit(&alice).await.is_ok());
        l.record_tokens(&alice, 1_000).await;
    }
    assert_eq!(l.fallbacks(), 0, "an unlimited principal went to Redis");
}

#[tokio::test]
async fn lazy_limiter_uses_redis_once_reachable() {
    let prefix = unique_prefix();
    let cfg = limits(rate(None, None), rate(Some(1), None));
    let lazy = Limiter::with_redis_lazy(cfg.clone(), &Secret::new(common::REDIS_URL), &prefix)
        .await
        .unwrap();
    let eager = redis_limiter(cfg, &prefix).await;
    fresh_redis_window().await;
    assert!(lazy.admit(&who("acme", "alice")).await.is_ok());
    assert!(eager.admit(&who("acme", "alice")).await.is_err());
    assert_eq!(lazy.fallbacks(), 0);
}

#[tokio::test]
async fn construction_errors_name_the_cause_but_not_the_password() {
    let e = Limiter::with_redis(
        limits(rate(Some(1), None), rate(None, None)),
        &Secret::new("redis://:hunter2-secret@127.0.0.1:1/0"),
        "p",
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LimitError::Connect { .. }), "{e:?}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(msg.contains("AIBOX_REDIS_URL"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(!format!("{e:?}").contains("hunter2"));

    let e = Limiter::with_redis(
        limits(rate(Some(1), None), rate(None, None)),
        &Secret::new("http://:hunter2-secret@127.0.0.1:1/0"),
        "p",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, LimitError::InvalidUrl { .. }), "{e:?}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}
