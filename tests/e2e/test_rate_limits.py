"""Rate limits of `aibox serve`, through the `openai` SDK.

Covers: per-user and per-tenant requests-per-minute limits shared by two aibox
processes through the real Redis at 127.0.0.1:6379 (override with
E2E_REDIS_URL), with 429 `openai.RateLimitError`, a `Retry-After` header and
the counter visible in Redis; the in-memory limiter of a single process (and
that it is per process); and tokens-per-minute limits, fed by the usage of
non-streaming answers (in memory) and of streamed answers with
`stream_options.include_usage` (through Redis).

Auth is off in this build, so every request is tenant `default`, user
`anonymous`: the shared tests delete the limiter's `aibox:rl:*` keys first, and
every test starts at least 6 s before the end of its one-minute window (Redis
TIME for Redis, the local clock in memory) so it cannot straddle a boundary.
A Redis that is down fails these tests with a clear message; they never skip.
"""

from __future__ import annotations

import os
import time

import openai
import pytest
import redis

from conftest import base_config, dead_port, model

REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/0")
WINDOW_MS = 60_000
MIN_WINDOW_LEFT_MS = 6_000
HELLO = [{"role": "user", "content": "hello"}]
#: 10 words: the fake upstream reports 10 prompt + 11 completion tokens ("up1:" + 10).
TEN_WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(
            f"the shared rate-limit tests need a real Redis at {REDIS_URL}, which did not answer "
            f"PING ({e}); start one (e.g. `redis-server --port 6379`) or point E2E_REDIS_URL at one",
            pytrace=False,
        )
    yield client
    client.close()


def redis_now_ms(r: redis.Redis) -> int:
    secs, micros = r.time()
    return secs * 1000 + micros // 1000


def local_now_ms() -> int:
    return time.time_ns() // 1_000_000


def fresh_window(now_ms, min_left_ms: int = MIN_WINDOW_LEFT_MS) -> int:
    """Sleeps into the next window if fewer than `min_left_ms` (6 s) remain
    in this one; returns the window the test runs in."""
    now = now_ms()
    left = WINDOW_MS - now % WINDOW_MS
    if left < min_left_ms:
        time.sleep(left / 1000 + 0.2)
        now = now_ms()
    return now // WINDOW_MS


def flush_limiter_keys(r: redis.Redis) -> None:
    keys = list(r.scan_iter(match="aibox:rl:*", count=1000))
    if keys:
        r.delete(*keys)


def limited_config(up, limits, redis_url=None):
    cfg = base_config()
    if redis_url:
        cfg["redis_url"] = redis_url
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [model("chat", (up, "m1"))]
    cfg["limits"] = limits
    return cfg


def assert_rate_limited(call, scope: str, kind: str, limit: int) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as exc:
        call()
    e = exc.value
    assert e.status_code == 429
    assert e.code == "rate_limit_exceeded"
    assert e.type == "rate_limit_error"
    assert f"limits.{scope}.{kind}_per_minute" in e.message
    assert f"{limit} {kind} per minute" in e.message
    retry_after = e.response.headers.get("retry-after")
    assert retry_after is not None, dict(e.response.headers)
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    assert e.response.headers.get("x-request-id")
    return e


@pytest.mark.parametrize("scope", ["user", "tenant"])
def test_request_limit_is_shared_by_two_gateways_through_redis(cluster, redis_client, scope):
    limit = 4
    up = cluster.fake_upstream("up1")
    cfg = limited_config(up, {scope: {"requests_per_minute": limit}}, redis_url=REDIS_URL)
    a = cluster.aibox(cfg)
    b = cluster.aibox(cfg)
    assert 'limiter="redis"' in a.stderr()
    ca, cb = a.client(), b.client()

    window = fresh_window(lambda: redis_now_ms(redis_client))
    flush_limiter_keys(redis_client)

    for i, client in enumerate([ca, cb, ca, cb]):
        reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"r{i}"}])
        assert reply.choices[0].message.content == f"up1: r{i}"

    for client in (ca, cb):
        e = assert_rate_limited(
            lambda: client.chat.completions.create(model="chat", messages=HELLO),
            scope, "requests", limit,
        )
        left_s = (WINDOW_MS - redis_now_ms(redis_client) % WINDOW_MS) / 1000
        assert abs(int(e.response.headers["retry-after"]) - left_s) <= 2.0

    # Streams are refused before they start, on either gateway.
    with pytest.raises(openai.RateLimitError):
        cb.chat.completions.create(model="chat", messages=HELLO, stream=True)

    code = "u" if scope == "user" else "t"
    who = "default:anonymous" if scope == "user" else "default"
    key = f"aibox:rl:{window}:{code}:r:{who}"
    assert redis_client.get(key) == str(limit).encode(), (key, list(redis_client.scan_iter("aibox:rl:*")))
    assert up.stats()["requests"] == limit, "refused requests must not reach the upstream"


