"""The trajectory viewer in a real headless Chromium (Debian's, driven by Playwright) over records
stored in the embedded MongoDB-wire server: the index lists the run's records and steps, a record
page shows its turns, tool calls and token logprobs, an unknown record is a 404 page; basic auth
is enforced when the viewer binds a non-loopback address."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from transformers import AutoTokenizer

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    Record,
    RecordStatus,
    Task,
)
from agentrl.errors import ViewerAuthError
from agentrl.inference.model_files import resolve_model_path
from agentrl.training.metrics import MetricsLogger
from agentrl.viewer.app import create_app
from agentrl.viewer.auth import is_loopback, parse_basic_auth
from agentrl.viewer.tokens import TokenText
from tests.conftest import free_port
from tests.ops.helpers import start, stop, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SYSTEM = {"role": "system", "content": "Use the calculator, then answer after ####."}
QUESTION = {"role": "user", "content": "What is 2+3?"}
TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expr": "2+3"}'}}
ANSWER = "The sum is 5.\n#### 5"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(resolve_model_path(""))


def _call(record_id: str, turn: int, messages: list[dict[str, Any]], reply: dict[str, Any],
          ids: list[int], **extra: Any) -> dict[str, Any]:
    doc = DispatchedSamplingTask(
        record_id=record_id, task_id=record_id.split(":")[0], turn=turn,
        status=DispatchStatus.COMPLETED,
        request={"messages": messages, "tools": [{"type": "function",
                                                  "function": {"name": "calculator"}}]},
        response={"choices": [{"message": reply, "finish_reason": "stop"}]},
        completion_token_ids=ids, logprobs=[-0.1 * (i + 1) for i in range(len(ids))],
        finish_reason="stop", model="SmolLM2-135M-Instruct", endpoint="http://127.0.0.1:30000",
        weight_version="3", created_at_step=3, latency_s=0.25,
    ).to_mongo()
    return {**doc, **extra}


@pytest.fixture
def stored_run(config: AgentTrainingConfig, dbs: Databases, tokenizer: Any) -> dict[str, Any]:
    """Three records as the sampling path stores them (one with the ledger's ``attempt`` and
    ``error_kind`` fields), their calls, and the run's metrics.jsonl and summary.json."""
    task = Task(_id="t-gsm", split="train", epoch=1, sampler="math")
    dbs.store.insert(task)
    ok = Record(_id=Record.identity_id("t-gsm", 0, 1), task_id="t-gsm", traj_id=0, epoch=1,
                status=RecordStatus.READY, score=1.0, advantage=0.866025, attempts=1,
                created_at_step=3, meta={"completion": ANSWER})
    dbs.store.insert(ok)
    tool_ids = tokenizer("<tool_call>calculator</tool_call>", add_special_tokens=False)[
        "input_ids"]
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]
    assistant = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": "5"}
    calls = dbs.store.collection(DispatchedSamplingTask)
    calls.insert_one(_call(ok.id, 0, [SYSTEM, QUESTION], assistant, tool_ids,
                           prompt_token_ids=list(range(40))))
    calls.insert_one(_call(ok.id, 1, [SYSTEM, QUESTION, assistant, tool_result],
                           {"role": "assistant", "content": ANSWER}, answer_ids,
                           prompt_token_ids=list(range(60))))

    failed = Record(_id=Record.identity_id("t-gsm", 0, 2), task_id="t-gsm", traj_id=0, epoch=2,
                    split="eval", status=RecordStatus.FAILED, attempts=3,
                    error="sampler raised ValueError: no answer")
    dbs.store.collection(Record).insert_one({**failed.to_mongo(), "attempt": 3,
                                             "error_kind": "sampler"})
    retried = Record(_id=Record.identity_id("t-gsm", 1, 1), task_id="t-gsm", traj_id=1, epoch=1,
                     status=RecordStatus.READY, score=0.0, advantage=-0.866025, attempts=2)
    dbs.store.collection(Record).insert_one({**retried.to_mongo(), "attempt": 2})
    for attempt, text in ((1, "first try"), (2, "second try")):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        calls.insert_one(_call(retried.id, 0, [SYSTEM, QUESTION],
                               {"role": "assistant", "content": text}, ids, attempt=attempt))

    run_dir = Path(config.output_dir) / config.name
    with MetricsLogger(run_dir / "metrics.jsonl", show_progress=False) as logger:
        logger.log(1, {"reward/mean": 0.25, "staleness/mean": 0.0, "staleness/max": 0.0})
        logger.log(2, {"reward/mean": 0.625, "staleness/mean": 1.0, "staleness/max": 1.0})
    before = {"step": 0, "count": 64, "accuracy": 0.03125, "well_formed_rate": 0.25,
              "mean_reward": 0.1}
    during = {"step": 1, "count": 64, "accuracy": 0.0625, "well_formed_rate": 0.5,
              "mean_reward": 0.2}
    after = {"step": 2, "count": 64, "accuracy": 0.125, "well_formed_rate": 0.75,
             "mean_reward": 0.3}
    # as eval_summary writes it: per_step holds every point, the two ends included
    evals = {"before": before, "after": after, "per_step": [before, during, after]}
    (run_dir / "summary.json").write_text(json.dumps({"steps": 2, "eval": evals}))
    return {"ok": ok, "failed": failed, "retried": retried, "answer_ids": answer_ids}


@pytest.fixture
def viewer_url(config: AgentTrainingConfig, dbs: Databases) -> Iterator[str]:
    """The viewer app served by uvicorn on 127.0.0.1 in a thread of this process."""
    server = uvicorn.Server(uvicorn.Config(create_app(config, dbs), host="127.0.0.1",
                                           port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the viewer to listen")
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def test_index_lists_the_runs_records_steps_and_eval(
    stored_run: dict[str, Any], viewer_url: str, page: Page
) -> None:
    response = page.goto(viewer_url + "/")
    assert response is not None and response.status == 200
    rows = page.locator("#records tr.record")
    expect(rows).to_have_count(3)
    listed = rows.locator("td:first-child a").all_inner_texts()
    assert sorted(listed) == sorted(r.id for r in stored_run.values() if isinstance(r, Record))
    steps = page.locator("#steps tr").all_inner_texts()
    assert len(steps) == 3 and steps[2].split("\t")[:2] == ["2", "0.625"]
    assert "staleness max" in steps[0]
    evals = page.locator("#eval tr").all_inner_texts()
    assert [e.split("\t")[:2] for e in evals[1:]] == [["before", "0"], ["during", "1"],
                                                        ["after", "2"]]
    assert evals[3].split("\t")[3] == "0.125"
    assert "sampler: sampler raised ValueError" in rows.filter(
        has_text=stored_run["failed"].id).inner_text()

    page.select_option("select[name=status]", "failed")
    page.click("form.filters button")
    expect(page.locator("#records tr.record")).to_have_count(1)
    assert page.locator("#records tr.record").inner_text().startswith(stored_run["failed"].id)
    page.goto(viewer_url + "/?split=train&epoch=1")
    expect(page.locator("#records tr.record")).to_have_count(2)
    page.goto(viewer_url + "/?errors=true")
    expect(page.locator("#records tr.record")).to_have_count(1)


def test_other_runs_are_listed_with_their_steps(
    config: AgentTrainingConfig, stored_run: dict[str, Any], viewer_url: str, page: Page
) -> None:
    with MetricsLogger(Path(config.output_dir) / "older" / "metrics.jsonl",
                       show_progress=False) as logger:
        logger.log(1, {"reward/mean": 0.125})
    page.goto(viewer_url + "/")
    page.click("a:text-is('older')")
    page.wait_for_url("**/runs/older")
    assert page.locator("#steps tr").nth(1).inner_text().split("\t")[:2] == ["1", "0.125"]
    assert page.goto(viewer_url + "/runs/nope").status == 404
    assert httpx.get(viewer_url + "/runs/%2E%2E").status_code == 404


def test_record_page_shows_turns_tool_calls_and_token_logprobs(
    stored_run: dict[str, Any], viewer_url: str, page: Page, tokenizer: Any
) -> None:
    ok = stored_run["ok"]
    page.goto(viewer_url + "/")
    page.click(f"#records a:text-is('{ok.id}')")
    page.wait_for_url("**/records/*")
    assert page.locator("h1").inner_text() == f"Record {ok.id}"
    assert page.locator("#score").inner_text() == "1"
    assert page.locator("#advantage").inner_text() == "0.866025"
    turns = page.locator("section.turn")
    expect(turns).to_have_count(2)
    first, second = turns.nth(0), turns.nth(1)
    assert "What is 2+3?" in first.inner_text()
    assert "calculator" in first.locator(".tool-call").inner_text()
    assert '{"expr": "2+3"}' in first.locator(".tool-call pre").inner_text()
    assert "version 3 · sampled at step 3" in first.inner_text()
    assert "40 tokens" in first.inner_text()
    # turn 1 shows the tool result as new, the history it repeats collapsed
    assert "result of call_1" in second.locator(":scope > .msg").first.text_content()
    assert "3 earlier messages" in second.locator("details summary").inner_text()
    assert ANSWER.splitlines()[0] in second.locator(".reply").inner_text()

    tokens = second.locator(".tokens .tok")
    answer_ids = stored_run["answer_ids"]
    expect(tokens).to_have_count(len(answer_ids))
    assert tokens.nth(0).get_attribute("title") == (
        f"id {answer_ids[0]} · logprob -0.1000 (p 0.905)")
    assert float(tokens.nth(4).get_attribute("data-logprob")) == pytest.approx(-0.5)
    expect(second.locator(".tokens[data-decoded=true]")).to_have_count(1)  # text arrived
    text = "".join(tokens.all_text_contents()).replace("↵", "")
    assert text == tokenizer.decode(answer_ids)


def test_only_the_records_attempt_is_shown_earlier_ones_collapsed(
    stored_run: dict[str, Any], viewer_url: str, page: Page
) -> None:
    page.goto(f"{viewer_url}/records/{stored_run['retried'].id}")
    visible = page.locator("body > section.turn")
    expect(visible).to_have_count(1)
    assert "second try" in visible.inner_text()
    assert "this is attempt 2" in page.locator("#record-fields").inner_text()
    earlier = page.locator("#earlier-attempts")
    assert earlier.get_attribute("open") is None
    assert "earlier attempts (1 call)" in earlier.locator("summary").inner_text()
    assert "first try" in earlier.locator("section.turn").text_content()
    page.goto(f"{viewer_url}/records/{stored_run['failed'].id}")
    assert page.locator("#error").inner_text() == "sampler: sampler raised ValueError: no answer"


def test_unknown_record_is_a_404_page(stored_run: dict[str, Any], viewer_url: str,
                                      page: Page) -> None:
    response = page.goto(viewer_url + "/records/no-such:0:1")
    assert response is not None and response.status == 404
    assert page.locator("#not-found").inner_text() == "There is no record no-such:0:1."
    assert "Traceback" not in page.content()
    assert httpx.get(viewer_url + "/nowhere").status_code == 404
    assert httpx.get(viewer_url + "/api/calls/nope/tokens").status_code == 404


def test_basic_auth_is_required_and_enforced_off_loopback(
    stored_run: dict[str, Any], config: AgentTrainingConfig, tmp_path: Path
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: {config.name}\n")
    port = free_port()
    argv = ["-c", "from agentrl.cli import main; main()", "viewer", str(cfg), "--host",
            "0.0.0.0", "--port", str(port)]
    refused = start(argv, tmp_path / "refused.log")
    assert refused.wait(timeout=60) == 2
    assert "not a loopback address" in (tmp_path / "refused.log").read_text()

    viewer = start([*argv, "--basic-auth", "ops:s3cret-pass,second:other:pass"],
                   tmp_path / "viewer.log")
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(base + "/", timeout=5).status_code == 401
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60, "the viewer to answer")
        denied = httpx.get(base + "/", timeout=10)
        assert denied.headers["www-authenticate"] == 'Basic realm="agentrl viewer"'
        assert httpx.get(base + "/", auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx.get(base + f"/records/{stored_run['ok'].id}", timeout=10).status_code == 401
        page = httpx.get(base + "/", auth=("ops", "s3cret-pass"), timeout=10)
        assert page.status_code == 200 and stored_run["ok"].id in page.text
        assert httpx.get(base + "/", auth=("second", "other:pass"), timeout=10).status_code == 200
    finally:
        stop(viewer)
    log = (tmp_path / "viewer.log").read_text()
    assert "basic auth on" in log
    assert "s3cret-pass" not in log and "other:pass" not in log


@pytest.mark.parametrize("text", ["ops", "ops:", ":pw", "a:b,,c:d"])
def test_malformed_basic_auth_is_refused(text: str) -> None:
    with pytest.raises(ViewerAuthError, match="user:password"):
        parse_basic_auth(text)


def test_token_text_without_a_model_keeps_ids(tmp_path: Path) -> None:
    text = TokenText(str(tmp_path / "no-model"))
    assert text.decode([1, 2]) is None
    assert "no-model" in (text.unavailable or "")


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.5", "::", "example.org"]))
