"""A sampler for the fault drills (registered as ``fault``): LLM calls to a stub service, and a
task field that makes it misbehave. Workers started by the tests import this module.

Each trajectory counts its starts in Redis (``<prefix>:test:runs``, record id → starts), makes
``calls`` chat calls (each answered by the stub after its delay), then, per the task's ``mode``
(applied to every trajectory of the task, or only to ``poison_traj`` when it is set):

- ``ok``: scores ``traj_id % 2`` (every group has spread);
- ``kill``: SIGKILLs its own process on every attempt (a poison trajectory);
- ``raise_run`` / ``raise_eval``: raises in ``run`` / ``evaluate_record`` on every attempt;
- ``numpy``: leaves numpy numbers and an array in ``meta``;
- ``big``: leaves a 20 MB string in ``meta``;
- ``unstorable``: leaves an object BSON cannot hold at ``meta.result.handle``.

The dataset is the JSON list in ``$FAULT_TASKS`` (``[{"mode": ..., "calls": ...}, ...]``).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy
import redis.asyncio as aioredis

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Record, Task, register_new_model
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler


@register_new_model
class FaultTask(Task):
    """A task of the fault drills."""

    mode: str = "ok"
    calls: int = 2
    poison_traj: int | None = None


def fault_tasks(specs: list[dict[str, Any]]) -> str:
    """The ``$FAULT_TASKS`` value for ``specs``."""
    return json.dumps(specs)


@register_sampler("fault")
class FaultSampler(AsyncSampler):
    """See the module docstring."""

    task_class = FaultTask

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> list[FaultTask]:
        """Train: the tasks of ``$FAULT_TASKS`` (one ``ok`` task when unset); other splits:
        one task per JSON line of ``eval_file``."""
        if split != "train" and config.eval_file:
            lines = Path(config.eval_file).read_text().splitlines()
            return [FaultTask(**json.loads(line)) for line in lines if line.strip()]
        specs = json.loads(os.environ.get("FAULT_TASKS", '[{"mode": "ok"}]'))
        return [FaultTask(**spec) for spec in specs]

    def mode(self) -> str:
        """This trajectory's mode (``ok`` for the task's other trajectories)."""
        task, record = self.task, self.record
        assert isinstance(task, FaultTask) and record is not None
        if task.poison_traj is not None and record.traj_id != task.poison_traj:
            return "ok"
        return task.mode

    async def run(self) -> None:
        task, record, mode = self.task, self.record, self.mode()
        assert isinstance(task, FaultTask) and record is not None
        client = aioredis.from_url(self.config.redis_url)
        try:
            await client.hincrby(f"{self.config.key_prefix}:test:runs", record.id, 1)
        finally:
            await client.aclose()
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        answers = []
        for turn in range(task.calls):
            response = await self.create_chat_completions(
                [{"role": "user", "content": f"{task.id} turn {turn}"}], max_tokens=8)
            answers.append(response["choices"][0]["message"]["content"])
        record.meta["answers"] = answers
        if mode == "raise_run":
            raise RuntimeError("the environment crashed")
        if mode == "numpy":
            record.meta["stats"] = {"steps": numpy.int64(3), "reward": numpy.float32(0.5),
                                    "done": numpy.bool_(True), "trace": numpy.arange(4) * 1.5}
        if mode == "big":
            record.meta["transcript"] = "x" * 20_000_000
        if mode == "unstorable":
            record.meta["result"] = {"ok": 1, "handle": object()}

    async def evaluate_record(self, record: Record) -> float:
        if self.mode() == "raise_eval":
            raise ValueError("the grader exploded")
        return float(record.traj_id % 2)
