"""The example MCP server (examples/mcp_tools): calculator and lookup, over stdio, through the
session pool the sampler uses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agentrl.rollout.mcp.pool import MCPSessionPool
from agentrl.rollout.mcp.servers import load_mcp_servers

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcp_tools" / "mcp.json"


def test_calculator_and_lookup() -> None:
    async def calls() -> list[tuple[str, bool]]:
        pool = MCPSessionPool(load_mcp_servers(EXAMPLE))
        await pool.start()
        try:
            assert sorted(pool.tools) == ["calculate", "lookup"]
            asked = [
                ("calculate", {"expression": "2 * (3 + 4)"}),
                ("calculate", {"expression": "17 / 4"}),
                ("calculate", {"expression": "1,200 x 3 - $5"}),
                ("calculate", {"expression": "10 / 3"}),
                ("calculate", {"expression": "2 ** 1000000"}),
                ("calculate", {"expression": "__import__('os').getpid()"}),
                ("calculate", {"expression": "1 / 0"}),
                ("lookup", {"key": "Minutes in an  hour"}),
                ("lookup", {"key": "minutes in a hour"}),
            ]
            results = [await pool.call(name, args, 10) for name, args in asked]
            return [(r.text, r.is_error) for r in results]
        finally:
            await pool.close()

    results = asyncio.run(calls())
    assert results[:4] == [("14", False), ("4.25", False), ("3595", False), ("3.333333", False)]
    assert results[4][1] and "exponents must be whole numbers up to 64" in results[4][0]
    assert results[5][1] and "only numbers and" in results[5][0]
    assert results[6][1] and "division by zero" in results[6][0]
    assert results[7] == ("60", False)
    assert results[8][1] and "closest: minutes in an hour" in results[8][0]


def test_tool_names_two_servers_share_get_the_server_name(tmp_path: Path) -> None:
    server = str(Path(__file__).with_name("tool_server.py"))
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {
        "one": {"command": "python", "args": [server]},
        "two": {"command": "python", "args": [server]},
        "example": {"command": "python", "args": [str(EXAMPLE.with_name("server.py"))]},
    }}))

    async def listing() -> tuple[list[str], str, str]:
        pool = MCPSessionPool(load_mcp_servers(path))
        await pool.start()
        try:
            one = await pool.call("one_pid", {}, 10)
            two = await pool.call("two_pid", {}, 10)
            return [t["function"]["name"] for t in pool.openai_tools()], one.text, two.text
        finally:
            await pool.close()

    names, one, two = asyncio.run(listing())
    assert names == [f"{s}_{t}" for s in ("one", "two") for t in ("add", "echo", "fail", "hang",
                                                                  "pid")] + ["calculate", "lookup"]
    assert one != two  # each name reaches its own server
