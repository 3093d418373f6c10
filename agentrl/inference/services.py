"""The service registry from the operator's side: register external endpoints, list services.

An external OpenAI-compatible endpoint (an API model used for evaluation) is an
:class:`InferenceService` of kind ``external``: status UP, no heartbeat needed, its API key stored
for the router but never logged nor shown (:meth:`InferenceService.public_view` omits it).
"""

from __future__ import annotations

import logging
from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import InferenceService, MongoStore, ServiceStatus, utcnow
from agentrl.databases.documents import TYPE_FIELD
from agentrl.errors import ConfigError

log = logging.getLogger(__name__)


def external_service_name(url: str, model: str) -> str:
    """The registry name of an external service: ``external:<model>@<url>``."""
    return f"external:{model}@{url.rstrip('/')}"


def register_external_service(
    store: MongoStore,
    url: str,
    model: str,
    api_key: str | None = None,
    name: str | None = None,
) -> InferenceService:
    """Register (or update) an external OpenAI-compatible endpoint as an UP service.

    Args:
        store: the MongoDB store.
        url: base URL; requests go to ``<url>/v1/chat/completions``.
        model: the model name it serves (what samplers ask for).
        api_key: bearer key, stored but never logged.
        name: registry name (default :func:`external_service_name`).

    Returns:
        The stored document.
    """
    name = name or external_service_name(url, model)
    doc = InferenceService(
        name=name, endpoint=url.rstrip("/"), models=[model], kind="external",
        status=ServiceStatus.UP, api_key=api_key,
    ).to_mongo()
    insert_only = ("_id", "created_at", TYPE_FIELD)
    on_insert = {key: doc.pop(key) for key in insert_only}
    doc["updated_at"] = utcnow()
    coll = store.collection(InferenceService)
    coll.update_one({"name": name}, {"$set": doc, "$setOnInsert": on_insert}, upsert=True)
    log.info("registered external service %s (%s, key %s)", name, model,
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
        services.append(register_external_service(
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
