"""Checkpoints: the weights of each step, and resumable trainer state every few steps.

Layout under the checkpoint root (``checkpoint_dir`` or ``<output_dir>/<name>/checkpoints``)::

    step-000004/            model (save_pretrained, safetensors) + tokenizer
    step-000005/            ... + trainer_state.pt (optimizer, scheduler, step, RNG) + COMPLETE

Every directory is written under a ``.tmp`` name and renamed when finished, so a run killed
mid-write leaves no half checkpoint. A directory holding ``COMPLETE`` is resumable; the newest
one is what :func:`latest_checkpoint` returns. Older ones are pruned to ``keep_checkpoints``.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import CheckpointError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(config: AgentTrainingConfig) -> Path:
    """Where this run's checkpoints live."""
    if config.checkpoint_dir:
        return Path(config.checkpoint_dir)
    return Path(config.output_dir) / config.name / "checkpoints"


def step_dir(root: Path, step: int) -> Path:
    """The directory of step ``step``."""
    return root / f"step-{step:06d}"


@dataclass
class TrainerState:
    """What a resumed run needs besides the weights.

    Attributes:
        step: the global step the weights belong to.
        optimizer: ``optimizer.state_dict()``.
        scheduler: ``scheduler.state_dict()``.
        rng: Python and torch RNG states.
    """

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def save_step(
    root: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    state: TrainerState | None = None,
    keep: int = 2,
) -> Path:
    """Write step ``step``'s weights (and, when ``state`` is given, a resumable checkpoint).

    Args:
        root: the checkpoint root.
        step: the global step.
        model: a Hugging Face model (unwrapped).
        tokenizer: its tokenizer (saved alongside, so the directory is a servable model).
        state: optimizer/scheduler/RNG state; ``None`` writes weights only.
        keep: resumable checkpoints to keep; older step directories are removed.

    Returns:
        The step directory.

    Raises:
        CheckpointError: the directory cannot be written.
    """
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state.__dict__, tmp / STATE_FILE)
            (tmp / COMPLETE_MARKER).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except OSError as exc:
        raise CheckpointError(str(final), f"cannot write: {exc}") from exc
    _prune(root, keep, newest=final)
    return final


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _prune(root: Path, keep: int, newest: Path) -> None:
    """Keep the newest ``keep`` complete checkpoints and ``newest``; remove other step dirs."""
    complete = [p for _, p in _step_dirs(root) if (p / COMPLETE_MARKER).exists()]
    keep_set = set(complete[-keep:]) | {newest}
    for _, path in _step_dirs(root):
        if path not in keep_set:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest resumable checkpoint directory under ``root`` (``None`` when there is none)."""
    complete = [p for _, p in _step_dirs(root) if (p / COMPLETE_MARKER).exists()]
    return complete[-1] if complete else None


def load_state(path: Path) -> TrainerState:
    """Read the trainer state of a checkpoint directory.

    Raises:
        CheckpointError: the state file is missing or unreadable.
    """
    try:
        raw = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        return TrainerState(**raw)
    except (OSError, RuntimeError, TypeError, EOFError) as exc:
        raise CheckpointError(str(path), f"cannot read {STATE_FILE}: {exc}") from exc


def rng_state() -> dict[str, Any]:
    """The Python and torch RNG states (for :class:`TrainerState`)."""
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Restore RNG states saved by :func:`rng_state`."""
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
