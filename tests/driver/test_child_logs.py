"""Errors of the children reach the console: a real beat whose dataset has a broken line logs
the same DatasetError at every push; the watcher reports it once, then its count."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.driver.children import ChildLogWatcher, ChildProcess, start_beat
from tests.jobs.helpers import wait_for


def test_watcher_reports_each_kind_once_then_its_count(
    config: AgentTrainingConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{not json\n')
    for key, value in {"TRAIN_FILE": str(bad), "SKIP_BAD_LINES": "false",
                       "BEAT_INTERVAL_S": "0.3"}.items():
        monkeypatch.setenv(f"AGENTRL_{key}", value)
    beat = start_beat(tmp_path / "logs", dict(os.environ))
    watcher = ChildLogWatcher([beat], repeat_every_s=3600)
    try:
        with caplog.at_level(logging.WARNING, logger="agentrl.driver.children"):
            def repeated() -> bool:
                watcher.poll()
                return any(k.count >= 3 for k in watcher.kinds.values())

            wait_for(repeated, 90, "beat to fail its push three times")
            (kind,) = [k for k in watcher.kinds.values() if k.level == "ERROR"]
            assert "beat job push-epoch-train failed" in kind.text
            assert f"DatasetError: {bad}:2: not JSON" in kind.text
            first = [r for r in caplog.records if "DatasetError" in r.getMessage()]
            assert len(first) == 1 and first[0].levelno == logging.ERROR
            assert "beat.log" in first[0].getMessage()
    finally:
        beat.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentrl.driver.children"):
        watcher.stop()
    (summary,) = [r.getMessage() for r in caplog.records if "DatasetError" in r.getMessage()]
    assert f"beat ERROR x{kind.count} " in summary


def test_entries_differing_in_numbers_and_ids_are_one_kind(tmp_path: Path) -> None:
    """Skipped dataset lines and per-task warnings are counted, not listed one by one."""
    log_file = tmp_path / "worker.log"
    lines = [f"[2026-01-01 10:00:0{i},123: WARNING/MainProcess] skipping d.jsonl:{i + 2}: not "
             f"JSON: Expecting value: line 1 column {i + 1} (char {i})" for i in range(5)]
    lines.append("[2026-01-01 10:00:09,123: INFO/MainProcess] Task agentrl.sample[x] received")
    lines.append("Traceback (most recent call last):")
    lines.append('  File "x.py", line 1, in <module>')
    lines.append("ImportError: cannot import name 'y'")
    log_file.write_text("\n".join(lines) + "\n")
    child = ChildProcess("worker", [sys.executable, "-c", "pass"], tmp_path / "unused.log")
    child.log_file = log_file
    watcher = ChildLogWatcher([child])
    watcher.poll()
    watcher.poll()  # nothing new: the open traceback entry is complete
    kinds = sorted((k.level, k.count, k.text) for k in watcher.kinds.values())
    assert kinds == [
        ("ERROR", 1, "ImportError: cannot import name 'y'"),
        ("WARNING", 5, "skipping d.jsonl:2: not JSON: Expecting value: line 1 column 1 (char 0)"),
    ]
