"""MathSampler end to end with the CPU engine (real SmolLM2) on 8 GSM8K problems."""

from __future__ import annotations

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    Record,
    RecordStatus,
    Task,
    TaskStatus,
)
from agentrl.inference.manager import InferenceManager
from agentrl.rollout.math import MathDataset, MathSampler, MathTask
from agentrl.rollout.registry import get_sampler
from agentrl.rollout.scheduler import SamplingScheduler
from tests.conftest import SHARED_DATA, free_port


def test_math_is_registered() -> None:
    assert get_sampler("math") is MathSampler


@pytest.mark.slow
def test_math_sampler_with_cpu_engine(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.num_generations, config.max_new_tokens, config.engine = 2, 24, "cpu"
    config.engine_base_port = free_port()
    dataset = MathDataset(SHARED_DATA / "gsm8k" / "train.jsonl", limit=8)
    with InferenceManager(config, dbs):
        SamplingScheduler(config=config, sampler_class=MathSampler, dataset=dataset,
                          split="train", timeout_s=400).run()
    tasks = list(dbs.store.find(Task, {}))
    assert len(tasks) == 8 and all(isinstance(t, MathTask) for t in tasks)
    assert {t.status for t in tasks} == {TaskStatus.COMPLETED}
    records = list(dbs.store.find(Record, {}))
    assert len(records) == 8 * 2
    assert {r.score for r in records} <= {0.0, config.math.format_reward, 1.0}
    assert {r.status for r in records} <= {RecordStatus.READY, RecordStatus.ABANDONED}
    assert all(isinstance(r.meta["completion"], str) for r in records)
    calls = list(dbs.store.find(DispatchedSamplingTask, {}))
    assert sorted(c.record_id for c in calls) == sorted(r.id for r in records)
    for call in calls:
        assert call.status == DispatchStatus.COMPLETED and call.turn == 0
        assert 0 < len(call.completion_token_ids) == len(call.logprobs) <= 24
        assert all(lp <= 0.0 for lp in call.logprobs)
        assert call.request["messages"][-1]["content"] == dataset[
            next(t.index for t in tasks if t.id == call.task_id)].question


def test_prompt_shows_the_worked_example_unless_turned_off(config: AgentTrainingConfig) -> None:
    sampler = MathSampler(config)
    sampler.task = MathTask(question="What is 6 * 7?", answer="42")
    with_demo = sampler.messages()
    assert [m["role"] for m in with_demo] == ["system", "user", "assistant", "user"]
    assert "\\boxed{7}" in with_demo[2]["content"]
    assert with_demo[-1] == {"role": "user", "content": "What is 6 * 7?"}
    config.math.demonstration = False
    assert [m["role"] for m in sampler.messages()] == ["system", "user"]
