"""A real MCP server over Streamable HTTP, written with the official Python SDK.

Started by the MCP end-to-end tests on 127.0.0.1, port 0 (the bound address
is printed as `LISTENING HOST:PORT`), and reached by aibox as a remote server
(registry transport "http"). Stateful (it issues Mcp-Session-Id) and answers
POSTs with SSE streams, as FastMCP does by default, so aibox's client side
of the transport is exercised for real.

Tools: weather(city), upper(text), calls() (how many tool calls it served),
trace_headers() (the `traceparent` and `tracestate` of the HTTP request
that carried this call, for the trace-context test).
Resource `weather://today`; prompt `forecast(city)`.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvicorn
from mcp.server.fastmcp import Context, FastMCP

mcp = FastMCP("e2e-http", host="127.0.0.1")
_calls = 0


def _count() -> None:
    global _calls
    _calls += 1


@mcp.tool()
def weather(city: str) -> str:
    """A fixed forecast for a city."""
    _count()
    return f"sunny in {city}"


@mcp.tool()
def upper(text: str) -> str:
    """Upper-cases the text."""
    _count()
    return text.upper()


@mcp.tool()
def calls() -> int:
    """How many weather/upper calls this server has served."""
    return _calls


@mcp.tool()
def trace_headers(ctx: Context) -> str:
    """The W3C trace headers of the request that carried this call."""
    request = ctx.request_context.request
    headers = request.headers if request is not None else {}
    return f"{headers.get('traceparent', '')}|{headers.get('tracestate', '')}"


@mcp.resource("weather://today")
def today() -> str:
    """Today's weather."""
    return "sunny everywhere"


@mcp.prompt()
def forecast(city: str) -> str:
    """A forecast prompt."""
    return f"Give the forecast for {city}."


async def main() -> None:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose
    # proto is IPPROTO_TCP, and without it every keep-alive response waits
    # for the client's delayed ACK (about 40 ms) between headers and body,
    # which uvicorn started with host and port never does.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    config = uvicorn.Config(mcp.streamable_http_app(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    print(f"LISTENING {host}:{port}", flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
