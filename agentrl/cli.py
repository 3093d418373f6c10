"""The ``agentrl`` command. Each subsystem defines its commands next to its code; they are
assembled here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from agentrl.driver.cli import RUN_COMMAND, run
from agentrl.errors import AgentRLError
from agentrl.inference.cli import engine_app, services_app
from agentrl.ops_cli import EVAL_COMMAND, STATUS_COMMAND, eval_command, status
from agentrl.rollout.osworld.cli import osworld_app
from agentrl.training.cli import TRAIN_COMMAND, train
from agentrl.viewer.cli import VIEWER_COMMAND, viewer

app = typer.Typer(
    name="agentrl",
    help="Asynchronous RL for LLM agents on Celery: run, train, serve, sample, inspect, view.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Subcommand groups are registered below (app.add_typer / app.command), one line per subsystem.
app.add_typer(engine_app, name="engine")
app.add_typer(services_app, name="services")
app.add_typer(osworld_app, name="osworld")
app.command(**TRAIN_COMMAND)(train)
app.command(**RUN_COMMAND)(run)
app.command(**STATUS_COMMAND)(status)
app.command(**EVAL_COMMAND)(eval_command)
app.command(**VIEWER_COMMAND)(viewer)


def main() -> None:
    """Entry point of the ``agentrl`` console script.

    An :class:`~agentrl.errors.AgentRLError` (bad config, unreachable service, bad dataset line)
    is printed as one message, without a traceback, and exits with status 2.
    """
    try:
        app()
    except AgentRLError as exc:
        message = Text("error: ", style="bold red") + Text(str(exc))
        Console(stderr=True, soft_wrap=True).print(message)
        sys.exit(2)
