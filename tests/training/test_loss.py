"""Losses against hand-computed values on small tensors, and their gradients."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.errors import UnknownLossError
from agentrl.training.advantages import group_advantages, has_spread
from agentrl.training.loss import (
    LOG_RATIO_LIMIT,
    LossParams,
    cross_entropy_loss,
    get_loss,
    grpo_loss,
    gspo_loss,
    loss_normalizer,
    token_logprobs,
    trust_window,
)
from agentrl.training.metrics import reduce_metrics


def _logp(ratios: list[float]) -> torch.Tensor:
    """Current log-probs whose ratio to old log-probs of 0 is ``ratios``; shape (1, T)."""
    return torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)


def test_grpo_clipped_and_unclipped_tokens_and_mask() -> None:
    params = LossParams(epsilon=0.2, epsilon_higher=0.1, importance_weight_cap_ratio=5.0)
    logp = _logp([1.5, 0.5, 1.1, 1.0])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = grpo_loss(logp, old, adv, mask, torch.zeros(1, 4), params)
    # window [0.8, 1.3]: t0 clipped high -> 1.3; t1 clipped low -> -0.8; t2 unclipped -> -1.1
    assert out.loss.item() == pytest.approx(-(1.3 - 0.8 - 1.1) / 3)
    out.loss.backward()
    grad = logp.grad[0]
    assert grad[0].item() == 0.0  # clipped
    assert grad[1].item() == 0.0  # clipped
    assert grad[2].item() == pytest.approx(1.1 / 3)  # -d(A r)/d logp / 3 with A=-1, r=1.1
    assert grad[3].item() == 0.0  # masked
    assert out.metrics["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert out.metrics["clip_ratio/low_mean"] == pytest.approx(1 / 3)
    assert out.metrics["clip_ratio/region_mean"] == pytest.approx(2 / 3)


def test_grpo_asymmetric_upper_bound_uses_epsilon_higher() -> None:
    logp = _logp([1.25])
    args = (torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1, 1))
    symmetric = grpo_loss(logp, *args, LossParams(epsilon=0.2, epsilon_higher=0.0))
    higher = grpo_loss(logp, *args, LossParams(epsilon=0.2, epsilon_higher=0.1))
    assert symmetric.loss.item() == pytest.approx(-1.2)
    assert higher.loss.item() == pytest.approx(-1.25)


def test_grpo_importance_weight_cap() -> None:
    params = LossParams(epsilon=0.2, epsilon_higher=0.1, importance_weight_cap_ratio=5.0)
    logp = _logp([10.0, 2.0])
    adv = torch.tensor([[-1.0, -1.0]])
    out = grpo_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2), torch.zeros(1, 2), params)
    # t0: ratio 10 > cap 5 with A < 0 -> objective -5 (no gradient); t1: -2 (below cap)
    assert out.loss.item() == pytest.approx((5.0 + 2.0) / 2)
    out.loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(2.0 / 2)
    assert out.metrics["clip_ratio/capped_mean"] == pytest.approx(0.5)


def test_out_of_date_decay_narrows_window_and_masks() -> None:
    params = LossParams(epsilon=0.2, epsilon_higher=0.1, out_of_date_decay=0.5)
    lower, upper = trust_window(torch.tensor([[0, 1, 2]]), params, 0.2, 0.3)
    assert lower.tolist()[0] == pytest.approx([0.8, 0.9, 0.95])
    assert upper.tolist()[0] == pytest.approx([1.3, 1.15, 1.075])
    logp = _logp([1.1, 1.2])
    stale = torch.tensor([[1, 1]])
    out = grpo_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), stale, params)
    # window at staleness 1 is [0.9, 1.15]: 1.1 trains, 1.2 is out of window and masked
    assert out.loss.item() == pytest.approx(-1.1)
    out.loss.backward()
    assert logp.grad[0, 1].item() == 0.0
    assert logp.grad[0, 0].item() == pytest.approx(-1.1)
    assert out.metrics["clip_ratio/out_of_window_mean"] == pytest.approx(0.5)


def test_gspo_sequence_ratio() -> None:
    params = LossParams(gspo_epsilon=0.3, gspo_epsilon_higher=0.0)
    logp = torch.tensor([[0.1, 0.3, 0.0], [1.0, 1.0, 0.0]], requires_grad=True)
    old = torch.zeros(2, 3)
    adv = torch.ones(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = gspo_loss(logp, old, adv, mask, torch.zeros(2, 3), params)
    s1 = math.exp(0.2)  # exp(mean(0.1, 0.3)), inside [0.7, 1.3]
    assert out.loss.item() == pytest.approx(-(s1 + 1.3) / 2)  # sequence 2 (ratio e) is clipped
    out.loss.backward()
    assert logp.grad[0, :2].tolist() == pytest.approx([-s1 / 2 / 2, -s1 / 2 / 2])
    assert logp.grad[0, 2].item() == 0.0
    assert logp.grad[1].abs().sum().item() == 0.0
    assert loss_normalizer("GSPO", mask) == 2.0
    assert loss_normalizer("GRPO", mask) == 4.0


def test_cross_entropy() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = cross_entropy_loss(logp, logp.detach(), torch.zeros(1, 3), mask, torch.zeros(1, 3),
                             LossParams())
    assert out.loss.item() == pytest.approx(1.5)
    out.loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([-0.5, -0.5, 0.0])


def test_micro_batches_with_global_normalizer_add_up() -> None:
    logp = torch.log(torch.tensor([[1.1, 0.9], [1.05, 1.0]]))
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    args = (torch.zeros(2, 2), adv, mask, torch.zeros(2, 2), LossParams())
    whole = grpo_loss(logp, *args).loss.item()
    norm = loss_normalizer("GRPO", mask)
    parts = sum(
        grpo_loss(logp[i : i + 1], *(a[i : i + 1] for a in args[:4]), args[4], norm).loss.item()
        for i in range(2)
    )
    assert parts == pytest.approx(whole)


def test_registry() -> None:
    assert get_loss("GRPO") is grpo_loss
    assert get_loss("GSPO") is gspo_loss
    assert get_loss("CrossEntropy") is cross_entropy_loss
    with pytest.raises(UnknownLossError, match="registered"):
        get_loss("PPO2")


def test_token_logprobs_matches_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    ids = torch.randint(0, 7, (2, 4))
    out = token_logprobs(logits, ids)
    assert out.shape == (2, 4)
    assert out[:, 0].abs().sum().item() == 0.0
    ref = torch.log_softmax(logits, -1)
    assert out[1, 2].item() == pytest.approx(ref[1, 1, ids[1, 2]].item(), abs=1e-5)


def test_token_logprobs_at_the_sampling_temperature() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 5)
    ids = torch.tensor([[0, 3, 1]])
    temps = torch.tensor([[1.0, 0.5, 2.0]])  # position t holds the temperature of token t
    out = token_logprobs(logits, ids, temps)
    assert out[0, 1].item() == pytest.approx(
        torch.log_softmax(logits[0, 0] / 0.5, -1)[3].item(), abs=1e-5)
    assert out[0, 2].item() == pytest.approx(
        torch.log_softmax(logits[0, 1] / 2.0, -1)[1].item(), abs=1e-5)


@pytest.mark.parametrize("loss", [grpo_loss, gspo_loss])
@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_behaviour_logprobs_far_off_give_a_finite_loss_and_gradient(  # noqa: ANN001
    loss, advantage: float
) -> None:
    """90 nats off: exp overflows without the clamp (loss finite, gradient NaN before)."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-91.0, -2.0, -0.5]])  # token 0: log-ratio +90
    out = loss(logprobs, old, torch.full((1, 3), advantage), torch.ones(1, 3),
               torch.zeros(1, 3), LossParams())
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0, 0].item() == 0.0  # the clamped token gets no gradient
    # GRPO: token 0 is clamped; GSPO: every token carries the sequence's mean, 30 nats
    assert out.metrics["policy/log_ratio_clamped_mean"] == pytest.approx(
        1 / 3 if loss is grpo_loss else 1.0)
    assert LOG_RATIO_LIMIT < 30


def test_group_advantages() -> None:
    assert group_advantages([1.0, 1.0, 1.0]) is None
    assert not has_spread([0.2, 0.2])
    plain = group_advantages([1.0, 0.0, 0.0, 0.0], std_norm=False)
    assert plain == pytest.approx([0.75, -0.25, -0.25, -0.25])
    normed = group_advantages([1.0, 0.0, 0.0, 0.0], std_norm=True)
    std = math.sqrt(0.1875)
    assert normed == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rel=1e-3)
    loo = group_advantages([1.0, 0.0, 0.0, 0.0], std_norm=False, leave_one_out=True)
    assert loo == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])


def test_reduce_metrics_is_nan_aware_and_weighted() -> None:
    out = reduce_metrics([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": 2.0}], weights=[1.0, 3.0])
    assert out["a"] == pytest.approx(2.5)
    assert out["b"] == pytest.approx(2.0)
    assert math.isnan(reduce_metrics([{"c": math.nan}])["c"])
