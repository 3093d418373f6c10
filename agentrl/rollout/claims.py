"""`Claim`: what one sampling message names — a trajectory and how to sample it.

A claim is the JSON body of one sampling message: ``(task_id, traj_id, epoch)`` (the Record
identity), the split, the registered sampler name, and, for evaluations, the served model to
ask for and whether a failed trajectory is sampled again. Everything that happens to the
trajectory it names is the ledger's (:mod:`agentrl.rollout.ledger`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agentrl.databases import Record


@dataclass(frozen=True)
class Claim:
    """One trajectory to sample: the body of a sampling message (JSON).

    Attributes:
        task_id: the Task's id.
        traj_id: 0-based trajectory index within the task's group.
        epoch: the epoch the task was pushed for.
        split: the dataset split.
        sampler: the registered sampler name.
        model: the served model name to ask for (``""``: the worker's ``model_name``).
        resample: whether a trajectory whose sampler failed is sampled again (evaluations
            count a failure as part of the result instead).
        temperature: the sampling temperature its LLM calls use (``None``: the configured
            ``temperature``; evaluations set 0 for greedy).
    """

    task_id: str
    traj_id: int
    epoch: int
    split: str = "train"
    sampler: str = ""
    model: str = ""
    resample: bool = True
    temperature: float | None = None

    @property
    def record_id(self) -> str:
        """The deterministic Record id of this claim's identity."""
        return Record.identity_id(self.task_id, self.traj_id, self.epoch)

    def to_json(self) -> dict[str, Any]:
        """The claim as a JSON-able dict (a message's kwargs)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Claim:
        """Build a claim from a message's kwargs (unknown keys are ignored).

        Raises:
            KeyError: ``task_id``, ``traj_id`` or ``epoch`` is missing.
            ValueError: ``traj_id`` or ``epoch`` is not an integer.
        """
        return cls(
            task_id=str(data["task_id"]),
            traj_id=int(data["traj_id"]),
            epoch=int(data["epoch"]),
            split=str(data.get("split", "train")),
            sampler=str(data.get("sampler", "")),
            model=str(data.get("model") or ""),
            resample=bool(data.get("resample", True)),
            temperature=None if data.get("temperature") is None else float(data["temperature"]),
        )
