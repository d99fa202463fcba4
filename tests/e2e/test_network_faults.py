"""Issue 9, network faults: upstreams that hang, reset or trickle bytes, a
client that never reads its stream, and a burst of 10,000 connections.

The misbehaving upstream is `RawUpstream`, a loopback TCP server written
here on raw sockets because a fault *inside* an HTTP response head (a reset
halfway through the headers, headers sent one byte at a time) cannot be
produced by an HTTP framework. It reads one request per connection, picks
its behaviour by the request's `model`, answers with `Connection: close`
(so aibox keeps no pooled upstream connection that would blur the file
descriptor count), and records when aibox closes a connection it was still
holding: that is "the upstream side sees its connections closed".

After every fault the test checks that nothing leaked: aibox's open file
descriptors (/proc/PID/fd) and the in-flight gauge return to their baseline,
taken after warm-up requests.

Timeouts are configured short (hundreds of milliseconds) so that the module
runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import httpx
import openai
import pytest

from conftest import (
    Cluster,
    base_config,
    collect_until_error,
    inflight_gauge,
    open_fds,
    vm_rss,
)

HELLO = [{"role": "user", "content": "hello"}]

#: Upstream timeouts of the gateway under test (upstreams[].timeouts).
FIRST_BYTE_MS = 600
IDLE_MS = 600
TOTAL_MS = 2000
#: The trickling modes send one byte per this interval: well under IDLE_MS,
#: so only the first-byte or total timeout can end them.
TRICKLE_S = 0.05
#: server.send_stall_timeout_ms of the gateway under test.
SEND_STALL_MS = 1000
#: What the flooding upstream offers a client that never reads.
FLOOD_BYTES = 200 * 1024 * 1024
#: How much the flood may push through aibox into kernel buffers before
#: backpressure must stop it (a small fraction of FLOOD_BYTES).
FLOOD_BACKPRESSURE_BOUND = 48 * 1024 * 1024
#: How long the flood test waits for aibox to close the stalled stream: the
#: stall timeout plus the time to fill the socket buffers (about 5 s here),
#: with room for a loaded machine.
FLOOD_WAIT_S = 60
#: VmRSS growth allowed while the flood is held back.
FLOOD_RSS_BOUND = 50 * 1024 * 1024


# --------------------------------------------------------------------------
# A misbehaving upstream on raw sockets
# --------------------------------------------------------------------------


def _chat_json(content: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": "raw",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = json.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1, "model": "raw",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
    return f"data: {body}\n\n".encode()


def _head(content_type: str, length: int | None = None) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _sse_reply(content: str) -> bytes:
    return _chunk(content) + _chunk(None, "stop") + b"data: [DONE]\n\n"


class PeerClosed(Exception):
    """aibox closed (or reset) the connection while the upstream held it."""


@dataclass
class Exchange:
    mode: str
    stream: bool
    #: Set when aibox closed the connection before the upstream finished.
    peer_closed_at: float | None = None
    bytes_sent: int = 0
    finished: bool = False


class RawUpstream:
    """An HTTP/1.1 upstream on raw sockets whose behaviour is chosen by the
    request's `model` (see `_behave`)."""

    def __init__(self, name: str = "raw"):
        self.name = name
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def upstream(self, name: str | None = None, **extra) -> dict:
        entry = {"name": name or self.name, "base_url": self.base_url}
        entry.update(extra)
        return entry

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def last(self, mode: str) -> Exchange:
        with self._lock:
            found = [e for e in self.exchanges if e.mode == mode]
        assert found, f"the upstream never received a request for {mode}"
        return found[-1]

    def wait_closed(self, mode: str, timeout: float = 3.0) -> Exchange:
        """The last exchange of `mode`, once aibox closed it (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            ex = self.last(mode)
            if ex.peer_closed_at is not None or time.monotonic() > deadline:
                return ex
            time.sleep(0.02)

    # -- serving -----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        ex = None
        try:
            conn.settimeout(5)
            raw = b""
            while b"\r\n\r\n" not in raw:
                data = conn.recv(65536)
                if not data:
                    return
                raw += data
            head, body = raw.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            while len(body) < length:
                data = conn.recv(65536)
                if not data:
                    return
                body += data
            req = json.loads(body)
            ex = Exchange(mode=req.get("model", ""), stream=bool(req.get("stream")))
            with self._lock:
                self.exchanges.append(ex)
            self._behave(conn, ex)
            ex.finished = True
        except PeerClosed:
            if ex is not None:
                ex.peer_closed_at = time.monotonic()
        except OSError:
            pass
        finally:
            conn.close()

    def _send(self, conn: socket.socket, ex: Exchange, data: bytes) -> None:
        try:
            conn.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise PeerClosed() from e
        ex.bytes_sent += len(data)

    def _trickle(self, conn: socket.socket, ex: Exchange, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.wait(TRICKLE_S):
                return
            self._send(conn, ex, data[i:i + 1])

    def _hold(self, conn: socket.socket) -> None:
        """Holds the connection until aibox closes it (raises PeerClosed) or
        the upstream stops."""
        conn.settimeout(0.05)
        while not self._stop.is_set():
            try:
                if conn.recv(1) == b"":
                    raise PeerClosed()
            except socket.timeout:
                continue
            except ConnectionResetError as e:
                raise PeerClosed() from e

    def _behave(self, conn: socket.socket, ex: Exchange) -> None:
        mode, stream = ex.mode, ex.stream
        ctype = "text/event-stream" if stream else "application/json"
        reply = _sse_reply(f"{self.name}: ok") if stream else _chat_json(f"{self.name}: ok")
        if mode == "ok":
            length = None if stream else len(reply)
            self._send(conn, ex, _head(ctype, length) + reply)
        elif mode == "hang-head":
            # Accepts, reads the request, never answers.
            self._hold(conn)
        elif mode == "hang-body":
            # A complete head, part of the body, then nothing.
            if stream:
                self._send(conn, ex, _head(ctype) + _chunk("partial "))
            else:
                self._send(conn, ex, _head(ctype, len(reply)) + reply[:20])
            self._hold(conn)
        elif mode == "reset-head":
            # Half a response head, then a TCP reset (SO_LINGER 0 + close).
            self._send(conn, ex, b"HTTP/1.1 200 OK\r\nContent-Type: appl")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif mode == "trickle-head":
            # A valid response whose head arrives one byte at a time: it
            # would take seconds, past first_byte_ms.
            length = None if stream else len(reply)
            self._trickle(conn, ex, _head(ctype, length) + reply)
        elif mode == "trickle-body":
            # The head at once, then the body one byte at a time: never idle
            # for IDLE_MS, but endless enough to pass TOTAL_MS.
            # A stream's first event comes whole, so the client has content
            # before the timeout.
            if stream:
                first, body = _chunk("w0 "), b"".join(_chunk(f"w{i} ") for i in range(1, 10_000))
            else:
                first, body = b"", reply + b" " * 10_000
            length = None if stream else len(first + body)
            self._send(conn, ex, _head(ctype, length) + first)
            self._trickle(conn, ex, body)
        elif mode == "flood":
            # FLOOD_BYTES of events, as fast as the reader takes them; a
            # send blocks while aibox holds back (longer than any bound here).
            conn.settimeout(60)
            event = _chunk("x" * 1000)
            batch = event * (65536 // len(event))
            self._send(conn, ex, _head(ctype))
            while ex.bytes_sent < FLOOD_BYTES and not self._stop.is_set():
                self._send(conn, ex, batch)
            self._send(conn, ex, _chunk(None, "stop") + b"data: [DONE]\n\n")
        else:
            self._send(conn, ex, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


MODES = ("ok", "hang-head", "hang-body", "reset-head", "trickle-head", "trickle-body", "flood")


@dataclass
class Env:
    gw: object
    up: RawUpstream
    #: The one SDK client of the module: its kept-alive connection is part
    #: of the descriptor baseline (a client per call would add one each).
    client: openai.OpenAI
    fds: int


def _gateway(cluster: Cluster, up: RawUpstream, **server) -> object:
    cfg = base_config(**server)
    cfg["upstreams"] = [
        up.upstream(timeouts={
            "connect_ms": 500, "first_byte_ms": FIRST_BYTE_MS, "idle_ms": IDLE_MS, "total_ms": TOTAL_MS,
        }),
        # The same upstream with long timeouts: for the flood, which only
        # the send stall may end (the total timeout would end the relay
        # first, and the rest would fit in socket buffers), and for the
        # healthy "ok", which must not fail on a loaded machine.
        up.upstream(name=f"{up.name}-long", timeouts={
            "connect_ms": 5_000, "first_byte_ms": 30_000, "idle_ms": 60_000, "total_ms": 600_000,
        }),
    ]
    cfg["models"] = [
        {"name": m, "targets": [{"upstream": f"{up.name}-long" if m in ("flood", "ok") else up.name, "model": m}]}
        for m in MODES
    ]
    return cluster.aibox(cfg)


def _warm(client: openai.OpenAI) -> None:
    """One complete and one streamed answer, so lazily opened state (the
    database, the audit log) is part of the baseline. The complete answer
    comes last: the SDK closes its connection after a stream, but keeps it
    after a complete answer, and that connection belongs in the baseline."""
    text = "".join(c.choices[0].delta.content or ""
                   for c in client.chat.completions.create(model="ok", messages=HELLO, stream=True)
                   if c.choices)
    assert text == "raw: ok"
    assert client.chat.completions.create(model="ok", messages=HELLO).choices[0].message.content == "raw: ok"


def _settled_fds(pid: int, at_most: int | None = None, timeout: float = 5.0) -> int:
    """The process's descriptor count once it stops changing (or drops to
    `at_most`)."""
    deadline = time.monotonic() + timeout
    last = open_fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = open_fds(pid)
        if (at_most is not None and now <= at_most) or (at_most is None and now == last):
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def env(module_cluster: Cluster):
    up = RawUpstream()
    gw = _gateway(module_cluster, up, send_stall_timeout_ms=SEND_STALL_MS)
    client = gw.client()
    _warm(client)
    try:
        yield Env(gw, up, client, _settled_fds(gw.proc.pid))
    finally:
        up.close()


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def assert_nothing_leaked(env: Env, what: str) -> None:
    pid = env.gw.proc.pid
    fds = _settled_fds(pid, at_most=env.fds)
    assert fds <= env.fds, (
        f"{what}: aibox holds {fds} descriptors, {env.fds} at baseline: {_fd_targets(pid)}"
    )
    deadline = time.monotonic() + 3
    while inflight_gauge(env.gw) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inflight_gauge(env.gw) == 0, f"{what}: the in-flight gauge did not return to 0"
    assert "panicked" not in env.gw.stderr(), env.gw.proc.describe()
    # And the gateway still answers.
    assert env.client.chat.completions.create(
        model="ok", messages=HELLO).choices[0].message.content == "raw: ok"


# --------------------------------------------------------------------------
# 1. Upstreams that hang, reset or trickle
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,stream,timeout_s",
    [
        ("hang-head", False, FIRST_BYTE_MS / 1000),
        ("hang-head", True, FIRST_BYTE_MS / 1000),
        ("hang-body", False, IDLE_MS / 1000),
        ("trickle-head", False, FIRST_BYTE_MS / 1000),
        ("trickle-head", True, FIRST_BYTE_MS / 1000),
        ("trickle-body", False, TOTAL_MS / 1000),
    ],
)
def test_issue9_upstream_stall_before_the_answer_is_a_504(env: Env, mode, stream, timeout_s):
    """Nothing reached the client yet: the timeout that fires (first_byte_ms
    for a head that never completes, idle_ms for a body that stops, total_ms
    for a body that trickles) is answered 504 `upstream_timeout`, and aibox
    closes the upstream connection."""
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        env.client.chat.completions.create(model=mode, messages=HELLO, stream=stream)
    elapsed = time.monotonic() - started
    answered = time.monotonic()
    assert exc.value.status_code == 504, exc.value
    assert exc.value.code == "upstream_timeout", exc.value.body
    assert timeout_s * 0.9 <= elapsed < timeout_s + 2.0, f"the 504 came after {elapsed:.2f} s"
    ex = env.up.wait_closed(mode)
    assert ex.peer_closed_at is not None, f"aibox left the {mode} upstream connection open"
    assert ex.peer_closed_at - answered < 2.0
    assert not ex.finished
    assert_nothing_leaked(env, mode)


def test_issue9_upstream_reset_during_the_head_is_a_502(env: Env):
    with pytest.raises(openai.InternalServerError) as exc:
        env.client.chat.completions.create(model="reset-head", messages=HELLO)
    assert exc.value.status_code == 502, exc.value
    assert exc.value.code == "upstream_unavailable", exc.value.body
    assert "raw" in exc.value.message
    assert_nothing_leaked(env, "reset-head")


@pytest.mark.parametrize(
    "mode,which,timeout_s",
    [("hang-body", "idle", IDLE_MS / 1000), ("trickle-body", "total", TOTAL_MS / 1000)],
)
def test_issue9_upstream_stall_mid_stream_ends_with_an_error_event(env: Env, mode, which, timeout_s):
    """The stream had started (200 and content sent): the idle timeout (a
    stream that stops) or the total timeout (a stream that trickles a byte
    every TRICKLE_S, never idle) ends it with an `upstream_timeout` error
    event after the content received, and aibox closes the upstream."""
    stream = env.client.chat.completions.create(model=mode, messages=HELLO, stream=True)
    started = time.monotonic()
    text, err = collect_until_error(stream)
    elapsed = time.monotonic() - started
    answered = time.monotonic()
    assert not isinstance(err, openai.APIStatusError), "the stream had started with 200"
    assert err.body["code"] == "upstream_timeout", err.body
    assert which in err.message, err.message
    assert text.startswith("partial " if mode == "hang-body" else "w0 "), text
    assert elapsed < timeout_s + 2.0, f"the error event came after {elapsed:.2f} s"
    ex = env.up.wait_closed(mode)
    assert ex.peer_closed_at is not None, f"aibox left the {mode} upstream connection open"
    assert ex.peer_closed_at - answered < 2.0
    assert_nothing_leaked(env, f"{mode} (stream)")


# --------------------------------------------------------------------------
# 2. A client that never reads its stream
# --------------------------------------------------------------------------


def test_issue9_a_client_that_never_reads_is_cut_off_and_the_upstream_held_back(env: Env):
    """The upstream offers FLOOD_BYTES of SSE as fast as it can; the client
    sends its request and reads nothing. Backpressure must reach the upstream
    (it gets only a bounded amount out), aibox's RSS must stay within
    FLOOD_RSS_BOUND, and server.send_stall_timeout_ms must close the client's
    connection, which cancels the upstream request. Without a send timeout
    the exchange would sit there for as long as the client likes."""
    gw = env.gw
    pid = gw.proc.pid
    rss_before = vm_rss(pid)
    host, port = gw.main_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": "flood", "stream": True, "messages": HELLO}).encode()
    client = socket.create_connection((host, int(port)), timeout=5)
    try:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: aibox.test\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        started = time.monotonic()
        rss_peak = rss_before
        ex = None
        # Sample while aibox relays into a client that does not read, until
        # the upstream sees its connection closed.
        while time.monotonic() - started < FLOOD_WAIT_S:
            rss_peak = max(rss_peak, vm_rss(pid))
            try:
                ex = env.up.last("flood")
            except AssertionError:
                ex = None
            if ex is not None and ex.peer_closed_at is not None:
                break
            time.sleep(0.05)
        assert ex is not None, "the flood request never reached the upstream"
        assert ex.peer_closed_at is not None, (
            f"after {FLOOD_WAIT_S} s aibox still holds the stream of a client that reads nothing "
            f"({ex.bytes_sent >> 20} MiB sent by the upstream)"
        )
        closed_after = ex.peer_closed_at - started
        print(f"FLOOD upstream sent {ex.bytes_sent >> 20} MiB of {FLOOD_BYTES >> 20} MiB; "
              f"closed after {closed_after:.1f} s; RSS peak +{(rss_peak - rss_before) >> 20} MiB")
        assert ex.bytes_sent < FLOOD_BACKPRESSURE_BOUND, (
            f"the upstream pushed {ex.bytes_sent >> 20} MiB into a client that reads nothing: "
            "no backpressure"
        )
        assert rss_peak - rss_before < FLOOD_RSS_BOUND, (
            f"VmRSS grew by {(rss_peak - rss_before) >> 20} MiB"
        )
        assert SEND_STALL_MS / 1000 * 0.9 <= closed_after
        assert not ex.finished
        # The client's side was closed by aibox: what is buffered can still
        # be read, then the connection ends (EOF or reset), never a hang.
        client.settimeout(5)
        received = 0
        try:
            while chunk := client.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received > 0, "the client never got the start of its stream"
    finally:
        client.close()
    stderr = gw.stderr()
    assert "accepted no response bytes" in stderr, "the send stall was not logged"
    assert "client went away; upstream request cancelled" in stderr, "the abort was not logged"
    assert_nothing_leaked(env, "a client that never reads")


# --------------------------------------------------------------------------
# 3. A burst of 10,000 connections
# --------------------------------------------------------------------------

BURST = 10_000
#: One in this many burst connections sends a request; the rest stay silent.
BURST_REQUEST_EVERY = 4
#: VmRSS growth allowed while the burst is held open.
BURST_RSS_BOUND = 160 * 1024 * 1024


def _raise_nofile(at_least: int) -> tuple[int, int]:
    """Raises this process's RLIMIT_NOFILE to at least `at_least` (the hard
    limit too, where the process may); returns the previous limits. Skips
    the test where the hard limit is lower and cannot be raised."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1]
    if hard != resource.RLIM_INFINITY and hard < at_least:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, at_least))
            return before
        except (ValueError, OSError):
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {at_least} and it cannot be raised here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return before


