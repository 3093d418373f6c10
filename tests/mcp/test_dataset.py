"""MCPDataset field names and bad lines, and mcp.json parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agentrl.errors import ConfigError, DatasetError
from agentrl.rollout.mcp.servers import HttpServerSpec, StdioServerSpec, load_mcp_servers
from agentrl.rollout.mcp.task import MCPDataset
from tests.conftest import SHARED_DATA


def test_usual_field_names_and_gsm8k_answers(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in [
        {"question": "Capital of France?", "answer": "Paris", "system_prompt": "Be brief."},
        {"query": "2+2?", "a": 4, "answer_format": "boxed"},
        {"q": "Name a primary colour.", "expected_answer": ["red", "blue", "yellow"]},
    ]) + "\n\n")
    tasks = MCPDataset(path).tasks
    assert [(t.question, t.answers) for t in tasks] == [
        ("Capital of France?", ["Paris"]), ("2+2?", ["4"]),
        ("Name a primary colour.", ["red", "blue", "yellow"])]
    assert tasks[0].system_prompt == "Be brief." and tasks[1].answer_format == "boxed"
    gsm8k = MCPDataset(SHARED_DATA / "gsm8k" / "train.jsonl", limit=2)
    assert len(gsm8k) == 2 and gsm8k[0].answers == ["72"]  # the answer after ####


def test_bad_lines_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?", "answer": "yes"}\n{"question": "no answer"}\n'
                    "not json\n")
    with pytest.raises(DatasetError) as info:
        MCPDataset(path, skip_bad_lines=False)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 2, "answer")
    kept = MCPDataset(path)
    assert len(kept) == 1 and [e.line for e in kept.errors] == [2, 3]
    listed = tmp_path / "items.json"
    listed.write_text(json.dumps({"data": [{"question": "a?", "answer": "b"}, {"answer": "c"}]}))
    with pytest.raises(DatasetError, match="item 1: missing or empty") as info:
        MCPDataset(listed, skip_bad_lines=False)
    assert info.value.field == "question"


def test_mcp_json_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOL_TOKEN", "s3cret")
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {
        "local": {"command": "python", "args": ["srv.py", "--key=${TOOL_TOKEN}"],
                  "env": {"A": "1"}, "disabled": False},
        "remote": {"type": "http", "url": "https://tools.example/mcp",
                   "headers": {"Authorization": "Bearer ${TOOL_TOKEN}"}},
    }}))
    servers = load_mcp_servers(path)
    local, remote = servers["local"], servers["remote"]
    assert isinstance(local, StdioServerSpec) and isinstance(remote, HttpServerSpec)
    assert local.command == sys.executable and local.args == ["srv.py", "--key=s3cret"]
    assert local.cwd == str(tmp_path) and local.env == {"A": "1"}
    assert remote.headers == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(remote)


@pytest.mark.parametrize(("servers", "key", "reason"), [
    ({}, "mcpServers", "at least one server"),
    ({"x": {"command": "a", "url": "http://b"}}, "mcpServers.x", 'either "command"'),
    ({"x": {"type": "sse", "url": "http://b"}}, "mcpServers.x.type", "supported types"),
    ({"x": {"url": "ftp://b"}}, "mcpServers.x.url", "pattern"),
    ({"x": {"command": "a", "env": {"K": "${NOT_SET_ANYWHERE}"}}}, "mcpServers.x.env.K",
     "NOT_SET_ANYWHERE is not set"),
])
def test_bad_mcp_json_names_the_entry(
    tmp_path: Path, servers: dict, key: str, reason: str
) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    with pytest.raises(ConfigError, match=reason) as info:
        load_mcp_servers(path)
    assert info.value.key == key and info.value.file == str(path)
