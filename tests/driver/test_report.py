"""summary.json keeps every invocation of a run: wall time of each and the total."""

from __future__ import annotations

import json

from rich.console import Console

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from agentrl.driver.cli import steps_table
from agentrl.driver.main_job import clear_run, run_dir_of
from agentrl.driver.report import Invocation, write_summary


def test_summary_keeps_the_history_of_invocations(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    run_dir = run_dir_of(config)
    run_dir.mkdir(parents=True)
    steps = [{"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.25}]
    write_summary(run_dir, steps[:1], dbs,
                  Invocation("2026-01-01T10:00:00+00:00", 300.04, 0, 1, "interrupted"))
    path = write_summary(run_dir, steps, dbs,
                         Invocation("2026-01-01T11:00:00+00:00", 10.5, 1, 2, "finished"))
    summary = json.loads(path.read_text())
    assert summary["wall_time_s"] == 310.5
    assert summary["reward_per_step"] == [0.5, 0.25]
    assert [(i["start_step"], i["end_step"], i["outcome"], i["wall_time_s"])
            for i in summary["invocations"]] == [(0, 1, "interrupted", 300.0),
                                                 (1, 2, "finished", 10.5)]

    # the console's per-step table: whole headers and values in an 80-column terminal
    console = Console(width=80, record=True)
    console.print(steps_table(summary))
    text = console.export_text()
    for word in ("reward", "correct", "formed", "well-formed", "stale-", "ness", "0.500", "0.250"):
        assert word in text, text
    assert "…" not in text and "trained on" in text
    clear_run(config, dbs)  # --fresh forgets the history too
    assert not path.exists()
