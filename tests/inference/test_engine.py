"""The CPU engine with the real SmolLM2: token ids, logprobs, batching, weight updates, control."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from agentrl.inference.engine.runner import GenerationRequest, ModelRunner
from tests.inference.conftest import forward_logprobs

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is 12 plus 30? Answer briefly."}]


def chat(url: str, **body: Any) -> dict[str, Any]:
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    resp.raise_for_status()
    return resp.json()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chat_completion_token_ids_decode_to_text_and_logprobs_match_forward(
    engine_url: str, hf_model: tuple[Any, Any], temperature: float
) -> None:
    """SGLang's fields and semantics: the prompt and sampled ids under ``prompt_token_ids`` /
    ``response_token_ids``, logprobs ``log_softmax(logits / T)`` of the sampled tokens."""
    model, tokenizer = hf_model
    out = chat(engine_url, model="SmolLM2-135M-Instruct", messages=QUESTION, max_tokens=12,
               temperature=temperature, seed=3, logprobs=True, return_token_ids=True)
    choice = out["choices"][0]
    ids = choice["response_token_ids"]
    content = choice["logprobs"]["content"]
    assert len(content) == len(ids) and "token_id" not in content[0]
    assert 0 < len(ids) <= 12
    assert tokenizer.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
    prompt = tokenizer.encode(
        tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )
    assert choice["prompt_token_ids"] == prompt and "prompt_token_ids" not in out
    expected = forward_logprobs(model, prompt, ids, temperature)
    got = [c["logprob"] for c in content]
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-3
    if temperature != 1.0:  # not the raw distribution's
        raw = forward_logprobs(model, prompt, ids)
        assert max(abs(a - b) for a, b in zip(got, raw, strict=True)) > 1e-2
    assert out["usage"]["completion_tokens"] == len(ids)
    if len(ids) == 12 and ids[-1] != tokenizer.eos_token_id:
        assert choice["finish_reason"] == "length"


def test_concurrent_requests_are_batched_and_each_matches_a_forward_pass(
    engine_url: str, hf_model: tuple[Any, Any]
) -> None:
    """Different prompt lengths (left padding) and lengths (rows pruned) in one batch."""
    model, tokenizer = hf_model
    prompts = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Name three colours of the rainbow, please."}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "Write one sentence about the sea and the sky."}],
    ]

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [
                client.post(f"{engine_url}/v1/chat/completions", json={
                    "messages": m, "max_tokens": 3 + 2 * i, "temperature": 0.8, "seed": i,
                    "logprobs": True, "ignore_eos": True, "return_token_ids": True})
                for i, m in enumerate(prompts)
            ]
            return [r.json() for r in await asyncio.gather(*calls)]

    outs = asyncio.run(run())
    for i, (messages, out) in enumerate(zip(prompts, outs, strict=True)):
        choice = out["choices"][0]
        ids = choice["response_token_ids"]
        assert len(ids) == 3 + 2 * i
        assert choice["finish_reason"] == "length"
        prompt = tokenizer.encode(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )
        expected = forward_logprobs(model, prompt, ids, temperature=0.8)
        got = [c["logprob"] for c in choice["logprobs"]["content"]]
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-3


def test_n_choices_seed_and_stop(engine_url: str) -> None:
    body = {"messages": QUESTION, "max_tokens": 8, "n": 2, "seed": 7, "logprobs": True,
            "return_token_ids": True}
    first, second = chat(engine_url, **body), chat(engine_url, **body)
    assert len(first["choices"]) == 2
    assert [c["response_token_ids"] for c in first["choices"]] == [
        c["response_token_ids"] for c in second["choices"]]
    greedy = chat(engine_url, messages=QUESTION, max_tokens=20, temperature=0)
    text = greedy["choices"][0]["message"]["content"]
    words = text.split()
    if len(words) >= 2:
        stopped = chat(engine_url, messages=QUESTION, max_tokens=20, temperature=0,
                       stop=[words[1]])
        choice = stopped["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["matched_stop"] == words[1]
        assert words[1] not in choice["message"]["content"]
        assert text.startswith(choice["message"]["content"])


def score(url: str, ids: list[int]) -> list[float]:
    resp = httpx.post(f"{url}/generate", json={
        "input_ids": ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
        "logprob_start_len": 1}, timeout=120)
    resp.raise_for_status()
    return [item[0] for item in resp.json()["meta_info"]["input_token_logprobs"]]


def test_update_weights_from_disk_changes_version_and_logprobs_then_restores(
    engine_url: str, hf_model: tuple[Any, Any], model_dir: Path, tmp_path: Path
) -> None:
    model, tokenizer = hf_model
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    original = score(engine_url, ids)
    reference = forward_logprobs(model, ids[:1], ids[1:])
    assert max(abs(a - b) for a, b in zip(original, reference, strict=True)) < 1e-3

    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
        perturbed_expected = forward_logprobs(model, ids[:1], ids[1:])
        model.save_pretrained(tmp_path / "perturbed")
    finally:
        model.load_state_dict(state)

    before = httpx.get(f"{engine_url}/model_info").json()["weight_version"]
    resp = httpx.post(f"{engine_url}/update_weights_from_disk", timeout=120,
                      json={"model_path": str(tmp_path / "perturbed"), "weight_version": "5"})
    assert resp.status_code == 200 and resp.json()["success"] is True
    assert httpx.get(f"{engine_url}/model_info").json()["weight_version"] == "5" != before
    assert httpx.get(f"{engine_url}/get_model_info").json()["weight_version"] == "5"
    perturbed = score(engine_url, ids)
    assert max(abs(a - b) for a, b in zip(perturbed, perturbed_expected, strict=True)) < 1e-3
    assert max(abs(a - b) for a, b in zip(perturbed, original, strict=True)) > 0.05

    resp = httpx.post(f"{engine_url}/update_weights_from_disk", timeout=120,
                      json={"model_path": str(model_dir), "weight_version": "6"})
    assert resp.json()["success"] is True
    restored = score(engine_url, ids)
    assert max(abs(a - b) for a, b in zip(restored, original, strict=True)) < 1e-4

    bad = httpx.post(f"{engine_url}/update_weights_from_disk", timeout=60,
                     json={"model_path": str(tmp_path / "missing")})
    assert bad.status_code == 400 and bad.json()["success"] is False
    assert httpx.get(f"{engine_url}/model_info").json()["weight_version"] == "6"


def test_weights_updated_while_released_are_served_after_resume(
    engine_url: str, model_dir: Path
) -> None:
    assert httpx.post(f"{engine_url}/release_memory_occupation", json={}).status_code == 200
    resp = httpx.post(f"{engine_url}/update_weights_from_disk", timeout=120,
                      json={"model_path": str(model_dir), "weight_version": "9"})
    assert resp.json()["success"] is True
    assert httpx.post(f"{engine_url}/resume_memory_occupation", json={},
                      timeout=120).status_code == 200
    info = httpx.get(f"{engine_url}/get_model_info").json()
    assert info["weight_version"] == "9" and info["weights_path"] == str(model_dir)
    assert info["memory_released"] is False


def test_release_holds_requests_until_resume_and_control_endpoints(engine_url: str) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(base_url=engine_url, timeout=120) as client:
            assert (await client.post("/release_memory_occupation", json={})).json()["success"]
            info = (await client.get("/get_model_info")).json()
            assert info["memory_released"] is True
            pending = asyncio.create_task(client.post(
                "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2}))
            await asyncio.sleep(1.0)
            assert not pending.done()
            load = (await client.get("/get_load")).json()
            assert load[0]["num_reqs"] == 1
            assert (await client.post("/resume_memory_occupation", json={})).json()["success"]
            out = (await pending).json()
            assert out["usage"]["completion_tokens"] >= 1

            assert (await client.post("/pause_generation", json={"mode": "in_place"})).status_code \
                == 200
            held = asyncio.create_task(client.post(
                "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2}))
            await asyncio.sleep(0.5)
            assert not held.done()
            await client.post("/continue_generation", json={})
            assert (await held).status_code == 200
            assert (await client.post("/flush_cache")).status_code == 200
            models = (await client.get("/v1/models")).json()
            assert models["data"][0]["id"] == "SmolLM2-135M-Instruct"
            assert (await client.get("/health")).status_code == 200

    asyncio.run(run())


async def _wait_running(client: httpx.AsyncClient, rows: int) -> None:
    """Until the engine decodes ``rows`` rows."""
    while (await client.get("/get_load")).json()[0]["num_running_reqs"] < rows:
        await asyncio.sleep(0.02)


def test_weight_update_waits_for_in_flight_requests(engine_url: str, model_dir: Path) -> None:
    """Not paused, an update waits until no request is in flight (SGLang's writer lock), so
    every token of a call comes from the version its reply names."""
    long_body = {"messages": QUESTION, "max_tokens": 40, "ignore_eos": True, "temperature": 0}

    async def run() -> tuple[dict[str, Any], bool, dict[str, Any]]:
        async with httpx.AsyncClient(base_url=engine_url, timeout=120) as client:
            before = (await client.get("/model_info")).json()["weight_version"]
            long = asyncio.create_task(client.post("/v1/chat/completions", json=long_body))
            await asyncio.wait_for(_wait_running(client, 1), 60)
            update = await client.post("/update_weights_from_disk", json={
                "model_path": str(model_dir), "weight_version": f"{before}-next"})
            assert update.json()["success"] is True
            finished_first = long.done()
            after = (await client.post("/v1/chat/completions", json={
                "messages": QUESTION, "max_tokens": 2})).json()
            out = (await long).json()
            assert out["metadata"]["weight_version"] == before
            return out, finished_first, after

    out, finished_first, after = asyncio.run(run())
    assert finished_first  # the update returned only after the in-flight request ended
    assert out["metadata"]["weight_versions"] == [
        {"version": out["metadata"]["weight_version"], "start": 0, "end": 40}]
    assert after["metadata"]["weight_version"] == out["metadata"]["weight_version"] + "-next"


def test_update_while_paused_is_immediate_and_spans_name_each_tokens_weights(
    engine_url: str, model_dir: Path
) -> None:
    """Paused in place, an update loads at once (as SGLang does) and the reply's
    ``weight_versions`` spans cover every token, the last with the new version."""
    body = {"messages": QUESTION, "max_tokens": 24, "ignore_eos": True, "temperature": 0}

    async def run() -> tuple[dict[str, Any], bool]:
        async with httpx.AsyncClient(base_url=engine_url, timeout=120) as client:
            pending = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            await asyncio.wait_for(_wait_running(client, 1), 60)
            await client.post("/pause_generation", json={"mode": "in_place"})
            update = await client.post("/update_weights_from_disk", json={
                "model_path": str(model_dir), "weight_version": "paused-update"})
            held = not pending.done()
            await client.post("/continue_generation", json={})
            assert update.json()["success"] is True
            return (await pending).json(), held

    out, held = asyncio.run(run())
    assert held  # the update did not wait for the paused request
    spans = out["metadata"]["weight_versions"]
    assert spans[-1] == {"version": "paused-update", "start": spans[-1]["start"], "end": 24}
    assert [s["start"] for s in spans] == [0] + [s["end"] for s in spans[:-1]]
    assert out["metadata"]["weight_version"] == "paused-update"


def test_runner_records_the_weights_of_each_token(model_dir: Path) -> None:
    """Weights loaded between two decode steps: the spans split exactly there."""
    runner = ModelRunner(model_dir, weight_version="v1")
    steps = 0

    def before_step() -> bool:
        nonlocal steps
        steps += 1
        if steps == 3:  # tokens 0 and 1 are sampled; token 2 onwards by v2
            runner.load_weights(model_dir, "v2")
        return True

    row = GenerationRequest(prompt_ids=runner.render_chat(QUESTION, None), max_new_tokens=6,
                            temperature=0, ignore_eos=True)
    runner.generate([row], before_step=before_step)
    assert row.weight_versions == [{"version": "v1", "start": 0, "end": 2},
                                   {"version": "v2", "start": 2, "end": 6}]
