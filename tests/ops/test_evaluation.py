"""Ad-hoc evaluation of 6 GSM8K problems with the CPU engine on a real worker, and
`agentrl status --json` watched during that run."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentrl.cli import app as cli_app
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, RecordStatus, Task, TaskStatus
from agentrl.errors import EvaluationError
from agentrl.evaluation import EVALUATION_EPOCH, evaluate
from agentrl.inference.model_files import DEFAULT_MODEL_NAME, default_model_path
from agentrl.inference.sglang import EngineClient
from agentrl.rollout.math import MathTask
from tests.conftest import SHARED_DATA, free_port
from tests.ops.helpers import start, start_celery, stop

N_PROBLEMS = 6


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A CPU engine subprocess serving SmolLM2 as ``DEFAULT_MODEL_NAME``."""
    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    proc = start(["-m", "agentrl.inference.engine", "--model", str(default_model_path()),
                  "--port", str(port), "--max-batch-size", "8"], log)
    client = EngineClient(f"http://127.0.0.1:{port}")
    try:
        client.wait_healthy(180, alive=lambda: proc.poll() is None, log_tail=log.read_text)
        yield f"http://127.0.0.1:{port}"
    finally:
        client.close()
        stop(proc)


@pytest.fixture
def gsm8k_six(tmp_path: Path) -> Path:
    """The first 6 lines of the shared GSM8K train file, as a JSONL file of their own."""
    path = tmp_path / "gsm8k6.jsonl"
    with open(SHARED_DATA / "gsm8k" / "train.jsonl", encoding="utf-8") as src:
        path.write_text("".join(next(src) for _ in range(N_PROBLEMS)), encoding="utf-8")
    return path


