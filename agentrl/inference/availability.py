"""Whether sampling will find an inference service, and starting one when nothing is there.

:func:`sampling_inference` is what :class:`~agentrl.rollout.scheduler.SamplingScheduler` enters
before it pushes epochs, so the guide's example needs no other command:

- it registers the services of ``external_services``;
- a live UP service of ``model_name`` (an external one, or one whose heartbeat is fresh): use it;
- services of ``model_name`` that are registered and reachable but none UP (a weight update
  holds them DOWN, or an operator marked them so): say so at once, naming the commands that fix
  it, and sample anyway (LLM calls wait up to ``service_wait_timeout_s``);
- nothing usable (no service, or only dead leftovers of stopped runs: DOWN or stale, endpoint not
  answering): start this process's own engine with :class:`InferenceManager` (the CPU engine
  unless ``engine`` picks SGLang), as ``agentrl run`` does, and stop it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, InferenceService, ServiceStatus
from agentrl.inference.manager import InferenceManager, resolve_engine_kind
from agentrl.inference.services import register_configured_services
from agentrl.inference.sglang import EngineClient

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0
"""Seconds a registered but not-UP engine gets to answer ``/health``."""


@dataclass
class ServiceView:
    """The services of one model, sorted by what sampling can expect of them.

    Attributes:
        live: UP, and external or with a fresh heartbeat (routing uses these).
        pending: not live but there: external, or answering ``/health`` with a fresh heartbeat.
        dead: neither (left by stopped or crashed engines); ignored.
        other_models: names of services registered for other models.
    """

    live: list[InferenceService] = field(default_factory=list)
    pending: list[InferenceService] = field(default_factory=list)
    dead: list[InferenceService] = field(default_factory=list)
    other_models: list[str] = field(default_factory=list)


def answers_health(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``<endpoint>/health`` answers 200 within ``timeout_s`` seconds."""
    client = EngineClient(endpoint, timeout_s=timeout_s)
    try:
        return client.healthy(timeout_s=timeout_s)
    finally:
        client.close()


def view_services(config: AgentTrainingConfig, dbs: Databases) -> ServiceView:
    """Sort the registered services of ``config.model_name`` into live, pending and dead."""
    view = ServiceView()
    cutoff = time.time() - config.service_heartbeat_ttl_s
    for service in dbs.store.find(InferenceService, {}):
        if config.model_name not in service.models:
            view.other_models.append(service.name)
            continue
        external = service.kind == "external"
        fresh = external or service.heartbeat_ts >= cutoff
        if service.status == ServiceStatus.UP and fresh:
            view.live.append(service)
        elif external or (fresh and answers_health(service.endpoint)):
            view.pending.append(service)
        else:
            view.dead.append(service)
    return view


def no_service_up_message(config: AgentTrainingConfig, pending: list[InferenceService]) -> str:
    """What to tell a user whose services exist but none is UP, with the commands that fix it."""
    names = ", ".join(f"{s.name} ({s.status.value}, {s.endpoint})" for s in pending)
    port = config.engine_base_port
    return (
        f"no inference service for model {config.model_name!r} is UP; registered: {names}. "
        f"LLM calls wait up to service_wait_timeout_s = {config.service_wait_timeout_s:.0f} s "
        "(a weight update holds services DOWN while it loads). If none comes up: "
        "`agentrl services list` shows the registry; start an engine with "
        f"`agentrl engine serve --port {port}` and register it with "
        f"`agentrl services add http://127.0.0.1:{port} --model {config.model_name}`, "
        "or run `agentrl train CONFIG`, whose engine registers itself."
    )


@contextlib.contextmanager
def sampling_inference(
    config: AgentTrainingConfig, dbs: Databases, start_engine: bool = True
) -> Iterator[InferenceManager | None]:
    """Make sure LLM calls of a sampling run have a service (see the module docstring).

    Args:
        config: the run configuration (``model_name``, ``external_services``, engine fields).
        dbs: connections (the service registry).
        start_engine: whether to start an engine when nothing usable is registered (samplers
            that never call a model pass False).

    Yields:
        The engine started here (stopped on exit), or ``None``.

    Raises:
        ConfigError: an ``external_services`` entry lacks ``url`` or ``model``.
        EngineStartError: the engine started here did not come up.
    """
    register_configured_services(config, dbs.store)
    view = view_services(config, dbs)
    if view.live:
        yield None
    elif view.pending:
        log.warning(no_service_up_message(config, view.pending))
        yield None
    elif not start_engine:
        yield None
    else:
        others = f" (registered for other models: {', '.join(view.other_models)})" if (
            view.other_models) else ""
        log.warning("no inference service for model %r is registered%s; starting a %s "
                    "engine for this run (stopped at the end)", config.model_name, others,
                    resolve_engine_kind(config.engine))
        with InferenceManager(config, dbs) as manager:
            log.warning("engine %s serving %r at %s", manager.service_name, config.model_name,
                        manager.endpoint)
            yield manager