async def _open_burst(host: str, port: int, n: int, request_every: int, opened: list) -> list[bool]:
    """Opens `n` connections as fast as possible; every `request_every`-th
    sends GET /v1/models and reads its answer, then all stay open."""

    async def one(i: int):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except (OSError, asyncio.TimeoutError):
            return False
        opened.append(writer)
        if i % request_every:
            return True
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: aibox.test\r\n\r\n")
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
        except (OSError, asyncio.TimeoutError):
            return False
        return line.startswith(b"HTTP/1.1 200")

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return results


def test_issue9_a_burst_of_10000_connections(cluster: Cluster):
    """BURST connections at once, a quarter of them with a request: aibox
    accepts them (its listen backlog holds the rush), does not crash, serves
    a normal request while they are open and after, keeps RSS within
    BURST_RSS_BOUND, and its descriptor count returns to baseline once the
    clients close."""
    previous = _raise_nofile(BURST + 4096)
    try:
        fake = cluster.fake_upstream("up1")
        # The silent clients must outlast the burst (which takes seconds on
        # a loaded machine), so the first-byte and header-read timeouts are
        # long here.
        cfg = base_config(first_byte_timeout_ms=300_000, header_read_timeout_ms=300_000)
        cfg["upstreams"] = [fake.upstream()]
        cfg["models"] = [{"name": "chat", "targets": [{"upstream": "up1", "model": "m1"}]}]
        gw = cluster.aibox(cfg)
        pid = gw.proc.pid
        client = gw.client(timeout=15)
        assert client.chat.completions.create(model="chat", messages=HELLO).choices[0].message.content == "up1: hello"
        base_fds = _settled_fds(pid)
        base_rss = vm_rss(pid)
        host, port = gw.main_url.removeprefix("http://").rsplit(":", 1)

        loop = asyncio.new_event_loop()
        opened: list = []
        try:
            started = time.monotonic()
            results = loop.run_until_complete(_open_burst(host, int(port), BURST, BURST_REQUEST_EVERY, opened))
            burst_s = time.monotonic() - started
            answered = sum(1 for i, ok in enumerate(results) if ok and i % BURST_REQUEST_EVERY == 0)
            print(f"BURST {len(opened)} of {BURST} connected in {burst_s:.1f} s; "
                  f"{answered} of {BURST // BURST_REQUEST_EVERY} requests answered")
            assert len(opened) == BURST, f"only {len(opened)} of {BURST} connections were established"
            assert answered == BURST // BURST_REQUEST_EVERY, f"{answered} requests answered"
            held_fds = _settled_fds(pid, timeout=3)
            assert held_fds >= base_fds + BURST * 0.95, (
                f"aibox holds {held_fds} descriptors with {BURST} clients connected ({base_fds} before)"
            )
            # A normal client is served while the burst is held open.
            t = time.monotonic()
            resp = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "during"}])
            during_s = time.monotonic() - t
            assert resp.choices[0].message.content == "up1: during"
            rss = vm_rss(pid)
            print(f"BURST held: {held_fds} fds, RSS +{(rss - base_rss) >> 20} MiB, "
                  f"a request during it took {during_s * 1000:.0f} ms")
            assert rss - base_rss < BURST_RSS_BOUND, f"VmRSS grew by {(rss - base_rss) >> 20} MiB"
            assert gw.proc.running()
        finally:
            for w in opened:
                w.transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
        fds = _settled_fds(pid, at_most=base_fds, timeout=10)
        assert fds <= base_fds, f"aibox holds {fds} descriptors after the burst closed ({base_fds} before)"
        resp = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "after"}])
        assert resp.choices[0].message.content == "up1: after"
        assert "panicked" not in gw.stderr()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)


