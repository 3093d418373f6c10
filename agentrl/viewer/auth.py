"""Basic auth for the viewer, in Flower's form: ``--basic-auth user:password[,user2:password2]``.

The viewer binds 127.0.0.1 by default; bound to any other address it refuses to start without
credentials. Passwords are compared in constant time and never logged.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from agentrl.errors import ViewerAuthError

REALM = "agentrl viewer"


def parse_basic_auth(text: str) -> list[tuple[str, str]]:
    """``"u1:p1,u2:p2"`` as ``[("u1", "p1"), ("u2", "p2")]`` (a password may contain ``:``).

    Raises:
        ViewerAuthError: an entry has no ``:``, or an empty user or password.
    """
    pairs = []
    for entry in text.split(","):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise ViewerAuthError("--basic-auth takes user:password[,user2:password2]")
        pairs.append((user, password))
    return pairs


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (only then may auth be off)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_auth(host: str, credentials: list[tuple[str, str]]) -> None:
    """Refuse to serve a non-loopback ``host`` without credentials.

    Raises:
        ViewerAuthError: ``host`` is not loopback and ``credentials`` is empty.
    """
    if not credentials and not is_loopback(host):
        raise ViewerAuthError(
            f"the viewer binds {host}, which is not a loopback address: "
            "give --basic-auth user:password (or bind 127.0.0.1)",
            host=host,
        )


def basic_auth_dependency(credentials: list[tuple[str, str]]) -> Callable[..., None]:
    """A FastAPI dependency that answers 401 (with ``WWW-Authenticate: Basic``) unless the request
    carries one of ``credentials``."""
    security = HTTPBasic(realm=REALM)
    encoded = [(u.encode(), p.encode()) for u, p in credentials]

    def check(given: HTTPBasicCredentials = Depends(security)) -> None:  # noqa: B008
        user, password = given.username.encode(), given.password.encode()
        ok = False
        for u, p in encoded:  # every pair is compared, so timing says nothing about which
            ok |= secrets.compare_digest(user, u) & secrets.compare_digest(password, p)
        if not ok:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="wrong user or password",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )

    return check
