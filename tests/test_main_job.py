"""The main job end to end with a tiny config: Redis, embedded MongoDB, the CPU engine with the
real SmolLM2, a Celery worker and beat as child processes, the trainer, and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from agentrl.celery_app import make_app
from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    InferenceService,
    Record,
    RecordStatus,
)
from agentrl.driver.main_job import run_main_job
from agentrl.errors import ConfigError
from agentrl.rollout.ledger import GlobalStep, training_finished
from agentrl.status import collect_status, queue_depths, render_status
from agentrl.training.checkpoint import latest_checkpoint
from agentrl.training.metrics import read_metrics
from tests.conftest import SHARED_DATA, free_port
from tests.jobs.helpers import REPO, process_alive, wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def test_tiny_main_job(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.name = "tiny"
    config.train_file = str(SHARED_DATA / "gsm8k" / "train.jsonl")
    config.max_train_tasks = 2
    config.num_generations = 2
    config.max_new_tokens = 16
    config.sampler = "math_with_spread"  # trajectory 0 scores 1.0: every group has spread
    config.sampler_modules = "tests.training.spread_sampler"
    config.engine = "cpu"
    config.engine_base_port = free_port()
    config.beat_interval_s = 1.0
    config.train_batch_size = 2
    config.max_steps = 1
    config.num_train_epochs = 3  # more than one step needs: the run ends with claims queued
    config.learning_rate = 1e-5

    result = run_main_job(config, show_progress=False)

    summary = json.loads(result.summary.read_text())
    assert summary["steps"] == 1 and result.steps == 1
    assert summary["global_step"] == 1
    assert len(summary["reward_per_step"]) == 1
    assert summary["reward_per_step"][0] >= 0.5  # a group of 2 with one 1.0
    assert summary["tokens_sampled"] > 0
    assert sum(summary["records_per_status"].values()) in (4, 8, 12)  # whole epochs pushed
    assert summary["records_per_status"][RecordStatus.READY.value] >= 2
    assert result.plot.exists() and result.plot.stat().st_size > 1000
    # the service served the trained weights, and every child is gone
    service = next(dbs.store.find(InferenceService, {}))
    assert service.weight_version == "1"
    for log_name in ("worker.log", "beat.log"):
        assert (result.run_dir / "logs" / log_name).exists()
    pids = [int(line.split()[0]) for line in _child_pids(result.run_dir)]
    assert not any(process_alive(pid) for pid in pids)
    # the run ended cleanly: no message of it is left, and no beat may push another epoch
    assert queue_depths(make_app(config)) == {"sampling": 0, "evaluation": 0, "unacked": 0}
    assert training_finished(dbs)
    # `agentrl status` says so (its engine is down because the run stopped it)
    snapshot = collect_status(dbs, make_app(config), with_workers=False)
    assert snapshot["training_finished"] is True and snapshot["global_step"] == 1
    table = Console(record=True, width=200)
    render_status(snapshot, table)
    assert "finished (no more training epochs are pushed" in table.export_text()


def test_main_job_with_held_out_eval_and_bounded_staleness(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.name = "held-out"
    config.train_file = config.eval_file = str(SHARED_DATA / "gsm8k" / "train.jsonl")
    config.max_train_tasks, config.eval_skip_tasks, config.max_eval_tasks = 4, 100, 3
    config.eval_every_steps = 1
    config.num_generations, config.train_batch_size, config.max_new_tokens = 2, 2, 12
    config.sampler = "math_with_spread"  # trajectory 0 scores 1.0: every group has spread
    config.sampler_modules = "tests.training.spread_sampler"
    config.engine, config.engine_base_port, config.beat_interval_s = "cpu", free_port(), 1.0
    config.max_steps, config.num_train_epochs, config.learning_rate = 2, 3, 1e-5
    config.max_staleness = 1

    result = run_main_job(config, show_progress=False)

    summary = json.loads(result.summary.read_text())
    assert summary["global_step"] == 2
    evaluation = summary["eval"]
    assert result.evaluation == evaluation
    assert [p["step"] for p in evaluation["per_step"]] == [0, 1, 2]
    assert evaluation["before"]["step"] == 0 and evaluation["after"]["step"] == 2
    for point in (evaluation["before"], evaluation["after"]):
        for part in (point, point["greedy"]):
            # math_with_spread scores every trajectory 0 (the only one of an eval task) 1.0
            assert (part["count"], part["accuracy"], part["mean_reward"]) == (3, 1.0, 1.0)
            assert part["well_formed_rate"] == 0.0  # it reports no metrics for them
    assert evaluation["before"]["temperature"] == config.temperature
    # 3 evaluations x (sampled + greedy) x 3 tasks, none from beat's epochs, none trained
    evals = list(dbs.store.find(Record, {"split": "eval"}))
    assert len(evals) == 18 and {r.epoch for r in evals} == {0}
    assert {(r.trained_count, r.train_claim_owner) for r in evals} == {(0, "")}
    assert {int(r.task_id.rsplit("-", 1)[1]) for r in evals} == {100, 101, 102}
    # bounded staleness: no trained token older than 1 step, nothing sampled only to be dropped
    steps = read_metrics(result.run_dir / "metrics.jsonl")
    assert [s["staleness/max"] <= 1 for s in steps] == [True, True]
    assert [s["staleness/dropped_records"] for s in steps] == [0.0, 0.0]
    assert summary["stale_dropped_records"] == 0 and summary["max_staleness"] == 1
    assert summary["records_per_status"][RecordStatus.STALE.value] == 0
    train = dbs.store.collection(Record).count_documents({"split": "train"})
    assert train <= (2 + 1 + 1) * 2  # (max_steps + max_staleness + 1) groups of 2, not 3 epochs


def _child_pids(run_dir) -> list[str]:  # noqa: ANN001
    path = run_dir / "logs" / "pids"
    return path.read_text().splitlines() if path.exists() else []


def test_missing_train_file_fails_before_starting_anything(config: AgentTrainingConfig) -> None:
    config.train_file = "no/such/train.jsonl"
    with pytest.raises(ConfigError, match="train-file"):
        run_main_job(config, show_progress=False)
    config.train_file = ""
    with pytest.raises(ConfigError, match="not set"):
        run_main_job(config, show_progress=False)


def test_gsm8k_tools_example_trains_two_steps(config: AgentTrainingConfig, dbs: Databases) -> None:
    # the example as written; the fixture's AGENTRL_* variables isolate databases and keys
    example = load_config(EXAMPLES / "gsm8k_tools.yaml")
    assert example.db_name == config.db_name and example.sampler == "mcp"
    example.train_file = str(SHARED_DATA / "gsm8k" / "train.jsonl")
    example.mcp_config = str(EXAMPLES / "mcp_tools" / "mcp.json")
    # as short as 2 cores allow: small groups, short replies, 2 steps
    example.max_train_tasks, example.num_generations, example.train_batch_size = 4, 2, 2
    example.max_new_tokens, example.mcp.max_turns, example.max_steps = 48, 2, 2
    example.sampler = "mcp_with_spread"  # trajectory 0 scores 1.0: every group has spread
    example.sampler_modules = "tests.training.spread_sampler"
    example.engine, example.engine_base_port, example.beat_interval_s = "cpu", free_port(), 1.0

    result = run_main_job(example, show_progress=False)

    summary = json.loads(result.summary.read_text())
    assert summary["steps"] == 2 and summary["global_step"] == 2
    steps = read_metrics(result.run_dir / "metrics.jsonl")
    assert [s["train/skipped_records"] for s in steps] == [0.0, 0.0]  # tool turns tokenize
    assert all(s["train/sequences"] >= 2 for s in steps)
    records = [r for r in dbs.store.find(Record, {}) if r.status != RecordStatus.RUNNING]
    assert records and all("calculate" in r.meta["messages"][0]["content"] for r in records
                           if r.meta.get("messages"))
    trained = [r for r in records if r.trained_count]
    assert len(trained) >= 4 and all(r.meta["metrics"]["turns"] >= 1 for r in trained)
    call = next(dbs.store.find(DispatchedSamplingTask, {"record_id": trained[0].id}))
    assert '"name": "calculate"' in call.request["messages"][0]["content"]  # the server's tools
    service = next(dbs.store.find(InferenceService, {}))
    assert service.weight_version == "2"



def test_sigint_keeps_the_run_and_the_rerun_resumes(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    """Ctrl-C at step 2 with checkpoint_every_steps 4: exit 130 naming the step, a checkpoint of
    it, and the same command resumes there (nothing refused, no record trained twice)."""
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({
        "name": "sigint", "train_file": str(SHARED_DATA / "gsm8k" / "train.jsonl"),
        "max_train_tasks": 4, "num_generations": 2, "num_train_epochs": 2, "max_new_tokens": 8,
        "sampler": "math_with_spread", "sampler_modules": "tests.training.spread_sampler",
        "engine": "cpu", "engine_base_port": free_port(), "beat_interval_s": 1.0,
        "train_batch_size": 2, "max_steps": 4, "checkpoint_every_steps": 4,
        "keep_checkpoints": 1, "learning_rate": 1e-5,
    }))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    output = tmp_path / "first.out"
    with output.open("w") as out:
        first = subprocess.Popen(
            [sys.executable, "-c", "from agentrl.cli import main; main()", "run", str(run_yaml),
             "--no-progress"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    run_dir = config.output_dir / "sigint"
    try:
        wait_for(lambda: first.poll() is None and len(read_metrics(run_dir / "metrics.jsonl"))
                 >= 2, 480, "step 2 of the first run")
        first.send_signal(signal.SIGINT)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    text = " ".join(output.read_text().split())
    assert first.returncode == 130, text[-3000:]
    step = GlobalStep(dbs).get()
    assert step >= 2 and f"interrupted at step {step} — rerun the same command to resume" in text
    checkpoints = run_dir / "checkpoints"
    assert latest_checkpoint(checkpoints) == checkpoints / f"step-{step:06d}"
    trained = dbs.store.collection(Record).count_documents({"trained_count": {"$gt": 0}})
    assert trained == 2 * step  # one group of 2 per completed step, nothing more

    result = run_main_job(load_config(run_yaml), show_progress=False)  # the same command again
    summary = json.loads(result.summary.read_text())
    assert summary["global_step"] == 4 and result.steps == 4
    assert [(i["start_step"], i["end_step"], i["outcome"]) for i in summary["invocations"]] == [
        (0, step, "interrupted"), (step, 4, "finished")]
    assert summary["wall_time_s"] == pytest.approx(
        sum(i["wall_time_s"] for i in summary["invocations"]), abs=0.2)
    assert dbs.store.collection(Record).count_documents({"trained_count": {"$gt": 1}}) == 0
