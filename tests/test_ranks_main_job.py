"""``agentrl run CONFIG --nproc-per-node 2`` end to end on CPU: two trainer ranks (FSDP over
gloo), each starting its DP group's CPU engine with the real SmolLM2, two optimizer steps of a
tiny GSM8K config; both engines serve calls and end on the same weight version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask, ServiceStatus
from agentrl.status import service_status
from agentrl.training.metrics import read_metrics
from tests.conftest import SHARED_DATA, free_port
from tests.jobs.helpers import REPO, wait_for

pytestmark = pytest.mark.slow


def test_two_ranks_two_engines_two_steps(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump(
            {
                "name": "ranks",
                "train_file": str(SHARED_DATA / "gsm8k" / "train.jsonl"),
                "max_train_tasks": 2,
                "num_generations": 2,
                "num_train_epochs": 4,
                "max_new_tokens": 8,
                "sampler": "math_with_spread",
                "sampler_modules": "tests.training.spread_sampler",
                "engine": "cpu",
                "engine_base_port": free_port(),
                "beat_interval_s": 1.0,
                "train_batch_size": 4,
                "micro_batch_size": 2,
                "max_steps": 2,
                "learning_rate": 1e-5,
                "engine_num_threads": 1,
                "train_num_threads": 1,
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    output = tmp_path / "run.out"
    with output.open("w") as out:
        run = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from agentrl.cli import main; main()",
                "run",
                str(run_yaml),
                "--no-progress",
                "--nproc-per-node",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # agentrl status lists one service per DP group while the run goes on
        wait_for(
            lambda: (
                run.poll() is not None
                or sum(s["status"] == ServiceStatus.UP.value for s in service_status(dbs)) == 2
            ),
            600,
            "two UP services",
        )
        assert run.wait(timeout=900) == 0, " ".join(output.read_text().split())[-4000:]
    finally:
        if run.poll() is None:
            run.kill()
    run_dir = Path(config.output_dir) / "ranks"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["global_step"] == 2
    steps = read_metrics(run_dir / "metrics.jsonl")
    assert [s["train/ranks"] for s in steps] == [2.0, 2.0]
    assert all(s["train/sequences"] >= 4 and s["perf/weight_sync_s"] > 0 for s in steps)
    services = service_status(dbs)
    assert len(services) == 2
    assert [s["weight_version"] for s in services] == ["2", "2"]
    served = {c.service_id for c in dbs.store.find(DispatchedSamplingTask, {})}
    assert len(served - {None}) == 2  # each engine answered calls
    # the run's outputs: a sharded checkpoint of step 2, and the final policy for users
    step2 = run_dir / "checkpoints" / "step-000002"
    assert (step2 / "COMPLETE").exists() and (step2 / "dcp" / ".metadata").exists()
    assert sorted(p.name for p in (step2 / "dcp").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert (run_dir / "final_model" / "model.safetensors").exists()
