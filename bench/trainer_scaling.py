"""Trainer scaling: tokens/s of one training step and peak memory per rank, by data-parallel mode.

Runs :class:`~agentrl.training.optimization.PolicyOptimizer` on the same batch (``--rows``
random sequences of ``--tokens`` tokens, advantages +-1) with SmolLM2-135M-Instruct (or
``--model``) as

    1 rank ``none`` | 2 ranks ``ddp`` | 2 ranks ``fsdp`` | 2 ranks ``fsdp`` + activation
    checkpointing

(ranks are processes of a gloo group on CPU, NCCL on GPUs), one warm-up step, then ``--steps``
timed steps. Prints a table:

    mode | ranks | tokens/s | step s | peak MB per rank (step) | resident MB after setup

Memory on CPU is the process's resident set (psutil, sampled every 5 ms during the timed steps;
it includes the Python runtime and libraries); on GPUs it is ``torch.cuda.max_memory_allocated``.
Usage: ``python bench/trainer_scaling.py [--rows 4] [--tokens 128] [--steps 1]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.multiprocessing as mp

MODES = [("none", 1, False), ("ddp", 2, False), ("fsdp", 2, False), ("fsdp", 2, True)]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_batch(rows: int, tokens: int, vocab: int) -> Any:
    """``rows`` random sequences of ``tokens`` tokens, the second half trained."""
    from agentrl.training.tokenization import TrainBatch

    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(rows, tokens)
    mask[:, tokens // 2 :] = 1
    advantages = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(rows)])[:, None]
    return TrainBatch(
        input_ids=torch.randint(1, vocab, (rows, tokens), generator=gen),
        attention_mask=torch.ones(rows, tokens, dtype=torch.long),
        loss_mask=mask,
        old_logprobs=torch.full((rows, tokens), float("nan")),
        advantages=advantages.expand(rows, tokens).clone(),
        created_at_step=torch.zeros(rows, tokens, dtype=torch.long),
        temperatures=torch.ones(rows, tokens),
        record_ids=[f"r{i}" for i in range(rows)],
        scores=[0.0] * rows,
        token_exact=[True] * rows,
    )


class PeakRSS:
    """The largest resident set size seen while running (sampled every 5 ms)."""

    def __init__(self) -> None:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rank_body(
    rank: int,
    size: int,
    port: int,
    args: argparse.Namespace,
    mode: str,
    checkpointing: bool,
    out: str,
) -> None:
    """One rank: build the optimizer, warm up, time ``args.steps`` steps on this rank's share."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
    )
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from agentrl.configs import AgentTrainingConfig
    from agentrl.training.distributed import init_distributed, select_rows
    from agentrl.training.optimization import PolicyOptimizer
    from agentrl.training.trainer import default_device

    init_distributed()
    device = default_device()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = AgentTrainingConfig(
        data_parallel=mode,
        gradient_checkpointing=checkpointing,
        micro_batch_size=args.micro_batch_size,
        learning_rate=1e-6,
    )
    trainer = PolicyOptimizer(config, model, device)
    batch = make_batch(args.rows, args.tokens, model.config.vocab_size)
    share = select_rows(batch, list(range(rank, args.rows, size)))
    trainer.optimize(share, step=0)  # warm-up (optimizer state allocated)
    gc.collect()
    resident = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    with PeakRSS() as peak:
        tokens = 0.0
        for step in range(args.steps):
            tokens += trainer.optimize(share, step=step + 1)["perf/tokens"]
    elapsed = time.monotonic() - started
    peak_bytes = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak.peak
    if rank == 0:
        torch.save(
            {
                "tokens_per_s": tokens / elapsed,
                "step_s": elapsed / args.steps,
                "peak_mb": peak_bytes / 2**20,
                "resident_mb": resident / 2**20,
            },
            Path(out) / "result.pt",
        )
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def run_mode(
    args: argparse.Namespace, mode: str, size: int, checkpointing: bool, out: str
) -> dict[str, float]:
    """Run one configuration in ``size`` fresh processes; rank 0's numbers."""
    mp.start_processes(
        rank_body,
        args=(size, free_port(), args, mode, checkpointing, out),
        nprocs=size,
        start_method="spawn",
    )
    return torch.load(Path(out) / "result.pt")


def main() -> None:
    """Parse the arguments, run every mode, print the table."""
    from agentrl.inference.model_files import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument(
        "--only", nargs="*", default=None, help="Run only these rows (none, ddp, fsdp, fsdp+ac)."
    )
    args = parser.parse_args()
    import tempfile

    rows = []
    for mode, size, checkpointing in MODES:
        if args.only and mode + ("+ac" if checkpointing else "") not in args.only:
            continue
        with tempfile.TemporaryDirectory() as out:
            result = run_mode(args, mode, size, checkpointing, out)
        label = mode + (" + act. ckpt" if checkpointing else "")
        rows.append((label, size, result))
        print(f"done: {label}", flush=True)
    print(
        f"\nbatch: {args.rows} x {args.tokens} tokens, micro-batch {args.micro_batch_size}, "
        f"{args.steps} timed steps, {args.threads} torch thread(s) per rank, "
        f"{os.cpu_count()} CPU cores"
    )
    header = (
        f"{'mode':<20} {'ranks':>5} {'tokens/s':>9} {'step s':>8} {'peak MB/rank':>13} "
        f"{'resident MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for label, size, r in rows:
        print(
            f"{label:<20} {size:>5} {r['tokens_per_s']:>9.1f} {r['step_s']:>8.2f} "
            f"{r['peak_mb']:>13.0f} {r['resident_mb']:>12.0f}"
        )


if __name__ == "__main__":
    main()
