"""Run the guide's example scheduler in its own process (config from AGENTRL_* env); print the
epochs it pushed as JSON on the last line."""

from __future__ import annotations

import json
import sys

from agentrl.configs import load_config
from agentrl.rollout.scheduler import SamplingScheduler
from tests.jobs.rft_example import RFTDataset, RFTSampler, make_items

if __name__ == "__main__":
    n_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scheduler = SamplingScheduler(
        config=load_config(), sampler_class=RFTSampler, dataset=RFTDataset(make_items(n_tasks)),
        split="train", timeout_s=240, start_engine=False,
    )
    print(json.dumps(scheduler.run()))
