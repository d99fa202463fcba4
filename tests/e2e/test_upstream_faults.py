"""How aibox behaves when upstreams fail, seen through the `openai` SDK (with
retries disabled) and httpx.

Covers: fallback to the next target on connection refused, on HTTP 500 and on
a slow first byte; 502 naming every upstream when all targets fail; 504 when
every target exceeds `first_byte_ms`; 502 for a malformed JSON answer; errors
inside a started stream (connection reset, missing `[DONE]`, idle timeout,
total timeout) surfacing as `openai.APIError` after the content received so
far; and a client that disconnects mid-stream making aibox drop the upstream
request (asserted on the fake upstream's side).
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import base_config, collect_until_error, dead_port, inflight_gauge, model

HELLO = [{"role": "user", "content": "hello"}]


def gateway(cluster, upstreams, models, **server):
    cfg = base_config(**server)
    cfg["upstreams"] = upstreams
    cfg["models"] = models
    return cluster.aibox(cfg)


def dead_upstream(name="dead", **extra):
    entry = {"name": name, "base_url": f"http://127.0.0.1:{dead_port()}/v1"}
    entry.update(extra)
    return entry


def test_connection_refused_falls_back_to_the_next_target(cluster):
    live = cluster.fake_upstream("live")
    gw = gateway(
        cluster,
        [dead_upstream(timeouts={"connect_ms": 1000}), live.upstream()],
        [model("chat", ("dead", "m1"), (live, "m1"))],
    )
    client = gw.client()
    resp = client.chat.completions.create(model="chat", messages=HELLO)
    assert resp.choices[0].message.content == "live: hello"
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="chat", messages=HELLO, stream=True)
        if c.choices
    )
    assert text == "live: hello"
    assert live.stats()["requests"] == 2


def test_http_500_falls_back_to_the_next_target(cluster):
    broken = cluster.fake_upstream("broken")
    live = cluster.fake_upstream("live")
    gw = gateway(
        cluster,
        [broken.upstream(), live.upstream()],
        [model("chat", (broken, "fault-500"), (live, "m1"))],
    )
    client = gw.client()
    resp = client.chat.completions.create(model="chat", messages=HELLO)
    assert resp.choices[0].message.content == "live: hello"
    assert broken.stats()["requests"] == 1
    assert broken.stats()["last_body"]["model"] == "fault-500"
    assert live.stats()["last_body"]["model"] == "m1"

    # A stream falls back the same way, since nothing was sent yet.
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="chat", messages=HELLO, stream=True)
        if c.choices
    )
    assert text == "live: hello"
    assert broken.stats()["requests"] == 2


def test_upstream_4xx_is_passed_through_and_not_retried(cluster):
    first = cluster.fake_upstream("first")
    second = cluster.fake_upstream("second")
    gw = gateway(
        cluster,
        [first.upstream(), second.upstream()],
        [model("chat", (first, "m1"), (second, "m1"))],
    )
    # The fake upstream answers 400 when `messages` is missing.
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="chat", messages=openai.omit)
    assert exc.value.param == "messages"
    assert "messages" in exc.value.message
    assert first.stats()["requests"] == 1
    assert second.stats()["requests"] == 0, "a 4xx answer must not fall back"


def test_body_broken_off_before_the_client_saw_anything_falls_back(cluster):
    flaky = cluster.fake_upstream("flaky")
    live = cluster.fake_upstream("live")
    gw = gateway(
        cluster,
        [flaky.upstream(), live.upstream()],
        [model("chat", (flaky, "fault-reset-mid-stream"), (live, "m1")),
         model("only-flaky", (flaky, "fault-reset-mid-stream"))],
    )
    client = gw.client()
    resp = client.chat.completions.create(model="chat", messages=HELLO)
    assert resp.choices[0].message.content == "live: hello"
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="only-flaky", messages=HELLO)
    assert exc.value.status_code == 502
    assert "flaky" in exc.value.message


def test_all_targets_failing_is_a_502_naming_every_upstream(cluster):
    broken = cluster.fake_upstream("broken-up")
    gw = gateway(
        cluster,
        [dead_upstream("refusing-up"), broken.upstream()],
        [model("chat", ("refusing-up", "m1"), (broken, "fault-500"))],
    )
    client = gw.client()
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="chat", messages=HELLO)
    e = exc.value
    assert e.status_code == 502
    assert e.code == "upstream_unavailable"
    assert "refusing-up" in e.message and "broken-up" in e.message
    body = e.response.json()["error"]
    assert "refusing-up" in body["message"] and "broken-up" in body["message"]
    assert "500" in body["message"]

    # A stream that cannot start fails the same way, before any event.
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="chat", messages=HELLO, stream=True)
    assert exc.value.status_code == 502


def test_slow_first_byte_beyond_first_byte_ms_is_a_504(cluster):
    slow = cluster.fake_upstream("slowpoke", slow_ms=2500)
    gw = gateway(
        cluster,
        [slow.upstream(timeouts={"first_byte_ms": 300})],
        [model("chat", (slow, "fault-slow-first-byte"))],
    )
    client = gw.client()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="chat", messages=HELLO)
    elapsed = time.monotonic() - started
    assert exc.value.status_code == 504
    assert isinstance(exc.value, openai.InternalServerError)
    assert exc.value.code == "upstream_timeout"
    assert "slowpoke" in exc.value.message
    assert 0.25 <= elapsed < 2.0, f"the 504 came after {elapsed:.2f} s"


def test_slow_first_byte_falls_back_to_the_next_target(cluster):
    slow = cluster.fake_upstream("slowpoke", slow_ms=2500)
    live = cluster.fake_upstream("live")
    gw = gateway(
        cluster,
        [slow.upstream(timeouts={"first_byte_ms": 300}), live.upstream()],
        [model("chat", (slow, "fault-slow-first-byte"), (live, "m1"))],
    )
    started = time.monotonic()
    resp = gw.client().chat.completions.create(model="chat", messages=HELLO)
    assert resp.choices[0].message.content == "live: hello"
    assert time.monotonic() - started < 2.0


def test_malformed_json_from_upstream_is_a_502(cluster):
    up = cluster.fake_upstream("garbled")
    gw = gateway(cluster, [up.upstream()], [model("chat", (up, "fault-malformed"))])
    with pytest.raises(openai.InternalServerError) as exc:
        gw.client().chat.completions.create(model="chat", messages=HELLO)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_invalid_response"
    assert "garbled" in exc.value.message


def test_connection_reset_mid_stream_raises_api_error_after_content(cluster):
    up = cluster.fake_upstream("flaky")
    gw = gateway(cluster, [up.upstream()], [model("chat", (up, "fault-reset-mid-stream"))])
    stream = gw.client().chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
    )
    text, err = collect_until_error(stream)
    assert text == "flaky: one ", "expected the two chunks sent before the reset"
    assert not isinstance(err, openai.APIStatusError), "the stream had started with 200"
    assert err.body["code"] == "upstream_stream_error"


def test_stream_without_done_raises_api_error_after_all_content(cluster):
    up = cluster.fake_upstream("nodone")
    gw = gateway(cluster, [up.upstream()], [model("chat", (up, "fault-no-done"))])
    stream = gw.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "cut short"}], stream=True
    )
    text, err = collect_until_error(stream)
    assert text == "nodone: cut short"
    assert err.body["code"] == "upstream_stream_incomplete"
    assert "[DONE]" in err.message


def test_client_disconnect_mid_stream_cancels_the_upstream_request(cluster):
    up = cluster.fake_upstream("slowstream")
    gw = gateway(cluster, [up.upstream()], [model("chat", (up, "fault-slow-stream"))])
    with httpx.Client(timeout=10) as http:
        with http.stream(
            "POST",
            f"{gw.main_url}/v1/chat/completions",
            json={"model": "chat", "stream": True,
                  "messages": [{"role": "user", "content": "tick tock"}]},
        ) as resp:
            assert resp.status_code == 200
            content_events = 0
            for line in resp.iter_lines():
                if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                    content_events += 1
                    if content_events == 2:
                        # Still streaming: the upstream request is open.
                        during = up.stats()
                        break
            # Leaving iter_lines() early closes the connection.
            assert during["active_streams"] == 1 and during["disconnects"] == 0, during
    # The client is gone: aibox must drop its upstream request promptly.
    disconnected_at = time.monotonic()
    stats = up.wait_stats(lambda s: s["disconnects"] >= 1, timeout=3.0)
    assert stats["disconnects"] >= 1, f"upstream never saw the disconnect: {stats}"
    assert stats["active_streams"] == 0
    assert stats["completed_streams"] == 0
    assert time.monotonic() - disconnected_at < 3.0


def test_idle_timeout_mid_stream_raises_api_error(cluster):
    up = cluster.fake_upstream("slowstream")
    gw = gateway(
        cluster,
        [up.upstream(timeouts={"idle_ms": 50})],
        [model("chat", (up, "fault-slow-stream"))],
    )
    stream = gw.client().chat.completions.create(model="chat", messages=HELLO, stream=True)
    started = time.monotonic()
    _, err = collect_until_error(stream)
    assert time.monotonic() - started < 3.0
    assert err.body["code"] == "upstream_timeout"
    assert "idle" in err.message
    # The upstream request is dropped, not left streaming for a minute.
    stats = up.wait_stats(lambda s: s["active_streams"] == 0 and s["disconnects"] >= 1)
    assert stats["disconnects"] >= 1 and stats["active_streams"] == 0, stats


def test_total_timeout_mid_stream_raises_api_error_after_content(cluster):
    up = cluster.fake_upstream("slowstream")
    gw = gateway(
        cluster,
        [up.upstream(timeouts={"connect_ms": 500, "first_byte_ms": 500, "total_ms": 1000})],
        [model("chat", (up, "fault-slow-stream"))],
    )
    stream = gw.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "tick"}], stream=True
    )
    started = time.monotonic()
    text, err = collect_until_error(stream)
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 3.0, elapsed
    assert text.startswith("slowstream: tick"), text
    assert err.body["code"] == "upstream_timeout"
    assert "total" in err.message


def test_inflight_gauge_returns_to_zero_after_every_kind_of_stream_end(cluster):
    up = cluster.fake_upstream("up1")
    gw = gateway(
        cluster,
        [up.upstream()],
        [model("ok", (up, "m1")), model("reset", (up, "fault-reset-mid-stream")),
         model("nodone", (up, "fault-no-done")), model("slow", (up, "fault-slow-stream")),
         model("broken", (up, "fault-500"))],
    )
    client = gw.client()
    client.chat.completions.create(model="ok", messages=HELLO)
    list(client.chat.completions.create(model="ok", messages=HELLO, stream=True))
    for name in ("reset", "nodone"):
        collect_until_error(client.chat.completions.create(model=name, messages=HELLO, stream=True))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=HELLO)
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", f"{gw.main_url}/v1/chat/completions",
                         json={"model": "slow", "stream": True, "messages": HELLO}) as resp:
            lines = resp.iter_lines()  # keep a reference: dropping it closes the stream
            next(lines)
            assert inflight_gauge(gw) == 1
            lines.close()
    up.wait_stats(lambda s: s["disconnects"] >= 1)
    deadline = time.monotonic() + 3
    while inflight_gauge(gw) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inflight_gauge(gw) == 0


def test_inflight_gauge_returns_to_zero_when_the_client_gives_up_before_the_first_byte(cluster):
    """A client that times out while aibox waits for the upstream's headers
    cancels the handler; the in-flight gauge must not keep counting it."""
    slow = cluster.fake_upstream("slowpoke", slow_ms=1500)
    gw = gateway(
        cluster,
        [slow.upstream()],
        [model("chat", (slow, "fault-slow-first-byte"))],
    )
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{gw.main_url}/v1/chat/completions",
                       json={"model": "chat", "messages": HELLO}, timeout=0.3)
    # Well past the upstream's 1.5 s answer: nothing can be in flight now.
    time.sleep(2.0)
    assert inflight_gauge(gw) == 0, "the in-flight gauge leaked cancelled requests"


@pytest.mark.parametrize("fault", ["fault-no-done", "fault-reset-mid-stream"])
def test_stream_error_event_is_a_complete_openai_error_object(cluster, fault):
    """The error event ending a broken stream has the same shape as every other
    aibox error: {"error": {"message", "type", "param", "code"}}."""
    up = cluster.fake_upstream("up1")
    gw = gateway(cluster, [up.upstream()], [model("chat", (up, fault))])
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{gw.main_url}/v1/chat/completions",
                      json={"model": "chat", "stream": True, "messages": HELLO})
    assert r.status_code == 200
    data = [line[len("data:"):].strip() for line in r.text.splitlines() if line.startswith("data:")]
    last = json.loads(data[-1])
    assert set(last) == {"error"}, last
    assert set(last["error"]) == {"message", "type", "param", "code"}, last["error"]
