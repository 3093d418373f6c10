"""`InferenceManager`: one inference engine per DP group, its registration and its lifecycle.

Following the AgentRL guide, in each data-parallel group of the trainer the TP-rank-0 process
starts the engine as a subprocess (SGLang on GPUs, the CPU engine otherwise), waits for
``/health_generate``, registers an :class:`InferenceService` (status UP, endpoint, models) in
MongoDB and keeps it alive with a heartbeat thread, which is also the watchdog that restarts a
dead engine (same port, latest weights) and registers it again.

Weight updates: ``release_memory_occupation()`` marks the service DOWN (routers stop sending and
samplers wait), waits for in-flight requests to drain (pausing generation in place after
``release_drain_timeout_s``) and frees the engine's memory; ``resume_memory_occupation()`` reloads
it, restores the served weights (the engine's CPU backup, ``inf_weights_cpu_backup``, or else the
last directory loaded again), checks that the engine reports this manager's weight version, and
only then marks the service UP; ``update_weights(dir, version)`` loads a ``save_pretrained``
directory.
On ``stop()``, on exit, on an exception in a ``with`` block, or on SIGTERM the engine's process
group is terminated and the service marked DOWN.

Placement: with ``torch.distributed`` initialized, rank ``r`` is in DP group ``r // inf_tp_size``
with TP rank ``r % inf_tp_size``; the port is ``engine_base_port + 10 * (LOCAL_RANK //
inf_tp_size)`` or the next free one of those 10, so DP groups on one host never collide. A single
process with no process group is DP group 0, TP rank 0.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, InferenceService, ServiceStatus, utcnow
from agentrl.databases.documents import TYPE_FIELD
from agentrl.errors import EngineStartError, InferenceError, WeightUpdateError
from agentrl.inference.model_files import resolve_model_path
from agentrl.inference.sglang import EngineClient, build_cpu_engine_command, build_sglang_command
from agentrl.rollout.leases import slot_loads
from agentrl.rollout.ledger import RedisKeys

if TYPE_CHECKING:  # torch is imported only where it is used: sampling processes never need it
    import torch

log = logging.getLogger(__name__)

PORTS_PER_GROUP = 10
"""Ports reserved per DP group: group g uses ``engine_base_port + 10*g`` .. ``+ 9``."""


@dataclass(frozen=True)
class Placement:
    """Where this process sits: global rank, local rank, TP rank and DP group.

    Attributes:
        rank: global rank (0 without a process group).
        local_rank: rank on this host (``LOCAL_RANK``).
        tp_rank: rank inside the tensor-parallel group; rank 0 owns the engine.
        dp_group: global data-parallel group (the service's ``dp_rank``).
        local_dp_group: DP group index on this host (chooses the port range).
    """

    rank: int = 0
    local_rank: int = 0
    tp_rank: int = 0
    dp_group: int = 0
    local_dp_group: int = 0


def current_placement(tp_size: int) -> Placement:
    """The placement of this process from ``torch.distributed`` (or ``RANK``/``LOCAL_RANK`` as
    torchrun sets them); no process group and no variables → DP group 0, TP rank 0."""
    dist = sys.modules.get("torch.distributed")  # not imported: no process group either
    if dist is not None and dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
    else:
        rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    return Placement(rank=rank, local_rank=local_rank, tp_rank=rank % tp_size,
                     dp_group=rank // tp_size, local_dp_group=local_rank // tp_size)


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def engine_port(
    config: AgentTrainingConfig,
    local_dp_group: int,
    is_free: Callable[[str, int], bool] = port_is_free,
) -> int:
    """The port of a DP group's engine: the first free one of its 10-port range.

    Raises:
        InferenceError: all 10 ports of the group's range are taken.
    """
    base = config.engine_base_port + PORTS_PER_GROUP * local_dp_group
    for port in range(base, base + PORTS_PER_GROUP):
        if is_free(config.engine_host, port):
            return port
    raise InferenceError(
        f"ports {base}-{base + PORTS_PER_GROUP - 1} of DP group {local_dp_group} are all taken; "
        "set engine_base_port to a free range"
    )


def resolve_engine_kind(engine: str) -> str:
    """``sglang`` or ``cpu``: ``auto`` picks SGLang when CUDA and the sglang package exist."""
    if engine != "auto":
        return engine
    if importlib.util.find_spec("sglang") is None:
        return "cpu"
    import torch

    return "sglang" if torch.cuda.is_available() else "cpu"


class InferenceManager:
    """Starts, registers, watches, updates and stops this DP group's inference engine.

    Args:
        config: the run configuration (engine, ports, timeouts, model).
        dbs: database connections (the service registry lives in MongoDB).
        placement: override the placement detected from ``torch.distributed`` / env.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. On processes with TP rank
    != 0 every method is a no-op and :attr:`endpoint` is ``None``.
    """

    def __init__(
        self, config: AgentTrainingConfig, dbs: Databases, placement: Placement | None = None
    ) -> None:
        self.config, self.dbs = config, dbs
        self.placement = placement or current_placement(config.inf_tp_size)
        self.kind = resolve_engine_kind(config.engine)
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.restarts = 0
        self.weight_version = "0"
        self._model_path: Path | None = None
        self._weights_dir: str | None = None
        self._released = False
        self._paused = False
        self._client: EngineClient | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_path: Path | None = None
        self._prev_sigterm: Any = None
        self._started = False

    # --- properties ----------------------------------------------------------------------------

    @property
    def owns_engine(self) -> bool:
        """Whether this process starts the engine (TP rank 0 of its DP group)."""
        return self.placement.tp_rank == 0

    @property
    def endpoint(self) -> str | None:
        """Base URL of the engine, once started."""
        return f"http://{self.config.engine_host}:{self.port}" if self.port else None

    @property
    def service_name(self) -> str:
        """The registry name: ``<kind>-dp<g>@<host>:<port>``."""
        return f"{self.kind}-dp{self.placement.dp_group}@{socket.gethostname()}:{self.port}"

    @property
    def service(self) -> InferenceService | None:
        """This engine's registry document, freshly read (``None`` before start)."""
        if not self.port:
            return None
        raw = self.dbs.store.collection(InferenceService).find_one({"name": self.service_name})
        return InferenceService.from_mongo(raw) if raw else None

    @property
    def released(self) -> bool:
        """Whether the engine's memory is released (service DOWN)."""
        return self._released

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> InferenceManager:
        """Launch the engine, wait until it generates, register it UP and start the watchdog.

        Returns:
            ``self``.

        Raises:
            EngineStartError: the engine exited or was not healthy within
                ``engine_start_timeout_s``.
        """
        if not self.owns_engine or self._started:
            return self
        self._model_path = resolve_model_path(self.config.model_name_or_path)
        self.port = engine_port(self.config, self.placement.local_dp_group)
        self._stopping.clear()
        try:
            self._launch()
        except BaseException:
            self._terminate()
            raise
        self._started = True
        self._register(ServiceStatus.UP)
        self._thread = threading.Thread(target=self._watch, name="engine-watchdog", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        self._install_sigterm()
        log.info("inference service %s UP at %s", self.service_name, self.endpoint)
        return self

    def stop(self) -> None:
        """Stop the watchdog, mark the service DOWN and terminate the engine's process group."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        with self._lock:
            try:
                self._set_status(ServiceStatus.DOWN)
            except Exception:  # the registry may be gone at interpreter exit; the engine must go
                log.warning("could not mark %s DOWN", self.service_name, exc_info=True)
            self._terminate()
        atexit.unregister(self.stop)
        self._restore_sigterm()

    def __enter__(self) -> InferenceManager:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- memory and weights --------------------------------------------------------------------

    def release_memory_occupation(self) -> None:
        """Mark the service DOWN, drain in-flight requests, then free the engine's memory.

        Requests still running after ``release_drain_timeout_s`` seconds are paused in place
        (they finish after :meth:`resume_memory_occupation`).
        """
        if not self.owns_engine or self._client is None:
            return
        with self._lock:
            self._set_status(ServiceStatus.DOWN)
            self._released = True
            if not self._drain(self.config.release_drain_timeout_s):
                log.warning("%s: requests still running after %.0f s; pausing generation",
                            self.service_name, self.config.release_drain_timeout_s)
                self._client.pause_generation("in_place")
                self._paused = True
            self._client.release_memory_occupation()

    def resume_memory_occupation(self) -> None:
        """Reload the engine's memory and weights, continue paused requests, then mark the
        service UP.

        Raises:
            WeightUpdateError: the weights could not be restored, or the engine then reports
                another weight version than this manager's (the service stays DOWN).
        """
        if not self.owns_engine or self._client is None:
            return
        with self._lock:
            self._client.resume_memory_occupation()
            self._restore_weights()
            if self._paused:
                self._client.continue_generation()
                self._paused = False
            self._released = False
            self._set_status(ServiceStatus.UP)

    def _restore_weights(self) -> None:
        """After a resume: load the last weights again unless the engine kept a CPU backup, then
        check that it serves :attr:`weight_version`."""
        if self._client is None:
            return
        if not self.config.inf_weights_cpu_backup and self._weights_dir is not None:
            self._client.update_weights_from_disk(self._weights_dir, self.weight_version)
        served = self._client.weight_version()
        if served != self.weight_version:
            raise WeightUpdateError(
                self._weights_dir or str(self._model_path),
                f"after resume the engine reports weight version {served!r}, expected "
                f"{self.weight_version!r}; the service stays DOWN",
            )

    def update_weights(self, model_dir: str | Path, version: int) -> None:
        """Load the weights a trainer saved with ``save_pretrained(model_dir)`` into the engine.

        Args:
            model_dir: directory with safetensors weights.
            version: the global step; the service's ``weight_version`` becomes ``str(version)``.

        Raises:
            WeightUpdateError: the engine could not load them.
        """
        if not self.owns_engine or self._client is None:
            return
        with self._lock:
            self._client.update_weights_from_disk(model_dir, str(version))
            self._weights_dir, self.weight_version = str(model_dir), str(version)
            self.dbs.store.collection(InferenceService).update_one(
                {"name": self.service_name},
                {"$set": {"weight_version": self.weight_version, "updated_at": utcnow()}},
            )

    def update_weights_from_tensors(self, named_tensors: list[tuple[str, torch.Tensor]],
                                    version: int) -> None:
        """Push in-memory tensors to SGLang (``/update_weights_from_tensor``).

        Raises:
            WeightUpdateError: the engine is the CPU engine (use :meth:`update_weights`), or
                SGLang refused the update.
        """
        if not self.owns_engine or self._client is None:
            return
        if self.kind != "sglang":
            raise WeightUpdateError("<tensors>", "the CPU engine loads weights from disk only; "
                                    "call update_weights(model_dir, version)")
        with self._lock:
            self._client.update_weights_from_tensor(named_tensors, str(version),
                                                    tp_size=self.config.inf_tp_size)
            self.weight_version = str(version)
            self.dbs.store.collection(InferenceService).update_one(
                {"name": self.service_name},
                {"$set": {"weight_version": self.weight_version, "updated_at": utcnow()}},
            )

    # --- internals -----------------------------------------------------------------------------

    def _command(self) -> list[str]:
        if self.kind == "sglang":
            return build_sglang_command(self.config, self._model_path or "", self.port or 0)
        return build_cpu_engine_command(self.config, self._model_path or "", self.port or 0)

    def _launch(self) -> None:
        """Start the engine process (own process group) and wait for ``/health_generate``; load
        the latest weights into it after a restart."""
        run_dir = Path(self.config.output_dir) / self.config.name
        run_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = run_dir / f"engine-dp{self.placement.dp_group}.log"
        with open(self._log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self._command(), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        if self._client is not None:
            self._client.close()
        self._client = EngineClient(self.endpoint or "", timeout_s=self.config.request_timeout_s)
        process = self.process
        self._client.wait_healthy(
            self.config.engine_start_timeout_s,
            alive=lambda: process.poll() is None,
            log_tail=self._log_tail,
        )
        if self._weights_dir is not None:
            self._client.update_weights_from_disk(self._weights_dir, self.weight_version)

    def _log_tail(self, lines: int = 30) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def _terminate(self) -> None:
        """SIGTERM the engine's process group, SIGKILL after 10 s, and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        try:  # children of a dead leader may linger in the group
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._client is not None:
            self._client.close()
            self._client = None

    def _register(self, status: ServiceStatus) -> None:
        """Upsert this engine's InferenceService by name."""
        doc = InferenceService(
            name=self.service_name, endpoint=self.endpoint or "", models=[self.config.model_name],
            kind=self.kind, status=status, weight_version=self.weight_version,
            dp_rank=self.placement.dp_group,
        ).to_mongo()
        on_insert = {key: doc.pop(key) for key in ("_id", "created_at", TYPE_FIELD)}
        doc.pop("api_key", None)
        self.dbs.store.collection(InferenceService).update_one(
            {"name": self.service_name}, {"$set": doc, "$setOnInsert": on_insert}, upsert=True
        )

    def _set_status(self, status: ServiceStatus) -> None:
        now = utcnow()
        self.dbs.store.collection(InferenceService).update_one(
            {"name": self.service_name},
            {
                "$set": {
                    "status": status.value,
                    "heartbeat_at": now,
                    "heartbeat_ts": time.time(),
                    "updated_at": now,
                }
            },
        )

    def _routed(self) -> int:
        """Requests routers have in flight on this service (its live slot leases)."""
        service = self.service
        if service is None:
            return 0
        return slot_loads(self.dbs.redis,
                          [RedisKeys(self.config.key_prefix).service_slots(service.id)])[0]

    def _drain(self, timeout_s: float) -> bool:
        """Wait until no routed request is in flight and the engine is idle; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            routed = self._routed()
            try:
                engine_load = self._client.get_load() if self._client else 0
            except Exception:  # an engine that cannot answer holds nothing we can wait for
                engine_load = 0
            if routed <= 0 and engine_load == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _watch(self) -> None:
        """Heartbeat and watchdog loop (thread): refresh ``heartbeat_at``; restart a dead engine."""
        interval = self.config.heartbeat_interval_s
        while not self._stopping.wait(interval):
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    if self.process is None or self.process.poll() is not None:
                        self._restart()  # also retries a restart that failed
                    else:
                        self.dbs.store.collection(InferenceService).update_one(
                            {"name": self.service_name},
                            {"$set": {"heartbeat_at": utcnow(), "heartbeat_ts": time.time()}},
                        )
            except Exception:  # keep watching: a registry hiccup must not end the heartbeat
                log.exception("engine watchdog of %s failed; retrying", self.service_name)

    def _restart(self) -> None:
        """Replace a dead engine: DOWN, relaunch on the same port with the latest weights, UP."""
        code = self.process.returncode if self.process else None
        log.error("engine %s exited (code %s); restarting", self.service_name, code)
        self._set_status(ServiceStatus.DOWN)
        self._terminate()
        self.restarts += 1
        try:
            self._launch()
        except EngineStartError:
            self._terminate()
            raise
        if self._released and self._client is not None:
            self._client.release_memory_occupation()
            self._paused = False
        else:
            self._register(ServiceStatus.UP)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._prev_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._prev_sigterm is None or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._prev_sigterm)
        self._prev_sigterm = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        previous = self._prev_sigterm
        self.stop()
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)
