"""Config fields as command-line flags: ``--num-generations 8`` overrides ``num_generations``.

The help text of each flag is the field's description in :class:`AgentTrainingConfig`, written
once there. Commands that take config flags declare
``context_settings=CONFIG_FLAGS_CONTEXT`` and pass ``ctx.args`` to :func:`parse_config_flags`.
"""

from __future__ import annotations

from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import ConfigError

CONFIG_FLAGS_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
"""Typer ``context_settings`` for a command that accepts ``--<field> VALUE`` flags."""


def parse_config_flags(args: list[str]) -> dict[str, Any]:
    """Turn ``["--num-generations", "8", "--sync-sampling", ...]`` into config overrides.

    ``--flag=value`` and ``--flag value`` both work; a boolean field given with no value is True
    (``--no-<flag>`` makes it False). Values stay strings; the config validates and converts.

    Raises:
        ConfigError: an unknown flag or a flag with no value.
    """
    fields = AgentTrainingConfig.model_fields
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(
                arg, None, "unexpected argument; config flags look like --field VALUE"
            )
        name, _, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in fields
        if negated:
            key = key[3:]
        if key not in fields:
            raise ConfigError(key, value or None, "unknown flag (see --help for the config flags)")
        is_bool = fields[key].annotation is bool
        if negated:
            overrides[key] = False
        elif value or "=" in arg:
            overrides[key] = value
        elif is_bool and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            overrides[key] = True
        elif i + 1 < len(args):
            i += 1
            overrides[key] = args[i]
        else:
            raise ConfigError(key, None, "the flag needs a value")
        i += 1
    return overrides


def config_flags_help() -> str:
    """One line per config field, ``--flag  description (default: ...)``, for epilogs."""
    lines = ["Config flags (override the YAML file and AGENTRL_<FIELD> env variables):", ""]
    for key, field in AgentTrainingConfig.model_fields.items():
        lines.append(
            f"  --{key.replace('_', '-')}: {field.description} "
            f"(default: {field.get_default(call_default_factory=True)!r})"
        )
    return "\n\n".join(lines)
