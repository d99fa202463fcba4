"""The built-in `fetch` MCP tool end to end, with the official MCP Python SDK
as the client through aibox's `/mcp`.

aibox runs with `fetch` enabled in `servers.txt` and an `egress:` section in
its config file (the allow-list names exactly 127.0.0.2 and the test
server's port; the response cap is 4 KiB). The test's HTTP server listens on
127.0.0.2, the one allowed host. Everything else is refused by the egress
guard, and each refusal names its rule: loopback (127.0.0.1, the same port),
the cloud metadata address, redirects from the allowed host to loopback and
to metadata, `file:` and `gopher:` URLs, and a body over the cap. Every
call, allowed or refused, has a `tool_call` event in its audit receipt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import Aibox, Cluster
from test_mcp import KEY_ENV, call, captoken, create_key, gateway_config, receipt_events, write_registry

ALLOWED_HOST = "127.0.0.2"
PAGE = "hello from the allowed host"
MAX_RESPONSE_BYTES = 4096


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        port = self.server.server_address[1]
        routes = {
            "/page": (200, {"Content-Type": "text/plain; charset=utf-8"}, PAGE.encode()),
            "/to-loopback": (302, {"Location": f"http://127.0.0.1:{port}/page"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-page": (302, {"Location": "/page"}, b""),
            "/big": (200, {"Content-Type": "text/plain"}, b"x" * (MAX_RESPONSE_BYTES * 4)),
            "/image": (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n"),
        }
        status, headers, body = routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"not found"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Env:
    gw: Aibox
    key: str
    port: int

    def url(self) -> str:
        return f"{self.gw.main_url}/mcp"


@pytest.fixture(scope="module")
def env(module_cluster: Cluster):
    try:
        httpd = ThreadingHTTPServer((ALLOWED_HOST, 0), Handler)
    except OSError as e:  # pragma: no cover - every Linux routes 127.0.0.0/8 to lo
        pytest.fail(f"cannot bind {ALLOWED_HOST}: {e}")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    cwd = module_cluster.aibox_dir()
    write_registry(cwd, ["fetch"], {"fetch": {"transport": "builtin", "allow_clients": ["tenant:acme"]}})
    cfg = gateway_config()
    cfg["egress"] = {
        "allow_hosts": [ALLOWED_HOST],
        "allowed_ports": [port],
        "max_response_bytes": MAX_RESPONSE_BYTES,
        "timeout_ms": 10000,
    }
    gw = module_cluster.aibox(cfg, env=KEY_ENV, cwd=cwd)
    key = create_key(module_cluster, cwd, "acme", "alice", "tools")
    yield Env(gw, key, port)
    httpd.shutdown()


def fetch(env: Env, url: str, **extra: Any) -> Any:
    token, _ = captoken("acme", "alice", ["tool:fetch/fetch"])
    return call(env, env.key, "fetch__fetch", {"url": url, **extra}, token)  # type: ignore[arg-type]


def text(result: Any) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def audited(env: Env, result: Any) -> dict[str, Any]:
    turn = result.meta["aibox/turn"]
    events = receipt_events(env, env.key, turn)  # type: ignore[arg-type]
    calls = [e for e in events if e["type"] == "tool_call"]
    assert len(calls) == 1, events
    assert (calls[0]["server"], calls[0]["tool"]) == ("fetch", "fetch"), calls
    return calls[0]


def test_the_allowed_host_is_fetched_and_audited(env: Env):
    r = fetch(env, f"http://{ALLOWED_HOST}:{env.port}/page")
    assert not r.isError, text(r)
    assert text(r) == PAGE
    assert r.structuredContent["status"] == 200
    assert audited(env, r)["outcome"] == {"outcome": "ok"}
    # A redirect that stays on the allowed host is followed.
    r = fetch(env, f"http://{ALLOWED_HOST}:{env.port}/to-page")
    assert not r.isError and text(r) == PAGE, text(r)
    # max_length cuts the text.
    r = fetch(env, f"http://{ALLOWED_HOST}:{env.port}/page", max_length=5)
    assert text(r).startswith("hello\n\n[truncated"), text(r)


def test_the_tool_is_listed_only_for_allowed_clients(env: Env):
    from test_mcp import with_session

    async def names(s):
        return [t.name for t in (await s.list_tools()).tools]

    assert with_session(env, env.key, names) == ["fetch__fetch"]  # type: ignore[arg-type]


#: URL (with {port} of the allowed server), the rule the refusal must name.
REFUSED = [
    ("http://127.0.0.1:{port}/page", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
    ("http://[::1]:{port}/page", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/page", "loopback"),
    ("http://2130706433:{port}/page", "loopback"),
    ("http://127.0.0.2:{port}/to-loopback", "loopback"),
    ("http://127.0.0.2:{port}/to-metadata", "cloud-metadata"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.2:{port}/_GET%20/page", "scheme"),
    ("data:text/plain,hello", "scheme"),
    ("http://127.0.0.2:1/page", "port"),
    ("http://127.0.0.2:{port}/big", "max-response-bytes"),
]


@pytest.mark.parametrize("url,rule", REFUSED, ids=[u for u, _ in REFUSED])
def test_refusals_name_the_rule_and_are_audited(env: Env, url: str, rule: str):
    r = fetch(env, url.format(port=env.port))
    assert r.isError, f"{url} was fetched: {text(r)}"
    # An IPv6 form that embeds an IPv4 address is named by its form and the
    # IPv4 rule (`ipv4-mapped/loopback`).
    got = r.structuredContent["rule"]
    assert got == rule or got.endswith("/" + rule), r.structuredContent
    assert f"rule '{got}'" in text(r), text(r)
    assert PAGE not in text(r)
    assert audited(env, r)["outcome"] == {"outcome": "ok"}  # the tool answered, with a refusal


def test_binary_content_is_not_returned(env: Env):
    r = fetch(env, f"http://{ALLOWED_HOST}:{env.port}/image")
    assert r.isError and r.structuredContent["rule"] == "not-text", text(r)
