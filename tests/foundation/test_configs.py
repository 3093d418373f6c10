"""Configuration precedence (defaults < YAML < env < flags) and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.cli_options import parse_config_flags
from agentrl.configs import load_config
from agentrl.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTRL_CONFIG", raising=False)
    monkeypatch.delenv("AGENTRL_NUM_GENERATIONS", raising=False)
    monkeypatch.delenv("AGENTRL_TEMPERATURE", raising=False)


def test_yaml_env_flag_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\nnum_generations: 8\ntemperature: 0.5\ntop_p: 0.9\n")
    monkeypatch.setenv("AGENTRL_NUM_GENERATIONS", "6")
    monkeypatch.setenv("AGENTRL_TEMPERATURE", "0.7")
    cfg = load_config(path, **parse_config_flags(["--temperature", "0.3"]))
    assert cfg.name == "from-yaml"  # YAML over default
    assert cfg.top_p == 0.9
    assert cfg.num_generations == 6  # env over YAML
    assert cfg.temperature == 0.3  # flag over env
    assert cfg.max_new_tokens == 512  # default


def test_config_file_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("num_generations: 3\n")
    monkeypatch.setenv("AGENTRL_CONFIG", str(path))
    assert load_config().num_generations == 3


@pytest.mark.parametrize(
    ("yaml_text", "key", "line"),
    [
        ("name: x\nnum_generatoins: 4\n", "num_generatoins", 2),  # unknown key
        ("num_generations: many\n", "num_generations", 1),  # wrong type
        ("name: x\n\ntop_p: 1.5\n", "top_p", 3),  # out of range
        ("loss_calculater: PPO\n", "loss_calculater", 1),  # not a choice
    ],
)
def test_bad_yaml_value_names_key_file_and_line(
    tmp_path: Path, yaml_text: str, key: str, line: int
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert info.value.line == line
    assert info.value.file == str(path)
    assert f"{path}:{line}" in str(info.value) and key in str(info.value)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRL_NUM_GENERATIONS", "0")
    with pytest.raises(ConfigError, match="AGENTRL_NUM_GENERATIONS") as info:
        load_config()
    assert info.value.key == "num_generations"


def test_bad_flag_names_the_key() -> None:
    with pytest.raises(ConfigError, match="temperature") as info:
        load_config(**parse_config_flags(["--temperature=-1"]))
    assert info.value.value == "-1"
    with pytest.raises(ConfigError, match="unknown flag"):
        parse_config_flags(["--no-such-field", "1"])


def test_unreadable_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert info.value.file == str(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
