"""The MCP server the tests start (stdio by default, streamable HTTP with ``--http --port N``).

Tools: ``add(a, b)``, ``echo(text, times)``, ``fail(message)`` (raises), ``hang(seconds)``
(sleeps), ``pid()`` (the server's process id, so a test can kill it).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.fastmcp import FastMCP

server = FastMCP("agentrl-test-tools", log_level="WARNING")


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    total = a + b
    return str(int(total)) if total == int(total) else str(total)


@server.tool()
def echo(text: str, times: int = 1) -> str:
    """Repeat a text."""
    return text * times


@server.tool()
def fail(message: str) -> str:
    """Always raises."""
    raise RuntimeError(message)


@server.tool()
async def hang(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "woke up"


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.http:
        server.settings.port = args.port
        server.run(transport="streamable-http")
    else:
        server.run()
