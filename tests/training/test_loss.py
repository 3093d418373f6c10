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
    cispo_loss,
    cross_entropy_loss,
    get_loss,
    grpo_loss,
    gspo_loss,
    kl_penalty,
    loss_normalizer,
    minirl_loss,
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
    assert get_loss("MINIRL") is minirl_loss
    assert get_loss("CISPO") is cispo_loss
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


def test_minirl_detached_capped_weight_drops_out_of_bound_tokens() -> None:
    params = LossParams(epsilon=0.2, epsilon_higher=0.1, importance_weight_cap_ratio=5.0)
    ratios = [1.5, 0.5, 1.1, 0.7, 8.0]
    logp = _logp(ratios)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, -1.0]])
    out = minirl_loss(logp, torch.zeros(1, 5), adv, torch.ones(1, 5), torch.zeros(1, 5), params)
    # window [0.8, 1.3]: t0 (1.5, A>0) and t1 (0.5, A<0) are out of bound and dropped; t3
    # (0.7, A>0) and t4 (8, A<0) stay, t4 with its weight capped at 5; l_t = -w_t A_t log r_t
    kept = 1.1 * math.log(1.1) - 0.7 * math.log(0.7) + 5.0 * math.log(8.0)
    assert out.loss.item() == pytest.approx(kept / 3)
    out.loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, 1.1 / 3, -0.7 / 3, 5.0 / 3])
    assert out.metrics["clip_ratio/low_mean"] == pytest.approx(1 / 5)
    assert out.metrics["clip_ratio/high_mean"] == pytest.approx(1 / 5)
    assert out.metrics["clip_ratio/region_mean"] == pytest.approx(2 / 5)
    assert out.metrics["clip_ratio/capped_mean"] == pytest.approx(1 / 5)


def test_cispo_clips_the_weight_but_keeps_every_gradient() -> None:
    params = LossParams(cispo_epsilon_low=1.0, cispo_epsilon_high=0.28)
    logp = _logp([2.0, 0.5, 1.1])
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    out = cispo_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), torch.zeros(1, 3), params)
    # weights clip(r, 0, 1.28) = [1.28, 0.5, 1.1]; l_t = -w_t A_t log r_t
    want = -1.28 * math.log(2.0) + 0.5 * math.log(0.5) - 1.1 * math.log(1.1)
    assert out.loss.item() == pytest.approx(want / 3)
    out.loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.28 / 3, 0.5 / 3, -1.1 / 3])
    assert out.metrics["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert out.metrics["clip_ratio/low_mean"] == 0.0
    lower = cispo_loss(_logp([0.5]), torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1),
                       torch.zeros(1, 1), LossParams(cispo_epsilon_low=0.2))
    assert lower.loss.item() == pytest.approx(0.8 * math.log(0.5))  # weight clipped up to 0.8


