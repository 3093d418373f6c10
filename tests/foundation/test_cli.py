"""The ``agentrl`` command reports bad input as one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gsm8k.yaml"


def _agentrl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from agentrl.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_bad_flag_value_names_the_key_and_exits_2() -> None:
    result = _agentrl("run", str(EXAMPLE), "--num-generations", "0")
    assert result.returncode == 2
    assert "num_generations" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_file_is_named() -> None:
    result = _agentrl("run", "no/such/config.yaml")
    assert result.returncode == 2
    assert "no/such/config.yaml" in result.stderr and "cannot read config file" in result.stderr
