"""`MCPSessionPool`: one session per MCP server per worker process, shared by its trajectories.

A worker process runs many trajectories on one event loop (:mod:`agentrl.rollout.runtime`);
they share one pool per ``mcp_config`` file (:func:`session_pool`), so each server is started
(stdio) or connected (streamable HTTP) once, through the official ``mcp`` SDK (``stdio_client``,
``streamable_http_client``, ``ClientSession``). The SDK's transports are anyio context managers
that must be left by the task that entered them, so each connection is owned by a task of its
own (:class:`ServerConnection`), and trajectories send requests over its session concurrently.

Tools are listed from every server when the pool starts and offered to the model as OpenAI tool
schemas (:meth:`ToolSpec.to_openai`); a tool name that two servers share is exposed as
``<server>_<tool>`` on both.

A call (:meth:`MCPSessionPool.call`) returns a :class:`ToolResult`, never raises for the tool's
own failures: an unknown tool, a tool that reports an error (``isError``), an MCP error and a
call past ``timeout_s`` are results marked as errors. When the connection itself is lost (the
server died), the pool reconnects once and retries the call; when that fails too,
:class:`~agentrl.errors.ToolServerUnavailableError` is raised (an infrastructure failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession, McpError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CONNECTION_CLOSED, CallToolResult, TextContent

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import ConfigError, ToolServerUnavailableError
from agentrl.rollout.mcp.servers import HttpServerSpec, ServerSpec, load_mcp_servers

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 60.0
"""Seconds a server may take to start and answer ``initialize`` and ``tools/list``."""

TIMEOUT_MARGIN_S = 5.0
"""Seconds past a call's timeout after which the pool stops waiting for the SDK to time out."""

REQUEST_TIMEOUT = 408
"""MCP error code of a request the SDK stopped waiting for (``read_timeout_seconds``)."""

HTTP_TIMEOUT = httpx.Timeout(30.0, read=300.0)
"""HTTP client timeouts of streamable HTTP servers (seconds; reads wait for long tools)."""


@dataclass
class ToolSpec:
    """A tool as offered to the model.

    Attributes:
        name: the name the model calls (``<server>_<tool>`` when servers share the tool name).
        server: the server that has it.
        tool: its name on that server.
        description: what it does.
        parameters: its JSON schema (``inputSchema``).
    """

    name: str
    server: str
    tool: str
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters,
        }}


@dataclass
class ToolResult:
    """The outcome of one tool call.

    Attributes:
        text: what the model reads (the tool's text content, or the error).
        is_error: the call failed (the tool raised, timed out, was unknown or malformed).
        server: the server that ran it (``""`` when none did).
        latency_s: wall time of the call in seconds.
    """

    text: str
    is_error: bool = False
    server: str = ""
    latency_s: float = 0.0


class ConnectionLostError(Exception):
    """The session to a server is gone (internal: the pool reconnects)."""


def result_text(result: CallToolResult) -> str:
    """The text of a tool result: its text parts, joined by newlines; other parts named by
    type; structured content as JSON when there is no text."""
    parts = [
        block.text if isinstance(block, TextContent) else f"[{block.type} content]"
        for block in result.content
    ]
    if not parts and result.structuredContent is not None:
        parts.append(json.dumps(result.structuredContent))
    return "\n".join(parts)


