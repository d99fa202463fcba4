"""The OpenAI-compatible API of `aibox serve`, driven by the official `openai`
Python SDK (and httpx where the SDK cannot send the request).

Covers: non-streaming and streaming chat (with `stream_options.include_usage`),
the async client, `models.list()` for configured models and aliases and for
models discovered from the upstreams, embeddings, legacy completions, the
pass-through of unknown request fields with only `model` rewritten, the
upstream API key taken from `api_key_env` while the client's own key and any
`X-Aibox-*` header never reach the upstream, the `X-Request-Id` echo, and the
error responses (unknown model, malformed JSON, wrong content type, body over
`server.max_body_bytes`, unknown route, wrong method), each as an OpenAI error
object raising the matching SDK exception.
"""

from __future__ import annotations

import asyncio
import json
import re

import openai
import pytest

from conftest import CLIENT_API_KEY, base_config, dead_port, model

HELLO = [{"role": "user", "content": "hello"}]
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def assert_openai_error(body: dict, status_hint: str = "") -> dict:
    """Asserts `body` is exactly an OpenAI error object; returns the inner error."""
    assert set(body) == {"error"}, f"{status_hint} not an OpenAI error object: {body}"
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    return err


@pytest.fixture
def gw(cluster):
    """One fake upstream `up1` (models m1, m2) behind an aibox with two
    configured models: `chat` (alias `gpt-x`) -> up1/m1 and `embed` -> up1/m2."""
    up = cluster.fake_upstream("up1", models=["m1", "m2"])
    cfg = base_config(max_body_bytes=4096)
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [
        model("chat", (up, "m1"), aliases=["gpt-x", "team/chat-latest"]),
        model("embed", (up, "m2")),
    ]
    gw = cluster.aibox(cfg)
    gw.up = up
    return gw


def test_non_streaming_chat_returns_the_upstream_reply(gw):
    client = gw.client()
    resp = client.chat.completions.create(model="chat", messages=HELLO)
    assert resp.choices[0].message.content == "up1: hello"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0


LONG = " ".join(["hello streaming world"] * 40)


def test_streaming_chat_chunks_concatenate_to_the_reply(gw):
    client = gw.client()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": LONG},
    ]
    # Long enough to pass the output guardrail's hold-back window (256 bytes
    # in the standard profile) several times, so it streams in pieces.
    stream = client.chat.completions.create(model="chat", messages=messages, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) > 1, "expected the reply in several chunks"
    assert "".join(pieces) == "up1: " + LONG
    assert finish == "stop"


def test_streaming_chat_with_include_usage_ends_with_a_usage_chunk(gw):
    client = gw.client()
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "count these words"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "up1: count these words"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 3
    assert last.usage.completion_tokens == 4
    assert last.usage.total_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_async_client_chats_and_streams(gw):
    async def run():
        async with gw.async_client() as client:
            resp = await client.chat.completions.create(model="chat", messages=HELLO)
            stream = await client.chat.completions.create(
                model="gpt-x",
                messages=[{"role": "user", "content": "async stream"}],
                stream=True,
            )
            text = ""
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            # Concurrent requests share the gateway without interference.
            many = await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(8)
                ]
            )
            return resp, text, many

    resp, text, many = asyncio.run(run())
    assert resp.choices[0].message.content == "up1: hello"
    assert text == "up1: async stream"
    assert [r.choices[0].message.content for r in many] == [f"up1: n{i}" for i in range(8)]


def test_models_list_shows_configured_models_and_aliases(gw):
    client = gw.client()
    models = list(client.models.list())
    assert [m.id for m in models] == ["chat", "gpt-x", "team/chat-latest", "embed"]
    for m in models:
        assert m.object == "model"
        assert m.owned_by == "up1"
    # A configured catalogue never asks the upstream for its list (the fake's
    # own models m1/m2 are not offered under their upstream names).
    assert "m1" not in {m.id for m in models}


