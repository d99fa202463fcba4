"""Issue 9, "Bad input at the edge": hostile HTTP/1.1 sent to aibox's main
listener over raw sockets.

Raw bytes, because HTTP clients and SDKs normalise exactly these inputs away.
Every row of `CASES` is sent on a fresh connection to one aibox (with
`server.max_body_bytes` 262144) in front of one fake upstream. For each row:

- the server answers a final status from the row's set (and closes the
  connection when the row requires it), or, for rows expecting `CLOSED`,
  closes the connection (any answer it sends first must be a 4xx);
- it never answers 5xx, never stays silent with the connection open beyond
  `HANG_BOUND` seconds, and never panics (stderr is checked);
- the fake upstream sees exactly the requests the client meant (its
  `/_stats` request counter), so no smuggled second request gets through;
- afterwards `/healthz` on the ops listener answers 200, a normal chat
  completion through the `openai` SDK works, and the process's VmRSS has
  grown by less than `RSS_GROWTH_BOUND` since the first row.

Cases:

- control: two honest pipelined requests, both answered and both counted by
  the upstream (so a smuggled request would be seen);
- smuggling: CL.TE and TE.CL pipelines whose second (smuggled) request is a
  valid chat completion; two different Content-Length headers; an invalid
  Content-Length (`+N`, a list); obfuscated Transfer-Encoding (`chunked,
  identity`, two TE headers, `xchunked`, a leading space, a space or a tab
  before the colon, an obs-fold continuation line); a `Transfer-Encoding:
  chunked` request on HTTP/1.0; a bad chunk size;
- size: one 1 MiB header, a 1 MiB URI, 10,000 headers, a chunked body with
  no Content-Length above the limit and one that never ends;
- content: 100k nested JSON arrays and 40k nested objects in a chat body,
  invalid UTF-8 in a JSON string and in header values, NUL bytes in the
  URI, a header value and the JSON body (raw);
- time: a slowloris client trickling header bytes, a connection that sends
  nothing, and `Expect: 100-continue` followed by no body. Each is closed
  by its configured timeout (`EDGE_TIMEOUT_MS`, shorter than the 30 s
  defaults so the table runs fast), and not before it: the first by
  `server.header_read_timeout_ms` (crates/aibox/src/listen.rs gives hyper
  its timer), the second by `server.first_byte_timeout_ms` (hyper does not
  time a new connection's first byte), the last by
  `server.body_idle_timeout_ms` (tower-http), answered 400. Regression for
  the issue 9 finding that `axum::serve` left them unenforced.

A last test holds 300 connections with 16 KiB of unfinished request head
each and checks that RSS stays bounded and other clients are still served.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import httpx
import pytest

from conftest import Cluster, base_config, model, vm_rss

#: The configured body limit (server.max_body_bytes).
MAX_BODY = 262144
#: The header-read, first-byte and body-idle timeouts of the gateway under
#: test (server.*_timeout_ms), in milliseconds.
EDGE_TIMEOUT_MS = 3000
#: How long a row may leave the connection open with no final answer.
HANG_BOUND = EDGE_TIMEOUT_MS / 1000 + 8.0
#: How long to wait for more responses after the last one on a kept-alive
#: connection (a smuggled pipelined request is answered well within it).
QUIET = 2.0
#: A generous bound on VmRSS growth over the whole table.
RSS_GROWTH_BOUND = 64 * 1024 * 1024

CHAT = "/v1/chat/completions"
CLOSED = "closed"


def chat_body(content: str) -> bytes:
    return json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": content}]}
    ).encode()


def request(
    body: bytes | None = None,
    *,
    path: str = CHAT,
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    version: str = "HTTP/1.1",
    content_length: bool = True,
) -> bytes:
    """A raw request; Host, Authorization and Content-Type are always set."""
    lines = [f"{method} {path} {version}", "Host: aibox.test", "Authorization: Bearer sk-edge"]
    if body is not None:
        lines.append("Content-Type: application/json")
        if content_length:
            lines.append(f"Content-Length: {len(body)}")
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


#: A valid chat completion, the "second request" of every smuggling row. If
#: the fake upstream ever counts a request during such a row, this got through.
SMUGGLED = request(chat_body("SMUGGLED"))


def head(*extra: str, path: str = CHAT, version: str = "HTTP/1.1") -> bytes:
    """A request head with the given raw header lines (no body framing)."""
    lines = [
        f"POST {path} {version}",
        "Host: aibox.test",
        "Authorization: Bearer sk-edge",
        "Content-Type: application/json",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes, size: int = 8192) -> bytes:
    out = b""
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


# --------------------------------------------------------------------------
# Generators: rows that send over time instead of all at once. Each gets the
# socket and an Event set when the reader has its outcome; it must stop then.
# --------------------------------------------------------------------------

Sender = Callable[[socket.socket, threading.Event], None]


def slowloris(sock: socket.socket, stop: threading.Event) -> None:
    """A request head that never ends: one header byte every 0.2 s."""
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: aibox.test\r\nX-Slow: ")
    while not stop.wait(0.2):
        sock.sendall(b"a")


def silent(sock: socket.socket, stop: threading.Event) -> None:
    """Connects and sends nothing at all."""
    stop.wait(HANG_BOUND + 5)


def expect_continue_then_nothing(sock: socket.socket, stop: threading.Event) -> None:
    """Announces a body with `Expect: 100-continue`, then never sends it."""
    sock.sendall(head("Content-Length: 100", "Expect: 100-continue"))
    stop.wait(HANG_BOUND + 5)


def endless_chunked(sock: socket.socket, stop: threading.Event) -> None:
    """A chunked body that never ends (64 KiB chunks, until the server stops
    reading or 30 s pass)."""
    sock.sendall(head("Transfer-Encoding: chunked"))
    piece = b"%x\r\n" % 65536 + b"[" * 65536 + b"\r\n"
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        sock.sendall(piece)


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    send: Union[bytes, Sender]
    #: The allowed first final status codes, or CLOSED.
    expect: Union[frozenset, str]
    #: Whether the server must close the connection after answering.
    must_close: bool = False
    #: How many requests the fake upstream must see.
    upstream: int = 0
    #: How many final answers the client must get (rows that expect CLOSED
    #: are not counted).
    answers: int = 1
    #: For the time rows: the connection must stay open at least this long
    #: (the configured timeout), so a close by something else is caught.
    min_open: float = 0.0
    marks: tuple = field(default=())


def s(*codes: int) -> frozenset:
    return frozenset(codes)



CASES = [
    # --- Control -----------------------------------------------------------
    Case(
        # Two honest pipelined requests: both are answered and both reach the
        # upstream. This shows the harness would see a smuggled request.
        "control_two_pipelined_requests",
        request(chat_body("one")) + SMUGGLED.replace(b"SMUGGLED", b"second  "),
        s(200), upstream=2, answers=2,
    ),
    # --- Request smuggling -------------------------------------------------
    Case(
        # Content-Length covers the terminating chunk and the smuggled
        # request; Transfer-Encoding says the body ends at "0\r\n\r\n".
        "cl_te_conflict_pipeline",
        head(
            f"Content-Length: {5 + len(SMUGGLED)}",
            "Transfer-Encoding: chunked",
        ) + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        # Transfer-Encoding's chunk swallows the smuggled request; a server
        # that used Content-Length: 4 would read it as a second request.
        "te_cl_conflict_pipeline",
        head("Content-Length: 4", "Transfer-Encoding: chunked")
        + b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
        s(400), must_close=True,
    ),
    Case(
        "two_different_content_lengths",
        head("Content-Length: 5", f"Content-Length: {5 + len(SMUGGLED)}") + b"{}   " + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "content_length_list",
        head(f"Content-Length: 5, {5 + len(SMUGGLED)}") + b"{}   " + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "content_length_plus_sign",
        head("Content-Length: +5") + b"{}   " + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "te_chunked_identity_with_cl",
        head("Transfer-Encoding: chunked, identity", "Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "te_two_headers_chunked_then_identity",
        head("Transfer-Encoding: chunked", "Transfer-Encoding: identity", "Content-Length: 5")
        + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "te_xchunked_with_cl",
        head("Transfer-Encoding: xchunked", "Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        # Optional whitespace before the value is legal: this is chunked, and
        # with a Content-Length it is the CL.TE conflict again.
        "te_leading_space_value_with_cl",
        head("Transfer-Encoding:  chunked", f"Content-Length: {5 + len(SMUGGLED)}")
        + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        # RFC 9112 §5.1: whitespace between the field name and the colon
        # MUST be rejected with 400.
        "te_space_before_colon",
        head("Transfer-Encoding : chunked", "Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "te_tab_before_colon",
        head("Transfer-Encoding\t: chunked", "Content-Length: 5") + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        # A header line starting with a space is obs-fold: it continues the
        # previous field (Content-Type here) or must be rejected.
        "te_obs_fold_line",
        head(f"Content-Length: {5 + len(SMUGGLED)}", " Transfer-Encoding: chunked")
        + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "te_chunked_on_http10",
        head("Transfer-Encoding: chunked", version="HTTP/1.0") + b"0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    Case(
        "bad_chunk_size",
        head("Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n" + SMUGGLED,
        s(400), must_close=True,
    ),
    # --- Sizes -------------------------------------------------------------
    Case(
        "one_huge_header_1mib",
        head("X-Huge: " + "a" * (1 << 20), "Content-Length: 2") + b"{}",
        s(431, 400), must_close=True,
    ),
    Case(
        "huge_uri_1mib",
        request(chat_body("hi"), path=CHAT + "?" + "a" * (1 << 20)),
        s(414, 431, 400), must_close=True,
    ),
    Case(
        "ten_thousand_headers",
        head(*[f"X-H{i}: v" for i in range(10_000)], "Content-Length: 2") + b"{}",
        s(431, 400), must_close=True,
    ),
    Case(
        "chunked_body_over_limit_no_content_length",
        head("Transfer-Encoding: chunked") + chunked(b"[" * (MAX_BODY * 4)),
        s(413),
    ),
    Case(
        "endless_chunked_body",
        endless_chunked,
        s(413),
    ),
    # --- Content -----------------------------------------------------------
    Case(
        "json_100k_nested_arrays",
        request(b'{"model":"chat","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        s(400, 422),
    ),
    Case(
        "json_40k_nested_objects",
        request(
            b'{"model":"chat","messages":[{"role":"user","content":"x","n":'
            + b'{"a":' * 40_000 + b"1" + b"}" * 40_000 + b"}]}"
        ),
        s(400, 422),
    ),
    Case(
        "json_invalid_utf8_in_string",
        request(b'{"model":"chat","messages":[{"role":"user","content":"\xff\xfe\xc0\xaf"}]}'),
        s(400, 422),
    ),
    Case(
        "json_raw_nul_in_string",
        request(b'{"model":"chat","messages":[{"role":"user","content":"a\x00b"}]}'),
        s(400, 422),
    ),
    Case(
        "json_nul_bytes_around_body",
        request(b"\x00" + chat_body("hi") + b"\x00"),
        s(400, 422),
    ),
    Case(
        # obs-text (bytes >= 0x80) is legal in a header value, so a server
        # may serve the request; it must not fail with 5xx.
        "header_invalid_utf8_value",
        request(chat_body("hi"), headers=[("X-Junk", "junk-XX")]).replace(b"junk-XX", b"\xff\xfe"),
        s(200), upstream=1,
    ),
    Case(
        # A credential that is not text is refused, not forwarded.
        "authorization_invalid_utf8",
        request(chat_body("hi")).replace(b"Bearer sk-edge", b"Bearer sk-\xff\xfe\x80"),
        s(401),
    ),
    Case(
        # An unusable client request id is replaced by a generated one.
        "request_id_invalid_utf8",
        request(chat_body("hi"), headers=[("X-Request-Id", "rid-XX")]).replace(b"rid-XX", b"rid-\xff\x80"),
        s(200), upstream=1,
    ),
    Case(
        "nul_in_header_value",
        request(chat_body("hi"), headers=[("X-Nul", "a\x00b")]),
        s(400), must_close=True,
    ),
    Case(
        "nul_in_uri",
        request(chat_body("hi"), path="/v1/chat\x00/completions"),
        s(400), must_close=True,
    ),
    # --- Time --------------------------------------------------------------
    Case(
        "slowloris_header_trickle",
        slowloris,
        CLOSED, min_open=EDGE_TIMEOUT_MS / 1000 * 0.9,
    ),
    Case(
        "silent_connection",
        silent,
        CLOSED, min_open=EDGE_TIMEOUT_MS / 1000 * 0.9,
    ),
    Case(
        "expect_100_continue_then_nothing",
        expect_continue_then_nothing,
        CLOSED, min_open=EDGE_TIMEOUT_MS / 1000 * 0.9,
    ),
]


# --------------------------------------------------------------------------
# Sending and reading
# --------------------------------------------------------------------------


@dataclass
class Outcome:
    statuses: list[int]
    informational: list[int]
    closed: bool
    elapsed: float
    raw: bytes

    def describe(self) -> str:
        return (
            f"final statuses {self.statuses}, 1xx {self.informational}, "
            f"closed={self.closed} after {self.elapsed:.1f} s; first bytes: {self.raw[:300]!r}"
        )


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


def _statuses(raw: bytes) -> tuple[list[int], list[int]]:
    """The final and the 1xx status codes of the complete responses in
    `raw`, parsed in order (aibox answers these rows with Content-Length
    bodies, so each response's end is known)."""
    final: list[int] = []
    info: list[int] = []
    pos = 0
    while True:
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head_bytes = raw[pos:end]
        m = _STATUS_LINE.match(head_bytes)
        if not m:
            break
        code = int(m.group(1))
        length = _CONTENT_LENGTH.search(head_bytes)
        body_end = end + 4 + (int(length.group(1)) if length and code >= 200 else 0)
        if body_end > len(raw):
            break
        (final if code >= 200 else info).append(code)
        pos = body_end
    return final, info


def exchange(addr: tuple[str, int], send: Union[bytes, Sender]) -> Outcome:
    """Sends a row on a fresh connection (in a writer thread, so a server
    that answers early is still read) and reads until the server closes, or
    QUIET seconds pass after a final answer, or HANG_BOUND passes."""
    sock = socket.create_connection(addr, timeout=5)
    sock.settimeout(0.25)
    stop = threading.Event()

    def writer() -> None:
        try:
            if isinstance(send, bytes):
                sock.sendall(send)
            else:
                send(sock, stop)
        except OSError:
            pass  # The server closed first: what the reader sees decides.

    t = threading.Thread(target=writer, daemon=True)
    started = time.monotonic()
    t.start()
    raw = b""
    closed = False
    last_final = None
    try:
        while True:
            now = time.monotonic()
            if now - started > HANG_BOUND:
                break
            if last_final is not None and now - last_final > QUIET:
                break
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                closed = True  # A reset is a close.
                break
            if not chunk:
                closed = True
                break
            before = len(_statuses(raw)[0])
            raw += chunk
            if len(_statuses(raw)[0]) > before:
                last_final = time.monotonic()
    finally:
        stop.set()
        elapsed = time.monotonic() - started
        sock.close()
        t.join(timeout=10)
    statuses, info = _statuses(raw)
    return Outcome(statuses, info, closed, elapsed, raw)


# --------------------------------------------------------------------------
# Fixture and tests
# --------------------------------------------------------------------------


@dataclass
class Env:
    gw: object
    up: object
    addr: tuple[str, int]
    rss_baseline: int


@pytest.fixture(scope="module")
def env(module_cluster: Cluster) -> Env:
    up = module_cluster.fake_upstream("up1")
    cfg = base_config(
        max_body_bytes=MAX_BODY,
        header_read_timeout_ms=EDGE_TIMEOUT_MS,
        first_byte_timeout_ms=EDGE_TIMEOUT_MS,
        body_idle_timeout_ms=EDGE_TIMEOUT_MS,
    )
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [model("chat", (up, "m1"))]
    gw = module_cluster.aibox(cfg)
    host, port = gw.main_url.removeprefix("http://").rsplit(":", 1)
    # One normal request first, so lazily built state is in the baseline.
    assert gw.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "warm"}]
    ).choices[0].message.content == "up1: warm"
    return Env(gw, up, (host, int(port)), vm_rss(gw.proc.pid))


