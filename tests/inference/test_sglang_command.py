"""The SGLang launch command built from a config, argument by argument; placement and ports."""

from __future__ import annotations

import pytest

from agentrl.configs import load_config
from agentrl.errors import InferenceError
from agentrl.inference.manager import (
    Placement,
    current_placement,
    engine_port,
    resolve_engine_kind,
)
from agentrl.inference.sglang import build_cpu_engine_command, build_sglang_command


def flags(cmd: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs of a command (``None`` for switches)."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(cmd):
        if cmd[i].startswith("--"):
            has_value = i + 1 < len(cmd) and not cmd[i + 1].startswith("--")
            out[cmd[i]] = cmd[i + 1] if has_value else None
            i += 2 if has_value else 1
        else:
            i += 1
    return out


def test_sglang_command_argument_by_argument() -> None:
    config = load_config(inf_tp_size=4, inf_ep_size=2, inf_mem_ratio=0.55, seed=1234,
                         model_name="policy", engine_host="0.0.0.0")
    cmd = build_sglang_command(config, "/ckpt/model", 30020, python="/usr/bin/python3")
    assert cmd[:3] == ["/usr/bin/python3", "-m", "sglang.launch_server"]
    assert flags(cmd) == {
        "--model-path": "/ckpt/model",
        "--host": "0.0.0.0",
        "--port": "30020",
        "--tp-size": "4",
        "--ep-size": "2",
        "--mem-fraction-static": "0.55",
        "--served-model-name": "policy",
        "--enable-memory-saver": None,
        "--enable-weights-cpu-backup": None,
        "--random-seed": "1234",
        "--weight-version": "0",
        "--trust-remote-code": None,
    }


def test_cpu_engine_command() -> None:
    config = load_config(engine_max_batch_size=8, model_name="m", seed=3)
    cmd = build_cpu_engine_command(config, "/m", 31000, weight_version="4", python="py")
    assert cmd[:3] == ["py", "-m", "agentrl.inference.engine"]
    got = flags(cmd)
    assert got["--model"] == "/m" and got["--port"] == "31000" and got["--seed"] == "3"
    assert got["--max-batch-size"] == "8" and got["--served-model-name"] == "m"
    assert got["--weight-version"] == "4" and got["--num-threads"] == "0"
    assert "--enable-weights-cpu-backup" in got


def test_ports_of_dp_groups_never_collide() -> None:
    config = load_config(engine_base_port=40000)
    taken: set[int] = set()

    def is_free(host: str, port: int) -> bool:
        return port not in taken

    ports = []
    for group in range(4):
        port = engine_port(config, group, is_free)
        taken.add(port)
        ports.append(port)
    assert ports == [40000, 40010, 40020, 40030]
    taken.update({40010, 40011})
    assert engine_port(config, 1, is_free) == 40012
    taken.update(range(40020, 40030))
    with pytest.raises(InferenceError, match="40020-40029"):
        engine_port(config, 2, is_free)


def test_placement_from_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert current_placement(2) == Placement()
    monkeypatch.setenv("RANK", "13")
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert current_placement(2) == Placement(rank=13, local_rank=5, tp_rank=1, dp_group=6,
                                             local_dp_group=2)


def test_engine_kind() -> None:
    assert resolve_engine_kind("cpu") == "cpu"
    assert resolve_engine_kind("sglang") == "sglang"
    assert resolve_engine_kind("auto") == "cpu"  # no CUDA here
