"""``agentrl run``: the whole system on one machine, from a YAML file to a trained policy.

The driver reads like the algorithm::

    check_datasets(config)                       # a broken dataset fails here (exit 2)
    redis     = ensure_redis()                   # a local redis-server if none answers
    dbs       = init_databases(config)           # starts the embedded MongoDB-wire server
    engine    = InferenceManager(config, dbs)    # CPU engine (or SGLang), registered UP
    children  = worker, beat                     # celery -A agentrl worker / beat
    watcher   = ChildLogWatcher(children)        # their WARNING/ERROR entries on the console
    held_out.run(step)                           # eval_file: before the first step,
    Trainer(publish=ManagerWeightPublisher(engine)).train()   # every eval_every_steps,
    held_out.run(last_step)                      # and after the last
    summary.json, reward.png                     # runs/<name>/

Every child is stopped on exit, on an error and on Ctrl-C / SIGTERM; the run's queued claims are
then dropped (a resumed run sends its unfinished claims again at start), and a trainer that
reached ``max_steps`` marks the run so that no beat pushes more training epochs. The first
Ctrl-C / SIGTERM during training lets the step in progress finish and checkpoints it; a rerun
resumes there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from celery import Celery

from agentrl.celery_app import enqueue_claims, make_app, purge_claims
from agentrl.config_sections import DEPRECATED_KEYS, SECTIONS
from agentrl.configs import CONFIG_ENV_VAR, ENV_NESTED_DELIMITER, AgentTrainingConfig, env_name
from agentrl.databases import Databases, init_databases
from agentrl.driver.children import (
    ChildLogWatcher,
    ChildProcess,
    ensure_redis,
    start_beat,
    start_worker,
)
from agentrl.driver.evals import HeldOutEval, check_held_out, eval_summary, read_points
from agentrl.driver.interrupts import StopOnSignal
from agentrl.driver.launch import launched_rank, share_mongo_uri
from agentrl.driver.preflight import check_datasets
from agentrl.driver.report import Invocation, plot_rewards, write_summary
from agentrl.errors import ConfigError
from agentrl.inference.manager import InferenceManager
from agentrl.rollout.epochs import split_done
from agentrl.rollout.ledger import GlobalStep, clear_run_keys, resend_unfinished
from agentrl.training.checkpoint import checkpoint_root
from agentrl.training.distributed import init_distributed
from agentrl.training.metrics import read_metrics
from agentrl.training.trainer import Trainer
from agentrl.training.weights import ManagerWeightPublisher

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a finished run's outputs are.

    Attributes:
        run_dir: ``runs/<name>``.
        summary: ``summary.json``.
        plot: ``reward.png``.
        steps: optimizer steps in the metrics file.
        interrupted_at: the global step a SIGINT/SIGTERM stopped the run at (``None``: it
            finished).
        checkpoint: the resumable checkpoint written for ``interrupted_at``.
        evaluation: the ``eval`` section of the summary (``None`` without ``eval_file``).
    """

    run_dir: Path
    summary: Path
    plot: Path
    steps: int
    interrupted_at: int | None = None
    checkpoint: Path | None = None
    evaluation: dict | None = None


def run_dir_of(config: AgentTrainingConfig) -> Path:
    """``<output_dir>/<name>``."""
    return Path(config.output_dir) / config.name


def child_env(config: AgentTrainingConfig, dbs: Databases, config_file: Path) -> dict[str, str]:
    """The environment of worker and beat: this one plus every config value as ``AGENTRL_*``.

    A section (``mcp``, ``math``...) goes as one JSON variable (``AGENTRL_MCP={...}``); variables
    of its single fields (``AGENTRL_MCP__MAX_TURNS``) and of deprecated flat names are dropped,
    since the JSON holds the resolved values. The resolved MongoDB URI is passed, so children use
    the server this process started.
    """
    env = {k: v for k, v in os.environ.items() if not _superseded(k)}
    values = config.model_dump(mode="json")
    values["db_connection_string"] = dbs.mongo_uri
    for key, value in values.items():
        if value is None:  # unset (max_staleness...): the written config.yaml holds null
            env.pop(env_name(key), None)
            continue
        env[env_name(key)] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    env[CONFIG_ENV_VAR] = str(config_file)
    return env


