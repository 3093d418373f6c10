"""The sampler registry: samplers are named, and messages carry the name, never an import path.

Register a sampler class with ``@register_sampler("math")`` (or ``@register_sampler()`` to use the
class name); a worker resolves a message's ``sampler`` field with :func:`get_sampler`. A worker
process learns about samplers defined outside agentrl by importing the modules listed in the
config field ``sampler_modules`` at start (a name from configuration, never from the wire).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from agentrl.errors import UnknownSamplerError
from agentrl.redefinition import is_redefinition

if TYPE_CHECKING:
    from agentrl.rollout.sampler import AsyncSampler

S = TypeVar("S", bound="type[AsyncSampler]")

_SAMPLERS: dict[str, type[AsyncSampler]] = {}


def register_sampler(name: str | None = None) -> Callable[[S], S]:
    """Class decorator registering a sampler under ``name`` (default: the class name).

    Args:
        name: the registered name messages will carry.

    Returns:
        A decorator returning the class unchanged (with ``sampler_name`` set).

    Raises:
        ValueError: another class is registered under the same name (the same class defined
            again by the same file replaces it: :func:`~agentrl.redefinition.is_redefinition`).
    """

    def decorate(cls: S) -> S:
        key = name or cls.__name__
        known = _SAMPLERS.get(key)
        if known is not None and not is_redefinition(known, cls):
            raise ValueError(
                f"sampler name {key!r} is already taken by {known.__module__}."
                f"{known.__qualname__}"
            )
        _SAMPLERS[key] = cls
        cls.sampler_name = key
        return cls

    return decorate


def get_sampler(name: str) -> type[AsyncSampler]:
    """The sampler class registered as ``name``.

    Raises:
        UnknownSamplerError: nothing is registered under ``name``.
    """
    try:
        return _SAMPLERS[name]
    except KeyError:
        raise UnknownSamplerError(name, list(_SAMPLERS)) from None


def sampler_name_of(cls: type[AsyncSampler]) -> str:
    """The registered name of ``cls``, registering it under its class name if it has none."""
    for key, value in _SAMPLERS.items():
        if value is cls:
            return key
    register_sampler()(cls)
    return cls.__name__


def registered_samplers() -> dict[str, type[AsyncSampler]]:
    """A copy of the registry: name → sampler class."""
    return dict(_SAMPLERS)
