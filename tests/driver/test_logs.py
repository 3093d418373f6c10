"""A command's logging: library chatter goes to the run's log file only; the driver's narrative
and agentrl's warnings also reach the console."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import transformers.utils.logging

from agentrl.logs import setup_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("agentrl").setLevel(logging.NOTSET)


def test_libraries_go_to_the_file_and_the_narrative_to_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    log_file = tmp_path / "logs" / "run.log"
    setup_logging(log_file)
    logging.getLogger("httpx").info("HTTP Request: POST http://x/v1/chat/completions 200")
    logging.getLogger("urllib3.connectionpool").warning("Retrying connection")
    transformers.utils.logging.get_logger("transformers.modeling_utils").warning("shard notice")
    logging.getLogger("agentrl.driver.children").info("started worker (pid 1)")
    logging.getLogger("agentrl.training.records").info("group t/1 has no score spread")
    logging.getLogger("agentrl.training.weights").warning("weight push v3 took 52.2 s")
    logging.getLogger("celery").error("worker lost")
    shown = capsys.readouterr().err
    written = log_file.read_text()
    for line in ("HTTP Request", "Retrying connection", "shard notice", "started worker",
                 "no score spread", "weight push v3", "worker lost"):
        assert line in written
    for line in ("started worker", "weight push v3", "worker lost"):
        assert line in shown
    for line in ("HTTP Request", "Retrying connection", "shard notice", "no score spread"):
        assert line not in shown
