"""`OSWorldStatefulSampler`: one OSWorld episode per trajectory, on a leased env.

One trajectory (:meth:`OSWorldStatefulSampler.run`):

1. lease a free :class:`~agentrl.rollout.osworld.envs.OSWorldEnv` (:class:`EnvLease`: atomic,
   heartbeat-renewed, released in ``finally``);
2. reset the env and run the task's ``config`` setup steps;
3. loop until the model says DONE or FAIL, or ``osworld.max_steps``: observe (accessibility tree
   as a text table, :func:`~agentrl.rollout.osworld.observation.linearize_a11y_tree`, and/or the
   screenshot; every screenshot goes to the object store and messages hold the
   reference ``{"$objref": ..., "mime": "image/png"}`` in an ``image_url`` part), ask the model
   (``create_chat_completions``, one DispatchedSamplingTask per step), parse the pyautogui action
   (:func:`~agentrl.rollout.osworld.actions.parse_action`), execute it. A malformed output is a
   failed step with the raw text; the episode goes on or ends per ``osworld.on_malformed_action``;
4. score the final state with the env's evaluator (the task's ``evaluator``) while the env is
   still leased; :meth:`evaluate_record` returns that score. ``record.meta["metrics"]`` gets
   ``correct`` (score 1.0), ``well_formed`` (the model ended with DONE or FAIL) and ``steps``.

Each step's observation references, action and outcome are written into its
DispatchedSamplingTask's ``meta["osworld"]`` and into ``record.meta["steps"]``; the call's logged
``request.messages`` hold object-store references, never image bytes.

Stateful: trajectories of one task run one after another (:class:`StatefulSampler`) and each
appends a note (actions tried, outcome, score) to ``task.state["notes"]``; the next trajectory's
prompt shows the last ``osworld.notes_in_prompt`` notes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, ClassVar

from agentrl.configs import AgentTrainingConfig
from agentrl.databases.documents import Record
from agentrl.databases.objectstore import (
    ObjectStore,
    externalize,
    internalize,
    open_object_store,
)
from agentrl.errors import EnvRequestError
from agentrl.rollout.osworld.actions import ParsedAction, parse_action
from agentrl.rollout.osworld.client import OSWorldEnvClient
from agentrl.rollout.osworld.dataset import OSworldDataset, OSworldTask
from agentrl.rollout.osworld.envs import EnvLease, OSWorldEnv
from agentrl.rollout.osworld.observation import linearize_a11y_tree
from agentrl.rollout.outcomes import CORRECT, WELL_FORMED, report_metrics
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import StatefulSampler

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = """You are an agent that operates a {os_type} computer (screen {width}x{height} \
pixels) to follow the user's instruction. Each turn you get the current observation and answer \
with Python code using pyautogui in one code block, e.g.
```python
pyautogui.click(100, 200)
```
Do not use pyautogui.locateCenterOnScreen or pyautogui.screenshot. Answer ```WAIT``` to wait, \
```DONE``` when the task is finished, ```FAIL``` if it cannot be done."""

WAIT_S = 1.0
"""Seconds a WAIT action pauses before the next observation."""

ACTION_HISTORY_IN_PROMPT = 5
"""Previous actions of the episode listed in each step's prompt."""

MAX_NOTES_KEPT = 20
"""Notes kept in ``task.state["notes"]`` (oldest dropped)."""

_STORES: dict[tuple[str, str], ObjectStore] = {}


def object_store_for(connection_string: str, local_dir: str) -> ObjectStore:
    """The process's object store for these settings (opened once, then reused)."""
    key = (connection_string, local_dir)
    if key not in _STORES:
        _STORES[key] = open_object_store(connection_string, local_dir)
    return _STORES[key]


def render_notes(notes: list[dict[str, Any]]) -> str:
    """Earlier trajectories' notes as prompt text (empty when there are none)."""
    if not notes:
        return ""
    lines = ["Earlier attempts at this task:"]
    for note in notes:
        tried = "; ".join(note.get("actions", [])) or "no action"
        lines.append(
            f"- attempt {note.get('traj_id')} (epoch {note.get('epoch')}): tried {tried}; "
            f"ended {note.get('ended')}; score {note.get('score')}"
        )
    return "\n".join(lines)