def test_models_are_discovered_from_upstreams_when_none_are_configured(cluster):
    a = cluster.fake_upstream("alpha", models=["llama-a", "shared"])
    b = cluster.fake_upstream("beta", models=["qwen-b", "shared"])
    cfg = base_config()
    cfg["upstreams"] = [a.upstream(), b.upstream()]
    gw = cluster.aibox(cfg)
    client = gw.client()
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"llama-a", "shared", "qwen-b"}
    assert models["llama-a"].owned_by == "alpha"
    assert models["qwen-b"].owned_by == "beta"
    # A name offered by both goes to the first upstream in config order.
    assert models["shared"].owned_by == "alpha"

    reply = client.chat.completions.create(model="qwen-b", messages=HELLO)
    assert reply.choices[0].message.content == "beta: hello"
    assert b.stats()["last_body"]["model"] == "qwen-b"
    reply = client.chat.completions.create(model="shared", messages=HELLO)
    assert reply.choices[0].message.content == "alpha: hello"

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="not-listed-anywhere", messages=HELLO)


def test_discovery_skips_a_dead_upstream(cluster):
    live = cluster.fake_upstream("live", models=["found"])
    dead = {"name": "gone", "base_url": f"http://127.0.0.1:{dead_port()}/v1"}
    cfg = base_config()
    cfg["upstreams"] = [dead, live.upstream()]
    gw = cluster.aibox(cfg)
    client = gw.client()
    assert [m.id for m in client.models.list()] == ["found"]
    assert client.chat.completions.create(model="found", messages=HELLO).choices[0].message.content == "live: hello"


def test_discovery_with_every_upstream_down_answers_503_not_model_not_found(cluster):
    """While no upstream can list its models, aibox cannot know whether a
    model exists: every request must get 503 (retryable), never a 404
    `model_not_found` that the SDK raises as a permanent NotFoundError."""
    cfg = base_config()
    cfg["upstreams"] = [{"name": "gone", "base_url": f"http://127.0.0.1:{dead_port()}/v1"}]
    gw = cluster.aibox(cfg)
    client = gw.client()
    with pytest.raises(openai.InternalServerError) as exc:
        client.models.list()
    assert exc.value.status_code == 503
    assert "gone" in exc.value.message
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(model="anything", messages=HELLO)
        assert exc.value.status_code == 503, exc.value.message


def test_embeddings_return_one_vector_per_input(gw):
    client = gw.client()
    resp = client.embeddings.create(model="embed", input=["first text", "second text"])
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in resp.data)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens == 4
    assert gw.up.stats()["last_body"]["model"] == "m2"

    resp = client.embeddings.create(
        model="embed", input="dimensions pass through", dimensions=5, encoding_format="float"
    )
    assert len(resp.data[0].embedding) == 5


