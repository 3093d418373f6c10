"""Trainer claims are leases: a trainer killed after claiming and before its step leaves nothing
counted as trained, and the trainer that starts next trains those records exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record
from agentrl.training.trainer import Trainer
from tests.jobs.helpers import REPO
from tests.training.factories import store_group

pytestmark = pytest.mark.slow

CLAIM_AND_HANG = """
import sys, time
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.training.trainer import Trainer
config = load_config(train_batch_size=4, max_steps=1)
trainer = Trainer(config, init_databases(config), show_progress=False)
groups = trainer.wait_for_groups()
print("claimed", sum(len(g.records) for g in groups), flush=True)
time.sleep(3600)
"""


def test_trainer_killed_after_claiming_trains_those_records_once_after_restart(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.train_batch_size, config.max_steps = 4, 1
    trainer = Trainer(config, dbs, show_progress=False)  # loads the tokenizer for the factory
    groups = [store_group(dbs, trainer.tokenizer, task, [1.0, 0.0]) for task in ("a", "b")]
    ids = {r.id for g in groups for r in g}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    doomed = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert doomed.stdout.readline().split() == ["claimed", "4"]
        claimed = [dbs.store.get(Record, i) for i in ids]
        assert {r.train_claim_owner.startswith("trainer-") for r in claimed} == {True}
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            os.killpg(doomed.pid, signal.SIGKILL)
    # nothing counted: the step never ran, so the restart is not refused as an orphan
    assert {dbs.store.get(Record, i).trained_count for i in ids} == {0}

    restarted = Trainer(config, dbs, show_progress=False)  # returns the dead trainer's claims
    assert {dbs.store.get(Record, i).train_claim_owner for i in ids} == {""}
    history = restarted.train()
    assert len(history) == 1 and history[0]["train/records"] == 4
    after = [dbs.store.get(Record, i) for i in ids]
    assert [r.trained_count for r in after] == [1] * 4
    assert {r.last_trained_step for r in after} == {1}
    assert {r.train_claim_owner for r in after} == {""}
