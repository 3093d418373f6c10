"""Tool calls in both formats: Hermes ``<tool_call>`` blocks and OpenAI ``tool_calls``."""

from __future__ import annotations

from agentrl.inference.tool_calls import (
    MalformedToolCall,
    ToolCall,
    from_openai,
    parse_tool_calls,
)


def test_hermes_blocks_become_calls_and_leave_the_text() -> None:
    text = ('Sure.<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
            '<tool_call>\n{"name": "now"}\n</tool_call>')
    parsed = parse_tool_calls(text)
    assert parsed.content == "Sure."
    assert [(c.name, c.arguments) for c in parsed.calls] == [("add", {"a": 1}), ("now", {})]
    assert parsed.calls[0].to_openai()["function"] == {"name": "add", "arguments": '{"a": 1}'}
    assert parsed.calls[0].id != parsed.calls[1].id and parsed.malformed == []


def test_malformed_blocks_stay_in_the_text_with_a_reason() -> None:
    cases = {
        "<tool_call>{not json}</tool_call>": "not valid JSON",
        '<tool_call>{"arguments": {}}</tool_call>': 'expected {"name"',
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "add", "arguments": "{bad"}</tool_call>': "arguments are not valid",
        'ok <tool_call>{"name": "add", "argu': "no closing </tool_call>",
    }
    for text, reason in cases.items():
        parsed = parse_tool_calls(text)
        assert parsed.content == text and parsed.calls == []
        assert len(parsed.malformed) == 1 and reason in parsed.malformed[0].reason, text
    assert parse_tool_calls("plain answer").malformed == []


def test_openai_tool_calls_keep_their_ids() -> None:
    calls = from_openai([
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}},
        {"id": "c2", "type": "function", "function": {"name": "add", "arguments": "{oops"}},
        {"id": "c3", "type": "function", "function": {"name": "", "arguments": "{}"}},
        {"id": "c4", "type": "function", "function": {"name": "now", "arguments": ""}},
    ])
    assert calls[0] == ToolCall(name="add", arguments={"a": 2}, id="c1")
    assert isinstance(calls[1], MalformedToolCall) and calls[1].id == "c2"
    assert calls[1].name == "add" and "not valid JSON" in calls[1].reason
    assert isinstance(calls[2], MalformedToolCall) and "without a function name" in calls[2].reason
    assert calls[3] == ToolCall(name="now", arguments={}, id="c4")
