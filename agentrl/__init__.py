"""agentrl: asynchronous RL for LLM agents on a Celery job system.

``app`` is the Celery app, so ``celery -A agentrl worker`` and ``celery -A agentrl beat`` work with
no other flags (configuration from ``$AGENTRL_CONFIG`` and ``AGENTRL_*``).

One sampling job, from ``push_epoch`` to a READY Record (the trajectory's life is the ledger's,
:mod:`agentrl.rollout.ledger`):

1. beat's :class:`beat.schedule.LocalScheduler` (or :meth:`SamplingScheduler.run`) calls
   :func:`agentrl.rollout.epochs.push_epoch` every ``beat_interval_s``: under the lock
   ``push_epoch:<split>`` it inserts the next epoch's Tasks and
   :func:`agentrl.rollout.ledger.open_claims` inserts one ``created`` Record per
   ``(task_id, traj_id)`` and sends its claim to the ``sampling`` queue
   (:func:`agentrl.celery_app.enqueue_claims`);
2. a worker's pool thread runs :func:`workers.sampling.sample`, which hands the
   :class:`~agentrl.rollout.claims.Claim` to the process's event loop
   (:meth:`agentrl.rollout.runtime.SamplingRuntime.submit`): once admitted, the trajectory's
   lease is taken (:meth:`~agentrl.rollout.ledger.TrajectoryLedger.acquire`) and the message is
   acknowledged;
3. ``async with Sampler(config, claim=claim, context=...)`` (:meth:`AsyncSampler.__aenter__`)
   starts the next attempt (:meth:`~agentrl.rollout.ledger.TrajectoryLedger.start`: ``attempt +=
   1``, Record ``running``) and loads the Task;
4. :meth:`AsyncSampler.run` samples, each LLM call through
   :meth:`AsyncSampler.create_chat_completions` → :meth:`Router.create_chat_completion
   <agentrl.inference.routing.Router.create_chat_completion>` (one DispatchedSamplingTask per
   call, written through the attempt: :meth:`~agentrl.rollout.ledger.Attempt.log_call`);
5. on exit :meth:`AsyncSampler.evaluate_record` scores it and
   :meth:`~agentrl.rollout.ledger.Attempt.complete` stores it ``scored`` (a write conditioned
   on the attempt), sets the score in the task and, for the group's last trajectory, marks the
   group READY (ABANDONED without spread); a failure goes to
   :meth:`~agentrl.rollout.ledger.Attempt.fail` (retried, or FAILED out of its group);
6. beat's housekeeping (:func:`agentrl.rollout.ledger.housekeep`) re-sends claims whose lease
   lapsed (a dead or frozen worker) and due retries, and rebuilds claims from MongoDB after Redis
   lost them; the trainer claims READY groups (:class:`agentrl.training.records.RecordClaimer`).
"""

from agentrl.celery_app import app
from agentrl.evaluation import evaluate
from agentrl.rollout.claims import Claim
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.registry import get_sampler, register_sampler
from agentrl.rollout.sampler import AsyncSampler, StatefulSampler
from agentrl.rollout.scheduler import SamplingScheduler

__all__ = [
    "AsyncSampler",
    "Claim",
    "SamplingScheduler",
    "StatefulSampler",
    "app",
    "evaluate",
    "get_sampler",
    "push_epoch",
    "register_sampler",
]