def test_legacy_completions_work_streaming_and_not(gw):
    client = gw.client()
    resp = client.completions.create(model="chat", prompt="hello")
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "up1: hello"

    stream = client.completions.create(model="chat", prompt="legacy stream", stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == "up1: legacy stream"


def test_unknown_request_fields_pass_through_and_only_model_is_rewritten(gw):
    client = gw.client()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    x_custom = {"nested": [1, 2.5, None, True, "ü"], "deep": {"k": "v"}}
    client.chat.completions.create(
        model="gpt-x",
        messages=HELLO,
        response_format={"type": "json_object"},
        tools=tools,
        temperature=0.25,
        seed=7,
        extra_body={"x_custom": x_custom, "top_k": 40},
    )
    body = gw.up.stats()["last_body"]
    assert body["model"] == "m1", "the alias must be rewritten to the target's model"
    assert body["response_format"] == {"type": "json_object"}
    assert body["tools"] == tools
    assert body["x_custom"] == x_custom
    assert body["top_k"] == 40
    assert body["temperature"] == 0.25
    assert body["seed"] == 7
    assert body["messages"] == HELLO
    assert set(body) == {
        "model", "messages", "response_format", "tools", "temperature", "seed",
        "x_custom", "top_k",
    }


def test_upstream_key_comes_from_api_key_env_and_client_key_is_not_forwarded(cluster):
    keyed = cluster.fake_upstream("keyed")
    open_up = cluster.fake_upstream("open")
    cfg = base_config()
    cfg["upstreams"] = [
        keyed.upstream(api_key_env="E2E_UPSTREAM_KEY"),
        open_up.upstream(),
    ]
    cfg["models"] = [model("k", (keyed, "m1")), model("o", (open_up, "m1"))]
    gw = cluster.aibox(cfg, env={"E2E_UPSTREAM_KEY": "sk-upstream-from-env-123"})
    client = gw.client(api_key="sk-client-own-key-456")

    assert client.chat.completions.create(model="k", messages=HELLO).choices[0].message.content == "keyed: hello"
    assert keyed.stats()["last_headers"]["authorization"] == "Bearer sk-upstream-from-env-123"

    client.chat.completions.create(model="o", messages=HELLO)
    assert open_up.stats()["last_headers"]["authorization"] is None

    # Streams and other endpoints behave the same.
    list(client.chat.completions.create(model="k", messages=HELLO, stream=True))
    assert keyed.stats()["last_headers"]["authorization"] == "Bearer sk-upstream-from-env-123"
    client.embeddings.create(model="o", input="x")
    assert open_up.stats()["last_headers"]["authorization"] is None
    for up in (keyed, open_up):
        assert "sk-client-own-key-456" not in json.dumps(up.stats())
    # Neither key is ever logged.
    log = gw.stderr() + gw.proc.stdout()
    assert "sk-upstream-from-env-123" not in log
    assert "sk-client-own-key-456" not in log


def test_spoofed_aibox_principal_header_never_reaches_the_upstream(gw):
    client = gw.client(default_headers={"X-Aibox-Principal": "tenant=root;user=admin"})
    client.chat.completions.create(
        model="chat",
        messages=HELLO,
        extra_headers={"x-aibox-principal": "forged-again", "X-AIBOX-TENANT": "acme"},
    )
    stats = gw.up.stats()
    assert stats["requests"] == 1
    assert stats["last_headers"]["x-aibox-principal"] is None
    list(client.chat.completions.create(model="chat", messages=HELLO, stream=True))
    assert gw.up.stats()["last_headers"]["x-aibox-principal"] is None


def test_well_formed_request_id_is_echoed_and_forwarded(gw):
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=HELLO, extra_headers={"X-Request-Id": "e2e-req:42_a.b-c"}
    )
    assert raw.headers["x-request-id"] == "e2e-req:42_a.b-c"
    assert raw.parse().choices[0].message.content == "up1: hello"
    assert gw.up.stats()["last_headers"]["x-request-id"] == "e2e-req:42_a.b-c"


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "semi;colon", "slash/id"])
def test_malformed_request_id_is_replaced_by_a_generated_one(gw, bad):
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=HELLO, extra_headers={"X-Request-Id": bad}
    )
    rid = raw.headers["x-request-id"]
    assert rid != bad
    assert UUID_RE.match(rid), rid
    assert gw.up.stats()["last_headers"]["x-request-id"] == rid


def test_streaming_response_carries_the_request_id(gw):
    client = gw.client()
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=HELLO, stream=True, extra_headers={"X-Request-Id": "stream-id-7"}
    ) as raw:
        assert raw.headers["x-request-id"] == "stream-id-7"
        assert raw.headers["content-type"].startswith("text/event-stream")
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "up1: hello"
    assert gw.up.stats()["last_headers"]["x-request-id"] == "stream-id-7"


