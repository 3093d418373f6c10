"""Token-exact training data: the ids an SGLang-shaped service returns are stored and trained
on as they are; on the real model through the CPU engine the trainer's logprobs of a fresh
record equal the engine's behaviour logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from transformers import AutoTokenizer

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    InferenceService,
    Record,
    RecordStatus,
    ServiceStatus,
)
from agentrl.inference.manager import InferenceManager
from agentrl.inference.model_files import default_model_path
from agentrl.inference.routing import Router
from agentrl.training.datasets import convert_record_to_data_func, is_token_exact
from agentrl.training.tokenization import collate, tokenize_sample
from agentrl.training.trainer import Trainer, model_logprobs
from tests.conftest import free_port
from tests.inference.routing_helpers import Recorder, with_router
from tests.inference.stub_server import StubServer

SYSTEM = {"role": "system", "content": "Answer briefly."}
USERS = ["What is 2+3?", "Are you sure?", "Say it once more."]
ANSWERS = ["Let me think. It is 5.", "Yes, 5.", "5"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(default_model_path())


def run_router(config: AgentTrainingConfig, dbs: Databases, record: Record,
               **params: Any) -> list[dict[str, Any]]:
    recorder = Recorder(dbs, record, number=record.attempt)

    async def run(router: Router) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = [SYSTEM]
        for user in USERS:
            messages = messages + [{"role": "user", "content": user}]
            reply = await router.create_chat_completion(messages, recorder=recorder, **params)
            replies.append(reply)
            answer = reply["choices"][0]["message"]
            messages = messages + [{"role": "assistant", "content": answer["content"]}]
        return replies

    return asyncio.run(with_router(config, dbs, run))


def sglang_script(tokenizer: Any, encode_answer: Callable[[str], list[int]]) -> Any:
    """A stub script that answers as SGLang does: the prompt is the chat template's ids, the
    completion the answer's ids (``encode_answer``) and ``<|im_end|>``."""
    def script(sid: str, body: dict[str, Any]) -> tuple[str, list[int], list[int], list[float],
                                                        str]:
        prompt = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True,
                                               tokenize=False)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        turn = sum(m["role"] == "user" for m in body["messages"]) - 1
        ids = encode_answer(ANSWERS[turn]) + [tokenizer.eos_token_id]
        return ANSWERS[turn], prompt_ids, ids, [-0.1 * (i + 1) for i in range(len(ids))], "stop"
    return script


def stored_record(dbs: Databases, record: Record) -> tuple[Record, list[DispatchedSamplingTask]]:
    record.status, record.score, record.advantage = RecordStatus.READY, 1.0, 0.5
    calls = sorted(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}),
                   key=lambda c: c.turn)
    return record, calls


def with_stub(config: AgentTrainingConfig, dbs: Databases, script: Any, record: Record
              ) -> list[tuple[str, dict[str, Any]]]:
    with StubServer() as stub:
        stub.script = script
        dbs.store.insert(InferenceService(name="s", endpoint=stub.url("s"), kind="sglang",
                                          models=[config.model_name], status=ServiceStatus.UP))
        run_router(config, dbs, record)
        return stub.replies


def test_sglang_ids_are_stored_and_a_three_turn_sequence_is_their_concatenation(
    config: AgentTrainingConfig, dbs: Databases, tokenizer: Any
) -> None:
    record = Record(task_id="t-exact", traj_id=0, epoch=1)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    replies = with_stub(config, dbs, sglang_script(tokenizer, encode), record)
    record, calls = stored_record(dbs, record)
    assert len(calls) == 3 and is_token_exact(calls)
    prompts, completions = [], []
    for call, (_, reply) in zip(calls, replies, strict=True):
        choice = reply["choices"][0]
        assert call.prompt_token_ids == choice["prompt_token_ids"]
        assert call.completion_token_ids == choice["response_token_ids"]
        assert call.logprobs == [c["logprob"] for c in choice["logprobs"]["content"]]
        prompts.append(call.prompt_token_ids)
        completions.append(call.completion_token_ids)

    (sample,) = convert_record_to_data_func(record, calls)
    tok = tokenize_sample(sample, tokenizer, temperature=config.temperature)
    expected, trained = list(prompts[0]), []
    for prompt, completion in zip(prompts, completions, strict=True):
        expected += prompt[len(expected):]
        trained += range(len(expected), len(expected) + len(completion))
        expected += completion
    assert tok.input_ids == expected and tok.token_exact
    assert [i for i, m in enumerate(tok.loss_mask) if m] == trained
    assert [tok.old_logprobs[i] for i in trained] == pytest.approx(
        [lp for c in calls for lp in c.logprobs])
    # the later prompts really are the earlier prompt + completion + the new messages
    for before, after, completion in zip(prompts, prompts[1:], completions, strict=False):
        assert after[: len(before) + len(completion)] == before + completion


def test_a_re_tokenized_answer_starts_a_new_exact_sequence(
    config: AgentTrainingConfig, dbs: Databases, tokenizer: Any
) -> None:
    """The engine sampled an answer as ids that the chat template's next prompt re-tokenizes
    differently (retokenization drift): the next turn trains in its own sequence, each one
    exactly what the engine saw."""
    record = Record(task_id="t-drift", traj_id=0, epoch=1)
    by_character = lambda text: [  # noqa: E731  a valid but non-canonical tokenization
        i for ch in text for i in tokenizer.encode(ch, add_special_tokens=False)]
    with_stub(config, dbs, sglang_script(tokenizer, by_character), record)
    record, calls = stored_record(dbs, record)
    samples = convert_record_to_data_func(record, calls)
    assert [len(s.turns) for s in samples] == [1, 1, 1]
    for sample, call in zip(samples, calls, strict=True):
        tok = tokenize_sample(sample, tokenizer)
        assert tok.input_ids == call.prompt_token_ids + call.completion_token_ids


@pytest.mark.slow
def test_trainer_logprobs_of_a_fresh_record_equal_the_engines_at_temperature_0_7(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.engine, config.engine_base_port = "cpu", min(free_port(), 64000)
    config.temperature, config.max_new_tokens = 0.7, 16
    record = Record(task_id="t-onpolicy", traj_id=0, epoch=1)
    with InferenceManager(config, dbs):
        run_router(config, dbs, record)
    record, calls = stored_record(dbs, record)
    assert is_token_exact(calls) and {c.temperature for c in calls} == {0.7}
    trainer = Trainer(config, dbs, show_progress=False)
    samples = convert_record_to_data_func(record, calls)
    batch = collate([tokenize_sample(s, trainer.tokenizer, temperature=config.temperature)
                     for s in samples], trainer.tokenizer.pad_token_id)
    mask = batch.loss_mask > 0
    assert int(mask.sum()) == sum(len(c.completion_token_ids) for c in calls)
    policy = model_logprobs(trainer.model, batch)[mask]
    behaviour = batch.old_logprobs[mask]
    gap = (policy - behaviour).abs().mean().item()
    ratio = (policy - behaviour).exp().mean().item()
    print(f"mean |logprob gap| {gap:.2e} nats, ratio mean {ratio:.6f}, {int(mask.sum())} tokens")
    assert gap < 0.02 and abs(ratio - 1.0) < 0.02
    metrics = trainer.optimize(batch, step=0)
    assert abs(metrics["policy/ratio_mean"] - 1.0) < 0.02
    assert metrics["train/token_exact_rate"] == 1.0