def test_issue9_out_of_descriptors_backs_off_logs_and_recovers(cluster: Cluster):
    """aibox's descriptor limit is lowered (prlimit) to a little above what
    it uses, then more clients connect than fit. accept fails with EMFILE:
    aibox must log it (rate-limited), back off without spinning (CPU time
    stays low), stay up, and serve normally once the clients are gone."""
    previous = _raise_nofile(8192)
    try:
        fake = cluster.fake_upstream("up1")
        cfg = base_config()
        cfg["upstreams"] = [fake.upstream()]
        cfg["models"] = [{"name": "chat", "targets": [{"upstream": "up1", "model": "m1"}]}]
        gw = cluster.aibox(cfg)
        pid = gw.proc.pid
        client = gw.client(timeout=15)
        assert client.chat.completions.create(model="chat", messages=HELLO).choices[0].message.content == "up1: hello"
        base_fds = _settled_fds(pid)
        # Only the soft limit: lowering the hard one could not be undone
        # without CAP_SYS_RESOURCE.
        limit = base_fds + 64
        original = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, original[1]))
        host, port = gw.main_url.removeprefix("http://").rsplit(":", 1)
        socks = []
        try:
            for _ in range(600):
                socks.append(socket.create_connection((host, int(port)), timeout=5))
            cpu_before = _cpu_seconds(pid)
            time.sleep(3.0)
            cpu = _cpu_seconds(pid) - cpu_before
            warnings = gw.stderr().count("cannot accept connections")
            print(f"EMFILE: {open_fds(pid)} fds at limit {limit}; {cpu:.2f} CPU s in 3 s; "
                  f"{warnings} warnings")
            assert gw.proc.running(), gw.proc.describe()
            assert warnings >= 1, "accept failing for lack of descriptors was not logged"
            assert warnings <= 2, f"{warnings} warnings in 3 s: not rate-limited"
            assert cpu < 0.5, f"aibox used {cpu:.2f} CPU s in 3 s while out of descriptors: spinning"
        finally:
            for s in socks:
                s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        fds = _settled_fds(pid, at_most=base_fds, timeout=10)
        assert fds <= base_fds, f"aibox holds {fds} descriptors after the clients left ({base_fds} before)"
        resp = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "after"}])
        assert resp.choices[0].message.content == "up1: after"
        # A new connection is accepted again, too.
        assert httpx.get(f"{gw.main_url}/v1/models", timeout=5).status_code == 200
        assert "accepting connections again" in gw.stderr()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _nofile_limits(pid: int) -> tuple[str, str]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            parts = line.split()
            return parts[3], parts[4]
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


def test_issue9_aibox_raises_its_soft_descriptor_limit_to_the_hard_limit(cluster: Cluster):
    """Started with a soft RLIMIT_NOFILE of 1024 under a higher hard limit
    (the usual default), aibox raises the soft limit to the hard one."""
    previous = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = max(previous[1] if previous[1] != resource.RLIM_INFINITY else 65536, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        gw = cluster.aibox(base_config())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)
    soft_now, hard_now = _nofile_limits(gw.proc.pid)
    assert soft_now == hard_now == str(hard), (soft_now, hard_now, hard)
