"""``agentrl train``: the trainer as a command (single process, or one rank under torchrun)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from agentrl.cli_options import CONFIG_FLAGS_CONTEXT, config_flags_help, parse_config_flags
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.driver.interrupts import INTERRUPTED_EXIT_CODE, StopOnSignal, say_interrupted
from agentrl.logs import setup_logging
from agentrl.rollout.epochs import split_done
from agentrl.rollout.ledger import GlobalStep


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
    (a restarted command resumes from the newest one); logs to runs/<name>/logs/train.log.
    Ctrl-C (or SIGTERM) finishes the step in progress and checkpoints it (exit status 130).
    """
    from agentrl.inference.manager import InferenceManager
    from agentrl.training.trainer import Trainer  # torch and transformers: only when it runs
    from agentrl.training.weights import ManagerWeightPublisher, no_publish

    config = load_config(config_file, **parse_config_flags(ctx.args))
    setup_logging(Path(config.output_dir) / config.name / "logs" / "train.log")
    try:
        with init_databases(config) as dbs, contextlib.ExitStack() as stack:
            publish = no_publish
            if serve:
                manager = stack.enter_context(InferenceManager(config, dbs))
                publish = ManagerWeightPublisher([manager], dbs)
            stop = stack.enter_context(StopOnSignal())
            trainer = Trainer(
                config, dbs, publish,
                sampling_finished=lambda: split_done(dbs, "train"), show_progress=progress,
            )
            stop.attach(trainer.request_stop)
            trainer.train()
            if stop.requested:
                if trainer.world_size == 1:  # several ranks: train() checkpointed them together
                    trainer.save_checkpoint_now()
                say_interrupted(config, GlobalStep(dbs).get())
                raise typer.Exit(INTERRUPTED_EXIT_CODE)
    except KeyboardInterrupt:
        say_interrupted(config, None)
        raise typer.Exit(INTERRUPTED_EXIT_CODE) from None


TRAIN_COMMAND = {
    "name": "train",
    "context_settings": CONFIG_FLAGS_CONTEXT,
    "epilog": config_flags_help(),
}
"""Keyword arguments of ``app.command`` for :func:`train`."""
