"""Builders of stored trajectories (Records + DispatchedSamplingTasks) shaped like the Router's."""

from __future__ import annotations

from typing import Any

from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    Record,
    RecordStatus,
)
from agentrl.rollout.outcomes import CORRECT, METRICS_KEY, WELL_FORMED

SYSTEM = {"role": "system", "content": "Answer with the number after ####."}


def completion(
    tokenizer: Any, text: str, base_logprob: float = -0.5
) -> tuple[list[int], list[float]]:
    """Token ids the engine would sample for ``text`` (ending with <|im_end|>) and distinct
    behaviour logprobs for them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids, [base_logprob - 0.01 * i for i in range(len(ids))]


def call(
    tokenizer: Any,
    record_id: str,
    turn: int,
    messages: list[dict[str, Any]],
    answer: str,
    step: int = 0,
) -> DispatchedSamplingTask:
    """A completed call answering ``messages`` with ``answer``."""
    ids, logprobs = completion(tokenizer, answer, base_logprob=-0.1 * (turn + 1))
    return DispatchedSamplingTask(
        record_id=record_id,
        task_id=record_id.split(":")[0],
        turn=turn,
        status=DispatchStatus.COMPLETED,
        request={"messages": messages, "tools": None},
        response={
            "choices": [
                {"message": {"role": "assistant", "content": answer, "refusal": None},
                 "finish_reason": "stop"}
            ]
        },
        completion_token_ids=ids,
        logprobs=logprobs,
        finish_reason="stop",
        created_at_step=step,
    )


def store_group(
    dbs: Databases,
    tokenizer: Any,
    task_id: str,
    scores: list[float],
    epoch: int = 1,
    question: str = "What is 2+3?",
    step: int = 0,
    status: RecordStatus = RecordStatus.READY,
) -> list[Record]:
    """Insert one READY group: a single-turn trajectory per score, with the metrics the math
    sampler reports (correct: score 1, well-formed: score above 0)."""
    records = []
    for traj_id, score in enumerate(scores):
        record = Record(
            _id=Record.identity_id(task_id, traj_id, epoch),
            task_id=task_id,
            traj_id=traj_id,
            epoch=epoch,
            status=status,
            score=score,
            created_at_step=step,
            meta={METRICS_KEY: {CORRECT: score >= 1, WELL_FORMED: score > 0}},
        )
        dbs.store.insert(record)
        answer = "#### 5" if score >= 1 else f"I think it is {traj_id + 7}."
        messages = [SYSTEM, {"role": "user", "content": question}]
        dbs.store.insert(call(tokenizer, record.id, 0, messages, answer, step))
        records.append(record)
    return records
