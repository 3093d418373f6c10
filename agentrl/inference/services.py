"""The service registry from the operator's side: register endpoints that run elsewhere, list
services.

A service registered here is not started or watched by an InferenceManager: status UP,
``managed`` false (routing needs no heartbeat from it), its API key stored for the router but never
logged nor shown (:meth:`InferenceService.public_view` omits it). Its kind says what it answers:

- ``external``: an OpenAI-compatible API (an API model used for evaluation); it returns no token
  ids, so its calls train through the chat-template fallback;
- ``sglang``: an SGLang server on another node (a dedicated inference node); calls ask it for
  token ids (``return_token_ids``) and train token-exact, as on the trainer's own engines.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import InferenceService, MongoStore, ServiceStatus, utcnow
from agentrl.databases.documents import TYPE_FIELD
from agentrl.errors import ConfigError

log = logging.getLogger(__name__)


ServiceKind = Literal["external", "sglang", "cpu"]
"""What a registered endpoint answers: an OpenAI-compatible API, SGLang, or the CPU engine."""


def service_name(url: str, model: str, kind: str = "external") -> str:
    """The registry name of a registered service: ``<kind>:<model>@<url>``."""
    return f"{kind}:{model}@{url.rstrip('/')}"


def register_service(
    store: MongoStore,
    url: str,
    model: str,
    api_key: str | None = None,
    name: str | None = None,
    kind: ServiceKind = "external",
) -> InferenceService:
    """Register (or update) an endpoint that runs elsewhere as an UP, unmanaged service.

    Args:
        store: the MongoDB store.
        url: base URL; requests go to ``<url>/v1/chat/completions``.
        model: the model name it serves (what samplers ask for).
        api_key: bearer key, stored but never logged.
        name: registry name (default :func:`service_name`).
        kind: ``external`` (OpenAI-compatible, no token ids), ``sglang`` or ``cpu`` (token ids
            asked for and trained on).

    Returns:
        The stored document.
    """
    name = name or service_name(url, model, kind)
    doc = InferenceService(
        name=name, endpoint=url.rstrip("/"), models=[model], kind=kind,
        status=ServiceStatus.UP, api_key=api_key, managed=False,
    ).to_mongo()
    insert_only = ("_id", "created_at", TYPE_FIELD)
    on_insert = {key: doc.pop(key) for key in insert_only}
    doc["updated_at"] = utcnow()
    coll = store.collection(InferenceService)
    coll.update_one({"name": name}, {"$set": doc, "$setOnInsert": on_insert}, upsert=True)
    log.info("registered %s service %s (%s, key %s)", kind, name, model,
             "set" if api_key else "none")
    return InferenceService.from_mongo(coll.find_one({"name": name}))


def register_configured_services(
    config: AgentTrainingConfig, store: MongoStore
) -> list[InferenceService]:
    """Register every entry of ``config.external_services`` (``{url, model, api_key}``).

    Raises:
        ConfigError: an entry lacks ``url`` or ``model``.
    """
    services = []
    for i, entry in enumerate(config.external_services):
        missing = sorted({"url", "model"} - set(entry))
        if missing:
            raise ConfigError(
                "external_services", {k: v for k, v in entry.items() if k != "api_key"},
                f"entry {i} lacks {missing}; give each service url and model (api_key optional)",
            )
        services.append(register_service(
            store, entry["url"], entry["model"], entry.get("api_key") or None
        ))
    return services


def list_services(store: MongoStore, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every registered service as its public view (no API key), sorted by name."""
    services = store.find(InferenceService, query or {}, sort=[("name", 1)])
    return [service.public_view() for service in services]


def set_service_status(store: MongoStore, name: str, status: ServiceStatus) -> bool:
    """Set a service's status by name. Returns whether it exists."""
    result = store.collection(InferenceService).update_one(
        {"name": name}, {"$set": {"status": status.value, "updated_at": utcnow()}}
    )
    return result.matched_count == 1
