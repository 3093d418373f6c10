"""CPU engine throughput (tokens/s) at several concurrencies, against plain ``model.generate``.

Starts the CPU engine with SmolLM2-135M-Instruct in a subprocess, sends ``c`` concurrent chat
completions of exactly ``--max-tokens`` tokens (``ignore_eos``) for each concurrency ``c``, and runs
``model.generate`` on the same ``c`` prompts as one padded batch in this process. Prints a table:

    concurrency | engine tok/s | vs c=1 | generate tok/s | engine/generate

Batching must make 16 concurrent requests at least 4x the tokens/s of 1 (the last line says
whether it does). Usage: ``python bench/engine_throughput.py [--max-tokens 32] [--concurrency
1 4 16 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.inference.engine.server import default_num_threads
from agentrl.inference.model_files import default_model_path
from agentrl.inference.sglang import EngineClient

QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for learning to code.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "What is 17 times 23?",
    "Name a famous painting and its painter.",
    "How do airplanes stay in the air?",
]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def messages(i: int) -> list[dict[str, str]]:
    """The ``i``-th benchmark conversation."""
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


async def engine_run(url: str, concurrency: int, max_tokens: int) -> tuple[float, int]:
    """Send ``concurrency`` requests at once; return (wall seconds, completion tokens)."""
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(*[
            client.post(f"{url}/v1/chat/completions", json={
                "messages": messages(i), "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": 1.0, "seed": i})
            for i in range(concurrency)
        ])
        wall = time.perf_counter() - start
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses)
    return wall, tokens


def generate_run(model: object, tokenizer: object, concurrency: int, max_tokens: int
                 ) -> tuple[float, int]:
    """``model.generate`` on the same prompts as one left-padded batch; (wall s, tokens)."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(messages(i), add_generation_prompt=True,
                                           tokenize=False) for i in range(concurrency)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=True, temperature=1.0, top_p=1.0,
                             pad_token_id=tokenizer.pad_token_id)
    wall = time.perf_counter() - start
    return wall, int((out.shape[1] - batch["input_ids"].shape[1]) * concurrency)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()

    torch.set_num_threads(default_num_threads())  # the engine uses as many
    model_dir = default_model_path()
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "engine.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentrl.inference.engine", "--model", str(model_dir),
             "--port", str(port), "--max-batch-size", str(max(args.concurrency))],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        EngineClient(url).wait_healthy(300, alive=lambda: proc.poll() is None,
                                       log_tail=lambda: log.read_text())
        asyncio.run(engine_run(url, 2, 4))  # warm-up
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        generate_run(model, tokenizer, 2, 4)  # warm-up
        for c in args.concurrency:
            wall, tokens = asyncio.run(engine_run(url, c, args.max_tokens))
            g_wall, g_tokens = generate_run(model, tokenizer, c, args.max_tokens)
            rows.append((c, tokens / wall, g_tokens / g_wall))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

    base = rows[0][1]
    print(f"CPU engine, SmolLM2-135M-Instruct, {args.max_tokens} tokens per request, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'concurrency':>11} | {'engine tok/s':>12} | {'vs c=1':>6} | {'generate tok/s':>14} | "
          f"{'engine/generate':>15}")
    for c, engine_tps, gen_tps in rows:
        print(f"{c:>11} | {engine_tps:>12.1f} | {engine_tps / base:>5.2f}x | {gen_tps:>14.1f} | "
              f"{engine_tps / gen_tps:>14.2f}x")
    by_c = {c: tps for c, tps, _ in rows}
    if 1 in by_c and 16 in by_c:
        ratio = by_c[16] / by_c[1]
        verdict = "meets" if ratio >= 4 else "MISSES"
        print(f"16 concurrent / 1 = {ratio:.2f}x ({verdict} the >= 4x target)")


if __name__ == "__main__":
    main()
