"""A MathSampler and an MCPSampler whose first trajectory of each group scores 1.0, so every
group has score spread (the real model rarely solves GSM8K). Imported by workers and beat via
sampler_modules."""

from __future__ import annotations

from agentrl.databases import Record
from agentrl.rollout.math import MathSampler
from agentrl.rollout.mcp import MCPSampler
from agentrl.rollout.registry import register_sampler


@register_sampler("math_with_spread")
class SpreadMathSampler(MathSampler):
    """Real LLM calls and grading; trajectory 0 of each group is scored as correct."""

    async def evaluate_record(self, record: Record) -> float:
        """1.0 for ``traj_id == 0``, else the real grade."""
        if record.traj_id == 0:
            return 1.0
        return await super().evaluate_record(record)


@register_sampler("mcp_with_spread")
class SpreadMCPSampler(MCPSampler):
    """The real tool loop and grading; trajectory 0 of each group is scored as correct."""

    async def evaluate_record(self, record: Record) -> float:
        """1.0 for ``traj_id == 0``, else the real grade (metrics reported either way)."""
        score = await super().evaluate_record(record)
        return 1.0 if record.traj_id == 0 else score
