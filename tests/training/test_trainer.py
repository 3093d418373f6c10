"""The trainer on the real SmolLM2 model: one optimizer step, the loop, checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask, Record, RecordStatus
from agentrl.errors import OrphanedRunStateError
from agentrl.rollout.ledger import GlobalStep
from agentrl.training.checkpoint import (
    COMPLETE_MARKER,
    checkpoint_size,
    latest_checkpoint,
    load_state,
)
from agentrl.training.datasets import DBRecordData, TrainTurn
from agentrl.training.metrics import read_metrics
from agentrl.training.tokenization import collate, tokenize_sample
from agentrl.training.trainer import Trainer, model_logprobs
from tests.training.factories import SYSTEM, completion, store_group

pytestmark = pytest.mark.slow


def _sample(tokenizer, answer: str, advantage: float) -> DBRecordData:  # noqa: ANN001
    ids, _ = completion(tokenizer, answer)
    return DBRecordData(
        record_id=f"r{advantage}",
        task_id="t",
        messages=[SYSTEM, {"role": "user", "content": "What is 2+3?"},
                  {"role": "assistant", "content": answer}],
        turns=[TrainTurn(message_index=2, dispatch_id="d", completion_token_ids=ids,
                         advantage=advantage, score=max(advantage, 0.0))],
    )


def _row_logprob_sums(trainer: Trainer, batch) -> list[float]:  # noqa: ANN001
    logp = model_logprobs(trainer.model, batch)
    return (logp * batch.loss_mask).sum(-1).tolist()


def test_one_step_raises_positive_and_lowers_negative(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.learning_rate = 1e-5
    trainer = Trainer(config, dbs, show_progress=False)
    tok = trainer.tokenizer
    samples = [_sample(tok, "#### 5", 1.0), _sample(tok, "The answer is 7.", -1.0)]
    batch = collate([tokenize_sample(s, tok) for s in samples], tok.pad_token_id)
    before = _row_logprob_sums(trainer, batch)
    metrics = trainer.optimize(batch, step=0)
    after = _row_logprob_sums(trainer, batch)
    assert after[0] > before[0]
    assert after[1] < before[1]
    assert metrics["loss/policy"] == pytest.approx(metrics["loss/policy"])  # finite
    assert metrics["perf/trained_tokens"] == batch.loss_mask.sum().item()
    assert metrics["clip_ratio/region_mean"] == 0.0  # old logprobs = the policy's own
    assert metrics["staleness/mean"] == 0.0


def test_loop_claims_publishes_checkpoints_and_resumes(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.train_batch_size = 4
    config.micro_batch_size = 2
    config.max_steps = 1
    config.learning_rate = 1e-6
    published: list[tuple[Path, int]] = []

    def publish(model_dir: Path, version: int) -> None:
        published.append((model_dir, version))

    first = Trainer(config, dbs, publish, show_progress=False)
    tok = first.tokenizer
    g1 = store_group(dbs, tok, "a-task", [1.0, 0.0])
    g2 = store_group(dbs, tok, "b-task", [0.0, 0.0], status=RecordStatus.ABANDONED)
    g3 = store_group(dbs, tok, "c-task", [0.2, 0.0])
    history = first.train()
    assert len(history) == 1
    assert GlobalStep(dbs).get() == 1
    assert [v for _, v in published] == [1]
    assert (published[0][0] / "model.safetensors").exists()
    assert (published[0][0] / COMPLETE_MARKER).exists()
    for record in g1 + g3:
        stored = dbs.store.get(Record, record.id)
        assert stored.trained_count == 1
        assert stored.last_trained_step == 1
    assert dbs.store.get(Record, g1[0].id).advantage == pytest.approx(1.0, abs=1e-3)
    assert dbs.store.get(Record, g1[1].id).advantage == pytest.approx(-1.0, abs=1e-3)
    assert {dbs.store.get(Record, r.id).trained_count for r in g2} == {0}  # no spread: never
    for record in g1 + g3:  # counted once the step is checkpointed; the claim is gone
        stored = dbs.store.get(Record, record.id)
        assert stored.train_claim_owner == "" and stored.train_claim_expires_ts == 0.0
    step1 = history[0]
    assert step1["reward/mean"] == pytest.approx((1.0 + 0.0 + 0.2 + 0.0) / 4)
    assert step1["train/records"] == 4 and step1["train/groups"] == 2
    assert step1["rollout/correct_rate"] == pytest.approx(1 / 6)  # 6 records finished so far
    assert step1["rollout/well_formed_rate"] == pytest.approx(2 / 6)

    # a fresh trainer resumes from the checkpoint and trains step 2 on new records
    store_group(dbs, tok, "d-task", [1.0, 0.2, 0.0, 0.0], epoch=2, step=1)
    config.max_steps = 2
    second = Trainer(config, dbs, publish, show_progress=False)
    assert second.resumed_step == 1
    history2 = second.train()
    assert len(history2) == 1
    assert [v for _, v in published] == [1, 1, 2]  # resume re-publishes step 1, then step 2
    assert GlobalStep(dbs).get() == 2
    assert latest_checkpoint(second.root).name == "step-000002"
    lines = read_metrics(second.metrics_path)
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[1]["staleness/mean"] == pytest.approx(0.0)
    assert lines[1]["reward/mean"] == pytest.approx(0.3)


def test_stops_when_sampling_finished_and_nothing_left(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    GlobalStep(dbs).set(8)  # left by an earlier run of the same key_prefix, no checkpoint
    trainer = Trainer(config, dbs, sampling_finished=lambda: True, show_progress=False)
    assert GlobalStep(dbs).get() == 0  # the base model is step 0
    assert trainer.train() == []
    assert GlobalStep(dbs).get() == 0
    assert torch.is_grad_enabled()


def test_misaligned_record_is_skipped_and_named(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = Trainer(config, dbs, show_progress=False)
    good, bad = store_group(dbs, trainer.tokenizer, "e-task", [1.0, 0.0])
    dbs.store.collection(DispatchedSamplingTask).update_one(
        {"record_id": bad.id}, {"$set": {"completion_token_ids": [42, 43], "logprobs": [-1, -1]}}
    )
    groups = trainer.claimer.claim(step=1, min_records=2)
    assert [len(g.records) for g in groups] == [2]
    with caplog.at_level("ERROR"):
        batch = trainer.build_batch(groups)
    assert batch.record_ids == [good.id]
    assert trainer.skipped_records == 1
    assert bad.id in caplog.text


def test_refuses_to_restart_from_base_over_an_earlier_runs_trained_records(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    dbs.store.insert(Record(task_id="t-old", traj_id=0, epoch=1, trained_count=1))
    with pytest.raises(OrphanedRunStateError, match="--fresh") as info:
        Trainer(config, dbs, show_progress=False)
    assert info.value.trained_records == 1 and info.value.db_name == config.db_name


def test_stop_request_finishes_the_step_checkpoints_it_and_the_rerun_resumes(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    """What a Ctrl-C during a step does (the driver calls request_stop from its handler)."""
    config.train_batch_size = 2
    config.checkpoint_every_steps = 4  # step 1 alone would not be resumable
    config.keep_checkpoints = 1
    trainer = Trainer(config, dbs, lambda d, v: trainer.request_stop(), show_progress=False)
    store_group(dbs, trainer.tokenizer, "f-task", [1.0, 0.0])
    store_group(dbs, trainer.tokenizer, "g-task", [0.0, 1.0])
    history = trainer.train()  # the stop arrives while step 1 publishes: step 1 finishes
    assert len(history) == 1 and GlobalStep(dbs).get() == 1
    path = latest_checkpoint(trainer.root)  # train() made the last completed step resumable
    assert path is not None and path.name == "step-000001"
    assert trainer.save_checkpoint_now() == path  # what the driver calls again: nothing new
    used = dbs.store.collection(Record).count_documents({"trained_count": 1})
    assert used == 2  # the step's records count as trained once it is checkpointed
    moments = load_state(path).optimizer["state"][0]
    assert moments["exp_avg"].dtype == torch.bfloat16  # checkpoint_optimizer_dtype default
    _, optimizer_bytes = checkpoint_size(path)
    params = sum(p.numel() for p in trainer.model.parameters())
    assert optimizer_bytes < 2 * 2 * params * 1.05  # two bf16 moments per parameter

    config.max_steps = 2
    rerun = Trainer(config, dbs, show_progress=False)  # no refusal: a checkpoint is there
    assert rerun.resumed_step == 1
    assert len(rerun.train()) == 1 and GlobalStep(dbs).get() == 2


def test_stop_request_ends_the_wait_without_a_step(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    trainer = Trainer(config, dbs, show_progress=False)  # nothing READY: it would wait
    trainer.request_stop()
    assert trainer.wait_for_groups() == []
    assert trainer.train() == [] and trainer.save_checkpoint_now() is None


def test_kl_penalty_to_the_initial_model(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.kl_coef, config.learning_rate = 0.5, 1e-4
    trainer = Trainer(config, dbs, show_progress=False)
    assert trainer.ref_model is not None
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    tok = trainer.tokenizer
    samples = [_sample(tok, "#### 5", 1.0), _sample(tok, "The answer is 7.", -1.0)]
    batch = collate([tokenize_sample(s, tok) for s in samples], tok.pad_token_id)
    first = trainer.optimize(batch, step=0)
    assert first["kl/ref_mean"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
    second = trainer.optimize(batch, step=0)
    assert second["kl/ref_mean"] > 1e-6  # one step moved the policy away from it
