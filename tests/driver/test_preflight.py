"""`agentrl run` checks the dataset before it starts anything: a broken line fails the run with
the file, line and reason (exit 2); skipped lines are reported."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.driver.preflight import check_datasets
from agentrl.errors import DatasetError

GOOD = '{"question": "What is 1+1?", "answer": "#### 2"}\n'


def test_broken_line_fails_agentrl_run_with_exit_2_naming_it(
    config: AgentTrainingConfig, tmp_path: Path
) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text(GOOD + '{"question": "2+2?"\n' + GOOD)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"name: broken\ntrain_file: {bad}\nskip_bad_lines: false\n")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "from agentrl.cli import main; main()", "run", str(run_yaml)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{bad}:2: not JSON" in " ".join(done.stderr.split())
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs" / "broken" / "logs" / "beat.log").exists()  # nothing started


def test_skipped_lines_are_reported_and_an_empty_dataset_fails(
    config: AgentTrainingConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(GOOD + "not json\n" + '{"answer": "#### 3"}\n')
    config.train_file = str(path)
    with caplog.at_level(logging.WARNING, logger="agentrl.driver.preflight"):
        datasets = check_datasets(config)
    assert len(datasets["train"]) == 1
    (message,) = [r.getMessage() for r in caplog.records if r.name == "agentrl.driver.preflight"]
    assert "skipped 2 bad line(s)" in message and f"{path}:2" in message and f"{path}:3" in message
    path.write_text("not json\n")
    with pytest.raises(DatasetError, match="no usable task"):
        check_datasets(config)
