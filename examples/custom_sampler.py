"""A custom task, dataset and sampler sampled with `SamplingScheduler` (the README's example).

Run from the repository root: ``python examples/custom_sampler.py``. It starts what is missing
(an in-process Celery worker; the CPU engine when no inference service is registered), samples
every question ``num_generations`` times with SmolLM2 and scores the answers. Then
``agentrl train examples/custom_sampler.yaml`` trains on the scored groups.
"""

from pathlib import Path

from torch.utils.data import Dataset

from agentrl.configs import load_config
from agentrl.databases import Record, Task, register_new_model
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler
from agentrl.rollout.scheduler import SamplingScheduler


@register_new_model
class RFTTask(Task):
    """A question (chat messages) and the word its answer must contain."""

    inputs: list[dict]
    target: str


class RFTDataset(Dataset):
    """RFTTasks from plain dicts."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> RFTTask:
        return RFTTask(**self.items[i])


@register_sampler("rft")            # messages carry this name, never an import path
class RFTSampler(AsyncSampler):
    """One LLM call per trajectory; scores 1 when the answer contains the target."""

    task_class = RFTTask

    async def run(self) -> None:
        response = await self.create_chat_completions(self.task.inputs)
        self.record.meta["answer"] = response["choices"][0]["message"]["content"]

    async def evaluate_record(self, record: Record) -> float:
        return float(self.task.target.lower() in record.meta["answer"].lower())


QUESTIONS = [
    ("What is the capital of France? Answer in one word.", "Paris"),
    ("What colour is a clear daytime sky? Answer in one word.", "blue"),
    ("How many legs does a spider have? Answer with a number.", "8"),
    ("What is 3 + 4? Answer with a number.", "7"),
]

if __name__ == "__main__":
    cfg = load_config(Path(__file__).with_name("custom_sampler.yaml"))
    items = [{"inputs": [{"role": "user", "content": q}], "target": a} for q, a in QUESTIONS]
    epochs = SamplingScheduler(config=cfg, sampler_class=RFTSampler,
                               dataset=RFTDataset(items), split="train").run()
    print(f"sampled epochs {epochs}; train on them: agentrl train examples/custom_sampler.yaml")
