"""`TaskDataset`: the map-style dataset the built-in datasets share (``len`` and indexing over
their loaded tasks), as a torch ``Dataset`` is, without importing torch: sampling workers load
datasets and stay light."""

from __future__ import annotations

from typing import Generic, TypeVar

from agentrl.databases import Task

T = TypeVar("T", bound=Task)


class TaskDataset(Generic[T]):
    """A list of tasks a ``DataLoader`` or ``SamplingScheduler`` can take.

    Attributes:
        tasks: the loaded tasks, in file order (set by the subclass).
    """

    tasks: list[T]

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> T:
        return self.tasks[index]
