"""Config fields as command-line flags: ``--num-generations 8`` overrides ``num_generations``.

The help text of each flag is the field's description in :class:`AgentTrainingConfig`, written
once there. Commands that take config flags declare
``context_settings=CONFIG_FLAGS_CONTEXT`` and pass ``ctx.args`` to :func:`parse_config_flags`.
"""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo

from agentrl.config_sections import DEPRECATED_KEYS, SECTIONS
from agentrl.configs import AgentTrainingConfig, did_you_mean
from agentrl.errors import ConfigError

CONFIG_FLAGS_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
"""Typer ``context_settings`` for a command that accepts ``--<field> VALUE`` flags."""


def flag_fields() -> dict[str, FieldInfo]:
    """Every field a flag can set, by key: top-level fields, section fields as ``section.field``
    and the deprecated flat names (which :func:`~agentrl.configs.load_config` moves)."""
    fields: dict[str, FieldInfo] = {}
    for key, field in AgentTrainingConfig.model_fields.items():
        section = SECTIONS.get(key)
        if section is None:
            fields[key] = field
        else:
            fields.update({f"{key}.{sub}": f for sub, f in section.model_fields.items()})
    for old, (section_name, sub) in DEPRECATED_KEYS.items():
        fields[old] = SECTIONS[section_name].model_fields[sub]
    return fields


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _put(overrides: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted for a section field) in ``overrides``."""
    section, dot, sub = key.partition(".")
    if dot:
        overrides.setdefault(section, {})[sub] = value
    else:
        overrides[key] = value


def parse_config_flags(args: list[str]) -> dict[str, Any]:
    """Turn ``["--num-generations", "8", "--mcp.max-turns", "4", ...]`` into config overrides.

    ``--flag=value`` and ``--flag value`` both work; a boolean field given with no value is True
    (``--no-<flag>`` makes it False). A section field is ``--<section>.<field>`` and lands in
    ``overrides[section][field]``. Values stay strings; the config validates and converts.

    Raises:
        ConfigError: an unknown flag (with the closest known one and the value given) or a flag
            with no value.
    """
    fields = flag_fields()
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
            given = value or (args[i + 1] if i + 1 < len(args) and not
                              args[i + 1].startswith("--") else None)
            names = {k: _flag(k) for k in fields if k not in DEPRECATED_KEYS}
            raise ConfigError(
                key, given,
                f"unknown flag {_flag(key)}{did_you_mean(key, names)} (see --help for the flags)",
            )
        is_bool = fields[key].annotation is bool
        if negated:
            _put(overrides, key, False)
        elif value or "=" in arg:
            _put(overrides, key, value)
        elif is_bool and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            _put(overrides, key, True)
        elif i + 1 < len(args):
            i += 1
            _put(overrides, key, args[i])
        else:
            raise ConfigError(key, None, f"the flag {_flag(key)} needs a value")
        i += 1
    return overrides


def config_flags_help() -> str:
    """One line per config field, ``--flag  description (default: ...)``, for epilogs."""
    lines = ["Config flags (override the YAML file and AGENTRL_<FIELD> env variables):", ""]
    for key, field in flag_fields().items():
        if key in DEPRECATED_KEYS:
            continue
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {_flag(key)}: {field.description} (default: {default!r})")
    return "\n\n".join(lines)