class ServerConnection:
    """One live session to one server, owned by a task that holds the SDK's context managers.

    Args:
        spec: the server.
    """

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.session: ClientSession | None = None
        self.tools: list[Any] = []
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._error: BaseException | None = None
        self._owner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, initialize and list the tools.

        Raises:
            ToolServerUnavailableError: the server did not start or answer in time.
        """
        self._owner = asyncio.ensure_future(self._own())
        try:
            await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            self._error = TimeoutError(f"no answer within {CONNECT_TIMEOUT_S:.0f} s")
        if self.session is None:
            await self.close()
            raise ToolServerUnavailableError(self.spec.name, _describe(self._error))

    def _transport(self) -> Any:
        spec = self.spec
        if isinstance(spec, HttpServerSpec):
            client = httpx.AsyncClient(headers=spec.headers, timeout=HTTP_TIMEOUT)
            return client, streamable_http_client(spec.url, http_client=client)
        params = StdioServerParameters(
            command=spec.command, args=spec.args, env=spec.env or None, cwd=spec.cwd
        )
        return None, stdio_client(params)

    async def _own(self) -> None:
        client, transport = self._transport()
        try:
            async with transport as streams, ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                self.tools = await _list_tools(session)
                self.session = session
                self._ready.set()
                await self._closing.wait()
        except Exception as exc:  # noqa: BLE001 - reported by start() or seen as a lost call
            self._error = exc
            logger.debug("MCP server %s connection ended: %s", self.spec.name, _describe(exc))
        finally:
            self.session = None
            self._ready.set()
            if client is not None:
                await client.aclose()

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> CallToolResult:
        """``tools/call`` on this session, given up when the connection ends meanwhile.

        Raises:
            ConnectionLostError: the session is gone (the server died or closed).
            McpError: the server answered with an error, or the call timed out (code 408).
            TimeoutError: no answer ``TIMEOUT_MARGIN_S`` past ``timeout_s``.
        """
        session, owner = self.session, self._owner
        if session is None or owner is None or owner.done():
            raise ConnectionLostError(_describe(self._error))
        timeout = timedelta(seconds=timeout_s)
        call = asyncio.ensure_future(
            session.call_tool(tool, arguments, read_timeout_seconds=timeout)
        )
        try:
            await asyncio.wait(
                {call, owner}, timeout=timeout_s + TIMEOUT_MARGIN_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if call.done():
                return _connection_checked(call)
            if owner.done():
                raise ConnectionLostError(_describe(self._error))
            raise TimeoutError(f"no answer to tools/call {tool} in {timeout_s:g} s")
        finally:
            if not call.done():
                call.cancel()

    async def close(self) -> None:
        """Leave the session and stop the server (stdio) or end the HTTP session."""
        self._closing.set()
        if self._owner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._owner), CONNECT_TIMEOUT_S)
            except TimeoutError:
                self._owner.cancel()


def _connection_checked(call: asyncio.Future[CallToolResult]) -> CallToolResult:
    """The result of a finished call; errors of a lost connection become
    :class:`ConnectionLostError`."""
    try:
        return call.result()
    except McpError as exc:
        if exc.error.code == CONNECTION_CLOSED:
            raise ConnectionLostError(exc.error.message) from exc
        raise
    except (OSError, httpx.HTTPError, EOFError) as exc:
        raise ConnectionLostError(_describe(exc)) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("anyio"):  # closed or broken streams
            raise ConnectionLostError(_describe(exc)) from exc
        raise


def _describe(exc: BaseException | None) -> str:
    """A one-line description of an error, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if exc is None:
        return "the connection closed"
    return f"{type(exc).__name__}: {exc}"


async def _list_tools(session: ClientSession) -> list[Any]:
    """Every tool of a server (following ``nextCursor`` pages)."""
    tools: list[Any] = []
    cursor: str | None = None
    while True:
        page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
        tools += page.tools
        cursor = page.nextCursor
        if not cursor:
            return tools


