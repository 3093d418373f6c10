"""Sharded checkpoints of trainer ranks (``torch.distributed.checkpoint``), resumable on any
world size.

A multi-rank step directory holds, besides the step's ``save_pretrained`` weights::

    step-000004/dcp/          one ``__<rank>_0.distcp`` file per rank + ``.metadata``:
                              model and AdamW state, each rank writing its own shards
    step-000004/run_state.pt  global step, scheduler, RNG, world size (rank 0)
    step-000004/COMPLETE      written last (by the trainer), as for one-rank checkpoints

:func:`load_sharded` reads it back on any number of ranks, with or without a process group
(DCP reshards: 2 ranks → 1 and 1 → 2 both work). :func:`load_full_optimizer` turns a one-rank
checkpoint's ``optimizer.state_dict()`` (index-keyed, possibly bfloat16 moments) into the state of
a sharded or replicated optimizer, so a one-rank run resumes on several ranks too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from agentrl.errors import CheckpointError
from agentrl.training.checkpoint import restore_rng, rng_state

log = logging.getLogger(__name__)

SHARDED_DIR = "dcp"
RUN_STATE_FILE = "run_state.pt"


def is_sharded(directory: Path) -> bool:
    """Whether step directory ``directory`` holds a sharded (DCP) checkpoint."""
    return (directory / SHARDED_DIR / ".metadata").is_file()


def save_sharded(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
) -> None:
    """Write the model and optimizer shards of every rank and the run state (rank 0).

    Every rank must call it (it is a collective). The caller writes ``COMPLETE`` afterwards.

    Args:
        directory: the step directory (exists).
        model: the module called in forward (FSDP-sharded, DDP-wrapped or plain).
        optimizer: its AdamW.
        scheduler: the learning-rate scheduler.
        step: the global step the weights belong to.

    Raises:
        CheckpointError: the files cannot be written.
    """
    model_state, optimizer_state = get_state_dict(model, optimizer)
    try:
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=str(directory / SHARDED_DIR),
        )
        if not dist.is_initialized() or dist.get_rank() == 0:
            size = dist.get_world_size() if dist.is_initialized() else 1
            run = {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "world_size": size,
            }
            tmp = directory / (RUN_STATE_FILE + ".tmp")
            torch.save(run, tmp)
            os.replace(tmp, directory / RUN_STATE_FILE)
    except OSError as exc:
        raise CheckpointError(str(directory), f"cannot write its shards: {exc}") from exc
    if dist.is_initialized():
        dist.barrier()


def load_sharded(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Restore model, optimizer, scheduler and RNG from a sharded checkpoint (any world size).

    Every rank must call it.

    Returns:
        The global step of the checkpoint.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
    """
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
        run = torch.load(directory / RUN_STATE_FILE, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(str(directory), f"cannot read its shards: {exc}") from exc
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    scheduler.load_state_dict(run["scheduler"])
    restore_rng(run["rng"])
    log.info(
        "resumed %s (written by %d rank(s)) on %d rank(s)",
        directory,
        run.get("world_size", 1),
        dist.get_world_size() if dist.is_initialized() else 1,
    )
    return int(run["step"])


def load_full_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
) -> None:
    """Load a one-rank ``optimizer.state_dict()`` into ``optimizer`` of a (sharded) ``model``.

    The saved state is keyed by parameter index in ``model.parameters()`` order; it is re-keyed
    by parameter name, its moments cast to float32, and each rank keeps its shards.

    Args:
        model: the module (same parameters, in the same order, as the saved run's model).
        optimizer: its AdamW, built over ``model.parameters()``.
        saved: ``TrainerState.optimizer`` of a one-rank checkpoint.
    """
    names = [name for name, _ in _unwrapped(model).named_parameters()]

    def fp32(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim > 0:
            return value.float()
        return value

    state = {names[int(i)]: {k: fp32(v) for k, v in s.items()} for i, s in saved["state"].items()}
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in saved["param_groups"]]
    set_optimizer_state_dict(
        model,
        optimizer,
        {"state": state, "param_groups": groups},
        options=StateDictOptions(full_state_dict=True),
    )


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
