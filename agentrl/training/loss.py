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

Registered losses: ``GRPO`` (:func:`grpo_loss`), ``GSPO`` (:func:`gspo_loss`), ``MINIRL``
(:func:`minirl_loss`), ``CISPO`` (:func:`cispo_loss`), ``CrossEntropy``
(:func:`cross_entropy_loss`). Register more with :func:`register_loss`. GRPO, MINIRL and CISPO
reduce their per-token losses as ``loss_aggregation`` says (:func:`aggregate`); the optional KL
penalty to the reference policy (``kl_coef``) is :func:`kl_penalty`, added by the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import UnknownLossError
from agentrl.training import metrics as M

Aggregation = Literal["token", "sequence"]
"""How per-token losses are averaged (config ``loss_aggregation``, see :func:`aggregate`)."""

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
        loss_aggregation: ``token`` or ``sequence`` (:func:`aggregate`).
        cispo_epsilon_low: CISPO's IS weight is clipped below at ``1 - cispo_epsilon_low``.
        cispo_epsilon_high: CISPO's IS weight is clipped above at ``1 + cispo_epsilon_high``.
        kl_coef: weight of :func:`kl_penalty` (0: no reference policy is needed).
    """

    epsilon: float = 0.2
    epsilon_higher: float = 0.08
    importance_weight_cap_ratio: float = 5.0
    out_of_date_decay: float = 0.0
    gspo_epsilon: float = 3e-4
    gspo_epsilon_higher: float = 1e-4
    loss_aggregation: Aggregation = "token"
    cispo_epsilon_low: float = 1.0
    cispo_epsilon_high: float = 0.28
    kl_coef: float = 0.0

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
            loss_aggregation=config.loss_aggregation,
            cispo_epsilon_low=config.cispo_epsilon_low,
            cispo_epsilon_high=config.cispo_epsilon_high,
            kl_coef=config.kl_coef,
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
NormalizeBy = Literal["tokens", "sequences", "aggregation"]
_NORMALIZE_BY: dict[str, NormalizeBy] = {}


def register_loss(
    name: str, normalize_by: NormalizeBy = "tokens"
) -> Callable[[LossFunction], LossFunction]:
    """Register a loss function under ``name`` (the value of ``loss_calculater``).

    Args:
        name: the registered name.
        normalize_by: what its ``normalizer`` counts over the whole batch (see
            :func:`loss_normalizer`); ``aggregation``: tokens or sequences as
            ``loss_aggregation`` says.
    """

    def decorator(fn: LossFunction) -> LossFunction:
        _LOSSES[name] = fn
        _NORMALIZE_BY[name] = normalize_by
        return fn

    return decorator


def loss_normalizer(
    name: str, loss_mask: torch.Tensor, aggregation: Aggregation = "token"
) -> float:
    """The ``normalizer`` of loss ``name`` for a whole batch, so micro-batches add up to it.

    Args:
        name: a registered loss.
        loss_mask: ``(B, T)`` loss mask of the whole batch.
        aggregation: ``loss_aggregation``, for losses registered with ``normalize_by=
            "aggregation"``.

    Returns:
        Trained tokens (token-level losses) or sequences with trained tokens (GSPO, and
        ``sequence`` aggregation), at least 1.
    """
    by = _NORMALIZE_BY.get(name, "tokens")
    if by == "aggregation":
        return aggregation_normalizer(aggregation, loss_mask)
    return aggregation_normalizer("sequence" if by == "sequences" else "token", loss_mask)


def aggregation_normalizer(aggregation: Aggregation, loss_mask: torch.Tensor) -> float:
    """What :func:`aggregate` divides by for a whole batch: trained tokens (``token``) or
    sequences with trained tokens (``sequence``), at least 1.

    Args:
        aggregation: ``token`` or ``sequence``.
        loss_mask: ``(B, T)`` loss mask of the whole batch.
    """
    if aggregation == "sequence":
        return max(1.0, float((loss_mask.sum(-1) > 0).sum().item()))
    return max(1.0, float(loss_mask.sum().item()))


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to the scalar of one (micro-)batch.

    ``token`` (DAPO, Yu et al., 2025, eq. 8: every token weighs the same)::

        L = sum_{i,t} m_it l_it / N_tokens

    ``sequence`` (GRPO, Shao et al., 2024, "DeepSeekMath", eq. 3: every sequence weighs the
    same, its tokens averaged first)::

        L = sum_i ( sum_t m_it l_it / sum_t m_it ) / N_sequences

    Args:
        per_token: ``(B, T)`` per-token loss.
        mask: ``(B, T)`` 1 on the tokens that count.
        aggregation: ``token`` or ``sequence``.
        normalizer: ``N_tokens`` / ``N_sequences`` of the whole batch (:func:`loss_normalizer`),
            so micro-batches add up; ``None`` counts this batch's (sequences with a token).

    Returns:
        The scalar loss.
    """
    mask = mask.to(per_token.dtype)
    if aggregation == "sequence":
        tokens_per_seq = mask.sum(-1)  # (B,)
        per_seq = (per_token * mask).sum(-1) / tokens_per_seq.clamp(min=1.0)  # (B,)
        count = (tokens_per_seq > 0).sum().clamp(min=1)
        return per_seq.sum() / (normalizer if normalizer is not None else count)
    count = mask.sum().clamp(min=1.0)
    return (per_token * mask).sum() / (normalizer if normalizer is not None else count)


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