def assert_healthy(env: Env, after: str) -> None:
    gw = env.gw
    assert gw.proc.running(), f"aibox exited after {after}\n" + gw.proc.describe()
    assert "panicked" not in gw.stderr(), f"aibox panicked on {after}\n" + gw.proc.describe()
    r = httpx.get(f"{gw.ops_url}/healthz", timeout=5)
    assert r.status_code == 200, f"/healthz after {after}: {r.status_code} {r.text}"
    before = env.up.stats()["requests"]
    resp = gw.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "after"}]
    )
    assert resp.choices[0].message.content == "up1: after"
    assert env.up.stats()["requests"] == before + 1


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES]
)
def test_bad_input_at_the_edge(env: Env, case: Case):
    before = env.up.stats()["requests"]
    out = exchange(env.addr, case.send)
    what = f"{case.name}: {out.describe()}"
    print(f"OUTCOME {what}")

    assert not any(c >= 500 for c in out.statuses), f"5xx answer: {what}"
    # Bytes that are not text are never echoed back (in a header or an error).
    assert b"\xff" not in out.raw and b"\x00" not in out.raw, f"hostile bytes echoed: {what}"
    if case.expect == CLOSED:
        assert out.closed, f"the server did not close the connection: {what}"
        assert all(400 <= c < 500 for c in out.statuses), f"non-4xx before closing: {what}"
        assert out.elapsed >= case.min_open, f"closed before the configured timeout: {what}"
    else:
        assert out.statuses, f"no final answer (hang bound {HANG_BOUND} s): {what}"
        assert out.statuses[0] in case.expect, f"expected one of {sorted(case.expect)}: {what}"
        assert len(out.statuses) == case.answers, f"expected {case.answers} answers: {what}"
        if case.must_close:
            assert out.closed, f"the server kept the connection open: {what}"
    # The upstream must see exactly the requests the client meant; for every
    # smuggling row that is none, so any request counted is the smuggled one.
    seen = env.up.wait_stats(lambda st: st["requests"] > before + case.upstream, timeout=0.5)
    assert seen["requests"] - before == case.upstream, (
        f"the fake upstream saw {seen['requests'] - before} requests, expected "
        f"{case.upstream} (last body {seen['last_body']}): {what}"
    )
    assert "SMUGGLED" not in json.dumps(seen["last_body"]), f"smuggled request reached the upstream: {what}"

    assert_healthy(env, case.name)
    growth = vm_rss(env.gw.proc.pid) - env.rss_baseline
    print(f"RSS {case.name}: baseline {env.rss_baseline >> 10} KiB, growth {growth >> 10} KiB")
    assert growth < RSS_GROWTH_BOUND, f"VmRSS grew by {growth >> 20} MiB after {case.name}"


