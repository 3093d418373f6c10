"""The AgentRL guide's custom-task example: `RFTTask` + `RFTDataset` + a sampler that calls no
model. Workers started by the tests import this module (config ``sampler_modules``).

The sampler's behaviour is driven by the task: ``sleep_s`` seconds of fake work, and the score
``traj_id % 2`` for even task indexes (a group with spread → READY) or 1.0 for odd ones (no
spread → ABANDONED). Each start of ``run`` is counted in Redis (``<prefix>:test:runs`` hash), so
tests can check a trajectory ran once.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from torch.utils.data import Dataset

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Record, Task, register_new_model
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler


@register_new_model
class RFTTask(Task):
    inputs: list[dict]
    target: str
    sleep_s: float = 0.0


class RFTDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> RFTTask:
        return RFTTask(**self.items[idx])


def make_items(n: int, sleep_s: float = 0.0) -> list[dict]:
    """``n`` RFT items; odd ones score constant (ABANDONED groups)."""
    return [
        {"inputs": [{"role": "user", "content": f"say {i}"}], "target": str(i % 2),
         "sleep_s": sleep_s}
        for i in range(n)
    ]


@register_sampler("rft")
class RFTSampler(AsyncSampler):
    task_class = RFTTask

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> RFTDataset:
        sleep_s = float(os.environ.get("RFT_SLEEP_S", "0"))
        return RFTDataset(make_items(config.max_train_tasks or 4, sleep_s=sleep_s))

    async def run(self) -> None:
        assert isinstance(self.task, RFTTask)
        client = aioredis.from_url(self.config.redis_url)
        await client.hincrby(f"{self.config.key_prefix}:test:runs", self.record.id, 1)
        await client.aclose()
        await asyncio.sleep(self.task.sleep_s)
        self.record.meta["answer"] = self.task.target

    async def evaluate_record(self, record: Record) -> float:
        if self.task.target == "0":
            return float(record.traj_id % 2)
        return 1.0