def test_sequence_aggregation_is_grpo_per_sequence_mean() -> None:
    token = LossParams()
    sequence = LossParams(loss_aggregation="sequence")
    ratios = torch.tensor([[1.1, 1.2, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    args = (torch.zeros(2, 3, dtype=torch.float64), adv, mask, torch.zeros(2, 3))
    by_token = grpo_loss(torch.log(ratios), *args, token)
    assert by_token.loss.item() == pytest.approx(-(1.1 + 1.2 + 0.9 - 1.0) / 4)
    logp = torch.log(ratios).requires_grad_(True)
    by_sequence = grpo_loss(logp, *args, sequence)
    # (mean of sequence 0's objectives, 3.2/3, and sequence 1's, -1) / 2 sequences
    assert by_sequence.loss.item() == pytest.approx(-((3.2 / 3) - 1.0) / 2)
    by_sequence.loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.1 / 6, -1.2 / 6, -0.9 / 6])
    assert logp.grad[1].tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert loss_normalizer("GRPO", mask, "sequence") == 2.0
    assert loss_normalizer("GRPO", mask, "token") == 4.0
    assert loss_normalizer("GSPO", mask, "token") == 2.0  # GSPO is per sequence either way
    assert loss_normalizer("CrossEntropy", mask, "sequence") == 4.0
    norm = loss_normalizer("MINIRL", mask, "sequence")
    parts = sum(
        minirl_loss(torch.log(ratios[i : i + 1]), *(a[i : i + 1] for a in args), sequence,
                    norm).loss.item()
        for i in range(2)
    )
    whole = minirl_loss(torch.log(ratios), *args, sequence).loss.item()
    assert parts == pytest.approx(whole)


def test_kl_penalty_k3() -> None:
    params = LossParams(kl_coef=0.1)
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.3]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = kl_penalty(logp, ref, mask, params)
    # d = ref - logp: log 0.5 and log 2; k3 = e^d - d - 1
    k3 = [0.5 - math.log(0.5) - 1.0, 2.0 - math.log(2.0) - 1.0]
    assert out.loss.item() == pytest.approx(0.1 * sum(k3) / 2)
    assert out.metrics["kl/ref_mean"] == pytest.approx(sum(k3) / 2)
    out.loss.backward()
    # d k3 / d logp = 1 - e^d
    assert logp.grad[0].tolist() == pytest.approx([0.1 * 0.5 / 2, 0.1 * -1.0 / 2, 0.0])
    same = kl_penalty(ref, ref, torch.ones(1, 3), params)
    assert same.loss.item() == 0.0


def _random_batch() -> tuple[torch.Tensor, ...]:
    """(logp, old, adv, mask, staleness) of 2 x 4 float64 tokens, ratios near 1."""
    generator = torch.Generator().manual_seed(2)
    logp = -torch.rand(2, 4, generator=generator, dtype=torch.float64) - 0.1
    old = logp + 0.3 * torch.randn(2, 4, generator=generator, dtype=torch.float64)
    adv = torch.tensor([[1.0] * 4, [-0.5] * 4], dtype=torch.float64)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    return logp, old, adv, mask, torch.zeros(2, 4)


@pytest.mark.parametrize("loss", ["GRPO", "GSPO", "KL"])
@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_gradients_match_finite_differences(loss: str, aggregation: str) -> None:
    params = LossParams(
        loss_aggregation=aggregation, kl_coef=0.3, gspo_epsilon=0.3, gspo_epsilon_higher=0.1
    )
    logp, old, adv, mask, stale = _random_batch()

    def value(x: torch.Tensor) -> torch.Tensor:
        if loss == "KL":
            return kl_penalty(x, old, mask, params).loss
        return get_loss(loss)(x, old, adv, mask, stale, params).loss

    assert torch.autograd.gradcheck(value, (logp.clone().requires_grad_(True),))


@pytest.mark.parametrize("loss", ["MINIRL", "CISPO"])
@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_detached_weight_gradients_are_the_weighted_policy_gradient(
    loss: str, aggregation: str
) -> None:
    """With the weight detached, dL/dlogp_t = -w_t A_t m_t / N (token) or / (n_i N) (sequence),
    where finite differences of the loss would also count the weight's change."""
    params = LossParams(epsilon=0.2, epsilon_higher=0.08, loss_aggregation=aggregation)
    logp, old, adv, mask, stale = _random_batch()
    x = logp.clone().requires_grad_(True)
    get_loss(loss)(x, old, adv, mask, stale, params).loss.backward()
    ratio = torch.exp(logp - old)
    if loss == "CISPO":
        weight, kept = ratio.clamp(0.0, 1.28), mask
    else:
        out = ((ratio > 1.28) & (adv > 0)) | ((ratio < 0.8) & (adv < 0))
        weight, kept = ratio.clamp(max=5.0), mask * (~out).double()
    # the batch has tokens inside and outside the window (dropped by MINIRL, clipped by CISPO)
    assert 0 < kept.sum() < mask.sum() or bool((weight * mask != ratio * mask).any())
    if aggregation == "token":
        scale = torch.full_like(mask, 1.0 / kept.sum().item())
    else:
        scale = 1.0 / kept.sum(-1, keepdim=True).clamp(min=1) / (kept.sum(-1) > 0).sum()
    assert torch.allclose(x.grad, -weight * adv * kept * scale)
