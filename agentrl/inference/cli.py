"""Commands of the inference subsystem: ``agentrl engine serve`` and ``agentrl services ...``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.inference.model_files import DEFAULT_MODEL_NAME
from agentrl.inference.services import list_services, register_service


class ServiceKindOption(StrEnum):
    """Choices of ``agentrl services add --kind``."""

    EXTERNAL = "external"
    SGLANG = "sglang"


engine_app = typer.Typer(help="Run the CPU inference engine.", no_args_is_help=True)
services_app = typer.Typer(help="Register and list inference services.", no_args_is_help=True)


@engine_app.command("serve")
def engine_serve(
    model: Annotated[Path | None, typer.Option(help="HF model directory (default SmolLM2).")] = (
        None
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 30000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    served_model_name: Annotated[str, typer.Option(help="Model name clients use.")] = (
        DEFAULT_MODEL_NAME
    ),
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    max_batch_size: Annotated[int, typer.Option(help="Most sequences decoded together.")] = 64,
    num_threads: Annotated[int, typer.Option(help="torch threads (0: half the cores).")] = 0,
) -> None:
    """Serve a model with the CPU engine (OpenAI API + SGLang control endpoints)."""
    from agentrl.inference.engine.server import serve  # torch: only when it runs

    serve(model=str(model or ""), port=port, host=host, served_model_name=served_model_name,
          seed=seed, max_batch_size=max_batch_size, num_threads=num_threads)


@services_app.command("add", context_settings=CONFIG_FLAGS_CONTEXT, epilog=config_flags_help())
def services_add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Base URL of the endpoint (without /v1).")],
    model: Annotated[str, typer.Option("--model", help="Model name it serves.")],
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="AGENTRL_SERVICE_API_KEY", help="Bearer key (stored, never shown).",
        show_envvar=False)] = None,
    kind: Annotated[ServiceKindOption, typer.Option(
        "--kind", help="external: an OpenAI-compatible API (no token ids; trained through the "
        "chat template); sglang: an SGLang server on another node (token-exact).")] = (
        ServiceKindOption.EXTERNAL
    ),
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.")] = None,
) -> None:
    """Register an endpoint that runs elsewhere (an OpenAI API or an SGLang server) as an UP
    inference service."""
    cfg = load_config(config, **parse_config_flags(ctx.args))
    with init_databases(cfg) as dbs:
        service = register_service(dbs.store, url, model, api_key, kind=kind.value)
    typer.echo(json.dumps(service.public_view(), default=str))


@services_app.command("list", context_settings=CONFIG_FLAGS_CONTEXT, epilog=config_flags_help())
def services_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines, not a table.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.")] = None,
) -> None:
    """List registered inference services (API keys are never shown)."""
    cfg = load_config(config, **parse_config_flags(ctx.args))
    with init_databases(cfg) as dbs:
        services = list_services(dbs.store)
    if as_json:
        for service in services:
            typer.echo(json.dumps(service, default=str))
        return
    table = Table("name", "kind", "status", "endpoint", "models", "weights", "heartbeat")
    for s in services:
        table.add_row(s["name"], s["kind"], s["status"], s["endpoint"], ",".join(s["models"]),
                      s["weight_version"], str(s["heartbeat_at"]))
    Console(width=200).print(table)
