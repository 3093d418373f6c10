"""Trainer ranks on CPU over gloo (2 spawned processes): one step equals a one-rank step,
unequal shares never hang, sharded checkpoints resume on another world size.

The model is a tiny random Llama built in the test (:mod:`tests.training.rank_workers`), not
SmolLM2: two ranks of the real model take minutes per step on a shared 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.training.distributed import deal_batch, deal_groups, select_rows
from agentrl.training.optimization import PolicyOptimizer
from agentrl.training.sharded_checkpoint import load_sharded, save_sharded
from agentrl.training.tokenization import TrainBatch
from tests.training.rank_workers import (
    groups_batch,
    resume_and_step,
    spawn,
    step_on_shares,
    steps_with_checkpoint,
    tiny_config,
    tiny_model,
)

LENGTHS = [12, 9, 7, 7, 10, 5, 6, 8]  # four groups of two rows


def _single_rank(batch, steps: int = 1) -> tuple[dict[str, torch.Tensor], list[float]]:  # noqa: ANN001
    trainer = PolicyOptimizer(tiny_config(), tiny_model(), torch.device("cpu"))
    losses = [trainer.optimize(batch, step=s)["loss/policy"] for s in range(steps)]
    return trainer.model.state_dict(), losses


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(want) <= set(got)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)


def test_deal_groups_evens_tokens() -> None:
    assert deal_groups([10, 3, 8, 5], 2) == [[0, 1], [2, 3]]  # 13 and 13 tokens
    assert deal_groups([4], 3) == [[0], [], []]
    batch, group_of_row = groups_batch(LENGTHS)
    shares = deal_batch(batch, group_of_row, 2)
    assert sorted(shares[0].record_ids + shares[1].record_ids) == sorted(batch.record_ids)
    tokens = [int(s.attention_mask.sum()) for s in shares]
    assert abs(tokens[0] - tokens[1]) <= 6  # whole groups: 21, 14, 15, 14 tokens
    empty = select_rows(batch, [])
    assert len(empty) == 0


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_two_ranks_step_like_one(mode: str, tmp_path: Path) -> None:
    batch, group_of_row = groups_batch(LENGTHS)
    shares = deal_batch(batch, group_of_row, 2)
    spawn(step_on_shares, 2, mode, shares, str(tmp_path))
    want, losses = _single_rank(batch)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    _assert_close(rank0["weights"], want)
    assert rank0["metrics"]["loss/policy"] == pytest.approx(losses[0], abs=1e-6)
    assert rank0["metrics"]["perf/trained_tokens"] == float(batch.loss_mask.sum())
    assert rank0["metrics"]["optim/step_applied"] == 1.0
    if mode == "ddp":  # both ranks hold the same parameters, bit for bit
        rank1 = torch.load(tmp_path / "rank1.pt", weights_only=False)["weights"]
        for name, value in rank0["weights"].items():
            assert torch.equal(value, rank1[name]), name


def test_unequal_shares_finish(tmp_path: Path) -> None:
    """One rank with 1 group, the other with 3 (2 micro-batches against 6): the step finishes on
    both and still equals the one-rank step."""
    batch, _ = groups_batch(LENGTHS)
    shares = [select_rows(batch, [0, 1]), select_rows(batch, [2, 3, 4, 5, 6, 7])]
    spawn(step_on_shares, 2, "fsdp", shares, str(tmp_path))
    want, _ = _single_rank(batch)
    _assert_close(torch.load(tmp_path / "rank0.pt", weights_only=False)["weights"], want)


def test_a_rank_without_rows_finishes(tmp_path: Path) -> None:
    batch, _ = groups_batch(LENGTHS)
    nothing = [select_rows(batch, []), select_rows(batch, list(range(len(LENGTHS))))]
    spawn(step_on_shares, 2, "fsdp", nothing, str(tmp_path))
    want, _ = _single_rank(batch)
    _assert_close(torch.load(tmp_path / "rank0.pt", weights_only=False)["weights"], want)


def test_two_rank_checkpoint_resumes_on_one(tmp_path: Path) -> None:
    batch, group_of_row = groups_batch(LENGTHS)
    shares = deal_batch(batch, group_of_row, 2)
    spawn(steps_with_checkpoint, 2, shares, 3, 2, str(tmp_path))
    uninterrupted = torch.load(tmp_path / "losses.pt")
    assert len(set(uninterrupted)) == 3  # the loss moves from step to step
    trainer = PolicyOptimizer(tiny_config(), tiny_model(), torch.device("cpu"))
    step = load_sharded(tmp_path / "ckpt", trainer.module, trainer.optimizer, trainer.scheduler)
    assert step == 2
    resumed = trainer.optimize(batch, step=step)["loss/policy"]
    assert resumed == pytest.approx(uninterrupted[2], abs=1e-4)


def _one_rank_checkpoint(tmp_path: Path) -> tuple[list[TrainBatch], list[float]]:
    """Two one-rank steps, checkpointed both ways (DCP and a one-rank optimizer.state_dict()),
    then the uninterrupted third step; the 2-rank shares and the three losses."""
    batch, group_of_row = groups_batch(LENGTHS)
    trainer = PolicyOptimizer(tiny_config(), tiny_model(), torch.device("cpu"))
    losses = [trainer.optimize(batch, step=s)["loss/policy"] for s in range(2)]
    (tmp_path / "ckpt").mkdir()
    save_sharded(tmp_path / "ckpt", trainer.module, trainer.optimizer, trainer.scheduler, 2)
    torch.save(
        {
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "step": 2,
        },
        tmp_path / "full.pt",
    )
    losses.append(trainer.optimize(batch, step=2)["loss/policy"])
    return deal_batch(batch, group_of_row, 2), losses


def test_one_rank_checkpoint_resumes_on_two(tmp_path: Path) -> None:
    shares, losses = _one_rank_checkpoint(tmp_path)
    spawn(resume_and_step, 2, shares, "dcp", str(tmp_path))
    assert torch.load(tmp_path / "resumed_dcp.pt") == pytest.approx(losses[2], abs=1e-4)


def test_one_rank_optimizer_state_resumes_on_two(tmp_path: Path) -> None:
    """A one-rank trainer_state.pt (index-keyed optimizer state) loads into 2 FSDP ranks."""
    shares, losses = _one_rank_checkpoint(tmp_path)
    spawn(resume_and_step, 2, shares, "full", str(tmp_path))
    assert torch.load(tmp_path / "resumed_full.pt") == pytest.approx(losses[2], abs=1e-4)
