"""After a training step the CPU engine serves the new weights: version == global step."""

from __future__ import annotations

import httpx
import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from agentrl.inference.manager import InferenceManager
from agentrl.rollout.ledger import GlobalStep
from agentrl.training.trainer import Trainer
from agentrl.training.weights import ManagerWeightPublisher
from tests.conftest import free_port
from tests.training.factories import store_group

pytestmark = pytest.mark.slow


def test_engine_serves_new_weights_after_a_step(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.engine = "cpu"
    config.engine_base_port = free_port()
    config.max_steps = 1
    config.train_batch_size = 2
    config.learning_rate = 1e-4  # large enough that the served logprobs visibly change
    with InferenceManager(config, dbs) as manager:
        trainer = Trainer(config, dbs, ManagerWeightPublisher([manager], dbs), show_progress=False)
        store_group(dbs, trainer.tokenizer, "a-task", [1.0, 0.0])
        messages = [{"role": "user", "content": "What is 2+3?"}]
        body = {"model": config.model_name, "messages": messages, "max_tokens": 4,
                "temperature": 0.0, "logprobs": True}
        before = httpx.post(f"{manager.endpoint}/v1/chat/completions", json=body, timeout=60).json()
        assert trainer.train()
        assert GlobalStep(dbs).get() == 1
        assert manager.service.weight_version == "1"
        served = httpx.get(f"{manager.endpoint}/model_info", timeout=10).json()
        assert served["weight_version"] == str(GlobalStep(dbs).get())
        after = httpx.post(f"{manager.endpoint}/v1/chat/completions", json=body, timeout=60).json()
        lp_before = before["choices"][0]["logprobs"]["content"][0]["logprob"]
        lp_after = after["choices"][0]["logprobs"]["content"][0]["logprob"]
        assert lp_after != pytest.approx(lp_before, abs=1e-6)
