"""`OSworldTask` and `OSworldDataset`: OSWorld examples as Tasks.

An OSWorld example (``evaluation_examples/examples/<app>/<id>.json``) holds an ``instruction``, the
``config`` setup steps that put the VM in the task's initial state, and the ``evaluator`` that
scores the final state. :class:`OSworldDataset` reads them from

- OSWorld's index ``test_all.json`` (``{app: [id, ...]}``) with its ``examples/<app>/<id>.json``
  files next to it (a directory holding ``test_all.json`` works too);
- a JSON file holding one example or a list of examples;
- a JSONL file, one example per line.

Every task's ``task_config`` is the example itself with ``proxy`` set to True (the AgentRL guide
runs OSWorld tasks behind a proxy; see docs/osworld.md). A missing or malformed example is
reported as a :class:`~agentrl.errors.DatasetError` naming the file (and line for JSONL) and
skipped, or raised when ``skip_bad_lines`` is False.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from agentrl.databases.documents import Task, register_new_model
from agentrl.errors import DatasetError
from agentrl.rollout.datasets import TaskDataset

logger = logging.getLogger(__name__)

INDEX_FILE = "test_all.json"
"""Name of OSWorld's index of examples, ``{app: [example id, ...]}``."""

REQUIRED_FIELDS = ("instruction", "evaluator")
"""Fields an example must have; ``config`` (setup steps) defaults to an empty list."""


@register_new_model
class OSworldTask(Task):
    """One OSWorld example to be solved on a desktop VM (the AgentRL guide's ``OSworldTask``).

    Attributes:
        task_config: the OSWorld example (``id``, ``instruction``, ``config`` setup steps,
            ``evaluator``, ``related_apps``...) with ``proxy`` set to True.
        instruction: what the agent is asked to do.
        domain: the app folder it came from (``chrome``, ``os``...), empty when unknown.
    """

    task_config: dict[str, Any] = Field(description="The OSWorld example, proxy set to True.")
    instruction: str = Field(description="The natural-language instruction of the example.")
    domain: str = Field("", description="OSWorld app folder of the example (chrome, gimp, ...).")

    @property
    def example_id(self) -> str:
        """OSWorld's id of the example (``task_config["id"]``)."""
        return str(self.task_config.get("id", ""))


def make_task(
    example: dict[str, Any], file: str, line: int | None, domain: str = ""
) -> OSworldTask:
    """Build an :class:`OSworldTask` from one OSWorld example.

    Args:
        example: the parsed example.
        file: where it was read (for error messages).
        line: its 1-based line for JSONL files, else None.
        domain: the app folder it came from.

    Returns:
        The task, ``task_config["proxy"]`` set to True and ``config`` defaulted to ``[]``.

    Raises:
        DatasetError: the example is not an object, lacks a required field, or has a ``config``
            that is not a list of ``{"type", "parameters"}`` steps.
    """
    if not isinstance(example, dict):
        kind = type(example).__name__
        raise DatasetError(file, line, f"an example must be a JSON object, got {kind}")
    for name in REQUIRED_FIELDS:
        if name not in example:
            raise DatasetError(file, line, "missing", field=name)
    if not isinstance(example["instruction"], str) or not example["instruction"].strip():
        raise DatasetError(file, line, "must be a non-empty string", field="instruction")
    steps = example.get("config", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "type" in s for s in steps):
        raise DatasetError(file, line, "must be a list of {type, parameters} steps", field="config")
    task_config = {**example, "config": steps, "proxy": True}
    return OSworldTask(
        task_config=task_config, instruction=example["instruction"], domain=domain,
        sampler="osworld",
    )


