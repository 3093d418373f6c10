"""`serve()`: load a model and run the CPU engine's HTTP server until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

import torch
import uvicorn

from agentrl.inference.engine.app import EngineState, create_app
from agentrl.inference.engine.runner import ModelRunner
from agentrl.inference.engine.scheduler import BatchScheduler
from agentrl.inference.model_files import DEFAULT_MODEL_NAME, resolve_model_path

log = logging.getLogger(__name__)


class ReadyServer(uvicorn.Server):
    """A uvicorn server that prints ``<url> ready`` on stdout once it accepts connections.

    Args:
        config: the uvicorn configuration.
        banner: what is served (printed before the URL).
    """

    def __init__(self, config: uvicorn.Config, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then say so (``CPU engine serving ... at http://host:port: ready``)."""
        await super().startup(sockets)
        if self.started:
            url = f"http://{self.config.host}:{self.config.port}"
            print(f"{self.banner} at {url}: ready", flush=True)


def serve(
    model: str | Path = "",
    port: int = 30000,
    host: str = "127.0.0.1",
    served_model_name: str = DEFAULT_MODEL_NAME,
    seed: int = 0,
    max_batch_size: int = 64,
    batch_wait_s: float = 0.005,
    weight_version: str = "0",
    num_threads: int = 0,
    weights_cpu_backup: bool = False,
) -> None:
    """Load ``model`` and serve it on ``host:port`` until SIGINT/SIGTERM.

    Prints ``CPU engine serving <name> (<path>) at http://<host>:<port>: ready`` on stdout once
    the port accepts connections.

    Args:
        model: a local HF model directory; empty uses the cached SmolLM2-135M-Instruct.
        port: TCP port.
        host: interface to bind.
        served_model_name: the model name of ``/v1/models`` and responses.
        seed: sampling seed.
        max_batch_size: most sequences decoded together (rows).
        batch_wait_s: seconds the scheduler waits for requests to join a batch.
        weight_version: the version reported for the weights loaded at start.
        num_threads: torch intra-op threads; 0 uses :func:`default_num_threads`.
        weights_cpu_backup: keep updated weights across release/resume (SGLang's
            ``--enable-weights-cpu-backup``; see :class:`ModelRunner`).

    Raises:
        InferenceError: ``model`` is not a local directory.
    """
    torch.set_num_threads(num_threads or default_num_threads())
    path = resolve_model_path(str(model))
    runner = ModelRunner(path, seed=seed, weight_version=weight_version,
                         weights_cpu_backup=weights_cpu_backup)
    scheduler = BatchScheduler(runner, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s)
    scheduler.start()
    app = create_app(EngineState(runner, scheduler, served_model_name))
    log.info("CPU engine serving %s as %r on %s:%d", path, served_model_name, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = ReadyServer(config, f"CPU engine serving {served_model_name} ({path})")
    try:
        server.run()
    finally:
        scheduler.shutdown()


def default_num_threads() -> int:
    """Half the CPU cores (at least 1): OpenMP threads that spin on cores shared with other
    processes (workers, trainer) slow decoding down by an order of magnitude."""
    return max(1, (os.cpu_count() or 2) // 2)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m agentrl.inference.engine`` (the manager launches it so)."""
    parser = argparse.ArgumentParser(description="agentrl CPU inference engine")
    parser.add_argument("--model", default="", help="HF model directory (default: SmolLM2)")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--weight-version", default="0")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="torch threads (0: half the CPU cores)")
    parser.add_argument("--enable-weights-cpu-backup", action="store_true",
                        help="keep updated weights across release/resume (as SGLang's flag)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m agentrl.inference.engine``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(
        model=args.model, port=args.port, host=args.host,
        served_model_name=args.served_model_name, seed=args.seed,
        max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_s,
        weight_version=args.weight_version, num_threads=args.num_threads,
        weights_cpu_backup=args.enable_weights_cpu_backup,
    )
