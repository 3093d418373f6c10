"""The ``agentrl`` command. Each subsystem defines its commands next to its code; they are
assembled here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="agentrl",
    help="Asynchronous RL for LLM agents on Celery: run, train, serve, sample, inspect.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Subcommand groups are registered below (app.add_typer / app.command), one line per subsystem.


def main() -> None:
    """Entry point of the ``agentrl`` console script."""
    app()
