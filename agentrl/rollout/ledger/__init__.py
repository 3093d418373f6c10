"""`TrajectoryLedger`: the one owner of a trajectory's life, and of every Redis key name.

A trajectory is the Record ``task_id:traj_id:epoch``. Its life, step by step (each step names
the function that makes it):

1. **claim** — :func:`open_claims` (beat's epoch push, an evaluation) inserts the Record
   ``created`` and sends one message per claim; Redis gets the run's ``alive`` marker.
2. **lease** — :meth:`TrajectoryLedger.acquire`: a worker takes the trajectory's lease (a member
   of the ``leases`` sorted set, expiry as score, its owner token and the JSON claim in two
   hashes) *before* the message is acknowledged, so the claim is always in the broker or under
   a lease. The process's :class:`~agentrl.rollout.leases.LeaseKeeper` extends it every
   ``heartbeat_interval_s``.
3. **attempt** — :meth:`TrajectoryLedger.start`: one conditional update increments ``attempt``
   and marks the Record ``running`` (a message naming no Record of this database is another
   run's and is dropped). A final Record (a late redelivery) ends the start with
   :class:`~agentrl.errors.TrajectoryFinishedError` after making sure its outcome reached the
   group. Attempts count at start, so a worker killed on every attempt still reaches the cap.
4. **calls** — :meth:`Attempt.log_call`: each DispatchedSamplingTask carries the attempt and goes
   ``pending → running → completed`` through the process's write buffer.
5. **finish** — :meth:`Attempt.complete`: the outputs pass the storage boundary
   (:mod:`agentrl.rollout.storable`), the Record becomes ``scored`` in one write conditioned on
   the attempt (a stale copy's write matches nothing: :class:`~agentrl.errors.LeaseLostError`),
   the score is set in the task (``scores.<traj_id>``) and the group's last member marks the
   group ``ready`` (``abandoned`` without spread) and the task ``completed``.
6. **failure** — :meth:`Attempt.fail` classifies the error (:func:`classify_failure`):
   ``infrastructure`` is retried after a backoff and not charged to ``max_sample_attempts``;
   ``sampler`` / ``invalid_output`` are retried while attempts remain
   (``resample_error_records``), then the Record is ``failed``: it leaves its group, which
   completes from the scored rest (``ready`` with at least two scores and spread).
7. **requeue** — :func:`housekeep` (beat) re-sends claims whose lease lapsed (a dead or frozen
   worker) and retries that are due, rebuilds the claims of unfinished epochs from MongoDB when
   Redis came back empty, and completes groups whose last member died after scoring.

Redis holds only what can be rebuilt (leases, queues, locks, the global step cache); MongoDB
holds the Records, tasks, calls and the run state (:class:`GlobalStep`, pushed epochs).
"""

from agentrl.rollout.ledger.rules import (
    INFRASTRUCTURE_ERRORS,
    SCORE_SPREAD_TOLERANCE,
    Enqueue,
    RedisKeys,
    claim_of,
    classify_failure,
    group_outcome,
    has_spread,
    infrastructure_backoff_s,
    worker_name,
)
from agentrl.rollout.ledger.run import (
    GlobalStep,
    Housekeeping,
    clear_run_keys,
    complete_stuck_groups,
    failures_by_kind,
    housekeep,
    open_claims,
    pushed_epoch,
    resend_unfinished,
    set_pushed_epoch,
    set_training_finished,
    training_finished,
)
from agentrl.rollout.ledger.trajectory import Attempt, TrajectoryLedger

__all__ = [
    "INFRASTRUCTURE_ERRORS",
    "SCORE_SPREAD_TOLERANCE",
    "Attempt",
    "Enqueue",
    "GlobalStep",
    "Housekeeping",
    "RedisKeys",
    "TrajectoryLedger",
    "claim_of",
    "classify_failure",
    "clear_run_keys",
    "complete_stuck_groups",
    "failures_by_kind",
    "group_outcome",
    "has_spread",
    "housekeep",
    "infrastructure_backoff_s",
    "open_claims",
    "pushed_epoch",
    "resend_unfinished",
    "set_pushed_epoch",
    "set_training_finished",
    "training_finished",
    "worker_name",
]