def _superseded(name: str) -> bool:
    """Whether an environment variable sets a section field or a deprecated flat key."""
    upper = name.upper()
    return any(upper.startswith(env_name(s) + ENV_NESTED_DELIMITER) for s in SECTIONS) or any(
        upper == env_name(old) for old in DEPRECATED_KEYS
    )


def write_config(config: AgentTrainingConfig, run_dir: Path) -> Path:
    """Save the resolved configuration as ``runs/<name>/config.yaml``."""
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def clear_run(config: AgentTrainingConfig, dbs: Databases) -> None:
    """Forget a previous run of the same name: its database, Redis keys, checkpoints, metrics
    and summary."""
    dbs.store.client.drop_database(config.db_name)
    dbs.store.create_indexes()
    clear_run_keys(dbs.redis, config.key_prefix)
    shutil.rmtree(checkpoint_root(config), ignore_errors=True)
    (run_dir_of(config) / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir_of(config) / "summary.json").unlink(missing_ok=True)
    (run_dir_of(config) / "eval.jsonl").unlink(missing_ok=True)


def check_train_file(config: AgentTrainingConfig) -> None:
    """Raise unless ``train_file`` names an existing file.

    Raises:
        ConfigError: it is empty or does not exist.
    """
    if not config.train_file:
        raise ConfigError(
            "train_file", "", "not set; pass --train-file PATH or set train_file in the YAML file"
        )
    if not Path(config.train_file).is_file():
        raise ConfigError(
            "train_file", config.train_file,
            f"no such file (from {Path.cwd()}); pass --train-file PATH or run from the "
            "repository root",
        )


def run_main_job(
    config: AgentTrainingConfig,
    *,
    external_workers: bool = False,
    fresh: bool = False,
    show_progress: bool = True,
) -> RunResult:
    """Run sampling and training on this machine until sampling has finished (or max_steps).

    SIGINT / SIGTERM while training stop the run after the step in progress, and the last
    completed step is checkpointed (:class:`~agentrl.driver.interrupts.StopOnSignal`); the
    result then has ``interrupted_at`` set. A second signal, or one before the trainer exists,
    raises :class:`KeyboardInterrupt` (after the summary is written, when the databases are up).

    Args:
        config: the run configuration.
        external_workers: use already running Celery workers and beat instead of starting them.
        fresh: forget a previous run of the same name first (otherwise it is resumed).
        show_progress: draw the trainer's progress bar.

    Returns:
        The paths of the run's outputs.

    Raises:
        ConfigError: ``train_file`` is not set or does not exist, or a ``sampler_modules``
            module cannot be imported.
        DatasetError: the training (or eval) dataset cannot be loaded (file, line, reason).
        ChildProcessFailedError: the worker or beat exited during the run.
        ServiceUnavailableError: Redis or MongoDB cannot be reached or started.
        EngineStartError: the inference engine did not start.
    """
    started, started_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")
    app = make_app(config)
    for check in (check_train_file, check_datasets, check_held_out):
        check(config)  # before anything starts: file, line and reason, exit status 2
    run_dir = run_dir_of(config)
    (log_dir := run_dir / "logs").mkdir(parents=True, exist_ok=True)
    children: list[ChildProcess] = []
    watcher: ChildLogWatcher | None = None
    redis_child = ensure_redis(config, log_dir)
    dbs: Databases | None = None
    start_step = 0
    if ranks := launched_rank() is not None:  # rank 0 of --nproc-per-node / torchrun
        init_distributed()

    def summarize(outcome: Literal["finished", "interrupted"]) -> Path:
        invocation = Invocation(started_at, time.monotonic() - started, start_step,
                                GlobalStep(dbs).get(), outcome)
        return write_summary(run_dir, read_metrics(run_dir / "metrics.jsonl"), dbs, invocation,
                             eval_summary(read_points(run_dir)))

    try:
        dbs = init_databases(config)
        if fresh:
            clear_run(config, dbs)
        config_file = write_config(config, run_dir)
        if ranks:  # the other ranks connect to the MongoDB this rank started
            share_mongo_uri(dbs.mongo_uri)
        log.info("starting the inference engine (%s)", config.engine)
        with InferenceManager(config, dbs) as manager, StopOnSignal() as stop:
            if not external_workers:
                children += start_children(config, dbs, config_file, log_dir)
                watcher = ChildLogWatcher(children).start()
            # a resumed run's queue was emptied when it ended: its unfinished claims go again
            resend_unfinished(dbs, lambda claims: enqueue_claims(app, claims))
            trainer, held_out = _trainer_and_eval(config, dbs, app, manager, children,
                                                  show_progress)
            start_step = trainer.resumed_step or 0
            checkpoint = _train(trainer, held_out, stop, dbs, ranks)
        summary = summarize("interrupted" if stop.requested else "finished")
        return _result(run_dir, summary, checkpoint, GlobalStep(dbs).get() if stop.requested
                       else None)
    except KeyboardInterrupt:
        if dbs is not None:
            summarize("interrupted")
        raise
    finally:
        _stop_all(children, watcher, app, dbs, redis_child)


