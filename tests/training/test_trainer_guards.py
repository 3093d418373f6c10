"""The trainer's non-finite guards on the real SmolLM2: stale behaviour logprobs far off the
policy, a micro-batch whose loss is not finite, a step whose gradient norm is not finite."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from agentrl.training.datasets import DBRecordData, TrainTurn
from agentrl.training.tokenization import TrainBatch, collate, tokenize_sample
from agentrl.training.trainer import Trainer, model_logprobs
from tests.training.factories import SYSTEM, completion

pytestmark = pytest.mark.slow


def _batch(trainer: Trainer, advantages: list[float]) -> TrainBatch:
    """One single-turn sample per advantage (ids from the template: old logprobs unknown)."""
    tok = trainer.tokenizer
    samples = []
    for i, advantage in enumerate(advantages):
        answer = f"The answer is {i + 5}."
        ids, _ = completion(tok, answer)
        samples.append(DBRecordData(
            record_id=f"r{i}", task_id="t",
            messages=[SYSTEM, {"role": "user", "content": "What is 2+3?"},
                      {"role": "assistant", "content": answer}],
            turns=[TrainTurn(message_index=2, dispatch_id=f"d{i}", completion_token_ids=ids,
                             advantage=advantage)],
        ))
    return collate([tokenize_sample(s, tok) for s in samples], tok.pad_token_id)


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def _finite(trainer: Trainer) -> bool:
    return all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_behaviour_logprobs_90_nats_off_keep_loss_and_parameters_finite(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    config.micro_batch_size, config.learning_rate = 1, 1e-5
    trainer = Trainer(config, dbs, show_progress=False)
    batch = _batch(trainer, [1.0, -1.0, 1.0])
    policy = model_logprobs(trainer.model, batch)
    batch.old_logprobs = torch.where(batch.loss_mask > 0, policy, batch.old_logprobs)
    for row in (0, 1):  # stale behaviour logprobs in r0 (A > 0) and r1 (A < 0)
        first = int((batch.loss_mask[row] > 0).nonzero()[0])
        batch.old_logprobs[row, first] -= 90.0
    before = _params(trainer)
    with caplog.at_level("WARNING"):
        metrics = trainer.optimize(batch, step=0)
    assert math.isfinite(metrics["loss/policy"]) and math.isfinite(metrics["optim/grad_norm"])
    assert metrics["optim/step_applied"] == 1.0 and _finite(trainer)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                     strict=True))
    assert metrics["policy/log_ratio_clamped_mean"] > 0
    reported = [r.getMessage() for r in caplog.records if "log-ratio clamped" in r.getMessage()]
    assert len(reported) == 2 and "r0" in reported[0] and "r1" in reported[1]
    assert not any("r2" in line for line in reported)


def test_non_finite_micro_batch_is_skipped_and_a_non_finite_step_not_applied(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    config.micro_batch_size, config.learning_rate = 1, 1e-5
    trainer = Trainer(config, dbs, show_progress=False)
    batch = _batch(trainer, [1.0, -1.0, 1.0])
    batch.advantages[1] = torch.where(batch.loss_mask[1] > 0, math.nan, 0.0)
    before = _params(trainer)
    with caplog.at_level("ERROR"):
        metrics = trainer.optimize(batch, step=0)
    assert trainer.skipped_micro_batches == [["r1"]]
    assert metrics["train/skipped_micro_batches"] == 1.0 and "r1" in caplog.text
    assert metrics["optim/step_applied"] == 1.0 and math.isfinite(metrics["loss/policy"])
    assert _finite(trainer)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                     strict=True))

    # every micro-batch non-finite: nothing is applied, the parameters stay as they were
    batch.advantages[:] = math.nan
    before = _params(trainer)
    metrics = trainer.optimize(batch, step=1)
    assert metrics["optim/step_applied"] == 0.0 and len(trainer.skipped_micro_batches) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
