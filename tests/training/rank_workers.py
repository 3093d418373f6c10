"""Trainer ranks for the multi-rank tests: a tiny random Llama, a fixed batch, and the bodies
the spawned processes run (gloo on CPU)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from agentrl.configs import AgentTrainingConfig
from agentrl.training.distributed import full_state_dict, init_distributed
from agentrl.training.optimization import PolicyOptimizer, model_logprobs
from agentrl.training.sharded_checkpoint import load_full_optimizer, load_sharded, save_sharded
from agentrl.training.tokenization import TrainBatch

VOCAB = 96
SPAWN_TIMEOUT_S = 240.0


def tiny_model() -> LlamaForCausalLM:
    """A 2-layer Llama of ~60k parameters, the same random weights every call."""
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def tiny_config(**overrides: Any) -> AgentTrainingConfig:
    """Training settings of the tests (AdamW 1e-2, one sequence per micro-batch)."""
    values: dict[str, Any] = {
        "learning_rate": 1e-2,
        "micro_batch_size": 1,
        "grad_clip": 1.0,
        "train_num_threads": 1,
    }
    values.update(overrides)
    return AgentTrainingConfig(**values)


def groups_batch(lengths: list[int], seed: int = 7) -> tuple[TrainBatch, list[int]]:
    """A right-padded batch, two rows per group (advantages +1 / -1), behaviour logprobs from
    :func:`tiny_model`, and each row's group."""
    gen = torch.Generator().manual_seed(seed)
    rows, width = len(lengths), max(lengths)
    input_ids = torch.zeros(rows, width, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    loss_mask = torch.zeros(rows, width)
    advantages = torch.zeros(rows, width)
    for i, length in enumerate(lengths):
        input_ids[i, :length] = torch.randint(1, VOCAB, (length,), generator=gen)
        attention[i, :length] = 1
        loss_mask[i, length // 2 : length] = 1
        advantages[i, :length] = 1.0 if i % 2 == 0 else -1.0
    batch = TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        old_logprobs=torch.full((rows, width), float("nan")),
        advantages=advantages,
        created_at_step=torch.zeros(rows, width, dtype=torch.long),
        temperatures=torch.ones(rows, width),
        record_ids=[f"r{i}" for i in range(rows)],
        scores=[1.0 if i % 2 == 0 else 0.0 for i in range(rows)],
        token_exact=[True] * rows,
    )
    batch.old_logprobs = torch.where(
        loss_mask > 0, model_logprobs(tiny_model(), batch), torch.full_like(loss_mask, float("nan"))
    )
    return batch, [i // 2 for i in range(rows)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(body: Callable[..., None], nprocs: int, *args: Any) -> None:
    """Run ``body(rank, *args)`` in ``nprocs`` ranks of a gloo group; raise when one fails or
    they do not all finish within :data:`SPAWN_TIMEOUT_S`."""
    port = free_port()
    context = mp.start_processes(
        _entry, args=(body, nprocs, port, *args), nprocs=nprocs, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"ranks still running after {SPAWN_TIMEOUT_S:.0f} s (a hang)")


def _entry(rank: int, body: Callable[..., None], nprocs: int, port: int, *args: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
    )
    torch.set_num_threads(1)
    init_distributed()
    body(rank, *args)
    dist.barrier()  # rank 0 serves the store: no rank may leave while another still uses it
    dist.destroy_process_group()
    # leave without the interpreter's teardown: destroying torch's C++ globals at exit sometimes
    # meets a thread still joinable and aborts ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def weights(optimizer: PolicyOptimizer) -> dict[str, torch.Tensor]:
    """The full weights (rank 0; empty elsewhere with fsdp)."""
    return full_state_dict(optimizer.module, optimizer.data_parallel)


# --- bodies of the spawned ranks -------------------------------------------------------------


def step_on_shares(rank: int, mode: str, shares: list[TrainBatch], out: str) -> None:
    """One step on ``shares[rank]``; every rank saves what it holds of the weights."""
    trainer = PolicyOptimizer(tiny_config(data_parallel=mode), tiny_model(), torch.device("cpu"))
    metrics = trainer.optimize(shares[rank], step=0)
    if mode == "ddp":  # each rank's own full copy
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    else:
        state = weights(trainer)
    torch.save({"weights": state, "metrics": metrics}, Path(out) / f"rank{rank}.pt")


def steps_with_checkpoint(
    rank: int, shares: list[TrainBatch], steps: int, save_after: int, out: str
) -> None:
    """``steps`` FSDP steps; a sharded checkpoint after step ``save_after``; the losses."""
    trainer = PolicyOptimizer(tiny_config(), tiny_model(), torch.device("cpu"))
    losses = []
    for step in range(steps):
        losses.append(trainer.optimize(shares[rank], step=step)["loss/policy"])
        if step + 1 == save_after:
            save_sharded(
                Path(out) / "ckpt", trainer.module, trainer.optimizer, trainer.scheduler, save_after
            )
    if rank == 0:
        torch.save(losses, Path(out) / "losses.pt")


def resume_and_step(rank: int, shares: list[TrainBatch], source: str, out: str) -> None:
    """Resume from ``source`` (``dcp`` or ``full``: a one-rank optimizer.state_dict()) and take
    one more step; rank 0 saves the loss."""
    trainer = PolicyOptimizer(tiny_config(), tiny_model(), torch.device("cpu"))
    if source == "dcp":
        step = load_sharded(
            Path(out) / "ckpt", trainer.module, trainer.optimizer, trainer.scheduler
        )
    else:
        saved = torch.load(Path(out) / "full.pt", weights_only=False)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        set_model_state_dict(
            trainer.module, saved["model"], options=StateDictOptions(full_state_dict=True)
        )
        load_full_optimizer(trainer.model, trainer.optimizer, saved["optimizer"])
        trainer.scheduler.load_state_dict(saved["scheduler"])
        step = saved["step"]
    loss = trainer.optimize(shares[rank], step=step)["loss/policy"]
    if rank == 0:
        torch.save(loss, Path(out) / f"resumed_{source}.pt")
