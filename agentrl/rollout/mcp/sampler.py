"""`MCPSampler` (registered as ``mcp``): a multi-turn tool-using agent over MCP servers.

One trajectory (:meth:`MCPSampler.run`), settings from the config section ``mcp``:

1. the tools of the servers in ``mcp_config`` (:func:`~agentrl.rollout.mcp.pool.session_pool`,
   one pool per worker process) and the first messages: the system prompt (the task's, else
   ``mcp.system_prompt``, else :data:`DEFAULT_SYSTEM_PROMPTS`), with the tools described in it
   when ``tool_call_format: text`` (:func:`tools_prompt`), the ``mcp.demonstration`` messages,
   and the question;
2. up to ``max_turns`` LLM calls (``create_chat_completions``, one DispatchedSamplingTask each,
   ``tools=`` passed when ``tool_call_format: openai``). Each reply is appended as the server
   returned it. A reply with a final answer (:func:`~agentrl.rollout.mcp.rewards.extract_answer`
   in the task's ``answer_format``) ends the trajectory (its tool calls are not run); so does a
   reply with neither an answer nor a tool call. Otherwise its tool calls — OpenAI
   ``tool_calls``, or ``<tool_call>`` blocks in the text when there are none — run concurrently
   and each result is appended as a ``tool`` message (``tool_call_id``, ``name``); a malformed
   call, an unknown tool, a tool that raised or ran past ``tool_timeout_s`` gives a message
   starting with ``Error:``;
3. before each call after a context's first, the context is estimated as the previous call's
   ``usage.total_tokens`` plus the tool results since (:data:`CHARS_PER_TOKEN` characters a
   token) plus ``max_new_tokens``; above ``max_context_tokens`` the trajectory ends
   (``context_policy: end``) or the context restarts from the first messages (``reset``; the
   trainer trains each context as its own sequence).

``record.meta``: ``answer`` (``None`` when none), ``ended`` (``answer``, ``no_tool_call``,
``max_turns``, ``context``), ``messages`` (the whole transcript, every context in order),
``tool_calls`` (per call: ``turn``, ``id``, ``name``, ``server``, ``arguments``, ``error``,
``latency_s``) and ``metrics`` (:mod:`agentrl.rollout.outcomes`): ``turns`` (LLM calls),
``tool_calls``, ``tool_errors``, ``context_tokens`` (the largest ``usage.total_tokens`` of a
call), ``context_resets``, and, from :meth:`evaluate_record`, ``correct`` and ``well_formed`` (a
final answer in the format was given).

Scores: 1.0 right (``mcp.reward``: ``exact_match``, ``math`` or ``llm_judge``),
``mcp.format_reward`` for a wrong answer in the format, 0.0 without one. Only assistant tokens
train: the trainer masks system, user and tool tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Record
from agentrl.inference.tool_calls import (
    MalformedToolCall,
    ToolCall,
    from_openai,
    parse_tool_calls,
)
from agentrl.rollout.mcp.pool import MCPSessionPool, ToolResult, ToolSpec, session_pool
from agentrl.rollout.mcp.rewards import (
    exact_match,
    extract_answer,
    judge_answer,
    math_match,
)
from agentrl.rollout.mcp.task import MCPDataset, MCPTask
from agentrl.rollout.outcomes import CORRECT, WELL_FORMED, report_metrics
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler

CHARS_PER_TOKEN = 4
"""Characters per token assumed for text whose tokens no server has counted yet."""

DEFAULT_SYSTEM_PROMPTS = {
    "answer_tag": "Answer the user's question. Call the tools when they help. When you know the "
                  "answer, write it as <answer>ANSWER</answer>.",
    "boxed": "Answer the user's question. Call the tools when they help. When you know the "
             "answer, write it as \\boxed{ANSWER}.",
}
"""System prompt of tasks that bring none, by answer format (when ``mcp.system_prompt`` is
empty)."""


def tools_prompt(tools: list[ToolSpec]) -> str:
    """The tools described for a chat template that ignores ``tools`` (``tool_call_format:
    text``): one JSON schema per line and how to call them in ``<tool_call>`` blocks."""
    schemas = "\n".join(json.dumps(tool.to_openai()["function"]) for tool in tools)
    return (
        f"You can call these tools (JSON schemas):\n{schemas}\n"
        'To call a tool, write <tool_call>{"name": "TOOL", "arguments": {...}}</tool_call> and '
        "stop; its result comes back in the next message."
    )


@dataclass
class TrajectoryStats:
    """What one trajectory did (``record.meta["metrics"]`` and ``["tool_calls"]``)."""

    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    context_tokens: int = 0
    context_resets: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        """The counters as record metrics."""
        return {"turns": self.turns, "tool_calls": self.tool_calls,
                "tool_errors": self.tool_errors, "context_tokens": self.context_tokens,
                "context_resets": self.context_resets}


@dataclass
class Context:
    """The conversation sent to the model, and what is known of its size.

    Attributes:
        messages: the chat messages.
        calls: LLM calls made on it.
        counted_tokens: ``usage.total_tokens`` of the last call on it (0 before the first, or
            when the server reports no usage).
        uncounted_chars: characters of the messages the server has not counted.
    """

    messages: list[dict[str, Any]]
    calls: int = 0
    counted_tokens: int = 0
    uncounted_chars: int = 0

    def __post_init__(self) -> None:
        self.uncounted_chars = sum(len(str(m.get("content") or "")) for m in self.messages)

    def append(self, message: dict[str, Any]) -> None:
        """Add a message the server has not counted yet."""
        self.messages.append(message)
        self.uncounted_chars += len(str(message.get("content") or ""))

    def estimate(self, reply_tokens: int) -> int:
        """Tokens of the next call: counted + uncounted text + the reply's room."""
        return self.counted_tokens + math.ceil(self.uncounted_chars / CHARS_PER_TOKEN) \
            + reply_tokens


