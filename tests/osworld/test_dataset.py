"""OSworldTask / OSworldDataset on the shared OSWorld files and on small JSON/JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.errors import DatasetError
from agentrl.rollout.osworld import OSworldDataset, OSworldTask
from tests.conftest import SHARED_DATA

OSWORLD = SHARED_DATA / "osworld"


def test_index_counts_per_app_equal_test_all() -> None:
    index = json.loads((OSWORLD / "test_all.json").read_text())
    dataset = OSworldDataset(OSWORLD / "test_all.json")
    present = {app: ids for app, ids in index.items() if (OSWORLD / "examples" / app).is_dir()}
    assert dataset.count_by_domain() == {app: len(ids) for app, ids in present.items()}
    assert len(dataset) == sum(len(ids) for ids in present.values()) == 268
    # the shared copy has no multi_apps folder: reported once, naming the folder
    assert [e.file for e in dataset.errors] == [str(OSWORLD / "examples" / "multi_apps")]
    assert "101 examples" in str(dataset.errors[0])


def test_tasks_carry_the_example_with_proxy() -> None:
    dataset = OSworldDataset(OSWORLD, domains=["chrome"])  # a directory works too
    assert len(dataset) == 46
    task = dataset[0]
    assert isinstance(task, OSworldTask)
    example = json.loads((OSWORLD / "examples" / "chrome" / f"{task.example_id}.json").read_text())
    assert task.task_config == {**example, "proxy": True}
    assert task.instruction == example["instruction"]
    assert task.domain == "chrome"
    assert OSworldTask.from_mongo(task.to_mongo()) == task


def test_missing_examples_raise_without_skipping() -> None:
    with pytest.raises(DatasetError, match="multi_apps"):
        OSworldDataset(OSWORLD / "test_all.json", skip_bad_lines=False)


def test_jsonl_reports_bad_lines_with_file_and_line(tmp_path: Path) -> None:
    example = json.loads(next((OSWORLD / "examples" / "os").glob("*.json")).read_text())
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join([
        json.dumps(example),
        "{not json",
        json.dumps({"instruction": "x"}),
        "",
        json.dumps({**example, "config": "oops"}),
        json.dumps({k: v for k, v in example.items() if k != "config"}),
    ]))
    dataset = OSworldDataset(path)
    assert len(dataset) == 2
    assert dataset[1].task_config["config"] == []
    problems = [(e.line, e.field) for e in dataset.errors]
    assert problems == [(2, None), (3, "evaluator"), (5, "config")]
    assert str(dataset.errors[0]).startswith(f"{path}:2:")
    with pytest.raises(DatasetError) as info:
        OSworldDataset(path, skip_bad_lines=False)
    assert info.value.line == 2


def test_json_file_with_one_or_many_examples(tmp_path: Path) -> None:
    files = sorted((OSWORLD / "examples" / "vlc").glob("*.json"))[:3]
    examples = [json.loads(f.read_text()) for f in files]
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    one.write_text(json.dumps(examples[0]))
    many.write_text(json.dumps(examples))
    assert [t.example_id for t in OSworldDataset(one)] == [examples[0]["id"]]
    assert [t.example_id for t in OSworldDataset(many)] == [e["id"] for e in examples]
    assert all(t.task_config["proxy"] is True for t in OSworldDataset(many))


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        OSworldDataset(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(DatasetError, match="expected an example"):
        OSworldDataset(bad)
