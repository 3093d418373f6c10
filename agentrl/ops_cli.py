"""Operator commands: ``agentrl status`` (a snapshot of the run) and ``agentrl eval`` (an ad-hoc
evaluation job with a progress bar).

Both take the config flags (``--redis-url``, ``--db-name``...) and ``--config FILE``, so they
look at the same run as its workers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentrl.celery_app import make_app
from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.evaluation import evaluate, evaluation_progress
from agentrl.status import INSPECT_TIMEOUT_S, collect_status, render_status

PROGRESS_POLL_S = 0.5
"""Seconds between progress looks of ``agentrl eval``."""

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]


def status(
    ctx: typer.Context,
    config_file: Annotated[Path | None, typer.Argument(
        help="YAML config file of the run (same as --config).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not tables.")] = False,
    workers: Annotated[bool, typer.Option(
        help="Ask the workers (Celery inspect); --no-workers skips it.")] = True,
    inspect_timeout_s: Annotated[float, typer.Option(
        help="Seconds each worker inspection waits for replies.")] = INSPECT_TIMEOUT_S,
    config: ConfigOption = None,
) -> None:
    """Queues, workers, inference services, tasks and records per split and epoch, the global
    step and the staleness of READY records (API keys are never shown)."""
    cfg = load_config(config or config_file, **parse_config_flags(ctx.args))
    with init_databases(cfg) as dbs:
        snapshot = collect_status(dbs, make_app(cfg), inspect_timeout_s, with_workers=workers)
    if as_json:
        typer.echo(json.dumps(snapshot, default=str))
    else:
        render_status(snapshot, Console(width=160))


def eval_command(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="Dataset file (read by the workers).")],
    sampler: Annotated[str | None, typer.Option(
        help="Registered sampler name (default: the config's sampler).")] = None,
    model: Annotated[str, typer.Option(
        help="Served model name to ask for (default: the workers' model_name).")] = "",
    split: Annotated[str, typer.Option(help="Split recorded on the records (never train).")] = (
        "eval"),
    num_samples: Annotated[int, typer.Option(help="Trajectories per task.")] = 1,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N items (0: all).")] = 0,
    service_url: Annotated[str, typer.Option(
        help="OpenAI-compatible endpoint to evaluate against (registered, needs --model).")] = "",
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="AGENTRL_SERVICE_API_KEY", show_envvar=False,
        help="Bearer key of --service-url (stored, never shown).")] = None,
    timeout_s: Annotated[float, typer.Option(
        help="Seconds to wait for the summary.")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Evaluate a dataset on the workers (the `evaluation` queue) and print the summary."""
    cfg = load_config(config, **parse_config_flags(ctx.args))
    console = Console(stderr=True)
    with init_databases(cfg) as dbs:
        result = evaluate(
            sampler or cfg.sampler, dataset, model, split, num_samples, service_url=service_url,
            api_key=api_key, limit=limit, max_wait_s=timeout_s, config=cfg,
        )
        deadline = time.monotonic() + timeout_s
        columns = (TextColumn("evaluation {task.fields[eid]}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=as_json) as progress:
            bar = progress.add_task("eval", total=None, eid=result.id)
            while not result.ready() and time.monotonic() < deadline:
                done, expected = evaluation_progress(dbs.store, result.id)
                progress.update(bar, completed=done, total=expected or None)
                time.sleep(PROGRESS_POLL_S)
            summary = result.get(timeout=max(1.0, deadline - time.monotonic()))
            progress.update(bar, completed=summary["count"], total=summary["expected"])
    if as_json:
        typer.echo(json.dumps(summary, default=str))
    else:
        print_summary(summary, Console())


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The evaluation summary as a two-column table (record ids left out)."""
    table = Table("field", "value", title=f"evaluation {summary['evaluation_id']}")
    for key, value in summary.items():
        if key != "record_ids":
            table.add_row(key, json.dumps(value, default=str) if isinstance(value, dict)
                          else str(value))
    console.print(table)


STATUS_COMMAND: dict[str, Any] = {
    "name": "status", "context_settings": CONFIG_FLAGS_CONTEXT, "epilog": config_flags_help(),
}
"""Keyword arguments of ``app.command`` for :func:`status`."""
EVAL_COMMAND: dict[str, Any] = {
    "name": "eval", "context_settings": CONFIG_FLAGS_CONTEXT, "epilog": config_flags_help(),
}
"""Keyword arguments of ``app.command`` for :func:`eval_command`."""