@register_sampler("mcp")
class MCPSampler(AsyncSampler):
    """A tool-using agent over the MCP servers of ``mcp_config`` (see the module docstring)."""

    task_class: ClassVar[type[MCPTask]] = MCPTask

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> MCPDataset:
        """``MCPDataset(train_file)`` for train, ``MCPDataset(eval_file)`` otherwise."""
        path = config.train_file if split == "train" else config.eval_file
        limit = config.max_train_tasks if split == "train" else 0
        return MCPDataset(path, skip_bad_lines=config.skip_bad_lines, limit=limit)

    def _task(self) -> MCPTask:
        if not isinstance(self.task, MCPTask):
            raise TypeError(f"MCPSampler needs an MCPTask, got {type(self.task).__name__}")
        return self.task

    def _record(self) -> Record:
        if self.record is None:
            raise RuntimeError("enter the sampler with `async with` first")
        return self.record

    def answer_format(self) -> str:
        """The task's answer format, else ``mcp.answer_format``."""
        return self._task().answer_format or self.config.mcp.answer_format

    def first_messages(self, tools: list[ToolSpec]) -> list[dict[str, Any]]:
        """System prompt (with the tools described, for ``tool_call_format: text``), the
        demonstration and the question."""
        task, settings = self._task(), self.config.mcp
        system = task.system_prompt or settings.system_prompt or \
            DEFAULT_SYSTEM_PROMPTS[self.answer_format()]
        if settings.tool_call_format == "text" and tools:
            system = f"{system}\n\n{tools_prompt(tools)}"
        return [{"role": "system", "content": system}, *map(dict, settings.demonstration),
                {"role": "user", "content": task.question}]

    async def run(self) -> None:
        """The tool loop (see the module docstring); outputs go to ``self.record.meta``."""
        record, settings = self._record(), self.config.mcp
        pool = await session_pool(self.config)
        tools = list(pool.tools.values())
        first = self.first_messages(tools)
        context = Context(messages=[dict(m) for m in first])
        transcript = list(context.messages)
        stats, answer, ended = TrajectoryStats(), None, "max_turns"
        for turn in range(settings.max_turns):
            if context.calls and \
                    context.estimate(self.config.max_new_tokens) > settings.max_context_tokens:
                if settings.context_policy == "end":
                    ended = "context"
                    break
                stats.context_resets += 1
                context = Context(messages=[dict(m) for m in first])
                transcript += [dict(m) for m in first]
            message, total = await self._ask(context, pool)
            stats.turns += 1
            stats.context_tokens = max(stats.context_tokens, total)
            transcript.append(message)
            answer = extract_answer(str(message.get("content") or ""), self.answer_format())
            calls = self.tool_calls_of(message)
            if answer is not None or not calls:
                ended = "answer" if answer is not None else "no_tool_call"
                break
            for result in await self._run_tools(pool, calls, turn, stats):
                context.append(result)
                transcript.append(result)
        record.meta.update(answer=answer, ended=ended, messages=transcript,
                           tool_calls=stats.calls)
        report_metrics(record, **stats.metrics())

    async def _ask(self, context: Context, pool: MCPSessionPool) -> tuple[dict[str, Any], int]:
        """One LLM call on the context; the reply is appended as the server returned it.

        Returns:
            The assistant message and the call's ``usage.total_tokens`` (estimated when the
            server reports no usage).
        """
        openai = self.config.mcp.tool_call_format == "openai"
        response = await self.create_chat_completions(
            context.messages, tools=pool.openai_tools() if openai and pool.tools else None,
            max_tokens=self.config.max_new_tokens,
        )
        reply = response["choices"][0]["message"]
        message: dict[str, Any] = {"role": "assistant", "content": reply.get("content") or ""}
        if reply.get("tool_calls"):
            message["tool_calls"] = reply["tool_calls"]
        context.append(message)
        context.calls += 1
        total = int((response.get("usage") or {}).get("total_tokens") or 0)
        if total:
            context.counted_tokens, context.uncounted_chars = total, 0
        else:
            total = context.estimate(0)
        return message, total

    def tool_calls_of(self, message: dict[str, Any]) -> list[ToolCall | MalformedToolCall]:
        """The reply's tool calls: OpenAI ``tool_calls`` (``tool_call_format: openai``), else
        ``<tool_call>`` blocks in its text, malformed ones included, in order."""
        if self.config.mcp.tool_call_format == "openai" and message.get("tool_calls"):
            return from_openai(message["tool_calls"])
        return parse_tool_calls(str(message.get("content") or "")).items

    async def _run_tools(
        self,
        pool: MCPSessionPool,
        calls: list[ToolCall | MalformedToolCall],
        turn: int,
        stats: TrajectoryStats,
    ) -> list[dict[str, Any]]:
        """Run the calls concurrently; one ``tool`` message per call, in call order."""
        settings = self.config.mcp
        results = await asyncio.gather(*(
            pool.call(c.name, c.arguments, settings.tool_timeout_s) if isinstance(c, ToolCall)
            else _malformed(c) for c in calls
        ))
        messages = []
        for call, result in zip(calls, results, strict=True):
            text = result.text
            if len(text) > settings.max_tool_result_chars:
                cut = len(text) - settings.max_tool_result_chars
                text = f"{text[:settings.max_tool_result_chars]}... [{cut} characters cut]"
            stats.tool_calls += 1
            stats.tool_errors += int(result.is_error)
            stats.calls.append({
                "turn": turn, "id": call.id, "name": call.name, "server": result.server,
                "arguments": call.arguments if isinstance(call, ToolCall) else call.raw,
                "error": result.is_error, "latency_s": result.latency_s,
            })
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                             "content": text})
        return messages

    async def evaluate_record(self, record: Record) -> float:
        """1.0 right, ``mcp.format_reward`` wrong, 0.0 without a final answer; ``correct`` and
        ``well_formed`` go to ``record.meta["metrics"]``.

        Raises:
            JudgeUnavailableError: ``reward: llm_judge`` and the judge gave no verdict.
        """
        task, settings = self._task(), self.config.mcp
        answer = record.meta.get("answer")
        correct = False
        if isinstance(answer, str):
            if settings.reward == "exact_match":
                correct = exact_match(answer, task.answers)
            elif settings.reward == "math":
                correct = await asyncio.to_thread(math_match, answer, task.answers)
            else:
                correct = await self._judge(record, answer)
        report_metrics(record, **{CORRECT: correct, WELL_FORMED: isinstance(answer, str)})
        if correct:
            return 1.0
        return settings.format_reward if isinstance(answer, str) else 0.0

    async def _judge(self, record: Record, answer: str) -> bool:
        """The judge's verdict; its calls are logged without a record, so they never train."""
        settings, task = self.config.mcp, self._task()
        router = self.context.router()
        complete = partial(router.create_chat_completion, model=settings.judge_model,
                           temperature=0.0, max_tokens=settings.judge_max_tokens)
        return await judge_answer(
            complete, model=settings.judge_model, record_id=record.id, question=task.question,
            references=task.answers, answer=answer, max_attempts=settings.judge_max_attempts,
        )


async def _malformed(call: MalformedToolCall) -> ToolResult:
    """The tool message of a call that cannot run."""
    return ToolResult(f"Error: malformed tool call: {call.reason}", True)