def test_generated_request_id_is_unique_per_request_and_present_on_errors(gw):
    http = gw.http()
    ids = {http.get("/v1/models").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(UUID_RE.match(i) for i in ids)
    r = http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO},
                  headers={"x-request-id": "err-id-1"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "err-id-1"


def test_unknown_model_raises_not_found_error(gw):
    client = gw.client()
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    e = exc.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.param == "model"
    assert "no-such-model" in e.message
    assert_openai_error(e.response.json())
    assert gw.up.stats()["requests"] == 0


def test_malformed_json_body_is_a_400_openai_error(gw):
    http = gw.http()
    r = http.post(
        "/v1/chat/completions",
        content=b'{"model": "chat", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    err = assert_openai_error(r.json())
    assert err["type"] == "invalid_request_error"
    assert "JSON" in err["message"]

    # An empty body, valid JSON that is not an object, and a missing model
    # are 400 too.
    r = http.post("/v1/chat/completions", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert_openai_error(r.json())
    r = http.post("/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400
    assert_openai_error(r.json())
    r = http.post("/v1/chat/completions", json={"messages": HELLO})
    assert r.status_code == 400
    assert assert_openai_error(r.json())["param"] == "model"
    assert gw.up.stats()["requests"] == 0


def test_malformed_request_raises_bad_request_error_in_the_sdk(gw):
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chat", messages=HELLO, extra_body={"stream": "yes"})
    assert exc.value.param == "stream"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embed", input="x", extra_body={"stream": True})


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(gw, content_type):
    http = gw.http()
    headers = {"content-type": content_type} if content_type else {}
    r = http.post(
        "/v1/chat/completions",
        content=json.dumps({"model": "chat", "messages": HELLO}).encode(),
        headers=headers,
    )
    assert r.status_code == 415, r.text
    err = assert_openai_error(r.json())
    assert err["code"] == "unsupported_media_type"
    assert gw.up.stats()["requests"] == 0


def test_json_content_type_with_charset_is_accepted(gw):
    r = gw.http().post(
        "/v1/chat/completions",
        content=json.dumps({"model": "chat", "messages": HELLO}).encode(),
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "up1: hello"


def test_body_over_max_body_bytes_is_413(gw):
    # server.max_body_bytes is 4096 in this gateway.
    big = "word " * 2000
    client = gw.client()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": big}])
    assert exc.value.status_code == 413
    assert exc.value.code == "request_too_large"
    assert_openai_error(exc.value.response.json())
    assert gw.up.stats()["requests"] == 0

    # Just under the limit still goes through.
    fits = "w " * 1500
    resp = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": fits}])
    assert resp.choices[0].message.content == "up1: " + fits


def test_chunked_body_over_max_body_bytes_is_413(gw):
    # Without Content-Length the limit must still hold while reading.
    def body():
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = gw.http().post(
        "/v1/chat/completions", content=body(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert assert_openai_error(r.json())["code"] == "request_too_large"
    assert gw.up.stats()["requests"] == 0


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/v1/nope"), ("POST", "/v1/chat/completion"), ("GET", "/"), ("GET", "/v2/models")],
)
def test_unknown_route_is_a_404_openai_error(gw, method, path):
    r = gw.http().request(method, path)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    err = assert_openai_error(r.json())
    assert err["code"] == "not_found"
    assert r.headers.get("x-request-id")


def test_unknown_route_raises_not_found_error_in_the_sdk(gw):
    client = gw.client()
    with pytest.raises(openai.NotFoundError):
        client.get("/nonexistent/endpoint", cast_to=object)


def test_wrong_method_is_a_405_openai_error(gw):
    r = gw.http().get("/v1/chat/completions")
    assert r.status_code == 405
    assert assert_openai_error(r.json())["code"] == "method_not_allowed"


def test_client_api_key_is_accepted_but_irrelevant_while_auth_is_off(gw):
    # Auth is off in this build: any key (or the SDK's own one) is accepted
    # and attributed to the anonymous principal; it is never forwarded.
    for key in (CLIENT_API_KEY, "another"):
        resp = gw.client(api_key=key).chat.completions.create(model="chat", messages=HELLO)
        assert resp.choices[0].message.content == "up1: hello"
    assert gw.up.stats()["last_headers"]["authorization"] is None
