"""OSWorldStatefulSampler end to end: the guide's example over shared OSWorld tasks on stand-in
envs, screenshots in the object store and back as training images."""

from __future__ import annotations

import json
from pathlib import Path

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask, Record, RecordStatus, Task
from agentrl.databases.objectstore import is_ref
from agentrl.inference.services import register_service
from agentrl.rollout.osworld import OSworldDataset, OSWorldStatefulSampler, setup_osworld_envs
from agentrl.rollout.osworld.envs import Environment
from agentrl.rollout.scheduler import SamplingScheduler
from agentrl.training.datasets import (
    convert_record_to_data_func,
    preprocess_mm_messages_for_sample,
)
from tests.conftest import SHARED_DATA
from tests.osworld.fake_model import FakeModelServer
from tests.osworld.standin import StandInServer

OSWORLD = SHARED_DATA / "osworld"


def write_tasks(path: Path, count: int) -> list[dict]:
    """``count`` shared OSWorld examples without sleep steps, from different apps, as JSONL."""
    chosen: list[dict] = []
    for app_dir in sorted((OSWORLD / "examples").iterdir()):
        for file in sorted(app_dir.glob("*.json")):
            example = json.loads(file.read_text())
            if not any(s.get("type") == "sleep" for s in example.get("config", [])):
                chosen.append(example)
                break
        if len(chosen) == count:
            break
    path.write_text("\n".join(json.dumps(e) for e in chosen))
    return chosen


def mongo_text(dbs: Databases) -> str:
    """Every record and dispatch document as JSON text."""
    docs = list(dbs.store.collection(Record).find({}))
    docs += list(dbs.store.collection(DispatchedSamplingTask).find({}))
    return json.dumps(docs, default=str)


def test_screenshots_are_references_and_become_training_images(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    fake_model: FakeModelServer, tmp_path: Path,
) -> None:
    write_tasks(tmp_path / "tasks.jsonl", 1)
    config.train_file = str(tmp_path / "tasks.jsonl")
    config.osworld.env_urls = standin_envs[0].url
    config.osworld.observation = "screenshot_a11y_tree"
    config.num_generations = 1
    register_service(dbs.store, fake_model.url, config.model_name)
    with setup_osworld_envs(config, dbs):
        SamplingScheduler(config=config, sampler_class=OSWorldStatefulSampler,
                          dataset=OSworldDataset(config.train_file), split="train",
                          timeout_s=120).run()
    (record,) = dbs.store.find(Record, {})
    assert record.score == 1.0  # clicked, then DONE: the stand-in's evaluator passes it
    assert record.meta["ended"] == "DONE" and len(record.meta["steps"]) == 2
    # the model was sent the images themselves...
    sent = fake_model.requests[0]["messages"][1]["content"]
    assert any(p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/png")
               for p in sent)
    # ...MongoDB holds references only
    assert "base64," not in mongo_text(dbs)
    calls = list(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}))
    assert sorted(c.turn for c in calls) == [0, 1]
    for call in calls:
        step = call.meta["osworld"]
        assert is_ref(step["observation"]["screenshot"])
        assert step["action"] in ("pyautogui.click(320, 180)", "DONE")
        assert step["outcome"]["status"] == "ok"
    samples = convert_record_to_data_func(record, calls)
    assert len(samples) == 2  # each step is its own prompt
    for sample in samples:
        messages, images = preprocess_mm_messages_for_sample(sample, dbs.objects)
        assert [image.size for image in images] == [(640, 360)]
        assert messages[-1]["role"] == "assistant"


def test_guide_example_with_the_cpu_engine(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    engine_url: str, tmp_path: Path,
) -> None:
    examples = write_tasks(tmp_path / "tasks.jsonl", 4)
    config.train_file = str(tmp_path / "tasks.jsonl")
    config.osworld.env_urls = ",".join(s.url for s in standin_envs)
    config.num_generations = 2
    config.osworld.max_steps = 1  # the CPU engine shares 2 cores with everything else
    config.max_new_tokens = 8
    config.osworld.a11y_max_chars = 400
    register_service(dbs.store, engine_url, config.model_name, kind="cpu")
    with setup_osworld_envs(config, dbs) as envs:
        cfg = config
        # the AgentRL guide's example, with `agentrl.` in front of the imports
        SamplingScheduler(config=cfg, sampler_class=OSWorldStatefulSampler,
                          dataset=OSworldDataset(cfg.train_file), split="train",
                          timeout_s=600).run()
        pool = list(dbs.store.find(Environment, {}))
        assert len(pool) == 2 and not any(env.in_use for env in pool)
        assert sum(env.lease_count for env in pool) == 8
        names = {env.name for env in envs.envs}
    records = list(dbs.store.find(Record, {}))
    assert len(records) == 8
    for record in records:
        assert record.status in (RecordStatus.READY, RecordStatus.ABANDONED)
        assert record.score in (0.0, 1.0) and record.meta["env"] in names
        steps = record.meta["steps"]
        assert len(steps) == 1 and steps[0]["raw"] and steps[0]["observation"]["screenshot"]
        calls = list(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}))
        assert sorted(c.turn for c in calls) == list(range(len(steps)))
        assert all(c.meta["osworld"]["step"] == c.turn and c.completion_token_ids for c in calls)
    tasks = list(dbs.store.find(Task, {}))
    assert sorted(t.task_config["id"] for t in tasks) == sorted(e["id"] for e in examples)
    for task in tasks:  # stateful: each trajectory left a note for the next one
        assert sorted(n["traj_id"] for n in task.state["notes"]) == [0, 1]
    assert sum(len(s.state.resets) for s in standin_envs) == 8
    assert sum(len(s.state.evaluations) for s in standin_envs) == 8


def test_malformed_output_is_a_failed_step_and_ends_per_config(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    tmp_path: Path,
) -> None:
    garbage = "I would like to click somewhere, maybe (100, 200"
    model = FakeModelServer(reply=garbage).start()
    try:
        write_tasks(tmp_path / "tasks.jsonl", 1)
        config.train_file = str(tmp_path / "tasks.jsonl")
        config.osworld.env_urls = standin_envs[0].url
        config.num_generations = 1
        config.osworld.on_malformed_action = "end"
        register_service(dbs.store, model.url, config.model_name)
        with setup_osworld_envs(config, dbs):
            SamplingScheduler(config=config, sampler_class=OSWorldStatefulSampler,
                              dataset=OSworldDataset(config.train_file), split="train",
                              timeout_s=120).run()
    finally:
        model.stop()
    (record,) = dbs.store.find(Record, {})
    assert record.meta["ended"] == "malformed" and record.score == 0.0
    (step,) = record.meta["steps"]
    assert step["raw"] == garbage and step["malformed"]
    assert step["outcome"]["status"] == "failed" and "no code block" in step["outcome"]["error"]
    assert standin_envs[0].state.execute_calls == 0  # nothing was executed
    (call,) = dbs.store.find(DispatchedSamplingTask, {"record_id": record.id})
    assert call.meta["osworld"]["action"].startswith("MALFORMED")
