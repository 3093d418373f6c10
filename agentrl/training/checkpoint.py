"""Checkpoints: the weights of each step, and resumable trainer state every few steps.

Layout under the checkpoint root (``checkpoint_dir`` or ``<output_dir>/<name>/checkpoints``)::

    step-000004/            model (save_pretrained, safetensors) + tokenizer
    step-000005/            ... + trainer_state.pt (optimizer, scheduler, step, RNG) + COMPLETE

Every directory is written under a ``.tmp`` name and renamed when finished, so a run killed
mid-write leaves no half checkpoint. A directory holding ``COMPLETE`` is resumable; the newest
one is what :func:`latest_checkpoint` returns. :func:`complete_step` makes an existing weights
directory resumable (an interrupted run checkpoints its last completed step so). After each
write the root keeps the newest ``keep_checkpoints`` resumable directories and the newest
step's weights, nothing else (older weights, leftover ``.tmp`` directories and files go).

The AdamW moments (``exp_avg``, ``exp_avg_sq``) are stored in :func:`optimizer_storage_dtype`
(bfloat16 by default: float32's exponent range at half the bytes, so a 135M-parameter model's
optimizer state is 0.54 GB instead of 1.08 GB); step counters stay as they are.
``load_state_dict`` casts the moments back to the parameters' dtype on resume.
"""

from __future__ import annotations

import logging
import os
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
_LEFTOVER = re.compile(r"^step-\d+\.tmp$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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


def optimizer_storage_dtype(choice: str) -> torch.dtype:
    """The dtype checkpoints store the optimizer moments in (config ``checkpoint_optimizer_dtype``).

    bfloat16 is safe for the moments of float32 or bfloat16 parameters: it has float32's
    exponent range, so no first or second moment under- or overflows (float16, whose range ends
    at 6e-8, would flush small second moments to 0 and is not offered), and its 3 significant
    digits change an Adam update by about 0.4 % of itself on resume. ``float32`` keeps resumes
    bit-exact.

    Args:
        choice: ``bfloat16`` or ``float32``.

    Returns:
        The torch dtype.
    """
    return _DTYPES[choice]


def compact_optimizer_state(state_dict: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """A copy of ``optimizer.state_dict()`` with the per-parameter moments cast to ``dtype``.

    Floating tensors with at least one dimension (``exp_avg``, ``exp_avg_sq``) are cast; scalar
    tensors (``step``, which bfloat16 cannot count exactly past 256) and everything else are kept.
    """
    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim > 0:
            return value.to(dtype)
        return value

    states = {
        index: {key: cast(value) for key, value in per_param.items()}
        for index, per_param in state_dict["state"].items()
    }
    return {**state_dict, "state": states}


def _write_state(directory: Path, state: TrainerState, optimizer_dtype: torch.dtype) -> None:
    """Write ``trainer_state.pt`` (atomically: a ``.tmp`` file renamed) and ``COMPLETE``."""
    raw = {**state.__dict__, "optimizer": compact_optimizer_state(state.optimizer, optimizer_dtype)}
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(raw, tmp)
    os.replace(tmp, directory / STATE_FILE)
    (directory / COMPLETE_MARKER).write_text(str(state.step))


def save_step(
    root: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    state: TrainerState | None = None,
    keep: int = 2,
    optimizer_dtype: torch.dtype = torch.float32,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write step ``step``'s weights (and, when ``state`` is given, a resumable checkpoint).

    Args:
        root: the checkpoint root.
        step: the global step.
        model: a Hugging Face model (unwrapped).
        tokenizer: its tokenizer (saved alongside, so the directory is a servable model).
        state: optimizer/scheduler/RNG state; ``None`` writes weights only.
        keep: resumable checkpoints to keep; older step directories are removed.
        optimizer_dtype: storage dtype of the optimizer moments (:func:`optimizer_storage_dtype`).
        state_dict: the weights to save instead of ``model.state_dict()`` (the full state dict
            gathered from sharded ranks).

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
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            _write_state(tmp, state, optimizer_dtype)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except OSError as exc:
        raise CheckpointError(str(final), f"cannot write: {exc}") from exc
    _prune(root, keep, newest=final)
    return final


def complete_step(
    root: Path,
    state: TrainerState,
    keep: int = 2,
    optimizer_dtype: torch.dtype = torch.float32,
) -> Path:
    """Make the weights directory of step ``state.step`` resumable (add the trainer state).

    For a run stopped between steps: the weights of its last completed step are on disk, and
    ``state`` (taken right after that step) belongs to them.

    Args:
        root: the checkpoint root.
        state: the trainer state after step ``state.step``.
        keep: resumable checkpoints to keep.
        optimizer_dtype: storage dtype of the optimizer moments.

    Returns:
        The step directory.

    Raises:
        CheckpointError: the step's weights directory is missing or cannot be written.
    """
    directory = step_dir(root, state.step)
    if not directory.is_dir():
        raise CheckpointError(str(directory), "no weights saved for this step")
    try:
        _write_state(directory, state, optimizer_dtype)
    except OSError as exc:
        raise CheckpointError(str(directory), f"cannot write: {exc}") from exc
    _prune(root, keep, newest=directory)
    return directory


def mark_complete(root: Path, step: int, keep: int = 2) -> Path:
    """Mark step ``step``'s directory resumable (its sharded state is written) and prune.

    Returns:
        The step directory.

    Raises:
        CheckpointError: the directory is missing or cannot be written.
    """
    directory = step_dir(root, step)
    try:
        (directory / COMPLETE_MARKER).write_text(str(step))
    except OSError as exc:
        raise CheckpointError(str(directory), f"cannot write: {exc}") from exc
    _prune(root, keep, newest=directory)
    return directory


def checkpoint_size(path: Path) -> tuple[int, int]:
    """``(total, optimizer)`` bytes of a step directory (optimizer: ``trainer_state.pt``)."""
    files = [f for f in path.rglob("*") if f.is_file()]
    state = path / STATE_FILE
    return sum(f.stat().st_size for f in files), state.stat().st_size if state.exists() else 0


def describe_checkpoint(path: Path) -> str:
    """``step-000004: 1.1 GB (model 541.6 MB, optimizer 538.3 MB) in <root>`` for the console."""
    total, optimizer = checkpoint_size(path)
    return (
        f"{path.name}: {_human(total)} (model {_human(total - optimizer)}, optimizer "
        f"{_human(optimizer)}) in {path.parent}"
    )


def _human(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


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
    """Keep the newest ``keep`` complete checkpoints and ``newest``; remove other step dirs and
    what a killed write left behind (``step-*.tmp`` directories, ``trainer_state.pt.tmp``)."""
    complete = [p for _, p in _step_dirs(root) if (p / COMPLETE_MARKER).exists()]
    keep_set = set(complete[-keep:]) | {newest}
    for _, path in _step_dirs(root):
        if path not in keep_set:
            shutil.rmtree(path, ignore_errors=True)
        else:
            (path / (STATE_FILE + ".tmp")).unlink(missing_ok=True)
    for path in root.iterdir():
        if _LEFTOVER.match(path.name):
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
