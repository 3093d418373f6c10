"""A GSM8K sampler for small models: :class:`~agentrl.rollout.math.MathSampler` with a one-shot
demonstration of the ``\\boxed{}`` answer format.

SmolLM2-135M with the zero-shot prompt writes long reasoning and almost never a ``\\boxed{}``
answer within 96 tokens (measured: 0 of 64 well-formed), so no group has score spread. With one
short worked example in the conversation it answers in the expected format far more often
(measured: 14 of 64 well-formed at 96 tokens, temperature 1), which gives GRPO groups with spread.

Registered as ``math_oneshot``; a worker and beat import it through the config field
``sampler_modules: examples.gsm8k_sampler`` (run from the repository root). This shows the
extension point; the demonstration could equally become an option of ``MathSampler``.
"""

from __future__ import annotations

from typing import Any

from agentrl.rollout.math import MathSampler
from agentrl.rollout.registry import register_sampler

SYSTEM_PROMPT = (
    "Solve the math problem in a few short steps, then write the final number as "
    "\\boxed{number}."
)
DEMONSTRATION = [
    {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"},
    {"role": "assistant", "content": "Tom has 3 + 4 = 7 apples.\n\\boxed{7}"},
]


@register_sampler("math_oneshot")
class OneShotMathSampler(MathSampler):
    """MathSampler whose prompt shows one worked example before the question."""

    def messages(self) -> list[dict[str, Any]]:
        """System prompt, the demonstration, then the task's question."""
        question = super().messages()[-1]
        return [{"role": "system", "content": SYSTEM_PROMPT}, *DEMONSTRATION, question]
