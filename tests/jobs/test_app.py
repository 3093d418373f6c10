"""The Celery app's settings and queue routing (no worker)."""

from __future__ import annotations

import json
import subprocess
import sys

from agentrl.celery_app import (
    HANDOFF_THREADS,
    SAMPLE_TASK,
    celery_settings,
    enqueue_claims,
    make_app,
)
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from agentrl.rollout.claims import Claim
from tests.jobs.helpers import REPO


def test_settings_are_json_only_acks_late_prefixed(config: AgentTrainingConfig) -> None:
    settings = celery_settings(config)
    assert settings["task_serializer"] == settings["result_serializer"] == "json"
    assert settings["accept_content"] == ["json"]
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert settings["worker_prefetch_multiplier"] == 1
    assert not settings["worker_send_task_events"]  # Flower turns them on when it watches
    assert not settings["task_send_sent_event"]
    assert settings["worker_pool"] == "threads"
    # a few threads hand trajectories over; the trajectories themselves are coroutines
    assert settings["worker_concurrency"] == HANDOFF_THREADS
    assert HANDOFF_THREADS < config.max_concurrent_samples_per_process
    options = settings["broker_transport_options"]
    assert options["visibility_timeout"] == config.visibility_timeout_s
    assert options["global_keyprefix"] == f"{config.key_prefix}:"
    assert settings["result_backend_transport_options"]["global_keyprefix"] == options[
        "global_keyprefix"]
    assert [q.name for q in settings["task_queues"]] == ["sampling", "evaluation"]


def test_lazy_app_reads_config_from_env(config: AgentTrainingConfig) -> None:
    app = make_app()
    assert app.conf.broker_url == config.redis_url
    assert app.agentrl_config.key_prefix == config.key_prefix


def test_claims_route_by_split_as_json(config: AgentTrainingConfig, dbs: Databases) -> None:
    app = make_app(config)
    claims = [Claim("t1", 0, 1, "train", "rft"), Claim("t1", 1, 1, "train", "rft"),
              Claim("e1", 0, 1, "eval", "rft")]
    assert enqueue_claims(app, claims) == 3
    prefix = config.key_prefix
    assert dbs.redis.llen(f"{prefix}:sampling") == 2
    assert dbs.redis.llen(f"{prefix}:evaluation") == 1
    message = json.loads(dbs.redis.lindex(f"{prefix}:evaluation", 0))
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == SAMPLE_TASK
    assert dbs.redis.llen("sampling") == 0  # nothing outside the run's prefix


def test_a_sampling_worker_does_not_import_torch() -> None:
    """The modules every worker imports stay free of torch (~180 MB and ~1 s per process)."""
    code = ("import importlib, sys\n"
            "from agentrl.celery_app import TASK_MODULES\n"
            "for name in TASK_MODULES: importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr
