"""Final answers, exact match, math equality, and the LLM judge (a scripted judge model behind
the real router: yes, no, garbage, down)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask
from agentrl.errors import JudgeUnavailableError
from agentrl.inference.services import register_service
from agentrl.rollout.mcp import MCPSampler, MCPTask
from agentrl.rollout.mcp.rewards import (
    JUDGE_PROMPT,
    exact_match,
    extract_answer,
    math_match,
    normalize_text,
    parse_verdict,
)
from tests.conftest import free_port
from tests.mcp.conftest import run_trajectory
from tests.mcp.stub_model import StubModel


def test_final_answers_in_both_formats() -> None:
    assert extract_answer("so <answer>1</answer> no, <ANSWER> Paris </ANSWER>", "answer_tag") \
        == "Paris"
    assert extract_answer("x = \\boxed{\\frac{1}{2}} done", "boxed") == "\\frac{1}{2}"
    assert extract_answer("<answer>  </answer>", "answer_tag") is None
    assert extract_answer("\\boxed{7}", "answer_tag") is None
    assert extract_answer("<answer>7</answer>", "boxed") is None


def test_exact_match_after_normalization() -> None:
    assert normalize_text("  The Eiffel-Tower!  ") == "eiffeltower"
    assert exact_match("the  Beatles.", ["Beatles", "The Rolling Stones"])
    assert exact_match("An apple", ["apple"]) and not exact_match("apples", ["apple"])
    assert not exact_match("...", ["..."])  # nothing left to compare
    assert math_match("$1,000.00", ["1000"]) and math_match("0.5", ["1/2"])
    assert not math_match("12", ["13"])


def test_judge_verdicts_are_the_first_word() -> None:
    assert parse_verdict("Yes.") is True and parse_verdict("**no** - it differs") is False
    assert parse_verdict("The answer is yes") is None and parse_verdict("") is None


@pytest.fixture
def judge_config(config: AgentTrainingConfig, stdio_mcp_json: Path) -> AgentTrainingConfig:
    config.mcp_config = str(stdio_mcp_json)
    config.mcp.judge_model = "judge"  # before the reward: llm_judge needs it
    config.mcp.reward = "llm_judge"
    config.mcp.judge_max_attempts = 2
    config.request_max_attempts = 1
    return config


TASK = MCPTask(question="Which city is the capital of France?", answers=["Paris"])


@pytest.mark.parametrize(("verdicts", "score"), [(["Yes"], 1.0), (["maybe", "No."], 0.0)])
def test_judge_verdict_scores_the_record(
    judge_config: AgentTrainingConfig, dbs: Databases, stub_model: StubModel,
    verdicts: list[str], score: float,
) -> None:
    register_service(dbs.store, stub_model.url, "judge")
    stub_model.script(judge_config.model_name, ["It is <answer>paris, France</answer>"])
    stub_model.script("judge", list(verdicts))
    _, record = run_trajectory(judge_config, dbs, TASK)
    assert record.score == score and record.error is None
    assert record.meta["metrics"]["correct"] is (score == 1.0)
    prompt = stub_model.requests[-1]["messages"][0]["content"]
    assert prompt == JUDGE_PROMPT.format(question=TASK.question, references="Paris",
                                         answer="paris, France")
    assert stub_model.requests[-1]["temperature"] == 0.0
    # the judge's calls belong to no record, so they are never trained
    calls = list(dbs.store.find(DispatchedSamplingTask, {"model": "judge"}))
    assert len(calls) == len(verdicts) and {c.record_id for c in calls} == {""}


def _judged(config: AgentTrainingConfig, dbs: Databases, stub: StubModel) -> BaseException:
    stub.script(config.model_name, ["<answer>Paris</answer>"])
    raised: list[BaseException] = []

    async def judge(sampler: MCPSampler) -> None:
        assert sampler.record is not None
        try:
            await sampler.evaluate_record(sampler.record)
        except JudgeUnavailableError as exc:
            raised.append(exc)

    run_trajectory(config, dbs, TASK, after_run=judge)
    assert len(raised) == 1
    return raised[0]


def test_a_judge_without_a_verdict_is_an_infrastructure_failure(
    judge_config: AgentTrainingConfig, dbs: Databases, stub_model: StubModel
) -> None:
    register_service(dbs.store, stub_model.url, "judge")
    stub_model.script("judge", ["I think so", "Paris is right"])
    error = _judged(judge_config, dbs, stub_model)
    assert "no yes/no verdict in 2 replies" in str(error) and "Paris is right" in str(error)
    assert error.model == "judge"  # type: ignore[attr-defined]


def test_a_judge_that_is_down_is_an_infrastructure_failure(
    judge_config: AgentTrainingConfig, dbs: Databases, stub_model: StubModel
) -> None:
    register_service(dbs.store, f"http://127.0.0.1:{free_port()}", "judge")
    judge_config.service_wait_timeout_s = 2.0  # the router waits out an outage this long
    error = _judged(judge_config, dbs, stub_model)
    assert "NoServiceAvailableError" in str(error)
