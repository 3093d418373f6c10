"""Policy losses as small pure tensor functions, chosen by name (``loss_calculater``).

Every loss takes per-token tensors of one (micro-)batch, all of shape ``(B, T)`` and aligned on
the *predicted* token (position ``t`` holds the log-probability of token ``t`` given tokens
``< t``), and returns a :class:`LossOutput`: the scalar to back-propagate and detached metrics.

Symbols follow the papers:

- ``logprobs``: log pi_theta(y_t | y_<t) of the current policy (with grad), in nats.
- ``old_logprobs``: log pi_old(y_t | y_<t) of the behaviour policy that sampled the token.
- ``advantages``: A_t, the (group-relative) advantage of the turn the token belongs to.
- ``loss_mask``: 1 on tokens the policy generated in trained turns, 0 elsewhere (prompt, tool
  output, padding). Masked tokens get exactly zero gradient.
- ``staleness``: optimizer steps between sampling the token and now (``global_step -
  created_at_step``), used by the out-of-date decay.

Registered losses: ``GRPO`` (:func:`grpo_loss`), ``GSPO`` (:func:`gspo_loss`), ``CrossEntropy``
(:func:`cross_entropy_loss`). Register more with :func:`register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import UnknownLossError

LOG_RATIO_LIMIT = 20.0
"""Bound of ``|log pi_theta - log pi_old|`` before ``exp`` (nats): a ratio of at most
``e**20 ~ 4.9e8``, far outside every clip window, so a stale behaviour logprob can neither
overflow to ``inf`` nor make the gradient ``0 * inf = NaN``; clamped tokens get no gradient."""


@dataclass
class LossOutput:
    """What a loss function returns.

    Attributes:
        loss: scalar tensor to call ``backward()`` on.
        metrics: detached scalar statistics (``clip_ratio/low_mean``...) as floats, each a mean
            over this batch's trained tokens (NaN when there are none).
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LossParams:
    """The hyper-parameters of the losses (from :class:`AgentTrainingConfig`).

    Attributes:
        epsilon: lower clip range, ratio >= 1 - epsilon.
        epsilon_higher: extra upper range, ratio <= 1 + epsilon + epsilon_higher (DAPO).
        importance_weight_cap_ratio: c of dual-clip: the objective of a negative-advantage token
            is bounded below by ``c * A`` (the importance weight is capped at ``c``).
        out_of_date_decay: trust-window shrink per step of staleness, in [0, 1]; 0 turns it off.
        gspo_epsilon: GSPO's lower clip range of the sequence ratio.
        gspo_epsilon_higher: GSPO's extra upper clip range.
    """

    epsilon: float = 0.2
    epsilon_higher: float = 0.08
    importance_weight_cap_ratio: float = 5.0
    out_of_date_decay: float = 0.0
    gspo_epsilon: float = 3e-4
    gspo_epsilon_higher: float = 1e-4

    @classmethod
    def from_config(cls, config: AgentTrainingConfig) -> LossParams:
        """The loss parameters of ``config``."""
        return cls(
            epsilon=config.epsilon,
            epsilon_higher=config.epsilon_higher,
            importance_weight_cap_ratio=config.importance_weight_cap_ratio,
            out_of_date_decay=config.out_of_date_decay,
            gspo_epsilon=config.gspo_epsilon,
            gspo_epsilon_higher=config.gspo_epsilon_higher,
        )


class LossFunction(Protocol):
    """The signature every registered loss has."""

    def __call__(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        loss_mask: torch.Tensor,
        staleness: torch.Tensor,
        params: LossParams,
        normalizer: float | None = None,
    ) -> LossOutput: ...


_LOSSES: dict[str, LossFunction] = {}
_NORMALIZE_BY: dict[str, Literal["tokens", "sequences"]] = {}


def register_loss(
    name: str, normalize_by: Literal["tokens", "sequences"] = "tokens"
) -> Callable[[LossFunction], LossFunction]:
    """Register a loss function under ``name`` (the value of ``loss_calculater``).

    Args:
        name: the registered name.
        normalize_by: what its ``normalizer`` counts over the whole batch (see
            :func:`loss_normalizer`).
    """

    def decorator(fn: LossFunction) -> LossFunction:
        _LOSSES[name] = fn
        _NORMALIZE_BY[name] = normalize_by
        return fn

    return decorator


def loss_normalizer(name: str, loss_mask: torch.Tensor) -> float:
    """The ``normalizer`` of loss ``name`` for a whole batch, so micro-batches add up to it.

    Args:
        name: a registered loss.
        loss_mask: ``(B, T)`` loss mask of the whole batch.

    Returns:
        Trained tokens (token-level losses) or sequences with trained tokens (GSPO), at least 1.
    """
    if _NORMALIZE_BY.get(name, "tokens") == "sequences":
        return max(1.0, float((loss_mask.sum(-1) > 0).sum().item()))
    return max(1.0, float(loss_mask.sum().item()))


