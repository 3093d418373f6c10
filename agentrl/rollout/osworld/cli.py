"""Commands of the OSWorld subsystem: ``agentrl osworld envs`` and ``agentrl osworld provision``."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.rollout.osworld.envs import Environment
from agentrl.rollout.osworld.provision import setup_osworld_envs

osworld_app = typer.Typer(help="OSWorld environments: list, provision.", no_args_is_help=True)


def _lease_left_s(raw: dict[str, Any], now_s: float) -> str:
    expires = raw.get("lease_expires_at_s")
    if not raw.get("in_use") or expires is None:
        return ""
    return f"{float(expires) - now_s:.0f}"


@osworld_app.command("envs", context_settings=CONFIG_FLAGS_CONTEXT, epilog=config_flags_help())
def envs_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines, not a table.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.")] = None,
) -> None:
    """List registered environments with their lease (owner, seconds left)."""
    cfg = load_config(config, **parse_config_flags(ctx.args))
    with init_databases(cfg) as dbs:
        envs = list(dbs.store.collection(Environment).find({}).sort("name", 1))
    if as_json:
        for raw in envs:
            typer.echo(json.dumps(raw, default=str))
        return
    now_s = time.time()
    table = Table("name", "url", "status", "in use", "owner", "lease left (s)", "leases", "screen")
    for raw in envs:
        table.add_row(
            raw["name"], raw.get("url", ""), raw.get("status", ""), str(bool(raw.get("in_use"))),
            raw.get("lease_owner") or "", _lease_left_s(raw, now_s), str(raw.get("lease_count", 0)),
            f"{raw.get('screen_width', '')}x{raw.get('screen_height', '')}",
        )
    Console(width=200).print(table)


@osworld_app.command(
    "provision", context_settings=CONFIG_FLAGS_CONTEXT, epilog=config_flags_help()
)
def provision(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.")] = None,
) -> None:
    """Register this node's envs (osworld.env_urls / osworld.provider) and keep them registered
    until interrupted (Ctrl-C or SIGTERM), then unregister them."""
    cfg = load_config(config, **parse_config_flags(ctx.args))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with setup_osworld_envs(cfg) as result:
        typer.echo(json.dumps({
            "provisioned": result.provisioned,
            "envs": [env.name for env in result.envs],
            "unreachable": result.unreachable,
        }))
        if not result.provisioned:
            return
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
