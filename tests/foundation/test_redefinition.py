"""A script that registers its own Task and sampler can be imported again by its module name
(what the in-process worker does with ``sampler_modules``); a real clash still raises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agentrl.databases import Task
from agentrl.redefinition import is_redefinition

DEFINE = '''
from agentrl.databases import Task, register_new_model
from agentrl.databases.documents import registered_models
from agentrl.rollout.registry import get_sampler, register_sampler
from agentrl.rollout.sampler import AsyncSampler


@register_new_model
class ThingTask(Task):
    word: str


@register_sampler("thing")
class ThingSampler(AsyncSampler):
    task_class = ThingTask
'''


def _run(directory: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script], cwd=directory, capture_output=True, text=True,
                          timeout=120)


def test_script_imported_again_under_its_module_name(tmp_path: Path) -> None:
    (tmp_path / "thing.py").write_text(DEFINE + '''
if __name__ == "__main__":
    import thing  # the second execution of this file, as the in-process worker does
    assert registered_models()["ThingTask"] is thing.ThingTask
    assert get_sampler("thing") is thing.ThingSampler
    assert thing.ThingSampler.task_class is thing.ThingTask
    print("ok")
''')
    done = _run(tmp_path, "thing.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


def test_a_different_class_of_the_same_name_still_clashes(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text(DEFINE)
    (tmp_path / "task_clash.py").write_text('''
import other
from agentrl.databases import Task, register_new_model


@register_new_model
class ThingTask(Task):
    word: str
''')
    done = _run(tmp_path, "task_clash.py")
    assert done.returncode != 0
    assert "DuplicateModelError: a document model named 'ThingTask'" in done.stderr
    (tmp_path / "sampler_clash.py").write_text('''
import other
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler


@register_sampler("thing")
class ThingSampler(AsyncSampler):
    pass
''')
    done = _run(tmp_path, "sampler_clash.py")
    assert done.returncode != 0
    assert "sampler name 'thing' is already taken by other.ThingSampler" in done.stderr


def test_is_redefinition() -> None:
    class Local(Task):
        pass

    assert is_redefinition(Local, Local)
    assert not is_redefinition(Task, Local)  # another qualified name
