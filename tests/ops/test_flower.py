"""Flower started as `celery -A agentrl flower` lists the run's worker and its finished sampling
and evaluation jobs, with readable kwargs, through its HTTP API behind basic auth; `agentrl eval`
runs an evaluation job on the same worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import agentrl.flowerconfig
from agentrl.cli import app as cli_app
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record
from agentrl.errors import EvaluationError
from agentrl.evaluation import evaluate
from agentrl.rollout.scheduler import SamplingScheduler
from tests.conftest import free_port
from tests.jobs.rft_example import RFTDataset, RFTSampler, make_items
from tests.ops.helpers import start_celery, stop, wait_for

AUTH = ("ops", "s3cret-pass")


def get_json(url: str, **params: Any) -> Any:
    """GET ``url`` with basic auth; ``None`` when Flower is not up yet."""
    try:
        response = httpx.get(url, params=params, auth=AUTH, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_flower_lists_worker_and_finished_sampling_tasks(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    config.num_generations, config.num_train_epochs = 2, 1
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker_name = f"flower-{config.key_prefix}@localhost"
    flower = start_celery(
        "flower", tmp_path / "flower.log", f"--port={port}", "--address=127.0.0.1",
        f"--basic-auth={AUTH[0]}:{AUTH[1]}", f"--conf={agentrl.flowerconfig.__file__}",
    )
    worker = None
    try:
        wait_for(lambda: get_json(f"{base}/api/workers") is not None, 60, "Flower to answer")
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401  # no auth
        worker = start_celery(
            "worker", tmp_path / "worker.log", "-Q", "sampling,evaluation", "-n", worker_name,
            "--loglevel", "INFO",
            AGENTRL_SAMPLER_MODULES="tests.jobs.rft_example,workers.evaluation",
        )
        wait_for(lambda: worker_name in (get_json(f"{base}/api/workers", refresh=1) or {}),
                 90, "Flower to list the worker")
        # the worker starts without task events; Flower turns them on (enable_events)
        log = tmp_path / "worker.log"
        wait_for(lambda: "Events of group {task} enabled by remote" in log.read_text(), 60,
                 "Flower to turn the worker's task events on")
        scheduler = SamplingScheduler(
            config=config, sampler_class=RFTSampler, dataset=RFTDataset(make_items(2)),
            split="train", in_process_worker=False, timeout_s=120, start_engine=False,
        )
        assert scheduler.run() == [1]

        def finished(split: str = "train") -> dict[str, Any]:
            tasks = get_json(f"{base}/api/tasks", taskname="agentrl.sample",
                             state="SUCCESS") or {}
            return {k: v for k, v in tasks.items() if f"'split': '{split}'" in v["kwargs"]}

        wait_for(lambda: len(finished()) == 4, 60, "Flower to see 4 finished sampling tasks")
        tasks = finished()

        # an ad-hoc evaluation from the shell, on the same worker (the rft sampler's 4 items)
        out = CliRunner().invoke(cli_app, [
            "eval", str(tmp_path / "items.jsonl"), "--sampler", "rft", "--split", "eval",
            "--json", "--timeout-s", "120"])
        assert out.exit_code == 0, out.output
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        wait_for(lambda: get_json(f"{base}/api/tasks", taskname="agentrl.evaluate",
                                  state="SUCCESS"), 30, "Flower to see the evaluation job")
        job = get_json(f"{base}/api/tasks", taskname="agentrl.evaluate", state="SUCCESS")
        # a job that cannot run fails with its reason, raised again by .get() in the caller
        with pytest.raises(EvaluationError, match="cannot load .*'nope'"):
            evaluate(sampler="nope", dataset=tmp_path / "items.jsonl", config=config).get(
                timeout=60)
        wait_for(lambda: len(finished("eval")) == 4, 30, "Flower to see 4 evaluation jobs")
        trajectories = finished("eval")
        workers = get_json(f"{base}/api/workers")
    finally:
        if worker is not None:
            stop(worker)
        stop(flower)

    assert worker_name in workers
    assert {q["name"] for q in workers[worker_name]["active_queues"]} == {
        "sampling", "evaluation"}
    record_ids = {r.id for r in dbs.store.find(Record, {"split": "train"})}
    seen = set()
    for info in tasks.values():
        assert info["name"] == "agentrl.sample" and info["worker"] == worker_name
        kwargs = info["kwargs"]  # the claim, readable: task id, traj id, epoch, split, sampler
        for text in ("'task_id': 'train-e1-00000", "'split': 'train'", "'sampler': 'rft'",
                     "'epoch': 1", "'traj_id': "):
            assert text in kwargs, kwargs
        task_id = kwargs.split("'task_id': '")[1].split("'")[0]
        traj_id = int(kwargs.split("'traj_id': ")[1].split(",")[0])
        seen.add(f"{task_id}:{traj_id}:1")
    assert seen == record_ids and len(seen) == 4

    # scores of the rft sampler with one sample per task: items 0 and 2 score 0, 1 and 3 score 1
    assert summary["count"] == summary["expected"] == 4 and summary["unfinished"] == 0
    assert summary["accuracy"] == summary["mean_score"] == 0.5 and summary["failures"] == 0
    eval_records = {r.id for r in dbs.store.find(Record, {"split": "eval"})}
    assert set(summary["record_ids"]) == eval_records and len(eval_records) == 4
    assert list(job) == [summary["evaluation_id"]]  # the job's uuid is the evaluation id
    assert "'sampler': 'rft'" in job[summary["evaluation_id"]]["kwargs"]
    assert len(trajectories) == 4
    for info in trajectories.values():  # the evaluation's claims: its tasks, no resampling
        assert f"'task_id': 'evaluation-{summary['evaluation_id']}-" in info["kwargs"]
        assert "'traj_id': 0" in info["kwargs"] and "'resample': False" in info["kwargs"]