class OSworldDataset(TaskDataset[OSworldTask]):
    """OSWorld examples as a :class:`TaskDataset` of :class:`OSworldTask` (for
    ``SamplingScheduler``).

    Args:
        path: ``test_all.json`` (or the directory holding it), a ``.json`` file with one example or
            a list of them, or a ``.jsonl`` file.
        skip_bad_lines: report a missing or malformed example and go on (True), or raise.
        domains: keep only these app folders (index files only); None keeps all.

    Attributes:
        tasks: the loaded tasks, in index order.
        errors: the problems reported and skipped (each names its file and line).

    Raises:
        DatasetError: the file cannot be read or parsed, or (with ``skip_bad_lines=False``) an
            example is missing or malformed.
    """

    def __init__(
        self, path: str | Path, skip_bad_lines: bool = True, domains: list[str] | None = None
    ) -> None:
        self.path = Path(path)
        self.skip_bad_lines = skip_bad_lines
        self.errors: list[DatasetError] = []
        if not str(path):
            raise DatasetError("", None, "no dataset file given (set train_file)")
        if self.path.is_dir():
            self.path = self.path / INDEX_FILE
        if self.path.suffix == ".jsonl":
            self.tasks = self._read_jsonl()
        else:
            self.tasks = self._read_json(domains)
        for err in self.errors:
            logger.warning("skipped OSWorld example: %s", err)


    def count_by_domain(self) -> dict[str, int]:
        """Loaded tasks per app folder (``""`` for tasks read without one)."""
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.domain] = counts.get(task.domain, 0) + 1
        return counts

    def _fail(self, err: DatasetError) -> None:
        if not self.skip_bad_lines:
            raise err
        self.errors.append(err)

    def _load(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except OSError as exc:
            raise DatasetError(str(path), None, f"cannot read: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise DatasetError(str(path), exc.lineno, f"not valid JSON: {exc.msg}") from exc

    def _read_jsonl(self) -> list[OSworldTask]:
        tasks: list[OSworldTask] = []
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise DatasetError(str(self.path), None, f"cannot read: {exc.strerror or exc}") from exc
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                example = json.loads(text)
                tasks.append(make_task(example, str(self.path), number))
            except json.JSONDecodeError as exc:
                self._fail(DatasetError(str(self.path), number, f"not valid JSON: {exc.msg}"))
            except DatasetError as exc:
                self._fail(exc)
        return tasks

    def _read_json(self, domains: list[str] | None) -> list[OSworldTask]:
        data = self._load(self.path)
        if isinstance(data, list):
            return self._from_list(data)
        if isinstance(data, dict) and "instruction" in data:
            return [make_task(data, str(self.path), None)]
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return self._from_index(data, domains)
        raise DatasetError(
            str(self.path), None,
            "expected an example, a list of examples, or an index {app: [example id, ...]}",
        )

    def _from_list(self, examples: list[Any]) -> list[OSworldTask]:
        tasks: list[OSworldTask] = []
        for position, example in enumerate(examples):
            try:
                tasks.append(make_task(example, f"{self.path}[{position}]", None))
            except DatasetError as exc:
                self._fail(exc)
        return tasks

    def _from_index(
        self, index: dict[str, list[str]], domains: list[str] | None
    ) -> list[OSworldTask]:
        root = self.path.parent / "examples"
        tasks: list[OSworldTask] = []
        for domain, ids in index.items():
            if domains is not None and domain not in domains:
                continue
            missing = [i for i in ids if not (root / domain / f"{i}.json").is_file()]
            if missing and len(missing) == len(ids):
                # One report for a whole missing app folder instead of one per example.
                self._fail(DatasetError(
                    str(root / domain), None,
                    f"none of the {len(ids)} examples listed for {domain!r} in {self.path} exist",
                ))
                continue
            for example_id in ids:
                file = root / domain / f"{example_id}.json"
                if example_id in missing:
                    self._fail(DatasetError(str(file), None, f"listed in {self.path} but missing"))
                    continue
                try:
                    tasks.append(make_task(self._load(file), str(file), None, domain))
                except DatasetError as exc:
                    self._fail(exc)
        return tasks
