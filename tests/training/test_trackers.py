"""Experiment trackers: each step's metrics reach TensorBoard, wandb, MLflow and SwanLab through
their own libraries and read back, with each tracker's own reader, equal to metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from swanlab.proto.swanlab.record.v1.record_pb2 import Record as SwanLabRecord
from swanlab.sdk.internal.core_python.store import DataStoreReader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.databases import Databases
from agentrl.errors import TrackerUnavailableError
from agentrl.training.metrics import MetricsLogger, read_metrics
from agentrl.training.trackers import Tracker, config_hparams, open_trackers
from agentrl.training.trainer import Trainer
from tests.training.factories import store_group

Series = dict[str, dict[int, float]]
"""metric name → step → value."""


def jsonl_series(path: Path) -> Series:
    """The finite metrics of metrics.jsonl, per name and step."""
    series: Series = {}
    for line in read_metrics(path):
        for name, value in line.items():
            if name not in ("step", "time") and value is not None:
                series.setdefault(name, {})[int(line["step"])] = value
    return series


def tensorboard_series(log_dir: Path) -> Series:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def tensorboard_hparams(log_dir: Path) -> dict[str, Any]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in info.hparams.items()}


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of the offline run's .wandb file, as `wandb leet inspect --json` prints them."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wandb_series(records: list[dict[str, Any]]) -> Series:
    series: Series = {}
    for rec in records:
        if rec["type"] == "history":
            item, step = rec["history"]["item"], rec["history"]["step"]["num"]
            for name, value in item.items():
                if not name.startswith("_"):
                    series.setdefault(name, {})[int(step)] = value
    return series


def mlflow_run(tracking_uri: str, experiment: str) -> tuple[MlflowClient, Any]:
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def mlflow_series(client: MlflowClient, run: Any) -> Series:
    return {name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
            for name in run.data.metrics}


def swanlab_series(log_dir: Path) -> Series:
    (run_file,) = log_dir.glob("run-*/run-*.swanlab")
    reader = DataStoreReader()
    reader.open(run_file)
    series: Series = {}
    for data in reader:
        rec = SwanLabRecord.FromString(data)
        if rec.WhichOneof("record_type") == "scalar":
            series.setdefault(rec.scalar.key, {})[rec.scalar.step] = rec.scalar.value.number
    reader.close()
    return series


def assert_same(got: Series, want: Series, rel: float = 1e-9) -> None:
    assert set(got) == set(want)
    for name, steps in want.items():
        assert set(got[name]) == set(steps), name
        for step, value in steps.items():
            assert got[name][step] == pytest.approx(value, rel=rel, abs=1e-12), (name, step)


@pytest.mark.slow
def test_trainer_metrics_reach_every_tracker_equal_to_the_jsonl(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.report_to = ["tensorboard", "wandb", "mlflow", "swanlab"]
    config.train_batch_size = 2
    config.micro_batch_size = 2
    config.max_steps = 2
    trainer = Trainer(config, dbs, show_progress=False)
    store_group(dbs, trainer.tokenizer, "a-task", [1.0, 0.0])
    store_group(dbs, trainer.tokenizer, "b-task", [0.2, 0.0], epoch=2)
    assert len(trainer.train()) == 2

    run_dir = Path(config.output_dir) / config.name
    want = jsonl_series(trainer.metrics_path)
    assert set(want["reward/mean"]) == {1, 2} and "loss/policy" in want
    assert_same(tensorboard_series(run_dir / "tensorboard"), want, rel=1e-6)  # float32 events
    assert tensorboard_hparams(run_dir / "tensorboard")["learning_rate"] == pytest.approx(
        config.learning_rate)

    records = wandb_records(run_dir)
    assert_same(wandb_series(records), want)
    (run_rec,) = [r for r in records if r["type"] == "run"]
    assert run_rec["run"]["config"]["update"]["train_batch_size"] == 2

    client, run = mlflow_run(f"sqlite:///{run_dir / 'mlflow.db'}", config.name)
    assert_same(mlflow_series(client, run), want)
    assert run.data.params["max_steps"] == "2"
    assert run.info.status == "FINISHED"

    assert_same(swanlab_series(run_dir / "swanlog"), want)


def test_mlflow_local_file_store(
    config: AgentTrainingConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind this flag
    config.report_to = ["mlflow"]
    steps = {1: {"reward/mean": 0.25, "loss/policy": -0.5}, 2: {"reward/mean": 0.5}}
    with MetricsLogger(tmp_path / "m.jsonl", show_progress=False,
                       trackers=open_trackers(config)) as logger:
        for step, metrics in steps.items():
            logger.log(step, metrics)
    assert list(store.glob("*/*/metrics/reward/mean"))  # the file store's own layout
    client, run = mlflow_run(store.as_uri(), config.name)
    assert mlflow_series(client, run) == {"reward/mean": {1: 0.25, 2: 0.5},
                                          "loss/policy": {1: -0.5}}


def test_non_finite_metrics_stay_in_the_jsonl_only(config: AgentTrainingConfig,
                                                    tmp_path: Path) -> None:
    config.report_to = ["tensorboard"]
    with MetricsLogger(tmp_path / "m.jsonl", show_progress=False,
                       trackers=open_trackers(config)) as logger:
        logger.log(1, {"reward/mean": 0.5, "clip_ratio/low_mean": float("nan")})
    assert read_metrics(tmp_path / "m.jsonl")[0]["clip_ratio/low_mean"] is None
    run_dir = Path(config.output_dir) / config.name
    assert tensorboard_series(run_dir / "tensorboard") == {"reward/mean": {1: 0.5}}


class _Failing(Tracker):
    name = "failing"

    def __init__(self) -> None:
        self.closed = False

    def log(self, step: int, metrics: dict[str, float]) -> None:  # type: ignore[override]
        raise OSError("disk full")

    def close(self) -> None:
        self.closed = True


def test_a_failing_tracker_is_dropped_and_the_jsonl_goes_on(tmp_path: Path) -> None:
    failing = _Failing()
    with MetricsLogger(tmp_path / "m.jsonl", show_progress=False, trackers=[failing]) as logger:
        logger.log(1, {"reward/mean": 0.1})
        assert logger.trackers == [] and failing.closed
        logger.log(2, {"reward/mean": 0.2})
    assert [line["reward/mean"] for line in read_metrics(tmp_path / "m.jsonl")] == [0.1, 0.2]


def test_hparams_hold_the_config_without_secrets() -> None:
    config = load_config(
        redis_url="redis://:redispw@head:6379/0",
        db_connection_string="mongodb://root:mongopw@head:27017/?authSource=admin",
        oss_connection_string="s3://AKEY:s3secret@head:9000/agentrl",
        external_services=[{"url": "http://x:1", "model": "m", "api_key": "sk-1"}],
        report_to="tensorboard,wandb",
    )
    hparams = config_hparams(config)
    text = json.dumps(hparams)
    for secret in ("redispw", "mongopw", "s3secret", "sk-1"):
        assert secret not in text
    assert hparams["redis_url"] == "redis://***@head:6379/0"
    assert hparams["learning_rate"] == config.learning_rate
    assert json.loads(hparams["report_to"]) == ["tensorboard", "wandb"]
    assert json.loads(hparams["external_services"]) == [{"url": "http://x:1", "model": "m"}]


def test_missing_library_names_the_extra(config: AgentTrainingConfig,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an uninstalled package looks like
    monkeypatch.delitem(sys.modules, "agentrl.training.trackers.wandb_tracker", raising=False)
    config.report_to = ["tensorboard", "wandb"]
    with pytest.raises(TrackerUnavailableError, match=r"agentrl\[trackers\]") as err:
        open_trackers(config)
    assert err.value.name == "wandb"
