"""HTTP client of an OSWorld env control server.

The protocol is the API of OSWorld's in-VM server (``desktop_env/server/main.py``, port 5000)
plus two agentrl endpoints that a plain OSWorld VM does not serve:

======================================  =========================================================
``GET  /platform``                      OS name (reachability probe)
``POST /screen_size``                   ``{"width", "height"}`` in pixels
``GET  /screenshot``                    PNG bytes
``GET  /accessibility``                 ``{"AT": "<xml>"}``, the accessibility tree
``POST /execute``                       ``{"command": [...], "shell": bool}`` →
                                        ``{"status", "output", "error", "returncode"}``
``POST /setup/launch|execute|open_file|activate_window|download_file``  task setup steps
``POST /setup/<type>``                  other setup step types, parameters as the body
``POST /reset`` (agentrl)               ``{"task_config"}``: revert the VM; answers
                                        ``{"setup_done": bool}`` (True: the server ran the
                                        task's ``config`` steps itself). 404 is tolerated.
``POST /evaluate`` (agentrl)            ``{"task_config", "last_action"}`` → ``{"score": float}``
======================================  =========================================================

Actions run as OSWorld's ``PythonController`` runs them: ``python -c "import pyautogui; import
time; pyautogui.FAILSAFE = False; <code>"`` through ``/execute``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from agentrl.errors import EnvRequestError

PYAUTOGUI_PREFIX = "import pyautogui; import time; pyautogui.FAILSAFE = False; {code}"
"""How OSWorld wraps action code before running it with ``python -c``."""

SETUP_ENDPOINTS: dict[str, str] = {
    "launch": "/setup/launch",
    "execute": "/setup/execute",
    "command": "/setup/execute",
    "open": "/setup/open_file",
    "activate_window": "/setup/activate_window",
}
"""Setup step types served by OSWorld's in-VM server, and their endpoints."""

MAX_SLEEP_STEP_S = 30.0
"""Longest ``sleep`` setup step honoured, in seconds."""


class OSWorldEnvClient:
    """Async client of one env control server.

    Args:
        url: base URL, e.g. ``http://10.0.0.5:5000``.
        timeout_s: seconds one request may take.
        bridge_url: base URL serving ``/reset`` and ``/evaluate`` when it is not ``url``.

    Use as ``async with OSWorldEnvClient(url) as client: ...`` (closes the connection pool).
    """

    def __init__(self, url: str, timeout_s: float = 120.0, bridge_url: str = "") -> None:
        self.url = url.rstrip("/")
        self.bridge_url = (bridge_url or url).rstrip("/")
        self.http = httpx.AsyncClient(timeout=timeout_s)

    async def __aenter__(self) -> OSWorldEnvClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def _request(
        self, method: str, path: str, base: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        url = f"{base or self.url}{path}"
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise EnvRequestError(url, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise EnvRequestError(url, f"HTTP {response.status_code}: {response.text[:300]}")
        return response

    async def platform(self) -> str:
        """The VM's OS name (``Linux``, ``Windows``)."""
        return (await self._request("GET", "/platform")).text.strip()

    async def screen_size(self) -> tuple[int, int]:
        """``(width, height)`` of the VM's screen, in pixels."""
        data = (await self._request("POST", "/screen_size")).json()
        return int(data["width"]), int(data["height"])

    async def screenshot(self) -> bytes:
        """The screen as PNG bytes."""
        return (await self._request("GET", "/screenshot")).content

    async def accessibility_tree(self) -> str:
        """The accessibility tree as OSWorld's XML text."""
        return str((await self._request("GET", "/accessibility")).json().get("AT") or "")

    async def execute(self, command: list[str] | str, shell: bool = False) -> dict[str, Any]:
        """Run a command in the VM.

        Returns:
            ``{"status", "output", "error", "returncode"}`` as the server answers.
        """
        body = {"command": command, "shell": shell}
        return dict((await self._request("POST", "/execute", json=body)).json())

    async def run_action(self, code: str) -> dict[str, Any]:
        """Run pyautogui action code the way OSWorld's ``PythonController`` does."""
        return await self.execute(["python", "-c", PYAUTOGUI_PREFIX.format(code=code)])

    async def reset(self, task_config: dict[str, Any]) -> bool:
        """Ask the server to revert the VM for a new task.

        Returns:
            True when the server also ran the task's setup steps (a desktop-env bridge), False
            when the client must run them (:meth:`run_setup`); a server without ``/reset``
            (plain OSWorld VM) counts as False.
        """
        url = f"{self.bridge_url}/reset"
        try:
            response = await self.http.post(url, json={"task_config": task_config})
        except httpx.HTTPError as exc:
            raise EnvRequestError(url, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise EnvRequestError(url, f"HTTP {response.status_code}: {response.text[:300]}")
        return bool(response.json().get("setup_done", False))

    async def run_setup(self, steps: list[dict[str, Any]]) -> None:
        """Run a task's ``config`` setup steps in order (OSWorld's ``SetupController`` types).

        ``download`` becomes one ``/setup/download_file`` per file (the VM downloads), ``sleep``
        waits here, types OSWorld's server has no endpoint for go to ``/setup/<type>``.

        Raises:
            EnvRequestError: a step failed; the message names the URL and the server's answer.
        """
        for step in steps:
            kind = str(step.get("type", ""))
            params = dict(step.get("parameters") or {})
            if kind == "sleep":
                await asyncio.sleep(min(float(params.get("seconds", 0)), MAX_SLEEP_STEP_S))
            elif kind == "download":
                for file in params.get("files", []):
                    await self._request("POST", "/setup/download_file", json=file)
            else:
                endpoint = SETUP_ENDPOINTS.get(kind, f"/setup/{kind}")
                await self._request("POST", endpoint, json=params)

    async def evaluate(self, task_config: dict[str, Any], last_action: str) -> float:
        """Score the VM's state with the task's ``evaluator`` (OSWorld's metric, in [0, 1]).

        Args:
            task_config: the task's OSWorld example (holds ``evaluator``).
            last_action: the episode's last action (``DONE``, ``FAIL`` or code); OSWorld's
                ``infeasible`` tasks score 1 only when the agent said FAIL.
        """
        body = {"task_config": task_config, "last_action": last_action}
        data = (await self._request("POST", "/evaluate", base=self.bridge_url, json=body)).json()
        return float(data["score"])


def probe_env(url: str, timeout_s: float = 10.0) -> tuple[str, int, int]:
    """Check that a control server answers (synchronous, for provisioning).

    Returns:
        ``(platform, screen width, screen height)``; the size is ``(0, 0)`` when the server
        does not serve ``/screen_size``.

    Raises:
        EnvRequestError: ``/platform`` does not answer.
    """
    base = url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout_s) as http:
            response = http.get(f"{base}/platform")
            response.raise_for_status()
            size = http.post(f"{base}/screen_size")
            width, height = (0, 0)
            if size.status_code == 200:
                data = size.json()
                width, height = int(data["width"]), int(data["height"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise EnvRequestError(f"{base}/platform", f"{type(exc).__name__}: {exc}") from exc
    return response.text.strip(), width, height
