"""MCP servers from an ``mcp.json`` file, in the format MCP clients share.

::

    {"mcpServers": {
        "tools":  {"command": "python", "args": ["server.py"], "env": {"KEY": "${KEY}"}},
        "search": {"url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}}}

An entry with ``command`` is a stdio server, started as a child process (``args``, ``env`` added
to a minimal default environment, ``cwd`` defaulting to the directory of ``mcp.json``, so
relative paths in ``args`` are relative to the file); ``python`` or ``python3`` as the command
runs this process's own interpreter, so a server in the same virtual environment needs no path.
An entry with ``url`` is a streamable HTTP server (``headers`` sent with every request). An
optional ``type`` (``stdio``, ``http``, ``streamable-http``, ``streamableHttp``) must agree;
``sse`` servers are not supported. ``${VAR}`` in ``args``, ``env``, ``url`` and ``headers`` is
replaced by the environment variable ``VAR``, so secrets stay out of the file. Other keys that
clients add (``disabled``, ``description``...) are ignored.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrl.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HTTP_TYPES = {"http", "streamable-http", "streamableHttp", "streamable_http"}
_PYTHON_COMMANDS = {"python", "python3"}


class StdioServerSpec(BaseModel):
    """A server started as a child process and spoken to over its stdin/stdout.

    Attributes:
        name: the server's key in ``mcpServers``.
        command: the executable (``python``/``python3``: this interpreter).
        args: its arguments.
        env: variables added to the MCP SDK's default environment.
        cwd: its working directory.
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str


class HttpServerSpec(BaseModel):
    """A server reached over streamable HTTP.

    Attributes:
        name: the server's key in ``mcpServers``.
        url: the endpoint (e.g. ``http://127.0.0.1:8000/mcp``).
        headers: HTTP headers sent with every request (credentials never logged).
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)

    def __repr__(self) -> str:  # headers may hold credentials
        return f"HttpServerSpec(name={self.name!r}, url={self.url!r})"


ServerSpec = StdioServerSpec | HttpServerSpec
"""One server entry of ``mcp.json``."""


def _expand(value: Any, where: str, path: str) -> Any:
    """``value`` with ``${VAR}`` replaced in every string (lists and mappings walked)."""
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(
                    where, value, f"environment variable {name} is not set", file=path
                )
            return os.environ[name]

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, where, path) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", path) for k, v in value.items()}
    return value


def _server(name: str, entry: Any, path: Path) -> ServerSpec:
    where = f"mcpServers.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(where, entry, "a server entry must be a JSON object", file=str(path))
    kind = entry.get("type")
    if kind == "sse" or (kind is not None and kind != "stdio" and kind not in _HTTP_TYPES):
        raise ConfigError(
            f"{where}.type", kind, "supported types: stdio, http (streamable HTTP)", file=str(path)
        )
    if ("command" in entry) == ("url" in entry):
        raise ConfigError(
            where, {k: v for k, v in entry.items() if k not in ("env", "headers")},
            'give either "command" (stdio) or "url" (streamable HTTP)', file=str(path),
        )
    fields = {k: _expand(v, f"{where}.{k}", str(path)) for k, v in entry.items()
              if k in ("command", "args", "env", "cwd", "url", "headers")}
    try:
        if "url" in fields:
            return HttpServerSpec(name=name, **fields)
        if fields["command"] in _PYTHON_COMMANDS:
            fields["command"] = sys.executable
        home = path.resolve().parent
        cwd = Path(fields.pop("cwd", None) or home)
        return StdioServerSpec(name=name, cwd=str(cwd if cwd.is_absolute() else home / cwd),
                               **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where}.{key}", err.get("input"), err["msg"], file=str(path)) from exc


def load_mcp_servers(path: str | Path) -> dict[str, ServerSpec]:
    """The servers of an ``mcp.json`` file, by name (see the module docstring).

    Args:
        path: the file (config ``mcp_config``).

    Returns:
        Server name → its spec, in file order.

    Raises:
        ConfigError: the file is missing or not JSON, has no ``mcpServers`` object, or an entry
            is invalid (naming the file and the entry's key path).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("mcp_config", str(path), f"cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("", None, f"not valid JSON: {exc}", file=str(path), line=exc.lineno) \
            from exc
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict) or not servers:
        raise ConfigError(
            "mcpServers", servers, 'expected {"mcpServers": {name: {...}, ...}} with at least one '
            "server", file=str(path),
        )
    return {name: _server(name, entry, path) for name, entry in servers.items()}