class MCPSessionPool:
    """Sessions to every server of one ``mcp.json``, the tools they offer, and tool calls.

    Args:
        servers: the servers, by name (:func:`~agentrl.rollout.mcp.servers.load_mcp_servers`).
    """

    def __init__(self, servers: dict[str, ServerSpec]) -> None:
        self.servers = servers
        self.connections: dict[str, ServerConnection] = {}
        self.tools: dict[str, ToolSpec] = {}
        self.reconnects = 0
        self.loop = asyncio.get_running_loop()
        self._locks = {name: asyncio.Lock() for name in servers}
        self._started = asyncio.Lock()
        self._failure: BaseException | None = None

    async def start(self) -> None:
        """Connect to every server and list the tools (once; later calls return at once, or
        raise the first start's error: :func:`session_pool` makes a new pool after a failure).

        Raises:
            ToolServerUnavailableError: a server did not start or answer.
        """
        async with self._started:
            if self.connections:
                return
            if self._failure is not None:  # callers that waited for a start that failed
                raise self._failure
            connections = {name: ServerConnection(spec) for name, spec in self.servers.items()}
            results = await asyncio.gather(
                *(c.start() for c in connections.values()), return_exceptions=True
            )
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                await asyncio.gather(*(c.close() for c in connections.values()))
                self._failure = failed
                raise failed
            self.connections = connections
            self.tools = _expose(connections)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools as OpenAI tool schemas, in server then listing order."""
        return [spec.to_openai() for spec in self.tools.values()]

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> ToolResult:
        """Run tool ``name`` (as exposed to the model) with ``arguments``.

        Args:
            name: the exposed tool name.
            arguments: its arguments.
            timeout_s: seconds the call may take.

        Returns:
            The result; failures of the tool (unknown, raised, timed out) are error results.

        Raises:
            ToolServerUnavailableError: the server is gone and reconnecting did not help.
        """
        spec = self.tools.get(name)
        if spec is None:
            known = ", ".join(self.tools) or "none"
            return ToolResult(f"Error: unknown tool {name!r}; the tools are: {known}", True)
        started = time.monotonic()
        try:
            result = await self._call_with_reconnect(spec, arguments, timeout_s)
        except McpError as exc:
            if exc.error.code != REQUEST_TIMEOUT:
                return ToolResult(f"Error: {exc.error.message}", True, spec.server,
                                  time.monotonic() - started)
            return ToolResult(f"Error: the tool took longer than {timeout_s:g} s", True,
                              spec.server, time.monotonic() - started)
        except TimeoutError:
            return ToolResult(f"Error: the tool took longer than {timeout_s:g} s", True,
                              spec.server, time.monotonic() - started)
        text = result_text(result)
        if result.isError and not text.lower().startswith("error"):
            text = f"Error: {text}"
        return ToolResult(text, bool(result.isError), spec.server, time.monotonic() - started)

    async def _call_with_reconnect(
        self, spec: ToolSpec, arguments: dict[str, Any], timeout_s: float
    ) -> CallToolResult:
        connection = self.connections[spec.server]
        try:
            return await connection.call(spec.tool, arguments, timeout_s)
        except ConnectionLostError as lost:
            logger.warning("MCP server %s lost (%s); reconnecting", spec.server, lost)
            connection = await self._reconnect(spec.server, connection)
            try:
                return await connection.call(spec.tool, arguments, timeout_s)
            except ConnectionLostError as again:
                raise ToolServerUnavailableError(
                    spec.server, f"lost again after reconnecting: {again}"
                ) from again

    async def _reconnect(self, server: str, failed: ServerConnection) -> ServerConnection:
        """A fresh connection to ``server`` (one per failure, however many calls saw it)."""
        async with self._locks[server]:
            current = self.connections[server]
            if current is not failed and current.session is not None:
                return current
            await current.close()
            fresh = ServerConnection(self.servers[server])
            await fresh.start()
            self.connections[server] = fresh
            self.reconnects += 1
            return fresh

    async def close(self) -> None:
        """Close every session (stdio servers stop)."""
        await asyncio.gather(*(c.close() for c in self.connections.values()))
        self.connections = {}


def _expose(connections: dict[str, ServerConnection]) -> dict[str, ToolSpec]:
    """Exposed name → tool; a name several servers have gets its server's name in front."""
    counts: dict[str, int] = {}
    for connection in connections.values():
        for tool in connection.tools:
            counts[tool.name] = counts.get(tool.name, 0) + 1
    exposed: dict[str, ToolSpec] = {}
    for server, connection in connections.items():
        for tool in connection.tools:
            name = tool.name if counts[tool.name] == 1 else f"{server}_{tool.name}"
            exposed[name] = ToolSpec(
                name=name, server=server, tool=tool.name, description=tool.description or "",
                parameters=dict(tool.inputSchema or {"type": "object", "properties": {}}),
            )
    return exposed


_POOLS: dict[tuple[int, str], MCPSessionPool] = {}


async def session_pool(config: AgentTrainingConfig) -> MCPSessionPool:
    """The running event loop's pool for ``config.mcp_config``, started on first use.

    Args:
        config: the run configuration (``mcp_config``).

    Returns:
        The started pool, shared by every trajectory of this event loop.

    Raises:
        ConfigError: ``mcp_config`` is not set, or the file is invalid.
        ToolServerUnavailableError: a server did not start or answer.
    """
    if not config.mcp_config:
        raise ConfigError(
            "mcp_config", "", "not set; give the mcp.json file naming the MCP servers "
            "(--mcp-config PATH or AGENTRL_MCP_CONFIG)",
        )
    loop = asyncio.get_running_loop()
    key = (id(loop), str(Path(config.mcp_config).resolve()))
    pool = _POOLS.get(key)
    if pool is None or pool.loop is not loop:
        pool = _POOLS[key] = MCPSessionPool(load_mcp_servers(config.mcp_config))
    try:
        await pool.start()
    except BaseException:
        _POOLS.pop(key, None)
        raise
    return pool


async def close_session_pools() -> None:
    """Close the running event loop's pools (the end of a worker's loop, tests)."""
    loop = asyncio.get_running_loop()
    for key in [k for k, pool in _POOLS.items() if pool.loop is loop]:
        await _POOLS.pop(key).close()
