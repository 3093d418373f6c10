"""A SIGTERM to pytest still stops what the running test started (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.jobs.helpers import REPO, process_alive, wait_for

INNER = '''
import subprocess, sys, time
from pathlib import Path

def test_holds_a_child(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    try:
        Path({pid_file!r}).write_text(str(child.pid))
        time.sleep(600)
    finally:
        child.kill()
        child.wait()
'''


def test_sigterm_to_pytest_runs_the_running_tests_cleanup(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER.format(pid_file=str(pid_file)))
    pytest_proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), str(inner)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 60,
                 "the inner test to start its child")
        child = int(pid_file.read_text())
        pytest_proc.send_signal(signal.SIGTERM)
        out, _ = pytest_proc.communicate(timeout=60)
        assert "KeyboardInterrupt: pytest got signal 15" in out
        wait_for(lambda: not process_alive(child), 10, "the child to be gone")
    finally:
        if pytest_proc.poll() is None:
            pytest_proc.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