def test_in_memory_request_limit_applies_per_process(cluster):
    limit = 3
    up = cluster.fake_upstream("up1")
    cfg = limited_config(up, {"user": {"requests_per_minute": limit}})
    a = cluster.aibox(cfg)
    b = cluster.aibox(cfg)
    assert 'limiter="memory"' in a.stderr()
    ca, cb = a.client(), b.client()

    fresh_window(local_now_ms)
    for _ in range(limit):
        assert ca.chat.completions.create(model="chat", messages=HELLO).choices[0].message.content == "up1: hello"
    e = assert_rate_limited(
        lambda: ca.chat.completions.create(model="chat", messages=HELLO), "user", "requests", limit
    )
    left_s = (WINDOW_MS - local_now_ms() % WINDOW_MS) / 1000
    assert abs(int(e.response.headers["retry-after"]) - left_s) <= 2.0
    with pytest.raises(openai.RateLimitError):
        ca.chat.completions.create(model="chat", messages=HELLO, stream=True)
    with pytest.raises(openai.RateLimitError):
        ca.embeddings.create(model="chat", input="x")
    assert up.stats()["requests"] == limit

    # Without Redis the other process has its own, untouched budget.
    assert cb.chat.completions.create(model="chat", messages=HELLO).choices[0].message.content == "up1: hello"

    metrics = a.ops().get("/metrics").text
    assert 'aibox_rate_limited_total{scope="user"}' in metrics


def test_token_limit_refuses_requests_once_usage_exceeds_it(cluster):
    tpm = 20
    up = cluster.fake_upstream("up1")
    gw = cluster.aibox(limited_config(up, {"user": {"tokens_per_minute": tpm}}))
    client = gw.client()

    fresh_window(local_now_ms)
    first = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": TEN_WORDS}])
    assert first.usage.total_tokens == 21 > tpm
    # Usage is recorded just after the answer is sent.
    time.sleep(0.3)
    assert_rate_limited(
        lambda: client.chat.completions.create(model="chat", messages=HELLO), "user", "tokens", tpm
    )
    assert up.stats()["requests"] == 1


def test_token_limit_below_usage_still_admits_requests(cluster):
    # 3 tokens per "hello" round trip: 6 requests use 18 < 20 tokens.
    tpm = 20
    up = cluster.fake_upstream("up1")
    gw = cluster.aibox(limited_config(up, {"user": {"tokens_per_minute": tpm}}))
    client = gw.client()
    fresh_window(local_now_ms)
    for _ in range(6):
        r = client.chat.completions.create(model="chat", messages=HELLO)
        assert r.usage.total_tokens == 3
        time.sleep(0.05)
    # 18 used: still below the limit, so one more is admitted (and crosses it).
    client.chat.completions.create(model="chat", messages=HELLO)
    time.sleep(0.3)
    assert_rate_limited(
        lambda: client.chat.completions.create(model="chat", messages=HELLO), "user", "tokens", tpm
    )


def test_streamed_usage_counts_against_a_token_limit_shared_through_redis(cluster, redis_client):
    tpm = 20
    up = cluster.fake_upstream("up1")
    cfg = limited_config(up, {"tenant": {"tokens_per_minute": tpm}}, redis_url=REDIS_URL)
    a = cluster.aibox(cfg)
    b = cluster.aibox(cfg)

    window = fresh_window(lambda: redis_now_ms(redis_client))
    flush_limiter_keys(redis_client)

    chunks = list(
        a.client().chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": TEN_WORDS}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.total_tokens == 21
    key = f"aibox:rl:{window}:t:k:default"
    deadline = time.monotonic() + 3
    while redis_client.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client.get(key) == b"21"

    assert_rate_limited(
        lambda: b.client().chat.completions.create(model="chat", messages=HELLO),
        "tenant", "tokens", tpm,
    )


def test_unreachable_redis_refuses_start_without_printing_the_password(cluster):
    port = dead_port()
    cfg = base_config()
    cfg["redis_url"] = f"redis://:e2e-redis-pw-31337@127.0.0.1:{port}/0"
    cfg["limits"] = {"user": {"requests_per_minute": 5}}
    _, err = cluster.aibox_must_refuse_to_start(cfg)
    assert "Redis" in err
    assert f"127.0.0.1:{port}" in err
    assert "e2e-redis-pw-31337" not in err


def test_stream_without_include_usage_still_counts_against_the_token_limit(cluster):
    """Regression: a client that streams without `include_usage` must not dodge
    tokens_per_minute. aibox asks the upstream for usage anyway, counts it, and
    hides the usage-only chunk from the client that did not ask for it."""
    tpm = 20
    up = cluster.fake_upstream("up1")
    gw = cluster.aibox(limited_config(up, {"user": {"tokens_per_minute": tpm}}))
    client = gw.client()
    fresh_window(local_now_ms)

    chunks = list(
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": TEN_WORDS}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "up1: " + TEN_WORDS
    # The client did not ask for usage, so it sees no usage-only chunk...
    assert all(c.choices for c in chunks), "a usage-only chunk reached the client"
    # ...but the upstream was asked for it, and the tokens were counted.
    assert up.stats()["last_body"]["stream_options"] == {"include_usage": True}
    time.sleep(0.3)
    assert_rate_limited(
        lambda: client.chat.completions.create(model="chat", messages=HELLO), "user", "tokens", tpm
    )
