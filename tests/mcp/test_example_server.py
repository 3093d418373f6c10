"""The example MCP server (examples/mcp_tools): calculator and lookup, over stdio, through the
session pool the sampler uses."""

from __future__ import annotations

import asyncio
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
