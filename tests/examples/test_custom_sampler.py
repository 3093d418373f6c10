"""The README's sampler example as written: `python examples/custom_sampler.py` from the
repository root with no engine and no worker running, then `agentrl train` on what it sampled."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    InferenceService,
    Record,
    RecordStatus,
    ServiceStatus,
)
from tests.conftest import free_port
from tests.jobs.helpers import REPO

pytestmark = pytest.mark.slow


def _env(config: AgentTrainingConfig) -> dict[str, str]:
    """The test's AGENTRL_* (isolated databases and keys) over the example's YAML."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["AGENTRL_ENGINE_BASE_PORT"] = str(free_port())
    return env


def test_readme_example_samples_then_agentrl_train_trains(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    assert dbs.store.collection(InferenceService).count_documents({}) == 0  # no engine yet
    env = _env(config)
    sampled = subprocess.run([sys.executable, "examples/custom_sampler.py"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=500)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert "sampled epochs [1]; train on them: agentrl train examples/custom_sampler.yaml" in (
        sampled.stdout)
    assert "starting a cpu engine for this run" in sampled.stderr
    records = list(dbs.store.find(Record, {}))
    assert len(records) == 4 * 4  # 4 questions x num_generations 4 (examples/custom_sampler.yaml)
    assert {r.status for r in records} <= {RecordStatus.READY, RecordStatus.ABANDONED}
    assert all(r.meta["answer"] and r.score in (0.0, 1.0) for r in records)
    calls = list(dbs.store.find(DispatchedSamplingTask, {}))
    assert len(calls) == 16 and all(c.completion_token_ids for c in calls)
    (service,) = dbs.store.find(InferenceService, {})
    assert service.kind == "cpu" and service.status == ServiceStatus.DOWN  # stopped at the end

    trained = subprocess.run(
        [sys.executable, "-c", "from agentrl.cli import main; main()", "train",
         "examples/custom_sampler.yaml"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=500,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    ready = [r for r in dbs.store.find(Record, {}) if r.status == RecordStatus.READY]
    groups = {(r.task_id, r.epoch) for r in ready}
    lines = (config.output_dir / "custom_sampler" / "metrics.jsonl")
    steps = [json.loads(line) for line in lines.read_text().splitlines()] if groups else []
    assert len(steps) == math.ceil(len(groups) / 2)  # train_batch_size 8: two groups of 4
    assert all(r.trained_count == 1 for r in ready)
    assert sum(s["train/records"] for s in steps) == len(ready)


def test_readme_shows_the_tested_example_and_its_config() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Writing a sampler", 1)[1]
    python_block = section.split("```python\n", 1)[1].split("```", 1)[0]
    yaml_block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = (REPO / "examples" / "custom_sampler.py").read_text()
    assert example.endswith(python_block) and python_block.startswith("from pathlib import Path")
    assert yaml_block == (REPO / "examples" / "custom_sampler.yaml").read_text()