def _trainer_and_eval(
    config: AgentTrainingConfig, dbs: Databases, app: Celery, manager: InferenceManager,
    children: list[ChildProcess], show_progress: bool,
) -> tuple[Trainer, HeldOutEval]:
    """The trainer (publishing to ``manager``) and the held-out evaluation, both watching the
    children while they wait (a dead worker or beat fails the run)."""

    def check_children() -> None:
        for child in children:
            child.check()

    def sampling_finished() -> bool:
        check_children()
        return split_done(dbs, "train")

    trainer = Trainer(
        config, dbs, ManagerWeightPublisher([manager], dbs),
        sampling_finished=sampling_finished, show_progress=show_progress,
    )
    return trainer, HeldOutEval(config, app, run_dir_of(config), check_children)


def _stop_all(children: list[ChildProcess], watcher: ChildLogWatcher | None, app: Celery,
              dbs: Databases | None, redis_child: ChildProcess | None) -> None:
    """Stop the children (last started first) and their log watcher, drop the run's queued
    claims, close the connections, and stop the Redis this run started."""
    for child in reversed(children):
        child.stop()
    if watcher is not None:
        watcher.stop()
    if dbs is not None:
        _purge(app)
        dbs.close()
    if redis_child is not None:
        redis_child.stop()


def _train(trainer: Trainer, held_out: HeldOutEval, stop: StopOnSignal, dbs: Databases,
           ranks: bool) -> Path | None:
    """Evaluate the starting weights, train (evaluating every ``eval_every_steps``), then
    evaluate the last step's weights unless stopped.

    Returns:
        The checkpoint of the last completed step when a signal stopped the run, else ``None``.
    """
    held_out.run_once(trainer.resumed_step or 0)  # the weights before this invocation's first step
    trainer.after_step = lambda step: held_out.run(step) if held_out.due(step) else None
    stop.attach(trainer.request_stop)
    trainer.train()
    if stop.requested:  # several ranks: train() checkpointed them together
        return trainer.last_checkpoint if ranks else trainer.save_checkpoint_now()
    held_out.run_once(GlobalStep(dbs).get())
    return None


def _result(run_dir: Path, summary: Path, checkpoint: Path | None,
            interrupted_at: int | None) -> RunResult:
    """The run's outputs, with the reward plot drawn from its metrics and held-out points."""
    steps = read_metrics(run_dir / "metrics.jsonl")
    points = read_points(run_dir)
    return RunResult(
        run_dir=run_dir, summary=summary, plot=plot_rewards(run_dir, steps, points),
        steps=len(steps), interrupted_at=interrupted_at, checkpoint=checkpoint,
        evaluation=eval_summary(points),
    )


def _purge(app: Celery) -> None:
    """Drop the run's queued claims once it ends (a resume sends the unfinished ones again)."""
    try:
        dropped = purge_claims(app)
    except Exception:  # noqa: BLE001 - the run's outcome matters more than a tidy queue
        log.warning("could not empty the sampling queue", exc_info=True)
        return
    if dropped:
        log.info("%d queued claims dropped; a resumed run sends them again", dropped)


def start_children(
    config: AgentTrainingConfig, dbs: Databases, config_file: Path, log_dir: Path
) -> list[ChildProcess]:
    """Start the sampling worker and beat; their pids go to ``logs/pids``."""
    env = child_env(config, dbs, config_file)
    # the driver evaluates eval_file itself (HeldOutEval): beat must not push it as an epoch
    env[env_name("eval_file")] = ""
    children = [start_worker(config.name, log_dir, env), start_beat(log_dir, env)]
    (log_dir / "pids").write_text("".join(f"{c.process.pid} {c.role}\n" for c in children))
    return children