def get_loss(name: str) -> LossFunction:
    """The loss registered as ``name``.

    Raises:
        UnknownLossError: nothing is registered under ``name``.
    """
    if name not in _LOSSES:
        raise UnknownLossError(name, list(_LOSSES))
    return _LOSSES[name]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` where ``mask`` is 1, as a float (NaN when the mask is empty)."""
    count = mask.sum()
    if count.item() == 0:
        return float("nan")
    return float((values.float() * mask).sum().item() / count.item())


def trust_window(
    staleness: torch.Tensor, params: LossParams, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clip bounds, narrowed for stale tokens by the out-of-date decay.

    With decay ``d`` and staleness ``s`` (steps), the window ``[1 - low, 1 + high]`` shrinks by
    the factor ``(1 - d) ** s``: fresh tokens (s = 0) keep the full window, older ones a
    narrower one.

    Args:
        staleness: ``(B, T)`` steps since each token was sampled (>= 0).
        params: the loss parameters (``out_of_date_decay``).
        low: lower clip range (ratio >= 1 - low at s = 0).
        high: upper clip range (ratio <= 1 + high at s = 0).

    Returns:
        ``(lower, upper)`` bounds of the ratio, each ``(B, T)``.
    """
    factor = (1.0 - params.out_of_date_decay) ** staleness.clamp(min=0).to(torch.float32)
    return 1.0 - low * factor, 1.0 + high * factor


def _clipped_objective(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    staleness: torch.Tensor,
    params: LossParams,
    low: float,
    high: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The per-token PPO-style clipped surrogate shared by GRPO and GSPO.

    The log-ratio is clamped to ``[-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT]`` before ``exp``.

    Returns:
        ``(per_token_loss, effective_mask, metrics)``: the negated objective ``(B, T)``, the
        loss mask with out-of-window tokens removed (when the decay is on), and clip statistics
        (``policy/log_ratio_clamped_mean``: the trained tokens whose log-ratio was clamped).
    """
    clamped = log_ratio.detach().abs() > LOG_RATIO_LIMIT
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    lower, upper = trust_window(staleness, params, low, high)
    clipped = torch.maximum(torch.minimum(ratio, upper), lower)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    # Dual-clip (Ye et al., 2020): for A < 0 the objective is bounded below by c * A, i.e. the
    # importance weight is capped at c; the capped tokens get no gradient.
    cap = params.importance_weight_cap_ratio
    capped = (advantages < 0) & (ratio > cap)
    objective = torch.where(capped, cap * advantages, objective)
    mask = loss_mask.to(objective.dtype)
    out_of_window = (ratio.detach() < lower) | (ratio.detach() > upper)
    if params.out_of_date_decay > 0:
        mask = mask * (~out_of_window).to(mask.dtype)
    low_clip = (ratio.detach() < lower) & (advantages < 0)
    high_clip = (ratio.detach() > upper) & (advantages > 0)
    trained = loss_mask.to(objective.dtype)
    metrics = {
        "clip_ratio/low_mean": _masked_mean(low_clip, trained),
        "clip_ratio/high_mean": _masked_mean(high_clip, trained),
        "clip_ratio/region_mean": _masked_mean(low_clip | high_clip, trained),
        "clip_ratio/capped_mean": _masked_mean(capped, trained),
        "clip_ratio/out_of_window_mean": _masked_mean(out_of_window, trained),
        "policy/ratio_mean": _masked_mean(ratio.detach(), trained),
        "policy/log_ratio_clamped_mean": _masked_mean(clamped, trained),
    }
    return -objective * mask, mask, metrics


@register_loss("GRPO")
def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    staleness: torch.Tensor,
    params: LossParams,
    normalizer: float | None = None,
) -> LossOutput:
    """GRPO with DAPO's asymmetric clipping and token-level normalization.

    GRPO (Shao et al., 2024, "DeepSeekMath", eq. 3) maximizes the PPO clipped surrogate with a
    group-relative advantage. DAPO (Yu et al., 2025, eq. 8-10) decouples the clip range
    ("clip-higher": ``[1 - eps_low, 1 + eps_high]``) and normalizes by the number of tokens of
    the whole batch instead of per sequence::

        r_t = exp(logprobs_t - old_logprobs_t)
        J   = sum_t m_t * min(r_t A_t, clip(r_t, 1 - eps, 1 + eps + eps_higher) A_t) / sum_t m_t

    plus dual-clip (``c = importance_weight_cap_ratio``: ``J_t >= c A_t`` for ``A_t < 0``) and the
    out-of-date decay of :func:`trust_window` (out-of-window tokens are masked when it is on).

    Args:
        logprobs: ``(B, T)`` current-policy log-probs (requires grad).
        old_logprobs: ``(B, T)`` behaviour log-probs.
        advantages: ``(B, T)`` per-token advantages.
        loss_mask: ``(B, T)`` 1 on trained tokens.
        staleness: ``(B, T)`` steps since sampling.
        params: clip ranges, cap and decay.
        normalizer: the token count to divide by (the whole batch's, when this is a micro-batch);
            ``None`` uses this batch's effective mask sum.

    Returns:
        The loss ``-J`` and clip metrics.
    """
    per_token, mask, metrics = _clipped_objective(
        logprobs - old_logprobs, advantages, loss_mask, staleness, params,
        params.epsilon, params.epsilon + params.epsilon_higher,
    )
    denominator = normalizer if normalizer is not None else mask.sum().clamp(min=1.0)
    return LossOutput(per_token.sum() / denominator, metrics)


@register_loss("GSPO", normalize_by="sequences")
def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    staleness: torch.Tensor,
    params: LossParams,
    normalizer: float | None = None,
) -> LossOutput:
    """GSPO: the clipped surrogate on the sequence-level, length-normalized ratio.

    Zheng et al., 2025, "Group Sequence Policy Optimization" (eq. 5-7, and the GSPO-token
    variant, eq. 13-14)::

        s_i     = exp( mean_t (logprobs_it - old_logprobs_it) )          # over trained tokens
        s_it    = sg[s_i] * pi(y_it) / sg[pi(y_it)]                       # same value, token grads
        J_i     = mean_t min(s_it A_it, clip(s_it, 1 - eps, 1 + eps + eps_higher) A_it)
        J       = sum_i J_i / num_sequences

    With one advantage per sequence this is exactly GSPO. Clip ranges are ``gspo_epsilon`` and
    ``gspo_epsilon_higher`` (the paper uses 3e-4 and 4e-4).

    Args:
        logprobs, old_logprobs, advantages, loss_mask, staleness: ``(B, T)`` as in
            :func:`grpo_loss`.
        params: clip ranges, cap and decay.
        normalizer: number of sequences of the whole batch; ``None`` counts this batch's
            sequences that have trained tokens.

    Returns:
        The loss ``-J`` and clip metrics.
    """
    mask = loss_mask.to(logprobs.dtype)
    tokens_per_seq = mask.sum(dim=-1)  # (B,)
    seq_log_ratio = ((logprobs - old_logprobs) * mask).sum(-1) / tokens_per_seq.clamp(min=1.0)
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logprobs - logprobs.detach()
    per_token, eff_mask, metrics = _clipped_objective(
        token_log_ratio, advantages, loss_mask, staleness, params,
        params.gspo_epsilon, params.gspo_epsilon + params.gspo_epsilon_higher,
    )
    per_seq = per_token.sum(-1) / eff_mask.sum(-1).clamp(min=1.0)  # (B,)
    has_tokens = (tokens_per_seq > 0).to(per_seq.dtype)
    denominator = normalizer if normalizer is not None else has_tokens.sum().clamp(min=1.0)
    return LossOutput((per_seq * has_tokens).sum() / denominator, metrics)


@register_loss("CrossEntropy")
def cross_entropy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    staleness: torch.Tensor,
    params: LossParams,
    normalizer: float | None = None,
) -> LossOutput:
    """Supervised fine-tuning: the mean negative log-likelihood of the trained tokens.

    ``L = -sum_t m_t logprobs_t / sum_t m_t``; advantages, old log-probs and staleness are
    ignored (they are accepted so every loss has one signature).

    Args:
        logprobs: ``(B, T)`` current-policy log-probs.
        old_logprobs, advantages, staleness: unused.
        loss_mask: ``(B, T)`` 1 on trained tokens.
        params: unused.
        normalizer: token count of the whole batch; ``None`` uses this batch's.

    Returns:
        The loss and ``loss/nll`` (the same value, detached).
    """
    mask = loss_mask.to(logprobs.dtype)
    denominator = normalizer if normalizer is not None else mask.sum().clamp(min=1.0)
    loss = -(logprobs * mask).sum() / denominator
    return LossOutput(loss, {"loss/nll": float(loss.detach().item())})


def token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperatures: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probabilities of each token given the tokens before it, under the sampling
    distribution ``log_softmax(logits / T)`` (SGLang's behaviour logprobs, so on-policy tokens
    have ratio 1).

    Args:
        logits: ``(B, T, V)`` model outputs.
        input_ids: ``(B, T)`` token ids.
        temperatures: ``(B, T)`` temperature of each token (aligned on the predicted token);
            ``None``: 1.

    Returns:
        ``(B, T)`` where position ``t >= 1`` holds ``log p_T(input_ids[t] | input_ids[:t])``
        and position 0 holds 0 (nothing predicts the first token).
    """
    shifted = logits[:, :-1, :].float()
    if temperatures is not None:
        shifted = shifted / temperatures[:, 1:, None].to(shifted.dtype)
    targets = input_ids[:, 1:]
    picked = torch.gather(shifted, -1, targets.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(shifted, dim=-1)
    return torch.nn.functional.pad(logp, (1, 0), value=0.0)
