"""Telling a class defined again from a different class of the same name (for the registries).

A script that registers its own samplers and Task classes and names itself in
``sampler_modules`` is executed twice in one process: once as ``__main__`` (``python
script.py``) and once more by its module name when the in-process worker imports the configured
modules. Both executions define the same classes from the same source, and the registries
(:func:`~agentrl.databases.register_new_model`, :func:`~agentrl.rollout.registry.register_sampler`)
accept the second definition in place of the first. Two classes of one name from different
source files, or with different qualified names, are a real clash and are refused.
"""

from __future__ import annotations

import os
import sys


def source_file(cls: type) -> str | None:
    """The resolved path of the file ``cls`` was defined in (``None`` when it has none, e.g. a
    class typed into an interactive session)."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return os.path.realpath(path) if path else None


def is_redefinition(known: type, new: type) -> bool:
    """Whether ``new`` is ``known`` itself or the same class defined again by the same source.

    Args:
        known: the class registered first.
        new: the class being registered under the same name.

    Returns:
        True when they are the same object, or have the same ``__qualname__`` and were defined
        in the same file (``__main__`` and the module name of one script).
    """
    if known is new:
        return True
    if known.__qualname__ != new.__qualname__:
        return False
    path = source_file(known)
    return path is not None and path == source_file(new)