@pytest.fixture
def eval_worker(config: AgentTrainingConfig, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """``celery -A agentrl worker -Q evaluation`` with short generations."""
    proc = start_celery(
        "worker", tmp_path / "worker.log", "-Q", "evaluation", "--loglevel", "INFO",
        "-n", f"eval-{config.key_prefix}@%h",
        AGENTRL_SAMPLER_MODULES="workers.evaluation", AGENTRL_MAX_NEW_TOKENS="24",
        AGENTRL_TEMPERATURE="0",
    )
    yield proc
    stop(proc)


def status_json(runner: CliRunner) -> dict[str, Any]:
    """``agentrl status --json`` (in process; the config comes from the AGENTRL_* env)."""
    out = runner.invoke(cli_app, ["status", "--json", "--inspect-timeout-s", "0.5"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def check_consistent(snapshot: dict[str, Any]) -> None:
    """Per split/epoch rows: statuses sum to the total; the evaluation has 6 tasks once there."""
    for kind in ("tasks", "records"):
        for row in snapshot[kind]:
            assert sum(row["by_status"].values()) == row["total"]
            assert (row["split"], row["epoch"]) == ("eval", EVALUATION_EPOCH)
    for row in snapshot["tasks"]:
        assert row["total"] == N_PROBLEMS
    for row in snapshot["records"]:
        assert row["total"] <= N_PROBLEMS
    assert set(snapshot["queues"]) >= {"sampling", "evaluation", "unacked"}
    assert all("api_key" not in s for s in snapshot["services"])


def db_counts(dbs: Databases, model: type[Task] | type[Record], statuses: list[str]
              ) -> dict[str, int]:
    coll = dbs.store.collection(model)
    counts = {s: coll.count_documents({"split": "eval", "status": s}) for s in statuses}
    return {s: n for s, n in counts.items() if n}


def test_evaluate_six_gsm8k_problems(
    config: AgentTrainingConfig, dbs: Databases, engine_url: str, gsm8k_six: Path,
    eval_worker: subprocess.Popen,
) -> None:
    result = evaluate(
        sampler="math", dataset=gsm8k_six, model=DEFAULT_MODEL_NAME, split="eval",
        num_samples=1, service_url=engine_url, api_key="sk-never-shown", config=config,
        poll_interval_s=1.0,
    )
    runner = CliRunner()
    snapshots = []
    deadline = time.monotonic() + 300
    while not result.ready() and time.monotonic() < deadline:
        snapshot = status_json(runner)
        check_consistent(snapshot)
        snapshots.append(snapshot)
    summary = result.get(timeout=max(1.0, deadline - time.monotonic()))

    # the summary's counts are the records in MongoDB
    records = list(dbs.store.find(Record, {"task_id": {"$regex": f"^evaluation-{result.id}-"}}))
    assert summary["evaluation_id"] == result.id
    assert summary["tasks"] == summary["tasks_completed"] == N_PROBLEMS
    assert summary["expected"] == summary["count"] == len(records) == N_PROBLEMS
    assert summary["unfinished"] == 0
    assert summary["record_ids"] == sorted(r.id for r in records)
    assert summary["by_status"] == {RecordStatus.READY.value: N_PROBLEMS}
    scores = [r.score for r in records]
    assert summary["mean_score"] == pytest.approx(sum(scores) / N_PROBLEMS)
    assert summary["accuracy"] == pytest.approx(sum(s >= 1.0 for s in scores) / N_PROBLEMS)
    assert summary["failures"] == sum(1 for r in records if r.error) == 0
    assert summary["well_formed_rate"] == pytest.approx(
        sum(bool(r.meta["metrics"]["well_formed"]) for r in records) / N_PROBLEMS)
    for r in records:
        assert r.split == "eval" and r.epoch == EVALUATION_EPOCH and r.trained_count == 0
        assert r.meta["completion"]
    # evaluation records never feed training: nothing of the train split exists
    assert dbs.store.collection(Record).count_documents({"split": "train"}) == 0
    tasks = list(dbs.store.find(Task, {"split": "eval"}))
    assert len(tasks) == N_PROBLEMS and {t.status for t in tasks} == {TaskStatus.COMPLETED}
    assert {t.sampler for t in tasks} == {"math"}
    assert all(isinstance(t, MathTask) and t.question for t in tasks)

    # status during the run saw the worker and the engine's service; after it, exact counts
    assert snapshots, "the evaluation finished before status could look"
    assert any(any("evaluation" in w["queues"] for w in s["workers"]) for s in snapshots)
    final = status_json(runner)
    check_consistent(final)
    [task_row] = final["tasks"]
    [record_row] = final["records"]
    assert {k: v for k, v in task_row["by_status"].items() if v} == db_counts(
        dbs, Task, [s.value for s in TaskStatus]) == {"completed": N_PROBLEMS}
    assert {k: v for k, v in record_row["by_status"].items() if v} == db_counts(
        dbs, Record, [s.value for s in RecordStatus]) == {"ready": N_PROBLEMS}
    [service] = final["services"]
    assert service["endpoint"] == engine_url and service["status"] == "UP"
    assert service["running_req_count"] == 0 and service["models"] == [DEFAULT_MODEL_NAME]
    assert final["staleness"]["ready"] == 0  # READY eval records are not training data
    assert final["training_finished"] is False  # no trainer ran: nothing has finished

    # the table view renders the same snapshot
    table = runner.invoke(cli_app, ["status", "--no-workers"])
    assert table.exit_code == 0, table.output
    assert "records" in table.stdout and "completed" in table.stdout
    assert "sk-never-shown" not in table.stdout and "sk-never-shown" not in json.dumps(final)


def test_evaluate_refuses_the_train_split(config: AgentTrainingConfig, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="never feed training"):
        evaluate(sampler="math", dataset=tmp_path / "x.jsonl", split="train", config=config)
    with pytest.raises(EvaluationError, match="needs model="):
        evaluate(sampler="math", dataset=tmp_path / "x.jsonl", service_url="http://x",
                 config=config)
