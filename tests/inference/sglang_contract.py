"""SGLang 0.5.23's own request/response models and launch-argument parser, for contract tests.

sglang is installed with ``pip install --no-deps sglang==0.5.23`` (``.ci/run``) plus the pure
Python packages its protocol module imports (the ``test`` extra). ``import sglang`` would run
``sglang/__init__.py``, which loads its GPU runtime; the modules used here need none of it, so
the package is entered through a bare module whose ``__path__`` is the installed one.
``sglang.srt.utils.common`` imports ``triton`` at module top for GPU kernels that argument parsing
never calls: when triton is not installed it gets an empty module.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from functools import cache
from typing import Any

SGLANG_VERSION = "0.5.23"
INSTALL = f"pip install --no-deps sglang=={SGLANG_VERSION}"


@cache
def _enter_sglang() -> None:
    """Make ``sglang.*`` importable without running ``sglang/__init__.py``."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or spec.submodule_search_locations is None:
        raise RuntimeError(f"sglang is not installed: {INSTALL}")
    version = importlib.metadata.version("sglang")
    if version != SGLANG_VERSION:
        raise RuntimeError(f"sglang {version} is installed, the contract is {SGLANG_VERSION}")
    if "sglang" not in sys.modules:
        package = types.ModuleType("sglang")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["sglang"] = package
    if importlib.util.find_spec("triton") is None:
        sys.modules.setdefault("triton", types.ModuleType("triton"))


@cache
def protocol() -> types.ModuleType:
    """``sglang.srt.entrypoints.openai.protocol``."""
    _enter_sglang()
    return importlib.import_module("sglang.srt.entrypoints.openai.protocol")


def validate_request(body: dict[str, Any]) -> Any:
    """``body`` as SGLang's ``ChatCompletionRequest``; every key must be a field of it.

    Raises:
        AssertionError: a key SGLang does not know (pydantic would ignore it silently).
        pydantic.ValidationError: a value SGLang rejects.
    """
    model = protocol().ChatCompletionRequest
    unknown = sorted(set(body) - set(model.model_fields))
    assert not unknown, f"fields SGLang's ChatCompletionRequest does not have: {unknown}"
    return model.model_validate(body)


def assert_sglang_response(data: dict[str, Any], model_name: str = "ChatCompletionResponse"
                           ) -> None:
    """``data`` is exactly what SGLang serializes: validating it as ``model_name`` and dumping it
    back gives the same JSON (no field more, none less, same types)."""
    model = getattr(protocol(), model_name)
    assert model.model_validate(data).model_dump(mode="json") == data


@cache
def _server_args() -> types.ModuleType:
    _enter_sglang()
    return importlib.import_module("sglang.srt.server_args")


def parse_launch_command(argv: list[str]) -> Any:
    """Parse a ``python -m sglang.launch_server ...`` command as ``launch_server`` does
    (``prepare_server_args``).

    Returns:
        SGLang's ``ServerArgs``.

    Raises:
        SystemExit: a flag SGLang does not have or a value it rejects (argparse exits 2).
    """
    module_at = argv.index("sglang.launch_server")
    return _server_args().prepare_server_args(argv[module_at + 1:])
