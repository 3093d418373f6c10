"""The settings of the built-in samplers, one section each of :class:`AgentTrainingConfig`.

Each sampler reads its own section (``config.math``, ``config.osworld``, ``config.mcp``), set in
YAML under the section's name (``mcp: {max_turns: 8}``), by ``AGENTRL_<SECTION>__<FIELD>``
environment variables (``AGENTRL_MCP__MAX_TURNS=8``) or by ``--<section>.<field>`` flags
(``--mcp.max-turns 8``). Each field's description is written once here and reused by the CLI.

:data:`DEPRECATED_KEYS` maps the flat names these settings had before (``format_reward``,
``osworld_env_urls``...) to their section; such a name still loads, with a warning naming the
new key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SectionSettings(BaseModel):
    """Base of a section: unknown keys are refused and assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MathSettings(SectionSettings):
    """Settings of the ``math`` sampler (:mod:`agentrl.rollout.math`)."""

    format_reward: float = Field(
        0.2, ge=0.0, le=1.0, description="Score of a well-formed but wrong boxed answer."
    )
    demonstration: bool = Field(
        True, description="Show one worked example before each question."
    )


class OSWorldSettings(SectionSettings):
    """Settings of the ``osworld`` sampler (:mod:`agentrl.rollout.osworld`)."""

    env_urls: str = Field(
        "",
        description=(
            "Comma-separated URLs of running OSWorld env control servers "
            "(e.g. http://10.0.0.5:5000), one per env, registered by setup_osworld_envs."
        ),
    )
    provider: Literal["none", "docker", "vmware", "virtualbox", "aws", "azure"] = Field(
        "none",
        description="desktop-env provider starting OSWorld VMs on LOCAL_RANK 0 (none: URLs only).",
    )
    num_envs: int = Field(
        1, ge=0, description="OSWorld VMs the desktop-env provider starts per node."
    )
    os_type: str = Field("Ubuntu", description="OS of the OSWorld VMs (Ubuntu, Windows).")
    screen_width: int = Field(1920, ge=1, description="Screen width of an env (pixels).")
    screen_height: int = Field(1080, ge=1, description="Screen height of an env (pixels).")
    observation: Literal["a11y_tree", "screenshot", "screenshot_a11y_tree"] = Field(
        "a11y_tree",
        description="What the model sees per step: accessibility tree (text), screenshot, or both.",
    )
    max_steps: int = Field(15, ge=1, description="Actions per OSWorld episode at most.")
    a11y_max_chars: int = Field(
        6000, ge=100, description="Characters of the accessibility tree kept per observation."
    )
    on_malformed_action: Literal["continue", "end"] = Field(
        "continue",
        description="After an unparsable model output: record a failed step and go on, or end.",
    )
    env_lease_ttl_s: float = Field(
        60.0, gt=0, description="Seconds an env lease lives without a heartbeat."
    )
    env_wait_s: float = Field(
        600.0, gt=0, description="Seconds a trajectory waits for a free env before failing."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Seconds one HTTP call to an env control server may take."
    )
    notes_in_prompt: int = Field(
        3, ge=0, description="Notes of earlier trajectories of the task shown in the prompt."
    )


class MCPSettings(SectionSettings):
    """Settings of the ``mcp`` tool sampler (:mod:`agentrl.rollout.mcp`).

    Raises:
        pydantic.ValidationError: ``reward: llm_judge`` without a ``judge_model``.
    """

    max_turns: int = Field(8, ge=1, description="LLM calls per trajectory at most.")
    max_context_tokens: int = Field(
        8192,
        ge=64,
        description=(
            "Tokens a context may hold: a call whose prompt plus max_new_tokens would pass it is "
            "not made (see context_policy)."
        ),
    )
    context_policy: Literal["end", "reset"] = Field(
        "end",
        description=(
            "When the context is full: end the trajectory, or reset it to the task's first "
            "messages and go on (turns keep counting)."
        ),
    )
    tool_call_format: Literal["openai", "text"] = Field(
        "openai",
        description=(
            "openai: tools passed as `tools`, calls read from `tool_calls` (or <tool_call> blocks "
            "when the server returns none); text: tools described in the system prompt and calls "
            "read from <tool_call> blocks only, for chat templates that ignore tools."
        ),
    )
    tool_timeout_s: float = Field(
        30.0, gt=0, description="Seconds one tool call may take; then it is a tool error."
    )
    max_tool_result_chars: int = Field(
        4000, ge=1, description="Characters of a tool result kept in the conversation."
    )
    answer_format: Literal["answer_tag", "boxed"] = Field(
        "answer_tag",
        description="Answer format of tasks that name none: <answer>...</answer> or \\boxed{}.",
    )
    system_prompt: str = Field(
        "",
        description="System prompt of tasks that bring none (empty: the built-in one).",
    )
    demonstration: list[dict[str, str]] = Field(
        default_factory=list,
        description=(
            "Chat messages ({role, content}) shown between the system prompt and the question, "
            "e.g. a worked tool call (JSON in env/flags)."
        ),
    )
    reward: Literal["exact_match", "math", "llm_judge"] = Field(
        "exact_match",
        description=(
            "exact_match: normalized string equality with any reference; math: numeric/symbolic "
            "equality (math-verify); llm_judge: a yes/no verdict of judge_model."
        ),
    )
    format_reward: float = Field(
        0.0, ge=0.0, le=1.0, description="Score of a final answer in the format that is wrong."
    )
    judge_model: str = Field(
        "", description="Served model name of the LLM judge (reward: llm_judge)."
    )
    judge_max_attempts: int = Field(
        3, ge=1, description="Judge calls per record before its failure is an infrastructure error."
    )
    judge_max_tokens: int = Field(16, ge=1, description="Tokens the judge may answer with.")

    @model_validator(mode="after")
    def _judge_named(self) -> MCPSettings:
        if self.reward == "llm_judge" and not self.judge_model:
            raise ValueError(
                "not set: judge_model (reward: llm_judge needs the served model name of the judge)"
            )
        return self


SECTIONS: dict[str, type[SectionSettings]] = {
    "math": MathSettings,
    "osworld": OSWorldSettings,
    "mcp": MCPSettings,
}
"""Section name → its settings model."""

DEPRECATED_KEYS: dict[str, tuple[str, str]] = {
    "format_reward": ("math", "format_reward"),
    "math_demonstration": ("math", "demonstration"),
    **{f"osworld_{field}": ("osworld", field) for field in OSWorldSettings.model_fields},
}
"""Old flat key → ``(section, field)`` it moved to."""
