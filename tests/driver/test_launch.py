"""The launcher's command line: the nproc flag is not passed on to the ranks."""

from __future__ import annotations

import pytest

from agentrl.driver.launch import launched_rank, rank_argv


def test_rank_argv_drops_the_nproc_flag() -> None:
    argv = ["run.yaml", "--nproc-per-node", "2", "--no-progress", "--max-steps", "3"]
    assert rank_argv(argv) == ["run.yaml", "--no-progress", "--max-steps", "3"]
    assert rank_argv(["run.yaml", "--nproc-per-node=4", "--fresh"]) == ["run.yaml", "--fresh"]


def test_launched_rank_reads_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_rank() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launched_rank() == 1
