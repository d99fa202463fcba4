"""OpenTelemetry traces over OTLP/HTTP, received by a real OTLP receiver.

The receiver is a small HTTP server in this file that decodes the real
protobuf with the official `opentelemetry-proto` package
(ExportTraceServiceRequest), as a collector would. Covers: a chat turn made
with the `openai` SDK produces a `gen_ai` client span, child of the request
span, carrying the GenAI semantic conventions (gen_ai.operation.name,
gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens and
output_tokens, gen_ai.provider.name), the turn id and the resource's
service.name; the prompt and the completion are nowhere in what the
collector received unless `telemetry.capture_content` is on, and then they
are in gen_ai.input/output.messages; streamed turns get a span too; a failed
call carries error.type; a collector that is down changes nothing for
clients; the collector's Authorization header comes from the variable named
in the config.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from conftest import base_config, dead_port, model

SECRET_PROMPT = "the launch code is PINEAPPLE-4242"
#: The batch span processor's delay, so that spans arrive within the test.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def attr_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver:
    """An OTLP/HTTP traces endpoint that keeps what it decodes."""

    def __init__(self):
        self.raw: list[bytes] = []
        self.spans: list[dict] = []
        self.headers: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver.raw.append(body)
                receiver.headers.append(dict(self.headers))
                for rs in req.resource_spans:
                    resource = {a.key: attr_value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            receiver.spans.append({
                                "name": s.name,
                                "kind": s.kind,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex(),
                                "attrs": {a.key: attr_value(a.value) for a in s.attributes},
                                "status": s.status.code,
                                "resource": resource,
                            })
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in list(self.spans) if predicate(s)]
            if found:
                return found
            time.sleep(0.1)
        pytest.fail(f"no matching span within {timeout} s; received: {[s['name'] for s in self.spans]}")

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def gateway(cluster, endpoint: str, **telemetry):
    up = cluster.fake_upstream("up1")
    cfg = base_config()
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [model("chat", (up, "m1"))]
    cfg["telemetry"] = {"traces": True, "otlp_endpoint": endpoint, **telemetry}
    env = dict(FAST_EXPORT)
    if "otlp_authorization_env" in telemetry:
        env[telemetry["otlp_authorization_env"]] = "Bearer collector-secret"
    return cluster.aibox(cfg, env=env)


def test_model_calls_carry_genai_attributes_and_no_prompt_by_default(cluster, receiver):
    gw = gateway(cluster, receiver.url, otlp_authorization_env="COLLECTOR_AUTH")
    raw = gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": SECRET_PROMPT}])
    turn = raw.headers["x-aibox-turn"]
    answer = raw.parse().choices[0].message.content
    assert SECRET_PROMPT in answer  # the fake echoes, so the completion holds it too

    (span,) = receiver.wait(lambda s: s["attrs"].get("aibox.turn") == turn)
    a = span["attrs"]
    assert span["name"] == "chat chat"
    assert span["kind"] == 3  # SPAN_KIND_CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "chat"
    assert a["gen_ai.response.model"] == "m1"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["aibox.tenant"] == "default" and a["aibox.upstream"] == "up1"
    assert "error.type" not in a
    assert span["resource"]["service.name"] == "aibox"
    # A child of the request's span, in one trace.
    parents = receiver.wait(lambda s: s["span_id"] == span["parent"])
    assert parents[0]["trace_id"] == span["trace_id"] and parents[0]["name"] == "request"

    # Neither the prompt nor the completion reached the collector.
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
    assert not any(b"PINEAPPLE" in body for body in receiver.raw)
    # The collector's credential came from the named variable.
    assert receiver.headers[0].get("authorization") == "Bearer collector-secret"
    assert "collector-secret" not in gw.stderr()


def test_content_is_captured_only_when_configured(cluster, receiver):
    gw = gateway(cluster, receiver.url, capture_content=True)
    raw = gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": SECRET_PROMPT}])
    turn = raw.headers["x-aibox-turn"]
    (span,) = receiver.wait(lambda s: s["attrs"].get("aibox.turn") == turn)
    assert SECRET_PROMPT in span["attrs"]["gen_ai.input.messages"]
    assert "PINEAPPLE" in span["attrs"]["gen_ai.output.messages"]


def test_streams_and_failures_get_spans(cluster, receiver):
    gw = gateway(cluster, receiver.url)
    client = gw.client()
    stream = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True})
    turn = stream.headers["x-aibox-turn"]
    chunks = list(stream.parse())
    assert chunks
    (span,) = receiver.wait(lambda s: s["attrs"].get("aibox.turn") == turn)
    assert span["attrs"]["gen_ai.operation.name"] == "chat"
    assert span["attrs"]["gen_ai.usage.output_tokens"] > 0

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    failed = receiver.wait(lambda s: s["attrs"].get("gen_ai.request.model") == "nope")
    assert failed[0]["attrs"]["error.type"]
    assert failed[0]["status"] == 2  # STATUS_CODE_ERROR


def test_a_collector_that_is_down_changes_nothing_for_clients(cluster):
    gw = gateway(cluster, f"http://127.0.0.1:{dead_port()}/v1/traces")
    client = gw.client()
    started = time.monotonic()
    for _ in range(5):
        assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}]).choices
    assert time.monotonic() - started < 5


def test_bad_telemetry_config_stops_start_up(cluster):
    cfg = base_config()
    cfg["telemetry"] = {"traces": True, "otlp_authorization_env": "UNSET_COLLECTOR_AUTH"}
    _, err = cluster.aibox_must_refuse_to_start(cfg)
    assert "UNSET_COLLECTOR_AUTH" in err and "telemetry" in err


# --------------------------------------------------------------------------
# W3C trace context (issue 8): in on the main listener, out to upstream
# models, HTTP MCP servers and downstream routes.
# --------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
COMPLETION = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "m1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "traced"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _parts(tp: str) -> tuple[str, str, str]:
    version, trace, parent, flags = tp.split("-")
    assert version == "00" and len(trace) == 32 and len(parent) == 16, tp
    return trace, parent, flags


def traced_gateway(cluster, receiver_url: str | None):
    """aibox with a header-recording upstream model, a downstream route to a
    recording service and the SDK's HTTP MCP server; traces on when
    `receiver_url` is given."""
    import json
    import re
    import sys

    from conftest import Proc, clean_env
    from identity_kit import RecordingServer
    from test_mcp import SERVERS_DIR, write_registry

    up, svc = RecordingServer(), RecordingServer()
    cluster._closers += [up.close, svc.close]
    up.files["/v1/chat/completions"] = (200, "application/json", json.dumps(COMPLETION).encode())
    http_server = Proc("mcp-http", [sys.executable, str(SERVERS_DIR / "http_server.py")], cluster._dir("mcp-http-"), clean_env())
    cluster.others.append(http_server)
    http_addr = http_server.wait_for(re.compile(r"^LISTENING (\S+)$", re.M)).group(1)
    cwd = cluster.aibox_dir()
    write_registry(cwd, ["remote"], {"remote": {"transport": "http", "url": f"http://{http_addr}/mcp", "allow_clients": ["*"]}})
    cfg = base_config()
    cfg["upstreams"] = [{"name": "rec", "base_url": up.url + "/v1"}]
    cfg["models"] = [model("chat", ("rec", "m1"))]
    cfg["routes"] = [{"prefix": "/svc/", "upstream": svc.url, "audience": "svc"}]
    env = {
        "AIBOX_MCP_REQUIRE_CAPTOKEN": "false",
        "AIBOX_EGRESS_ALLOW_HOSTS": "127.0.0.1",
        "AIBOX_EGRESS_ALLOWED_PORTS": http_addr.rsplit(":", 1)[1],
    }
    if receiver_url:
        cfg["telemetry"] = {"traces": True, "otlp_endpoint": receiver_url}
        env.update(FAST_EXPORT)
    return cluster.aibox(cfg, env=env, cwd=cwd), up, svc


def mcp_trace_headers(gw, headers: dict[str, str]) -> str:
    import asyncio

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def go() -> str:
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            async with streamable_http_client(f"{gw.main_url}/mcp", http_client=client) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    r = await session.call_tool("remote__trace_headers", {})
                    assert not r.isError, r
                    return "".join(c.text for c in r.content)

    return asyncio.run(go())


def test_issue8_traceparent_in_becomes_the_parent_and_goes_out_to_every_hop(cluster, receiver):
    gw, up, svc = traced_gateway(cluster, receiver.url)
    incoming = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque-1"}

    # A model call: the request span is a child of the caller's span; the
    # upstream's parent is the gen_ai client span.
    raw = gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], extra_headers=incoming)
    turn = raw.headers["x-aibox-turn"]
    (genai,) = receiver.wait(lambda s: s["attrs"].get("aibox.turn") == turn and s["name"] == "chat chat")
    (request,) = receiver.wait(lambda s: s["span_id"] == genai["parent"])
    assert request["name"] == "request" and request["kind"] == 2  # SPAN_KIND_SERVER
    assert request["trace_id"] == TRACE_ID and request["parent"] == CALLER_SPAN
    assert genai["trace_id"] == TRACE_ID
    sent = up.last()
    trace, parent, flags = _parts(sent.one("traceparent"))
    assert (trace, parent, flags) == (TRACE_ID, genai["span_id"], "01")
    assert sent.one("tracestate") == "vendor=opaque-1"

    # A downstream route: the service's parent is aibox's client span, and
    # the caller's own traceparent is not passed through beside it.
    r = gw.http().get("/svc/items", headers=incoming)
    assert r.status_code == 200, r.text
    got = svc.last()
    trace, parent, _ = _parts(got.one("traceparent"))
    assert trace == TRACE_ID and parent != CALLER_SPAN
    (ds,) = receiver.wait(lambda s: s["span_id"] == parent)
    assert ds["name"] == "GET /svc/" and ds["kind"] == 3 and ds["trace_id"] == TRACE_ID
    (ds_request,) = receiver.wait(lambda s: s["span_id"] == ds["parent"])
    assert ds_request["name"] == "request" and ds_request["parent"] == CALLER_SPAN

    # An HTTP MCP server: the tools/call request carries the mcp_call span.
    seen_tp, seen_ts = mcp_trace_headers(gw, incoming).split("|")
    trace, parent, _ = _parts(seen_tp)
    assert trace == TRACE_ID and seen_ts == "vendor=opaque-1"
    (call,) = receiver.wait(lambda s: s["span_id"] == parent)
    assert call["name"] == "tools/call trace_headers" and call["kind"] == 3
    assert call["attrs"]["mcp.server"] == "remote"


@pytest.mark.parametrize("bad", [
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # version 00 with more
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "garbage",
])
def test_issue8_a_malformed_traceparent_is_ignored(cluster, receiver, bad):
    gw, up, _ = traced_gateway(cluster, receiver.url)
    raw = gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": bad, "tracestate": "vendor=should-go"})
    turn = raw.headers["x-aibox-turn"]
    (genai,) = receiver.wait(lambda s: s["attrs"].get("aibox.turn") == turn)
    (request,) = receiver.wait(lambda s: s["span_id"] == genai["parent"])
    # A trace of aibox's own: a root span, a fresh trace id.
    assert request["parent"] == "" and request["trace_id"] != TRACE_ID
    trace, parent, _ = _parts(up.last().one("traceparent"))
    assert trace == request["trace_id"] and parent == genai["span_id"]
    # The malformed parent's tracestate is not propagated either.
    assert up.last().all("tracestate") == []


def test_issue8_no_trace_headers_go_out_with_traces_off(cluster):
    gw, up, _ = traced_gateway(cluster, None)
    gw.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT})
    assert up.last().all("traceparent") == [] and up.last().all("tracestate") == []
