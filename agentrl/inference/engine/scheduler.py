"""`BatchScheduler`: dynamic batching of concurrent requests onto one :class:`ModelRunner`.

A worker thread takes the first waiting request, waits ``batch_wait_s`` for more to arrive (each
arrival extends the wait, up to 10 windows; at most ``max_batch_size`` rows) and decodes them as
one padded batch with a KV cache; requests that arrive meanwhile form the next batch. So 16
concurrent requests cost about one forward pass per token instead of 16. Results go back to the
asyncio loop of the HTTP server through futures.

Control (the SGLang semantics the manager relies on):
- ``pause(mode="in_place"|"retract")`` holds decoding between two steps until
  ``resume_generation``; ``pause(mode="abort")`` also ends every running and waiting request with
  ``finish_reason="abort"``.
- While the model's memory is released, requests wait (they do not fail).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from agentrl.inference.engine.runner import GenerationRequest, ModelRunner

log = logging.getLogger(__name__)

MAX_WAIT_FACTOR = 10
"""A batch waits at most this many ``batch_wait_s`` windows while requests keep arriving."""


@dataclass
class _Job:
    """A group of rows (one HTTP request, ``n`` choices) and the future that receives them."""

    rows: list[GenerationRequest]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class BatchScheduler:
    """Collects requests from the HTTP handlers and runs them in batches on a worker thread.

    Args:
        runner: the model runner.
        max_batch_size: most rows (sequences) decoded together.
        batch_wait_s: seconds to wait after the first request for others to join its batch.
    """

    def __init__(self, runner: ModelRunner, max_batch_size: int = 64, batch_wait_s: float = 0.005):
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._running_rows = 0
        self._running_tokens = 0
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._abort = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)

    # --- public --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the worker thread after the current batch."""
        self._stop.set()
        self._unpaused.set()

    async def submit(self, rows: list[GenerationRequest]) -> list[GenerationRequest]:
        """Queue ``rows`` (decoded in the same or a later batch) and wait for them to finish."""
        loop = asyncio.get_running_loop()
        job = _Job(rows=rows, future=loop.create_future(), loop=loop)
        self._queue.put(job)
        return await job.future

    def load(self) -> dict[str, int]:
        """Rows running and waiting, and the tokens the running rows hold."""
        waiting = sum(len(job.rows) for job in list(self._queue.queue))
        return {
            "num_running_reqs": self._running_rows,
            "num_waiting_reqs": waiting,
            "num_reqs": self._running_rows + waiting,
            "num_tokens": self._running_tokens,
        }

    @property
    def paused(self) -> bool:
        """Whether generation is paused."""
        return not self._unpaused.is_set()

    def pause(self, mode: str = "abort") -> None:
        """Pause generation; ``abort`` also ends all running and waiting requests."""
        self._unpaused.clear()
        if mode == "abort":
            self._abort.set()
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                for row in job.rows:
                    row.finish_reason = row.finish_reason or "abort"
                self._finish(job)

    def resume_generation(self) -> None:
        """Continue generation after :meth:`pause`."""
        self._abort.clear()
        self._unpaused.set()

    # --- worker --------------------------------------------------------------------------------

    def _before_step(self) -> bool:
        """Hold between decode steps while paused or released; False aborts the batch."""
        while not (self._unpaused.wait(0.05) and self.runner.loaded):
            if self._abort.is_set() or self._stop.is_set():
                return False
            if self._unpaused.is_set():
                time.sleep(0.05)
        return not self._abort.is_set()

    def _collect(self) -> list[_Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        jobs, rows = [first], len(first.rows)
        now = time.monotonic()
        deadline, cap = now + self.batch_wait_s, now + MAX_WAIT_FACTOR * self.batch_wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else (
                    self._queue.get_nowait()
                )
            except queue.Empty:
                break
            jobs.append(job)
            rows += len(job.rows)
            # a burst is still arriving: wait a little longer for the rest of it
            deadline = min(time.monotonic() + self.batch_wait_s, cap)
        return jobs

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._unpaused.is_set() or not self.runner.loaded:
                time.sleep(0.02)
                continue
            jobs = self._collect()
            if not jobs:
                continue
            rows = [row for job in jobs for row in job.rows]
            self._running_rows = len(rows)
            self._running_tokens = sum(len(r.prompt_ids) + r.max_new_tokens for r in rows)
            try:
                self.runner.generate(rows, before_step=self._before_step)
            except Exception as exc:  # a failed batch fails its requests, not the engine
                log.exception("batch of %d rows failed", len(rows))
                for job in jobs:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            finally:
                self._running_rows = self._running_tokens = 0
            for job in jobs:
                self._finish(job)

    @staticmethod
    def _finish(job: _Job) -> None:
        job.loop.call_soon_threadsafe(_set_result, job.future, job.rows)


def _set_result(future: asyncio.Future, rows: list[GenerationRequest]) -> None:
    if not future.done():
        future.set_result(rows)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
