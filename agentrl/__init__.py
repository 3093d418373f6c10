"""agentrl: asynchronous RL for LLM agents on a Celery job system.

``app`` is the Celery app, so ``celery -A agentrl worker`` and ``celery -A agentrl beat`` work with
no other flags (configuration from ``$AGENTRL_CONFIG`` and ``AGENTRL_*``).

One sampling job, from ``push_epoch`` to a READY Record:

1. beat's :class:`beat.schedule.LocalScheduler` (or :meth:`SamplingScheduler.run`) calls
   :func:`agentrl.rollout.epochs.push_epoch` every ``beat_interval_s``: under the lock
   ``push_epoch:<split>`` it inserts the next epoch's Tasks and
   :func:`agentrl.celery_app.enqueue_claims` sends one message per ``(task_id, traj_id)`` to the
   ``sampling`` queue;
2. a worker's pool thread runs :func:`workers.sampling.sample`, which hands the
   :class:`~agentrl.rollout.claims.Claim` to the process's event loop
   (:meth:`workers.runtime.SamplingRuntime.run_claim`);
3. ``async with Sampler(config, claim=claim)`` (:meth:`AsyncSampler.__aenter__`) takes the
   trajectory's lease (:class:`~agentrl.rollout.leases.LeaseKeeper`), loads the Task and builds
   the Record (id ``task_id:traj_id:epoch``);
4. :meth:`AsyncSampler.run` samples, each LLM call through
   :meth:`AsyncSampler.create_chat_completions` → ``Router.create_chat_completion`` (one
   DispatchedSamplingTask per call);
5. on exit :meth:`AsyncSampler.evaluate_record` scores it;
   :func:`~agentrl.rollout.claims.write_record`,
   :func:`~agentrl.rollout.claims.push_score` and, for the group's last trajectory,
   :func:`~agentrl.rollout.claims.complete_group` mark the group READY (ABANDONED without spread);
6. beat's housekeeping (:func:`agentrl.rollout.epochs.requeue_expired`) re-sends claims whose
   lease expired (a killed worker); the trainer consumes READY records.
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