@register_sampler("osworld")
class OSWorldStatefulSampler(StatefulSampler):
    """The AgentRL guide's OSWorld sampler: a pyautogui agent on a leased OSWorld env.

    Config: ``osworld.observation``, ``osworld.max_steps``, ``osworld.a11y_max_chars``,
    ``osworld.on_malformed_action``, ``osworld.env_lease_ttl_s``, ``osworld.env_wait_s``,
    ``osworld.request_timeout_s``, ``osworld.notes_in_prompt``, ``max_new_tokens``,
    ``temperature``.
    """

    task_class: ClassVar[type[OSworldTask]] = OSworldTask

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> OSworldDataset:
        """``OSworldDataset(train_file)`` for train, ``OSworldDataset(eval_file)`` otherwise
        (what beat pushes when ``sampler`` is ``osworld``)."""
        path = config.train_file if split == "train" else config.eval_file
        return OSworldDataset(path, skip_bad_lines=config.skip_bad_lines)

    async def run(self) -> None:
        """Lease an env, set the task up, act until DONE/FAIL/max steps, evaluate."""
        task, record, cfg = self._task(), self._record(), self.config
        objects = object_store_for(cfg.oss_connection_string, str(cfg.object_store_dir))
        lease = EnvLease(
            self.context.store, OSWorldEnv, record.id,
            ttl_s=cfg.osworld.env_lease_ttl_s, wait_s=cfg.osworld.env_wait_s,
        )
        async with lease as env:
            if not isinstance(env, OSWorldEnv):
                raise TypeError(f"leased env {env.name!r} is not an OSWorldEnv")
            record.meta.update(env=env.name, env_url=env.url, lease_owner=lease.owner)
            async with OSWorldEnvClient(
                env.url, cfg.osworld.request_timeout_s, env.bridge_url
            ) as client:
                if not await client.reset(task.task_config):
                    await client.run_setup(task.task_config.get("config", []))
                steps, last_action, ended = await self._episode(client, env, objects, lease)
                lease.check()
                score = await client.evaluate(task.task_config, last_action)
        record.meta.update(steps=steps, osworld_score=score, ended=ended, last_action=last_action)
        report_metrics(record, **{
            CORRECT: score >= 1.0, WELL_FORMED: ended in ("DONE", "FAIL"), "steps": len(steps),
        })
        self._leave_note(steps, ended, score)

    async def evaluate_record(self, record: Record) -> float:
        """The env evaluator's score, computed in :meth:`run` while the env was leased."""
        return float(record.meta.get("osworld_score", 0.0))

    # --- the episode -----------------------------------------------------------------------------

    def _task(self) -> OSworldTask:
        if not isinstance(self.task, OSworldTask):
            raise TypeError(f"OSWorldStatefulSampler needs an OSworldTask, got {self.task!r}")
        return self.task

    def _record(self) -> Record:
        if self.record is None:
            raise RuntimeError("enter the sampler with `async with` first")
        return self.record

    async def _episode(
        self, client: OSWorldEnvClient, env: OSWorldEnv, objects: ObjectStore, lease: EnvLease
    ) -> tuple[list[dict[str, Any]], str, str]:
        """Run the observe → act loop.

        Returns:
            ``(steps, last_action, ended)``: the step logs, the last action (code, DONE, FAIL or
            ``""``) for the evaluator, and why the episode ended (``DONE``, ``FAIL``,
            ``max_steps``, ``malformed``).
        """
        cfg, task = self.config, self._task()
        notes = list(task.state.get("notes", []))[-cfg.osworld.notes_in_prompt:] if (
            cfg.osworld.notes_in_prompt
        ) else []
        system = SYSTEM_PROMPT.format(
            os_type=env.os_type, width=env.screen_width, height=env.screen_height
        )
        steps: list[dict[str, Any]] = []
        history: list[str] = []
        last_action, ended = "", "max_steps"
        for index in range(cfg.osworld.max_steps):
            lease.check()
            observation, parts = await self._observe(client, objects, index)
            prompt = self._prompt(task.instruction, notes, history, parts)
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            response = await self.create_chat_completions(
                internalize(messages, objects) if observation.get("screenshot_in_prompt")
                else messages,
                max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            )
            text = str(response["choices"][0]["message"].get("content") or "")
            action = parse_action(text)
            outcome = await self._act(client, action)
            step = {
                "step": index, "observation": observation, "raw": text,
                "action": action.summary(), "code": action.code, "special": action.special,
                "malformed": action.malformed, "outcome": outcome,
            }
            steps.append(step)
            self._log_step(step)
            history.append(action.summary() if not action.malformed else "(malformed output)")
            if action.code:
                last_action = action.code
            if action.ends_episode:
                last_action = ended = str(action.special)
                break
            if action.malformed and cfg.osworld.on_malformed_action == "end":
                ended = "malformed"
                break
        return steps, last_action, ended

    async def _observe(
        self, client: OSWorldEnvClient, objects: ObjectStore, index: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Fetch the observation; store the screenshot in the object store.

        Returns:
            ``(observation, parts)``: the observation log (screenshot reference, tree length)
            and the content parts for the prompt (text and/or an ``image_url`` reference).
        """
        cfg, record = self.config, self._record()
        mode = cfg.osworld.observation
        png = await client.screenshot()
        data_url = f"data:image/png;base64,{base64.b64encode(png).decode()}"
        # Content-addressed under the router's prefix for this record: the router, which
        # externalizes the request it logs, writes the very same object (stored once).
        ref = await asyncio.to_thread(externalize, data_url, objects, f"dispatch/{record.id}")
        observation: dict[str, Any] = {
            "step": index, "screenshot": ref, "screenshot_bytes": len(png),
            "screenshot_in_prompt": mode != "a11y_tree",
        }
        parts: list[dict[str, Any]] = []
        if mode != "a11y_tree":
            parts.append({"type": "image_url", "image_url": {"url": ref}})
        if mode != "screenshot":
            tree = await client.accessibility_tree()
            observation["a11y_tree_chars"] = len(tree)
            table = linearize_a11y_tree(tree, cfg.osworld.a11y_max_chars)
            parts.append({"type": "text", "text": f"Accessibility tree:\n{table}"})
        return observation, parts

    @staticmethod
    def _prompt(
        instruction: str,
        notes: list[dict[str, Any]],
        history: list[str],
        parts: list[dict[str, Any]],
    ) -> list[dict[str, Any]] | str:
        """The step's user message content: instruction, notes, recent actions, observation."""
        text = [f"Instruction: {instruction}"]
        if notes:
            text.append(render_notes(notes))
        if history:
            recent = history[-ACTION_HISTORY_IN_PROMPT:]
            text.append("Your previous actions:\n" + "\n".join(f"- {a}" for a in recent))
        head = {"type": "text", "text": "\n\n".join(text)}
        content = [head, *parts, {"type": "text", "text": "What is your next action?"}]
        if all(p["type"] == "text" for p in content):
            return "\n\n".join(p["text"] for p in content)
        return content

    async def _act(self, client: OSWorldEnvClient, action: ParsedAction) -> dict[str, Any]:
        """Execute the action's code (if any) and describe the outcome."""
        if action.malformed:
            return {"status": "failed", "error": action.error}
        if not action.code:
            if action.special == "WAIT":
                await asyncio.sleep(WAIT_S)
            return {"status": "ok", "special": action.special}
        try:
            result = await client.run_action(action.code)
        except EnvRequestError as exc:
            return {"status": "failed", "error": str(exc)}
        ok = result.get("status") == "success" and not result.get("returncode")
        return {
            "status": "ok" if ok else "failed",
            "returncode": result.get("returncode"),
            "output": str(result.get("output") or "")[:2000],
            "error": str(result.get("error") or result.get("message") or "")[:2000],
        }

    def _log_step(self, step: dict[str, Any]) -> None:
        """Write the step (observation references, action, outcome) into ``meta.osworld`` of
        the step's DispatchedSamplingTask (its attempt's last call; images already as
        references)."""
        attempt = self.attempt
        if attempt is not None and attempt.calls:
            attempt.annotate_call(max(attempt.calls), osworld=step)

    def _leave_note(self, steps: list[dict[str, Any]], ended: str, score: float) -> None:
        """Append this trajectory's note to ``task.state["notes"]`` for later trajectories."""
        task, record = self._task(), self._record()
        note = {
            "traj_id": record.traj_id, "epoch": record.epoch, "ended": ended, "score": score,
            "actions": [s["action"][:200] for s in steps if not s["malformed"]][-5:],
        }
        notes = list(task.state.get("notes", [])) + [note]
        task.state["notes"] = notes[-MAX_NOTES_KEPT:]