@register_loss("GRPO", normalize_by="aggregation")
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
        normalizer: the token (``sequence`` aggregation: sequence) count to divide by, the whole
            batch's when this is a micro-batch; ``None`` uses this batch's effective mask.

    Returns:
        The loss ``-J`` (reduced by :func:`aggregate`) and clip metrics.
    """
    per_token, mask, metrics = _clipped_objective(
        logprobs - old_logprobs, advantages, loss_mask, staleness, params,
        params.epsilon, params.epsilon + params.epsilon_higher,
    )
    return LossOutput(aggregate(per_token, mask, params.loss_aggregation, normalizer), metrics)


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


def _detached_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """``exp(logprobs - old_logprobs)`` without grad, the log-ratio clamped to +-LOG_RATIO_LIMIT."""
    log_ratio = (logprobs.detach() - old_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return torch.exp(log_ratio)


@register_loss("MINIRL", normalize_by="aggregation")
def minirl_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    staleness: torch.Tensor,
    params: LossParams,
    normalizer: float | None = None,
) -> LossOutput:
    """MINIRL: REINFORCE weighted by the detached, capped importance ratio, in-bound tokens only.

    Upstream AgentRL's ``MINIRL`` loss (OpenBMB/AgentCPM, ``AgentCPM-Explore/AgentRL/src/
    training/arl.py``, with its ``strict_in_bound`` bounds ``[1 - eps, 1 + eps + eps_higher]``)::

        r_t = exp(logprobs_t - old_logprobs_t)
        w_t = min(sg[r_t], c)                                   # c = importance_weight_cap_ratio
        out_t = (r_t > upper_t and A_t > 0) or (r_t < lower_t and A_t < 0)
        l_t = -w_t A_t logprobs_t          on tokens with m_t = 1 and not out_t

    A token whose ratio already left the trust region in the direction its advantage pushes is
    dropped (no gradient), as in PPO's clip; every other token keeps the full policy gradient
    ``-w_t A_t``. ``[lower_t, upper_t]`` is :func:`trust_window` (narrowed by the out-of-date
    decay when it is on). The cap ``c`` is ours: upstream leaves ``w_t`` unbounded for ``A_t <
    0``; the two agree wherever ``r_t <= c``.

    Args:
        logprobs, old_logprobs, advantages, loss_mask, staleness: ``(B, T)`` as in
            :func:`grpo_loss`.
        params: ``epsilon``, ``epsilon_higher``, ``importance_weight_cap_ratio``, the decay and
            ``loss_aggregation``.
        normalizer: as in :func:`grpo_loss`.

    Returns:
        The loss and the fractions of dropped (``clip_ratio/*``) and capped tokens.
    """
    ratio = _detached_ratio(logprobs, old_logprobs)
    lower, upper = trust_window(
        staleness, params, params.epsilon, params.epsilon + params.epsilon_higher
    )
    weight = ratio.clamp(max=params.importance_weight_cap_ratio)
    low_out = (ratio < lower) & (advantages < 0)
    high_out = (ratio > upper) & (advantages > 0)
    trained = loss_mask.to(logprobs.dtype)
    mask = trained * (~(low_out | high_out)).to(logprobs.dtype)
    per_token = -weight * advantages * logprobs
    metrics = {
        M.CLIP_LOW: _masked_mean(low_out, trained),
        M.CLIP_HIGH: _masked_mean(high_out, trained),
        M.CLIP_REGION: _masked_mean(low_out | high_out, trained),
        M.CLIP_CAPPED: _masked_mean(ratio > params.importance_weight_cap_ratio, trained),
        M.POLICY_RATIO: _masked_mean(ratio, trained),
    }
    return LossOutput(aggregate(per_token, mask, params.loss_aggregation, normalizer), metrics)


@register_loss("CISPO", normalize_by="aggregation")
def cispo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    staleness: torch.Tensor,
    params: LossParams,
    normalizer: float | None = None,
) -> LossOutput:
    """CISPO: clip the importance-sampling weight, not the update (MiniMax-M1, arXiv 2506.13585).

    MiniMax (Chen et al.), 2025, "MiniMax-M1", section 3.1 (CISPO)::

        r_t  = exp(logprobs_t - old_logprobs_t)
        w_t  = sg[ clip(r_t, 1 - eps_low, 1 + eps_high) ]
        J    = sum_t m_t w_t A_t logprobs_t / sum_t m_t

    Unlike GRPO no token loses its gradient: a clipped token only gets a bounded weight, so rare
    tokens with large ratios still learn. ``eps_low`` / ``eps_high`` are ``cispo_epsilon_low``
    (1.0: no lower bound, as in the paper) and ``cispo_epsilon_high``; the bounds narrow with the
    out-of-date decay (:func:`trust_window`).

    Args:
        logprobs, old_logprobs, advantages, loss_mask, staleness: ``(B, T)`` as in
            :func:`grpo_loss`.
        params: ``cispo_epsilon_low``, ``cispo_epsilon_high``, the decay and
            ``loss_aggregation``.
        normalizer: as in :func:`grpo_loss`.

    Returns:
        The loss ``-J`` and the fractions of tokens whose weight was clipped (``clip_ratio/*``).
    """
    ratio = _detached_ratio(logprobs, old_logprobs)
    lower, upper = trust_window(
        staleness, params, params.cispo_epsilon_low, params.cispo_epsilon_high
    )
    weight = torch.maximum(torch.minimum(ratio, upper), lower)
    trained = loss_mask.to(logprobs.dtype)
    per_token = -weight * advantages * logprobs
    metrics = {
        M.CLIP_LOW: _masked_mean(ratio < lower, trained),
        M.CLIP_HIGH: _masked_mean(ratio > upper, trained),
        M.CLIP_REGION: _masked_mean((ratio < lower) | (ratio > upper), trained),
        M.POLICY_RATIO: _masked_mean(ratio, trained),
    }
    return LossOutput(aggregate(per_token, trained, params.loss_aggregation, normalizer), metrics)


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    loss_mask: torch.Tensor,
    params: LossParams,
    normalizer: float | None = None,
) -> LossOutput:
    """``kl_coef`` times the k3 estimate of KL(pi_theta || pi_ref), added to a policy loss.

    Schulman, 2020, "Approximating KL Divergence" (k3), as GRPO uses it (DeepSeekMath, eq. 4)::

        d_t  = ref_logprobs_t - logprobs_t
        k3_t = exp(d_t) - d_t - 1                       # >= 0, 0 where the policies agree
        L    = kl_coef * aggregate(k3, m)               # per ``loss_aggregation``

    ``d_t`` is clamped to +-LOG_RATIO_LIMIT (no gradient where it is clamped). The gradient is
    ``dk3_t / dlogprobs_t = 1 - exp(d_t)``.

    Args:
        logprobs: ``(B, T)`` current-policy log-probs (requires grad).
        ref_logprobs: ``(B, T)`` log-probs of the reference policy (the initial model).
        loss_mask: ``(B, T)`` 1 on trained tokens.
        params: ``kl_coef`` and ``loss_aggregation``.
        normalizer: the whole batch's count for ``loss_aggregation``
            (:func:`aggregation_normalizer`); ``None``: this batch's.

    Returns:
        The weighted penalty and ``kl/ref_mean`` (the mean k3 over trained tokens, unweighted).
    """
    delta = (ref_logprobs.detach() - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    k3 = torch.exp(delta) - delta - 1.0
    trained = loss_mask.to(logprobs.dtype)
    loss = params.kl_coef * aggregate(k3, trained, params.loss_aggregation, normalizer)
    return LossOutput(loss, {M.KL_REF_MEAN: _masked_mean(k3.detach(), trained)})


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
