"""``agentrl run CONFIG --nproc-per-node N``: N trainer ranks on this machine, and what ranks
other than 0 do in the main job.

:func:`launch_ranks` starts the ranks with torch's elastic launcher (the API behind
``torchrun``), each running ``python -m agentrl run CONFIG ...`` with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set, so ``torchrun --nproc_per_node N -m
agentrl run CONFIG`` is the same thing (and the way to span nodes: ``--nnodes``).

In the main job, rank 0 does everything a single process does (Redis, the embedded MongoDB,
the sampling worker and beat, the summary) and broadcasts the MongoDB URI; every rank then
starts its DP group's engine when it is the group's TP-rank-0
(:class:`~agentrl.inference.manager.InferenceManager`, on its own port, registered as one
service per DP group) and runs the trainer; each engine owner loads every step's weights
(:func:`run_rank`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import init_databases
from agentrl.driver.interrupts import StopOnSignal
from agentrl.inference.manager import InferenceManager
from agentrl.training.distributed import broadcast_object, init_distributed
from agentrl.training.trainer import Trainer
from agentrl.training.weights import ManagerWeightPublisher

log = logging.getLogger(__name__)

NPROC_FLAG = "--nproc-per-node"


def launched_rank() -> int | None:
    """This process's rank when it runs under a launcher (``WORLD_SIZE`` > 1), else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("RANK", "0"))
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` (of ``agentrl run ...``) without ``--nproc-per-node N`` / ``=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == NPROC_FLAG:
            skip = True
        elif not arg.startswith(NPROC_FLAG + "="):
            out.append(arg)
    return out


def launch_ranks(nproc: int, run_args: Sequence[str]) -> None:
    """Run ``python -m agentrl run <run_args>`` as ``nproc`` ranks on this machine; return when
    they all have finished.

    Args:
        nproc: ranks to start.
        run_args: the arguments after ``run`` (config file, flags), without the nproc flag.

    Raises:
        ChildFailedError: a rank failed (torch's error names the rank, its exit code and its
            error file); the other ranks are stopped.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"agentrl-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=1.0,
    )
    log.info("starting %d trainer ranks", nproc)
    elastic_launch(config, entrypoint=sys.executable)("-m", "agentrl", "run", *run_args)


def share_mongo_uri(uri: str | None) -> str:
    """Rank 0's MongoDB URI on every rank (rank 0 started the embedded server)."""
    return str(broadcast_object(uri))


def run_rank(config: AgentTrainingConfig) -> Path | None:
    """The main job of a rank other than 0: its engine (when TP-rank-0 of its DP group) and its
    part of every training step, until rank 0's trainer stops.

    Returns:
        ``None`` (rank 0 reports the run).
    """
    init_distributed()
    uri = share_mongo_uri(None)
    config = config.model_copy(update={"db_connection_string": uri})
    dbs = init_databases(config)
    try:
        with InferenceManager(config, dbs) as manager, StopOnSignal() as stop:
            trainer = Trainer(
                config, dbs, ManagerWeightPublisher([manager], dbs), show_progress=False
            )
            stop.attach(trainer.request_stop)
            trainer.train()
    finally:
        dbs.close()
    return None
