"""``agentrl train``: the trainer as a command (single process, or one rank under torchrun)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.inference.manager import InferenceManager
from agentrl.rollout.epochs import split_done
from agentrl.training.trainer import Trainer
from agentrl.training.weights import ManagerWeightPublisher, no_publish


def train(
    ctx: typer.Context,
    config_file: Path | None = typer.Argument(  # noqa: B008
        None, help="YAML config (default: $AGENTRL_CONFIG)."
    ),
    serve: bool = typer.Option(
        True, help="Start this DP group's inference engine and push weights to it each step."
    ),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Train on READY records until max_steps or the end of sampling (torchrun-compatible).

    Per-step metrics go to runs/<name>/metrics.jsonl; checkpoints to runs/<name>/checkpoints
    (a restarted command resumes from the newest one).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(config_file, **parse_config_flags(ctx.args))
    with init_databases(config) as dbs:
        if serve:
            with InferenceManager(config, dbs) as manager:
                publish = ManagerWeightPublisher([manager], dbs)
                Trainer(
                    config, dbs, publish,
                    sampling_finished=lambda: split_done(dbs, "train"), show_progress=progress,
                ).train()
        else:
            Trainer(
                config, dbs, no_publish,
                sampling_finished=lambda: split_done(dbs, "train"), show_progress=progress,
            ).train()


TRAIN_COMMAND = {
    "name": "train",
    "context_settings": CONFIG_FLAGS_CONTEXT,
    "epilog": config_flags_help(),
}
"""Keyword arguments of ``app.command`` for :func:`train`."""
