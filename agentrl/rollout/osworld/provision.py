"""`setup_osworld_envs(config)`: provision and register this node's OSWorld envs (LOCAL_RANK 0).

Under ``torchrun`` every rank of a node runs the same script; only the process with
``LOCAL_RANK`` 0 (or no ``LOCAL_RANK``) provisions, so a node never starts its VMs twice. Two
sources, both may be used at once:

- ``osworld.env_urls``: control servers already running (one URL per env). Each is probed
  (``/platform``, ``/screen_size``); an unreachable one is reported by URL and left out.
- ``osworld.provider`` (docker, vmware, virtualbox, aws, azure): ``osworld.num_envs`` VMs started
  through the ``desktop-env`` package's ``DesktopEnv``, imported only then (it is an optional
  dependency, not installable everywhere). Their ``/reset`` and ``/evaluate`` are served by a
  :class:`~agentrl.rollout.osworld.bridge.BridgeServer` of this process.

Envs are upserted by unique name (``osworld@<host>:<port>``), so provisioning again re-registers
instead of duplicating. :meth:`ProvisionedEnvs.close` (also run at interpreter exit) unregisters
them and closes the VMs it started.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pymongo.errors import DuplicateKeyError

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, init_databases
from agentrl.databases.documents import utcnow
from agentrl.databases.store import MongoStore
from agentrl.errors import EnvRequestError, ProviderUnavailableError
from agentrl.rollout.osworld.bridge import BridgeServer, DesktopEnvLike
from agentrl.rollout.osworld.client import probe_env
from agentrl.rollout.osworld.envs import (
    Environment,
    EnvStatus,
    OSWorldEnv,
    ensure_env_indexes,
)

logger = logging.getLogger(__name__)

DESKTOP_ENV_MODULE = "desktop_env.desktop_env"
"""Module of the ``desktop-env`` package that defines ``DesktopEnv``."""


def is_local_rank_zero() -> bool:
    """Whether this process provisions for its node: ``LOCAL_RANK`` is 0 or unset."""
    return os.environ.get("LOCAL_RANK", "0").strip() in ("", "0")


def env_name_for(url: str) -> str:
    """The registry name of the env served at ``url``: ``osworld@<host>:<port>``."""
    parsed = urlparse(url)
    return f"osworld@{parsed.hostname}:{parsed.port or 80}"


def register_env(store: MongoStore, env: OSWorldEnv) -> OSWorldEnv:
    """Insert ``env``, or refresh the registered env of the same name (keeping its lease).

    Returns:
        The env as registered (the existing document's id when it was there already).
    """
    ensure_env_indexes(store)
    coll = store.collection(Environment)
    try:
        coll.insert_one(env.to_mongo())
        return env
    except DuplicateKeyError:
        fields = env.to_mongo()
        for key in ("_id", "created_at", "in_use", "lease_owner", "lease_expires_at_s",
                    "leased_at_s", "lease_count"):
            fields.pop(key, None)
        fields["updated_at"] = utcnow()
        coll.update_one({"name": env.name}, {"$set": fields})
        return OSWorldEnv.from_mongo(coll.find_one({"name": env.name}))


@dataclass
class ProvisionedEnvs:
    """What :func:`setup_osworld_envs` registered on this node.

    Attributes:
        envs: the registered envs.
        unreachable: URL → why it was left out.
        provisioned: False when this process is not LOCAL_RANK 0 (it did nothing).
    """

    envs: list[OSWorldEnv] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    provisioned: bool = False
    _store: MongoStore | None = None
    _owned_dbs: Databases | None = None
    _desktop_envs: list[Any] = field(default_factory=list)
    _bridge: BridgeServer | None = None
    _closed: bool = False

    def close(self, unregister: bool = True) -> None:
        """Unregister the envs, close the VMs this process started and stop the bridge
        (idempotent; also run at interpreter exit).

        Args:
            unregister: remove the envs from the registry (False leaves them registered, for
                a process that hands its URL envs over to another provisioner).
        """
        if self._closed:
            return
        self._closed = True
        if unregister and self._store is not None and self.envs:
            names = [env.name for env in self.envs]
            self._store.collection(Environment).delete_many({"name": {"$in": names}})
            logger.info("unregistered OSWorld envs %s", names)
        for desktop_env in self._desktop_envs:
            try:
                desktop_env.close()
            except Exception:  # noqa: BLE001 - keep closing the others
                logger.exception("closing a desktop-env VM failed")
        if self._bridge is not None:
            self._bridge.stop()
        if self._owned_dbs is not None:
            self._owned_dbs.close()

    def __enter__(self) -> ProvisionedEnvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _register_urls(
    store: MongoStore, config: AgentTrainingConfig, urls: list[str], result: ProvisionedEnvs
) -> None:
    node = socket.gethostname()
    for url in urls:
        try:
            timeout_s = min(config.osworld.request_timeout_s, 10.0)
            platform, width, height = probe_env(url, timeout_s=timeout_s)
        except EnvRequestError as exc:
            result.unreachable[url] = exc.reason
            logger.warning("OSWorld env %s is unreachable, left out: %s", url, exc.reason)
            continue
        parsed = urlparse(url)
        env = OSWorldEnv(
            name=env_name_for(url), url=url.rstrip("/"), host=parsed.hostname or "",
            port=parsed.port or 80, os_type=config.osworld.os_type if platform != "Windows"
            else "Windows", screen_width=width or config.osworld.screen_width,
            screen_height=height or config.osworld.screen_height, provider="url",
            status=EnvStatus.UP, node=node,
        )
        result.envs.append(register_env(store, env))


def start_desktop_envs(config: AgentTrainingConfig) -> list[DesktopEnvLike]:
    """Start ``osworld.num_envs`` VMs with desktop-env's ``DesktopEnv`` (imported here, lazily).

    Raises:
        ProviderUnavailableError: the ``desktop-env`` package is not installed.
    """
    try:
        module = importlib.import_module(DESKTOP_ENV_MODULE)
    except ImportError as exc:
        raise ProviderUnavailableError(config.osworld.provider, str(exc)) from exc
    size = (config.osworld.screen_width, config.osworld.screen_height)
    return [
        module.DesktopEnv(
            provider_name=config.osworld.provider, action_space="pyautogui", screen_size=size,
            headless=True, require_a11y_tree=True, os_type=config.osworld.os_type,
        )
        for _ in range(config.osworld.num_envs)
    ]


def _register_desktop_envs(
    store: MongoStore,
    config: AgentTrainingConfig,
    desktop_envs: list[Any],
    result: ProvisionedEnvs,
) -> None:
    node = socket.gethostname()
    by_name: dict[str, Any] = {}
    for desktop_env in desktop_envs:
        port = int(getattr(desktop_env, "server_port", 5000))
        url = f"http://{desktop_env.vm_ip}:{port}"
        by_name[env_name_for(url)] = (desktop_env, url)
    bridge = BridgeServer({name: de for name, (de, _) in by_name.items()})
    bridge.start()
    result._bridge = bridge
    for name, (_, url) in by_name.items():
        env = OSWorldEnv(
            name=name, url=url, host=urlparse(url).hostname or "", port=urlparse(url).port or 80,
            os_type=config.osworld.os_type, screen_width=config.osworld.screen_width,
            screen_height=config.osworld.screen_height, provider=config.osworld.provider,
            bridge_url=bridge.env_url(name), status=EnvStatus.UP, node=node,
        )
        result.envs.append(register_env(store, env))


def setup_osworld_envs(
    config: AgentTrainingConfig,
    dbs: Databases | None = None,
    desktop_envs: list[DesktopEnvLike] | None = None,
) -> ProvisionedEnvs:
    """Provision and register this node's OSWorld envs, on LOCAL_RANK 0 only.

    Args:
        config: ``osworld.env_urls``, ``osworld.provider``, ``osworld.num_envs``, screen size.
        dbs: connections to use; opened from ``config`` (and closed by ``close``) when None.
        desktop_envs: already-started ``DesktopEnv`` objects to register instead of starting
            ``osworld.provider`` VMs (tests pass stand-ins).

    Returns:
        The registered envs and the unreachable URLs; ``provisioned`` is False (and nothing is
        registered) when ``LOCAL_RANK`` is not 0. Call ``close()`` (or use ``with``) to unregister.

    Raises:
        ProviderUnavailableError: a provider is configured and ``desktop-env`` is not installed.
    """
    result = ProvisionedEnvs()
    if not is_local_rank_zero():
        logger.info("LOCAL_RANK=%s: OSWorld envs are provisioned by local rank 0",
                    os.environ.get("LOCAL_RANK"))
        return result
    result.provisioned = True
    databases = init_databases(config) if dbs is None else dbs
    result._store = databases.store
    result._owned_dbs = databases if dbs is None else None
    store = databases.store
    ensure_env_indexes(store)
    urls = [u.strip() for u in config.osworld.env_urls.split(",") if u.strip()]
    _register_urls(store, config, urls, result)
    if desktop_envs is None and config.osworld.provider != "none" and config.osworld.num_envs:
        desktop_envs = start_desktop_envs(config)
    if desktop_envs:
        result._desktop_envs = list(desktop_envs)
        _register_desktop_envs(store, config, list(desktop_envs), result)
    atexit.register(result.close)
    logger.info(
        "registered %d OSWorld envs (%d unreachable: %s)",
        len(result.envs), len(result.unreachable), sorted(result.unreachable),
    )
    return result
