"""``agentrl run CONFIG``: the main job on one machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.driver.interrupts import INTERRUPTED_EXIT_CODE, say_interrupted
from agentrl.logs import setup_logging


def run(
    ctx: typer.Context,
    config_file: Path = typer.Argument(..., help="YAML config, e.g. examples/gsm8k.yaml."),  # noqa: B008
    external_workers: bool = typer.Option(
        False, help="Use running Celery workers and beat instead of starting them."
    ),
    fresh: bool = typer.Option(
        False, help="Forget a previous run of the same name (database, keys, checkpoints)."
    ),
    progress: bool = typer.Option(True, help="Show the progress bar."),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", min=1,
        help="Trainer ranks to start on this machine (FSDP by default); each DP group's "
        "first rank starts its own engine. torchrun --nproc_per_node N -m agentrl run CONFIG "
        "does the same.",
    ),
) -> None:
    """Sample with Celery workers and train with GRPO until sampling has finished.

    Starts (when not running) Redis, the embedded MongoDB-wire server, the inference engine, a
    sampling worker and beat; stops them all at the end or on Ctrl-C. Writes
    runs/<name>/summary.json and runs/<name>/reward.png; logs go to runs/<name>/logs/. Ctrl-C
    (or SIGTERM) finishes the step in progress and checkpoints it (exit status 130); a rerun
    with the same name resumes from the last checkpoint (use --fresh to start over).
    """
    # the job's modules import torch and transformers: only once a command runs, so --help is quick
    from agentrl.driver.evals import describe_change
    from agentrl.driver.launch import launch_ranks, launched_rank, rank_argv, run_rank
    from agentrl.driver.main_job import run_dir_of, run_main_job

    config = load_config(config_file, **parse_config_flags(ctx.args))
    rank = launched_rank()
    if nproc_per_node > 1 and rank is None:
        setup_logging(run_dir_of(config) / "logs" / "launcher.log")
        argv = sys.argv[sys.argv.index("run") + 1 :]
        launch_ranks(nproc_per_node, rank_argv(argv))
        return
    if rank:  # ranks other than 0 train and serve; rank 0 reports
        setup_logging(run_dir_of(config) / "logs" / f"run-rank{rank}.log")
        run_rank(config)
        return
    setup_logging(run_dir_of(config) / "logs" / "run.log")
    try:
        result = run_main_job(
            config, external_workers=external_workers, fresh=fresh, show_progress=progress
        )
    except KeyboardInterrupt:
        say_interrupted(config, None)
        raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
    if result.interrupted_at is not None:
        say_interrupted(config, result.interrupted_at)
        raise typer.Exit(INTERRUPTED_EXIT_CODE)
    out = Console()
    out.print(steps_table(json.loads(result.summary.read_text())))
    out.print(f"[bold green]done[/]: {result.steps} optimizer steps")
    if result.evaluation is not None:
        for line in describe_change(result.evaluation):
            out.print(line, markup=False, highlight=False)
    out.print(f"summary: {result.summary}")
    out.print(f"plot:    {result.plot}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def steps_table(summary: dict[str, Any]) -> Table:
    """Per-step reward, correct / well-formed rates (of newly finished and of trained records),
    clip fraction and staleness of a run."""
    table = Table(title="per step", caption=(
        "correct, well-formed: of the trajectories finished since the step before (abandoned "
        "and stale groups included); batch: of the records the step trained on"))
    columns = (
        ("step", None), ("reward", "reward_per_step"), ("correct", "correct_rate_per_step"),
        ("well-\nformed", "well_formed_rate_per_step"),  # two-line headers fit 80 columns
        ("batch\ncorrect", "batch_correct_rate_per_step"),
        ("batch\nwell-formed", "batch_well_formed_rate_per_step"),
        ("clip", "clip_fraction_per_step"),
        ("stale-\nness", "staleness_per_step"),
    )
    for name, _ in columns:
        table.add_column(name, justify="right")
    for i in range(summary.get("steps", 0)):
        table.add_row(str(i + 1), *(_fmt(summary[key][i]) for _, key in columns[1:]))
    return table


RUN_COMMAND = {
    "name": "run",
    "context_settings": CONFIG_FLAGS_CONTEXT,
    "epilog": config_flags_help(),
}
"""Keyword arguments of ``app.command`` for :func:`run`."""
