"""Samplers for the sampler-contract tests: a stateful one, and one that fails on purpose."""

from __future__ import annotations

import asyncio

from agentrl.databases import Record
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler, StatefulSampler

_running: dict[str, int] = {}


@register_sampler("counting_stateful")
class CountingStatefulSampler(StatefulSampler):
    """Appends its traj_id to ``task.state["seen"]``; notes if two ran on one task at once."""

    async def run(self) -> None:
        task_id = self.task.id
        _running[task_id] = _running.get(task_id, 0) + 1
        overlap = _running[task_id] > 1
        await asyncio.sleep(0.3)
        self.task.state.setdefault("seen", []).append(self.record.traj_id)
        self.task.state["overlap"] = bool(self.task.state.get("overlap")) or overlap
        self.record.meta["seen_before"] = len(self.task.state["seen"]) - 1
        _running[task_id] -= 1

    async def evaluate_record(self, record: Record) -> float:
        return float(record.traj_id)


@register_sampler("flaky")
class FlakySampler(AsyncSampler):
    """traj 0 fails on its first attempt (then scores 1); traj 1's evaluation always raises
    (FAILED after max_sample_attempts); traj 2 scores 0."""

    async def run(self) -> None:
        if self.record.traj_id == 0 and self.record.attempt == 1:
            raise RuntimeError("environment crashed")

    async def evaluate_record(self, record: Record) -> float:
        if record.traj_id == 1:
            raise ValueError("grader exploded")
        return float(record.traj_id == 0)
