"""Records to samples to tensors: prefix merging, loss masks, behaviour logprob alignment."""

from __future__ import annotations

import base64
import io
import math
import os

import pytest
from PIL import Image
from transformers import AutoTokenizer

from agentrl.databases import Record, RecordStatus
from agentrl.databases.objectstore import LocalObjectStore, externalize
from agentrl.errors import AlignmentError, UnknownConverterError
from agentrl.inference.model_files import default_model_path
from agentrl.training.datasets import (
    DBRecordData,
    TrainTurn,
    convert_record_to_data_func,
    get_record_converter,
    preprocess_mm_messages_for_sample,
)
from agentrl.training.tokenization import collate, tokenize_sample
from tests.training.factories import SYSTEM, call


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    return AutoTokenizer.from_pretrained(default_model_path())


def _record(advantage: float = 1.0) -> Record:
    return Record(
        _id="t1:0:1", task_id="t1", traj_id=0, epoch=1, status=RecordStatus.READY,
        score=1.0, advantage=advantage,
    )


def _three_turns(tokenizer) -> list:  # noqa: ANN001
    user1 = {"role": "user", "content": "What is 2+3?"}
    m1 = [SYSTEM, user1]
    a1 = "Let me think."
    m2 = m1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": "Go on."}]
    a2 = "It is 5."
    m3 = m2 + [{"role": "assistant", "content": a2}, {"role": "user", "content": "Sure?"}]
    a3 = "Yes.\n#### 5"
    return [
        call(tokenizer, "t1:0:1", 0, m1, a1, step=3),
        call(tokenizer, "t1:0:1", 1, m2, a2, step=4),
        call(tokenizer, "t1:0:1", 2, m3, a3, step=4),
    ]


def test_three_turn_prefix_reuse_is_one_sequence(tokenizer) -> None:  # noqa: ANN001
    calls = _three_turns(tokenizer)
    samples = convert_record_to_data_func(_record(advantage=0.5), list(reversed(calls)))
    assert len(samples) == 1
    sample = samples[0]
    assert [t.message_index for t in sample.turns] == [2, 4, 6]
    assert len(sample.messages) == 7
    tok = tokenize_sample(sample, tokenizer)
    # the loss mask covers exactly the three assistant turns' sampled tokens
    trained = [i for i, m in enumerate(tok.loss_mask) if m]
    expected_ids = [t for c in calls for t in c.completion_token_ids]
    assert [tok.input_ids[i] for i in trained] == expected_ids
    assert sum(tok.loss_mask) == len(expected_ids)
    # behaviour logprobs land on the sampled tokens, NaN elsewhere
    assert [tok.old_logprobs[i] for i in trained] == pytest.approx(
        [lp for c in calls for lp in c.logprobs]
    )
    assert all(math.isnan(lp) for i, lp in enumerate(tok.old_logprobs) if i not in set(trained))
    assert {tok.advantages[i] for i in trained} == {0.5}
    assert [tok.created_at_step[i] for i in trained] == [3] * len(calls[0].completion_token_ids) + [
        4
    ] * (len(calls[1].completion_token_ids) + len(calls[2].completion_token_ids))
    # the whole sequence is exactly the chat template's rendering of the conversation
    rendered = tokenizer.apply_chat_template(sample.messages, tokenize=False)
    assert tokenizer.decode(tok.input_ids) == rendered.rstrip("\n")
    # each trained span is an assistant message body followed by <|im_end|>
    text_spans = []
    span: list[int] = []
    for i, m in enumerate(tok.loss_mask + [0]):
        if m:
            span.append(tok.input_ids[i])
        elif span:
            text_spans.append(tokenizer.decode(span))
            span = []
    assert text_spans == [
        "Let me think.<|im_end|>", "It is 5.<|im_end|>", "Yes.\n#### 5<|im_end|>"
    ]


def test_reset_context_starts_new_sequence(tokenizer) -> None:  # noqa: ANN001
    calls = _three_turns(tokenizer)
    calls[2] = call(
        tokenizer, "t1:0:1", 2, [SYSTEM, {"role": "user", "content": "Summary: 5. Sure?"}],
        "Yes.", step=4,
    )
    samples = convert_record_to_data_func(_record(), calls)
    assert [len(s.turns) for s in samples] == [2, 1]
    assert [s.sequence_index for s in samples] == [0, 1]
    batch = collate([tokenize_sample(s, tokenizer) for s in samples], tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 2
    assert batch.loss_mask.sum().item() == sum(len(c.completion_token_ids) for c in calls)
    assert batch.attention_mask[1].sum() < batch.attention_mask[0].sum()


def test_mismatched_tokens_name_the_record(tokenizer) -> None:  # noqa: ANN001
    bad = _three_turns(tokenizer)[0]
    bad.completion_token_ids = tokenizer("Something else", add_special_tokens=False)["input_ids"]
    bad.logprobs = [-1.0] * len(bad.completion_token_ids)
    samples = convert_record_to_data_func(_record(), [bad])
    with pytest.raises(AlignmentError, match="t1:0:1"):
        tokenize_sample(samples[0], tokenizer)
    bad.logprobs = bad.logprobs[:-1]
    with pytest.raises(AlignmentError, match="logprobs"):
        convert_record_to_data_func(_record(), [bad])


def test_missing_token_ids_use_template_tokens(tokenizer) -> None:  # noqa: ANN001
    first = _three_turns(tokenizer)[0]
    first.completion_token_ids, first.logprobs = [], []
    tok = tokenize_sample(convert_record_to_data_func(_record(), [first])[0], tokenizer)
    trained = [tok.input_ids[i] for i, m in enumerate(tok.loss_mask) if m]
    assert tokenizer.decode(trained) == "Let me think.<|im_end|>"
    assert all(math.isnan(tok.old_logprobs[i]) for i, m in enumerate(tok.loss_mask) if m)


def test_converter_registry() -> None:
    assert get_record_converter("default") is convert_record_to_data_func
    with pytest.raises(UnknownConverterError):
        get_record_converter("nope")


def test_preprocess_mm_messages_loads_object_store_images(tmp_path) -> None:  # noqa: ANN001
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))  # incompressible: large
    buf2 = io.BytesIO()
    noise.save(buf2, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf2.getvalue()).decode()
    store = LocalObjectStore(str(tmp_path))
    messages = externalize(
        [{"role": "user", "content": [
            {"type": "text", "text": "What is shown?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}],
        store,
    )
    assert "$objref" in str(messages)
    sample = DBRecordData(
        record_id="r", task_id="t", messages=messages,
        turns=[TrainTurn(message_index=1, dispatch_id="d")],
    )
    loaded, images = preprocess_mm_messages_for_sample(sample, store)
    assert len(images) == 1 and images[0].size == (64, 64)
    assert loaded[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
