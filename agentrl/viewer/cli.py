"""``agentrl viewer CONFIG``: the trajectory viewer in the browser."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.viewer.app import create_app
from agentrl.viewer.auth import parse_basic_auth, require_auth

DEFAULT_PORT = 8265
"""Port the viewer listens on unless ``--port`` says otherwise."""

log = logging.getLogger(__name__)


def viewer(
    ctx: typer.Context,
    config_file: Annotated[Path, typer.Argument(help="YAML config of the run to show.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(
        help="Address to bind; any but loopback needs --basic-auth.")] = "127.0.0.1",
    basic_auth: Annotated[str, typer.Option(
        "--basic-auth", envvar="AGENTRL_VIEWER_BASIC_AUTH", show_envvar=True,
        help="user:password[,user2:password2], as Flower takes it (never logged).")] = "",
) -> None:
    """Serve a read-only web page over the run's records: steps (reward, eval, staleness),
    records by split/epoch/status, and each record's turns with its tokens' logprobs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(config_file, **parse_config_flags(ctx.args))
    credentials = parse_basic_auth(basic_auth) if basic_auth else []
    require_auth(host, credentials)
    with init_databases(config) as dbs:
        app = create_app(config, dbs, credentials)
        log.info("viewer of run %s at http://%s:%d/ (basic auth %s)", config.name, host, port,
                 "on" if credentials else "off")
        uvicorn.run(app, host=host, port=port, log_level="info")


VIEWER_COMMAND: dict[str, Any] = {
    "name": "viewer", "context_settings": CONFIG_FLAGS_CONTEXT, "epilog": config_flags_help(),
}
"""Keyword arguments of ``app.command`` for :func:`viewer`."""
