"""Trainer ranks: the process group, data-parallel wrapping and the collectives a step needs.

A step is collective-safe when every rank issues the same collectives in the same order, so this
module gives the trainer:

* :func:`init_distributed`: join the ``torchrun`` / launcher process group (gloo on CPU, NCCL on
  GPUs) with a long timeout (rank 0 may wait for sampled groups while the others wait for it).
* :func:`resolve_data_parallel` / :func:`wrap_model`: ``none`` (the model itself), ``ddp``
  (:class:`~torch.nn.parallel.DistributedDataParallel`) or ``fsdp`` (FSDP2: ``fully_shard`` on
  every decoder layer, then on the root; bf16 :class:`MixedPrecisionPolicy` on GPUs only,
  optional CPU offload), with optional activation checkpointing.
* :func:`all_reduce_sum`, :func:`any_rank`: scalars agreed on by every rank.
* :func:`deal_groups` / :func:`select_rows` / :func:`share_batches`: rank 0 deals whole groups to
  ranks by token count (longest first, to the least loaded rank) and scatters each rank's rows.
* :func:`padding_micro_batch`: the zero-weight micro-batch a rank short of data runs so that it
  joins every all-gather / reduce-scatter of the others.
* :func:`full_state_dict`: the unsharded weights on rank 0 (gathered tensor by tensor to CPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

from agentrl.training.tokenization import _BATCH_TENSORS, TrainBatch

log = logging.getLogger(__name__)

DataParallel = Literal["fsdp", "ddp", "none"]

DIST_TIMEOUT_S = 4 * 3600.0
"""Seconds a collective waits for the other ranks (rank 0 may wait long for sampled groups)."""


def init_distributed(timeout_s: float = DIST_TIMEOUT_S) -> tuple[int, int]:
    """Join the process group of ``torchrun`` / ``agentrl run --nproc-per-node``.

    Args:
        timeout_s: how long any collective may wait for the other ranks.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` for a plain single process (no group is made).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def resolve_data_parallel(choice: str, size: int) -> DataParallel:
    """The data-parallel mode of config ``data_parallel`` for ``size`` ranks.

    ``auto`` is ``fsdp`` with more than one rank; one rank is always ``none`` (nothing to
    shard or average).

    Raises:
        ValueError: ``none`` with more than one rank (the ranks' weights would drift apart).
    """
    if size == 1:
        return "none"
    if choice == "auto":
        return "fsdp"
    if choice == "none" and size > 1:
        raise ValueError(
            f"data_parallel: none with {size} ranks; use fsdp or ddp (or run one process)"
        )
    return choice  # type: ignore[return-value]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (classes named in ``_no_split_modules``, e.g. LlamaDecoderLayer).

    Raises:
        ValueError: the model names no such class, or none is found.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__}: no decoder layers to shard (_no_split_modules={names})"
        )
    return layers


def wrap_model(
    model: torch.nn.Module,
    mode: DataParallel,
    device: torch.device,
    *,
    gradient_checkpointing: bool = False,
    cpu_offload: bool = False,
) -> torch.nn.Module:
    """Make ``model`` data-parallel and put it on ``device``.

    ``fsdp`` shards in place (``model`` itself becomes the FSDP module; its parameters become
    DTensor shards, ``1/world_size`` of each on this rank) and moves only the shards to the GPU;
    ``ddp`` returns a DistributedDataParallel wrapper of ``model``; ``none`` returns ``model``.

    Args:
        model: a Hugging Face causal LM in float32 on the CPU.
        mode: from :func:`resolve_data_parallel`.
        device: this rank's device.
        gradient_checkpointing: recompute each decoder layer's activations in backward
            (non-reentrant checkpointing: less memory, about a third more compute).
        cpu_offload: ``fsdp`` only: keep parameter shards, gradients and optimizer state on
            the CPU (copied to the GPU per layer).

    Returns:
        The module to call in forward.
    """
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        options: dict[str, Any] = {}
        if device.type == "cuda":
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        if cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, **options)
        fully_shard(model, **options)
        if not cpu_offload:
            model.to(device)
        return model
    model.to(device)
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


# --- agreed scalars --------------------------------------------------------------------------


def _all_reduce(value: float, op: Any, device: torch.device | None) -> float:
    """``value`` reduced by ``op`` over every rank (``value`` itself without a process group)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())


def all_reduce_sum(value: float, device: torch.device | None = None) -> float:
    """The sum of ``value`` over every rank (``value`` itself without a process group)."""
    return _all_reduce(value, dist.ReduceOp.SUM, device)


def all_reduce_max(value: float, device: torch.device | None = None) -> float:
    """The largest ``value`` of any rank."""
    return _all_reduce(value, dist.ReduceOp.MAX, device)


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` holds on some rank (every rank gets the same answer)."""
    return all_reduce_max(1.0 if flag else 0.0, device) > 0


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def _collective_device(device: torch.device | None) -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return device if device is not None and device.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


# --- dealing the batch -----------------------------------------------------------------------


def deal_groups(token_counts: Sequence[int], ranks: int) -> list[list[int]]:
    """Deal groups to ranks so that their token counts come out even.

    Longest group first, each to the rank with the fewest tokens so far (ties: the lowest
    rank); deterministic.

    Args:
        token_counts: tokens of each group.
        ranks: how many ranks.

    Returns:
        For each rank, the indices of its groups in ascending order (a rank may get none).
    """
    loads = [0] * ranks
    dealt: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(token_counts)), key=lambda i: (-token_counts[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        dealt[rank].append(index)
        loads[rank] += int(token_counts[index])
    return [sorted(d) for d in dealt]


def select_rows(batch: TrainBatch, rows: Sequence[int]) -> TrainBatch:
    """Rows ``rows`` of ``batch`` (in that order), trimmed to their longest row; zero rows give
    an empty ``(0, 0)`` batch."""
    index = torch.tensor(list(rows), dtype=torch.long)
    length = int(batch.attention_mask[index].sum(-1).max().item()) if len(rows) else 0
    return TrainBatch(
        **{name: getattr(batch, name)[index, :length] for name in _BATCH_TENSORS},
        record_ids=[batch.record_ids[i] for i in rows],
        scores=[batch.scores[i] for i in rows],
        token_exact=[batch.token_exact[i] for i in rows] if batch.token_exact else [],
    )


def deal_batch(batch: TrainBatch, group_of_row: Sequence[int], ranks: int) -> list[TrainBatch]:
    """Split ``batch`` into one batch per rank, whole groups each, even in tokens.

    Args:
        batch: the step's whole batch.
        group_of_row: the group index of each row.
        ranks: how many ranks.
    """
    groups = sorted(set(group_of_row))
    tokens = batch.attention_mask.sum(-1).tolist()
    counts = [sum(t for t, g in zip(tokens, group_of_row, strict=True) if g == k) for k in groups]
    dealt = deal_groups(counts, ranks)
    shares = []
    for indices in dealt:
        mine = {groups[i] for i in indices}
        shares.append(select_rows(batch, [r for r, g in enumerate(group_of_row) if g in mine]))
    return shares


def share_batches(shares: list[Any] | None) -> Any:
    """Scatter rank 0's ``shares`` (one object per rank) and return this rank's.

    Objects travel pickled between this job's own ranks (never over the broker).

    Args:
        shares: on rank 0, one entry per rank; ignored on the others.
    """
    if not dist.is_initialized():
        assert shares is not None
        return shares[0]
    out: list[Any] = [None]
    dist.scatter_object_list(out, shares if dist.get_rank() == 0 else None, src=0)
    return out[0]


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def padding_micro_batch(pad_id: int) -> TrainBatch:
    """A two-token micro-batch that trains nothing (loss mask 0, advantage 0).

    A rank with fewer micro-batches than the others runs it so that every rank joins the same
    number of forward/backward collectives; its gradient is exactly zero.
    """
    ones = torch.ones(1, 2)
    return TrainBatch(
        input_ids=torch.full((1, 2), pad_id, dtype=torch.long),
        attention_mask=ones.long(),
        loss_mask=torch.zeros(1, 2),
        old_logprobs=torch.full((1, 2), float("nan")),
        advantages=torch.zeros(1, 2),
        created_at_step=torch.zeros(1, 2, dtype=torch.long),
        temperatures=ones.clone(),
        record_ids=["<padding>"],
        scores=[0.0],
        token_exact=[True],
    )


# --- weights ---------------------------------------------------------------------------------


def full_state_dict(model: torch.nn.Module, mode: DataParallel) -> dict[str, torch.Tensor]:
    """The model's unsharded weights on CPU, on rank 0 (an empty dict on the others).

    With ``fsdp`` every rank must call it (each tensor is all-gathered, then copied to the CPU
    before the next one, so no rank holds the whole unsharded model on its GPU); with ``ddp`` /
    ``none`` only rank 0's own copy is read.
    """
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return {}
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