#: How many slowloris connections the memory test holds open at once.
SLOW_CONNECTIONS = 300


def test_many_partial_heads_keep_memory_bounded_and_others_served(env: Env):
    """SLOW_CONNECTIONS clients each send 16 KiB of an unfinished request
    head and hold it. hyper buffers at most its max buffer size per
    connection, so RSS must stay within RSS_GROWTH_BOUND, and other clients
    must still be served while they wait; the header-read timeout closes
    them later."""
    before = vm_rss(env.gw.proc.pid)
    partial = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: aibox.test\r\nX-Slow: "
        + b"a" * 16384
    )
    socks = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sk = socket.create_connection(env.addr, timeout=5)
            sk.sendall(partial)
            socks.append(sk)
        time.sleep(1.0)
        assert_healthy(env, f"{SLOW_CONNECTIONS} partial request heads (while held open)")
        growth = vm_rss(env.gw.proc.pid) - before
        print(f"RSS {SLOW_CONNECTIONS} partial heads held: growth {growth >> 10} KiB")
        assert growth < RSS_GROWTH_BOUND, f"VmRSS grew by {growth >> 20} MiB"
        # None of them got an answer: the heads are incomplete. (The
        # header-read timeout may have closed some by now, without an answer.)
        for sk in socks:
            sk.setblocking(False)
            try:
                data = sk.recv(1)
            except BlockingIOError:
                data = None
            except ConnectionResetError:
                data = b""
            assert not data, f"a partial head got {data!r}"
    finally:
        for sk in socks:
            sk.close()
    assert_healthy(env, f"{SLOW_CONNECTIONS} partial request heads (after closing)")
