"""Group-relative advantages: a trajectory's score against the other samples of its task.

A group is the ``num_generations`` Records of one task in one epoch (same ``task_id`` and
``epoch``). GRPO (Shao et al., 2024, "DeepSeekMath", sec. 4.1.2) uses
``A_i = (r_i - mean(r)) / std(r)``; Dr. GRPO (Liu et al., 2025) drops the std division
(``advantage_std_norm: false``); RLOO (Ahmadian et al., 2024, "Back to Basics") uses the mean of
the *other* members as baseline, ``A_i = r_i - mean_{j != i} r_j`` (``advantage_leave_one_out``).
A group whose scores are all equal carries no signal and gets no advantages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agentrl.rollout.ledger import has_spread

__all__ = ["STD_EPSILON", "group_advantages", "has_spread"]

STD_EPSILON = 1e-4
"""Added to the std before dividing, so a tiny spread does not explode."""


def group_advantages(
    scores: Sequence[float], std_norm: bool = True, leave_one_out: bool = False
) -> list[float] | None:
    """Advantages of one group's trajectories.

    Args:
        scores: the scalar reward of each trajectory of the group.
        std_norm: divide by the group's (population) standard deviation.
        leave_one_out: baseline each score with the mean of the other scores (RLOO), which is
            ``n / (n - 1)`` times the plain mean-centred advantage.

    Returns:
        One advantage per score, in order; ``None`` when the group has no spread (skip it).
    """
    if not has_spread(scores):
        return None
    n = len(scores)
    mean = sum(scores) / n
    if leave_one_out:
        centred = [(s - (n * mean - s) / (n - 1)) for s in scores]
    else:
        centred = [s - mean for s in scores]
    if not std_norm:
        return centred
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
    return [a / (std + STD_EPSILON) for a in centred]
