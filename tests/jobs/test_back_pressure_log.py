"""A back-pressure requeue is not logged as a WARNING by Celery's tracer; other rejects are."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from billiard.einfo import ExceptionInfo
from celery.app.trace import TraceInfo
from celery.exceptions import Reject

import workers.sampling  # noqa: F401  (installs the filter, as the worker's import does)
from agentrl.celery_app import SAMPLE_TASK, app


def _log_reject(reason: str) -> None:
    request = SimpleNamespace(hostname="w@h", id="1", args=(), kwargs={}, get=lambda *_: None)
    try:
        raise Reject(reason, requeue=True)
    except Reject:
        TraceInfo("REJECTED")._log_error(app.tasks[SAMPLE_TASK], request, ExceptionInfo())


def test_only_back_pressure_rejects_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="celery.app.trace"):
        _log_reject("not admitted (busy)")
        assert not caplog.records
        _log_reject("message of another run")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "message of another run" in caplog.records[0].getMessage()
