"""Configuration precedence (defaults < YAML < env < flags) and errors that name the key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentrl.cli_options import parse_config_flags
from agentrl.configs import load_config
from agentrl.driver.main_job import child_env, write_config
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


def test_sections_from_yaml_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mcp:\n  max_turns: 8\n  reward: math\nmath: {demonstration: false}\n")
    monkeypatch.setenv("AGENTRL_MCP__TOOL_TIMEOUT_S", "2.5")
    cfg = load_config(path, **parse_config_flags(["--mcp.max-turns", "4", "--osworld.max-steps=3"]))
    assert cfg.mcp.max_turns == 4  # flag over YAML
    assert cfg.mcp.reward == "math"  # the rest of the YAML section is kept
    assert cfg.mcp.tool_timeout_s == 2.5  # env AGENTRL_MCP__TOOL_TIMEOUT_S
    assert cfg.math.demonstration is False
    assert cfg.osworld.max_steps == 3
    assert cfg.math.format_reward == 0.2  # default


def test_deprecated_flat_keys_load_into_their_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("format_reward: 0.3\nosworld_max_steps: 4\n")
    with pytest.warns(FutureWarning) as warned:
        cfg = load_config(path)
    assert cfg.math.format_reward == 0.3 and cfg.osworld.max_steps == 4
    messages = [str(w.message) for w in warned]
    assert any("'format_reward' is deprecated: use math.format_reward" in m for m in messages)
    assert any("'osworld_max_steps' is deprecated: use osworld.max_steps" in m for m in messages)
    monkeypatch.setenv("AGENTRL_MATH_DEMONSTRATION", "false")
    with pytest.warns(FutureWarning) as warned:
        cfg = load_config(**parse_config_flags(["--osworld-env-urls", "http://e:5000"]))
    assert any("AGENTRL_MATH__DEMONSTRATION" in str(w.message) for w in warned)
    assert cfg.math.demonstration is False
    assert cfg.osworld.env_urls == "http://e:5000"
    monkeypatch.setenv("AGENTRL_MATH__DEMONSTRATION", "true")  # the new name wins
    with pytest.warns(FutureWarning):
        assert load_config().math.demonstration is True


def test_bad_section_value_names_the_dotted_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmcp:\n  answer_format: boxed\n  max_turns: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line, info.value.file) == ("mcp.max_turns", 4, str(path))
    path.write_text("mcp:\n  max_turn: 3\n")
    with pytest.raises(ConfigError, match=r"did you mean 'mcp\.max_turns'") as info:
        load_config(path)
    assert info.value.line == 2


def test_typos_get_a_suggestion_and_keep_the_value(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("learing_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        load_config(learing_rate=1e-5)
    with pytest.raises(ConfigError) as info:
        parse_config_flags(["--learing-rate", "1e-5"])
    assert info.value.value == "1e-5"
    assert "'1e-5'" in str(info.value) and "did you mean '--learning-rate'" in str(info.value)
    with pytest.raises(ConfigError, match=r"did you mean '--mcp\.max-turns'"):
        parse_config_flags(["--mcp.max-turn=3"])


def test_empty_required_field_says_not_set() -> None:
    with pytest.raises(ConfigError, match="not set: judge_model") as info:
        load_config(**parse_config_flags(["--mcp.reward", "llm_judge"]))
    assert info.value.key == "mcp"
    assert load_config(mcp={"reward": "llm_judge", "judge_model": "judge"}).mcp.judge_model


def test_sections_survive_the_child_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRL_MCP__MAX_TURNS", "5")
    cfg = load_config(
        mcp={"tool_timeout_s": "3", "system_prompt": 'say "hi"\nthen: answer'},
        osworld={"env_urls": "http://a:1,http://b:2"}, math={"format_reward": "0.5"},
        external_services=[{"url": "http://x", "model": "m"}], db_connection_string="mongodb://h",
    )
    env = child_env(cfg, SimpleNamespace(mongo_uri="mongodb://h"), write_config(cfg, tmp_path))
    assert "AGENTRL_MCP__MAX_TURNS" not in env and json.loads(env["AGENTRL_MCP"])["max_turns"] == 5
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = load_config()
    assert child.model_dump() == cfg.model_dump()
    assert child.mcp.max_turns == 5 and child.mcp.system_prompt == 'say "hi"\nthen: answer'
