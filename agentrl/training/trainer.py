"""The trainer: READY records in, one optimizer step, new weights out to the services.

One step reads like the algorithm (:meth:`Trainer.train`)::

    groups  = claim READY groups (>= train_batch_size records, advantages set; leases)
    batch   = tokenize(convert_record_to_data_func(record, calls) for each record)
    metrics = optimize(batch)            # loss_calculater, AdamW, grad clip, lr schedule
    publish(save(model), step + 1)       # split lock held, services DOWN while loading
    global_step += 1                     # the run state samplers stamp calls with
    checkpoint(model, optimizer, step)   # resumable every checkpoint_every_steps (and at the end)
    commit claims                        # records count as trained once checkpointed
    log(metrics)                         # JSONL, progress bar, report_to trackers

:meth:`Trainer.request_stop` (the drivers call it on Ctrl-C / SIGTERM) ends the loop after the
step in progress, or at once while it waits for groups; :meth:`Trainer.save_checkpoint_now` then
makes the last completed step resumable.

Works as a single process on CPU (``agentrl train``) and as several ranks (``torchrun`` or
``agentrl run --nproc-per-node N``): rank 0 claims the step's groups, tokenizes them and deals
whole groups to the ranks by token count; every rank steps on its share with a global loss
normalizer (:class:`~agentrl.training.optimization.PolicyOptimizer`, FSDP2 by default); the
weights are gathered to rank 0, which writes them, and each DP group's engine owner loads them;
checkpoints are sharded (:mod:`~agentrl.training.sharded_checkpoint`), written by every rank;
rank 0 alone claims, commits, increments the global step and logs.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record
from agentrl.errors import (
    AlignmentError,
    CheckpointError,
    OrphanedRunStateError,
    TrainingError,
)
from agentrl.inference.model_files import resolve_model_path
from agentrl.rollout.ledger import GlobalStep, set_training_finished
from agentrl.rollout.outcomes import CORRECT, WELL_FORMED, outcome_rates
from agentrl.training import metrics as M
from agentrl.training.checkpoint import (
    COMPLETE_MARKER,
    TrainerState,
    checkpoint_root,
    complete_step,
    describe_checkpoint,
    latest_checkpoint,
    load_state,
    mark_complete,
    optimizer_storage_dtype,
    restore_rng,
    rng_state,
    save_step,
    step_dir,
)
from agentrl.training.datasets import get_record_converter
from agentrl.training.distributed import (
    any_rank,
    barrier,
    broadcast_object,
    deal_batch,
    full_state_dict,
    init_distributed,
    share_batches,
)
from agentrl.training.metrics import MetricsLogger
from agentrl.training.optimization import PolicyOptimizer, model_logprobs
from agentrl.training.records import ClaimedGroup, RecordClaimer
from agentrl.training.sharded_checkpoint import (
    is_sharded,
    load_full_optimizer,
    load_sharded,
    save_sharded,
)
from agentrl.training.tokenization import TrainBatch, collate, tokenize_sample
from agentrl.training.trackers import open_trackers
from agentrl.training.weights import WeightPublisher, no_publish

log = logging.getLogger(__name__)

__all__ = ["Trainer", "default_device", "init_distributed", "model_logprobs", "reference_model"]

FINAL_MODEL_DIR = "final_model"
"""Where the final policy is exported (``save_pretrained``) under ``<output_dir>/<name>``."""


def default_device() -> torch.device:
    """The local GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Trainer(PolicyOptimizer):
    """GRPO-family training on the READY records of a run.

    Args:
        config: the run configuration (training section).
        dbs: connections (records, dispatch logs, the global step counter).
        publish: called with ``(model_dir, version)`` after each step to update the inference
            services; the default publishes nothing. With several ranks every rank calls its
            own (a no-op on ranks that own no engine).
        sampling_finished: returns True once no more records will become READY (then the
            trainer trains what is left and stops); ``None``: never finished, wait for
            ``max_steps``.
        show_progress: draw the progress bar.
        device: where to train (default: :func:`default_device`).

    Raises:
        InferenceError: the model directory does not exist.
        CheckpointError: a checkpoint to resume from is unreadable.
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        dbs: Databases,
        publish: WeightPublisher = no_publish,
        *,
        sampling_finished: Callable[[], bool] | None = None,
        show_progress: bool = True,
        device: torch.device | None = None,
    ) -> None:
        self.config, self.dbs, self.publish = config, dbs, publish
        self.sampling_finished = sampling_finished or (lambda: False)
        self.rank, self.world_size = init_distributed()
        self.device = device or default_device()
        if self.device.type == "cpu" and config.train_num_threads > 0:
            torch.set_num_threads(config.train_num_threads)
        self.root = checkpoint_root(config)
        resume_from = latest_checkpoint(self.root)
        base_dir = resolve_model_path(config.model_name_or_path)
        model_dir = resume_from or base_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        # --- firsthour: checkpoint dtype, KL reference, stop flag (issue 15 / 12.6) ---
        self.optimizer_dtype = optimizer_storage_dtype(config.checkpoint_optimizer_dtype)
        ref_model = reference_model(base_dir, self.device) if config.kl_coef > 0 else None
        self.stop_requested = False
        # --- end firsthour ---
        pad_id = self.tokenizer.pad_token_id
        super().__init__(
            config, model, self.device, ref_model=ref_model,
            pad_id=pad_id if pad_id is not None else self.tokenizer.eos_token_id,
        )
        self.batch_sequences = 0
        self.last_checkpoint: Path | None = None
        self.converter = get_record_converter(config.record_converter)
        self.claimer = RecordClaimer(config, dbs)
        self.global_step = GlobalStep(dbs)
        self.steps_done = 0
        self.skipped_records = 0
        self.resumed_step: int | None = None
        if resume_from is not None:
            self._resume(resume_from)
        elif self.rank == 0:
            # no checkpoint: the policy is the base model, so the step count starts again (a
            # step left by an earlier run of the same database must not carry over)
            trained = dbs.store.collection(Record).count_documents({"trained_count": {"$gt": 0}})
            if trained:
                raise OrphanedRunStateError(str(self.root), config.db_name, trained)
            self.global_step.set(0)
        if self.rank == 0:
            set_training_finished(dbs, False)
            returned = self.claimer.return_all()  # claims of steps after the checkpoint
            if returned:
                log.info("%d records claimed by steps after the checkpoint go back", returned)
        self.is_main = self.rank == 0
        self.logger = MetricsLogger(
            self.metrics_path, config.max_steps or None, show_progress and self.is_main,
            trackers=open_trackers(config) if self.is_main else (),
            start_step=self.resumed_step or 0,
        )
        self._counts = self.claimer.rollout_counts() if self.is_main else None
        self._dropped = 0
        self.after_step: Callable[[int], object] | None = None
        """Called on rank 0 with the new global step after each step (the driver's evaluation)."""
        barrier()  # no rank reads the run state before rank 0 has set it

    @property
    def metrics_path(self) -> Path:
        """The JSONL file of per-step metrics: ``<output_dir>/<name>/metrics.jsonl``."""
        return Path(self.config.output_dir) / self.config.name / "metrics.jsonl"

    def _resume(self, path: Path) -> None:
        """Restore optimizer, scheduler, RNG and the global step from checkpoint ``path``
        (sharded or one-rank, written by any number of ranks)."""
        if is_sharded(path):
            step = load_sharded(path, self.module, self.optimizer, self.scheduler)
        else:
            state = load_state(path)
            if self.world_size > 1:
                load_full_optimizer(self.model, self.optimizer, state.optimizer)
            else:
                self.optimizer.load_state_dict(state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
            restore_rng(state.rng)
            step = state.step
        # the global step counts the optimizer steps in the served weights: steps after the
        # checkpoint (weights-only, not resumable) are lost, so the counter goes back with them
        if self.rank == 0:
            self.global_step.set(step)
        barrier()
        self.resumed_step = step
        log.info("resumed from %s (step %d)", path, step)

    # --- the loop --------------------------------------------------------------------------------

    def train(self) -> list[dict[str, float]]:
        """Train until ``max_steps`` steps are done or sampling finished and nothing is left.

        Returns:
            The metrics of each step taken by this call.
        """
        history: list[dict[str, float]] = []
        if self.resumed_step is not None and (self.is_main or self.world_size > 1):
            self.publish(step_dir(self.root, self.resumed_step), self.global_step.get())
        try:
            if self.world_size > 1:
                history = self._train_ranks()
            else:
                while not self._reached_max_steps() and not self.stop_requested:
                    groups = self.wait_for_groups()
                    if not groups:
                        break
                    history.append(self.step(groups))
                    self._after_step()
            self.last_checkpoint = self.save_checkpoint_now()
            if not any_rank(self.stop_requested, self.device):  # the same answer on every rank
                self.export_final_model()
            if self.is_main and not self.stop_requested:
                set_training_finished(self.dbs, True)  # beat pushes no more training epochs
        finally:
            self.logger.close()
        return history

    def _train_ranks(self) -> list[dict[str, float]]:
        """The loop of several ranks: they agree to go on, rank 0 claims and deals the batch,
        every rank steps on its share."""
        history: list[dict[str, float]] = []
        while not any_rank(self._reached_max_steps() or self.stop_requested, self.device):
            groups = self.wait_for_groups() if self.is_main else []
            share = self._deal(groups)
            if share is None:  # rank 0 has nothing left (sampling finished, or a stop)
                break
            history.append(self.step(groups, share))
            self._after_step()
        return history

    def _after_step(self) -> None:
        """Rank 0 calls :attr:`after_step` with the new global step (the others go on to the
        next collective and wait there)."""
        if self.after_step is not None and self.is_main:
            self.after_step(self.global_step.get())

    def _deal(self, groups: list[ClaimedGroup]) -> TrainBatch | None:
        """This rank's share of rank 0's ``groups`` (``None`` on every rank when rank 0 has
        none).

        Rank 0 builds the batch and deals whole groups by token count; when building fails
        there, every rank raises (rank 0 the error itself, the others a TrainingError naming
        it), so no rank waits in a collective for it.

        Raises:
            AlignmentError: (rank 0) every record failed to line up.
            TrainingError: no record produced a trainable sequence.
        """
        shares: list[Any] | None = None
        error: BaseException | None = None
        if self.is_main:
            if not groups:
                shares = [None] * self.world_size
            else:
                try:
                    batch = self.build_batch(groups)
                    self.batch_sequences = len(batch)
                    shares = deal_batch(batch, self._group_of_rows(groups, batch),
                                        self.world_size)
                except (AlignmentError, TrainingError) as exc:
                    self.claimer.give_back(r for g in groups for r in g.records)
                    error, shares = exc, [f"rank 0 could not build the batch: {exc}"] * (
                        self.world_size)
        share = share_batches(shares)
        if error is not None:
            raise error
        if isinstance(share, str):
            raise TrainingError(share)
        return share

    @staticmethod
    def _group_of_rows(groups: list[ClaimedGroup], batch: TrainBatch) -> list[int]:
        """The group index of each row of ``batch`` (rows name their record)."""
        group_of_record = {r.id: i for i, g in enumerate(groups) for r in g.records}
        return [group_of_record[record_id] for record_id in batch.record_ids]

    def _reached_max_steps(self) -> bool:
        return bool(self.config.max_steps) and self.global_step.get() >= self.config.max_steps

    def wait_for_groups(self) -> list[ClaimedGroup]:
        """Claim groups until ``train_batch_size`` records are held or sampling has finished.

        While waiting, says every ``no_spread_warning_s`` seconds that no group with score
        spread has arrived, with the records per status.

        Returns:
            The claimed groups (fewer records than the batch size only at the end of sampling;
            empty when nothing is left).
        """
        want = self.config.train_batch_size
        groups: list[ClaimedGroup] = []
        last_progress = time.monotonic()
        while True:
            if self.stop_requested:  # firsthour: a stop ends the wait; no step is taken
                return []
            held = sum(len(g.records) for g in groups)
            finished = self.sampling_finished()
            if held:
                self.claimer.renew()
            new = self.claimer.claim(self.global_step.get() + 1, want - held)
            if new:
                groups += new
                last_progress = time.monotonic()
                held = sum(len(g.records) for g in groups)
            if held >= want or (finished and not new):
                return groups
            if time.monotonic() - last_progress > self.config.no_spread_warning_s:
                self._say_waiting(held)
                last_progress = time.monotonic()
            time.sleep(self.config.train_poll_interval_s)

    def _say_waiting(self, held: int) -> None:
        counts = self.claimer.status_counts()
        rollout = self.claimer.rollout_counts()
        waited = f"{self.config.no_spread_warning_s:.0f} s"
        records = ", ".join(f"{k}={v}" for k, v in counts.items() if v) or "none yet"
        holding = f"holding {held}/{self.config.train_batch_size} records"
        if rollout.finished == 0:
            self.logger.note(
                f"[yellow]waiting {waited} for the first finished group ({holding}); "
                f"records: {records}"
            )
            return
        self.logger.note(
            f"[yellow]no group with score spread for {waited} ({holding}); records: {records}; "
            f"of {rollout.finished} finished: {rollout.correct} correct, "
            f"{rollout.well_formed} well-formed. Groups whose samples all score the same are "
            "abandoned; more generations per task or an easier dataset give spread."
        )

    def step(self, groups: list[ClaimedGroup], share: TrainBatch | None = None) -> dict[str, float]:
        """One optimizer step on ``groups``, then publish, count, checkpoint and log.

        Args:
            groups: the claimed groups (rank 0's; empty on other ranks).
            share: with several ranks, this rank's part of the batch (from rank 0's deal);
                ``None``: build the batch of ``groups`` here.

        Returns:
            The step's metrics (also written to the JSONL file).
        """
        started = time.monotonic()
        step = self.global_step.get()
        records = [r for g in groups for r in g.records]
        try:
            batch = share if share is not None else self.build_batch(groups)
            metrics = self.optimize(batch, step)
        except BaseException:
            self.claimer.give_back(records)
            raise
        synced = time.monotonic()
        if self.world_size > 1:
            self._publish_ranks(step + 1)
        else:
            new_step = step + 1
            checkpointing = new_step % self.config.checkpoint_every_steps == 0
            state = self._state(new_step) if checkpointing else None
            model_dir = save_step(
                self.root, new_step, self.model, self.tokenizer, state,
                self.config.keep_checkpoints, self.optimizer_dtype,
            )
            if state is not None:
                self.logger.note(f"checkpoint {describe_checkpoint(model_dir)}")
            self.publish(model_dir, new_step)
            self.global_step.incr()
            if checkpointing:
                self.claimer.commit(new_step)
        metrics[M.PERF_WEIGHT_SYNC_S] = time.monotonic() - synced
        self.steps_done += 1
        if not self.is_main:
            return metrics
        scores = [float(r.score or 0.0) for r in records]
        metrics.update(self._rollout_metrics(groups))
        metrics[M.REWARD_MEAN] = sum(scores) / len(scores)
        metrics[M.REWARD_STD] = float(torch.tensor(scores).std(unbiased=False).item())
        rates = outcome_rates(records)  # from the samplers' record.meta["metrics"]
        metrics[M.REWARD_CORRECT_RATE] = rates[CORRECT]
        metrics[M.REWARD_WELL_FORMED_RATE] = rates[WELL_FORMED]
        metrics[M.ADVANTAGE_ABS_MEAN] = sum(abs(r.advantage or 0.0) for r in records) / len(records)
        metrics[M.TRAIN_RECORDS] = float(len(records))
        metrics[M.TRAIN_GROUPS] = float(len(groups))
        sequences = self.batch_sequences if share is not None else len(batch)
        metrics[M.TRAIN_SEQUENCES] = float(sequences)
        metrics[M.TRAIN_SKIPPED_RECORDS] = float(self.skipped_records)
        metrics[M.PERF_STEP_TIME_S] = time.monotonic() - started
        if self.is_main:
            self.logger.log(step + 1, metrics)
        return metrics

    def _publish_ranks(self, new_step: int) -> None:
        """After a multi-rank step: gather the weights to rank 0, which writes them; every rank
        writes its shards when checkpointing; every DP group's engine owner loads the weights;
        then rank 0 counts the step (and commits its claims when checkpointed)."""
        checkpointing = new_step % self.config.checkpoint_every_steps == 0
        weights = full_state_dict(self.module, self.data_parallel)  # rank 0: full, CPU
        model_dir = step_dir(self.root, new_step)
        if self.is_main:
            save_step(self.root, new_step, self.model, self.tokenizer, None,
                      self.config.keep_checkpoints, state_dict=weights)
        del weights
        barrier()
        if checkpointing:
            self._checkpoint_ranks(new_step)
        self.publish(model_dir, new_step)  # each engine owner loads the weights
        barrier()
        if self.is_main:
            self.global_step.incr()
            if checkpointing:
                self.claimer.commit(new_step)
        barrier()

    def _checkpoint_ranks(self, step: int) -> Path:
        """Write every rank's shards of step ``step`` (its weights exist) and mark it resumable."""
        directory = step_dir(self.root, step)
        save_sharded(directory, self.module, self.optimizer, self.scheduler, step)
        if self.is_main:
            mark_complete(self.root, step, self.config.keep_checkpoints)
            self.logger.note(f"checkpoint {describe_checkpoint(directory)}")
        barrier()
        return directory

    def export_final_model(self) -> Path | None:
        """Save the final policy with ``save_pretrained`` (and the tokenizer) to
        ``<output_dir>/<name>/final_model`` (config ``export_final_model``).

        Every rank must call it with several ranks (the weights are gathered).

        Returns:
            The directory on rank 0 (``None`` on other ranks, when turned off, or when no step
            was taken by this run).

        Raises:
            CheckpointError: the directory cannot be written.
        """
        if not self.config.export_final_model or self.steps_done == 0:
            return None
        weights = full_state_dict(self.module, self.data_parallel)
        if not self.is_main:
            return None
        target = Path(self.config.output_dir) / self.config.name / FINAL_MODEL_DIR
        tmp = target.with_name(target.name + ".tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        except OSError as exc:
            raise CheckpointError(str(target), f"cannot write: {exc}") from exc
        self.logger.note(f"final policy saved to {target}")
        return target

    def _rollout_metrics(self, groups: list[ClaimedGroup]) -> dict[str, float]:
        """Correct / well-formed rates of the records that finished since the last step."""
        now = self.claimer.rollout_counts()
        before, self._counts = self._counts, now
        dropped = self.claimer.dropped_stale - self._dropped
        self._dropped = self.claimer.dropped_stale
        finished = now.finished - before.finished
        reported = now.reported - before.reported
        return {
            M.ROLLOUT_FINISHED: float(finished),
            M.ROLLOUT_CORRECT_RATE: (now.correct - before.correct) / reported
            if reported > 0 else math.nan,
            M.ROLLOUT_WELL_FORMED_RATE: (now.well_formed - before.well_formed) / reported
            if reported > 0 else math.nan,
            M.ROLLOUT_GROUPS_WITH_SPREAD: float(len(groups)),
            M.STALENESS_DROPPED: float(dropped),
        }

    # --- stopping (firsthour: SIGINT/SIGTERM handling of the drivers) --------------------------

    def request_stop(self) -> None:
        """Ask :meth:`train` to return after the step in progress (or now, while waiting)."""
        self.stop_requested = True

    def save_checkpoint_now(self) -> Path | None:
        """Make the last completed step resumable (rank 0), so a rerun continues from it, and
        count the records its steps used as trained (their claims are committed).

        Returns:
            The resumable checkpoint of the last completed step (``None`` when no step was
            ever completed, or on ranks other than 0).

        Raises:
            CheckpointError: the state cannot be written.
        """
        if self.world_size > 1:
            return self._save_checkpoint_ranks()
        if not self.is_main:
            return None
        step = self.global_step.get()
        directory = step_dir(self.root, step)
        if (directory / COMPLETE_MARKER).exists():
            path: Path | None = directory
        elif self.steps_done == 0 or not directory.is_dir():
            return latest_checkpoint(self.root)
        else:
            path = complete_step(
                self.root, self._state(step), self.config.keep_checkpoints, self.optimizer_dtype
            )
            self.logger.note(f"checkpoint {describe_checkpoint(path)}")
        self.claimer.commit(step)
        return path

    def _save_checkpoint_ranks(self) -> Path | None:
        """:meth:`save_checkpoint_now` of several ranks (every rank must call it)."""
        step = self.global_step.get()
        directory = step_dir(self.root, step)
        complete = (directory / COMPLETE_MARKER).exists()
        needed = not complete and self.steps_done > 0 and directory.is_dir()
        complete, needed = broadcast_object((complete, needed))  # rank 0 decides
        if needed:
            path = self._checkpoint_ranks(step)
        elif complete:
            path = directory
        else:
            return latest_checkpoint(self.root) if self.is_main else None
        if not self.is_main:
            return None
        self.claimer.commit(step)
        return path

    def _state(self, step: int) -> TrainerState:
        return TrainerState(
            step=step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng=rng_state(),
        )

    # --- data and optimization -------------------------------------------------------------------

    def build_batch(self, groups: list[ClaimedGroup]) -> TrainBatch:
        """Convert and tokenize the claimed records into one padded batch.

        A record whose tokens do not line up is skipped with an error log naming it (counted in
        ``train/skipped_records``).

        Raises:
            AlignmentError: every record failed to line up (the first error, naming its record).
            TrainingError: no record produced a trainable sequence.
        """
        records = [r for g in groups for r in g.records]
        calls = self.claimer.calls_of(records)
        tokenized = []
        errors: list[AlignmentError] = []
        for record in records:
            try:
                tokenized += [
                    tokenize_sample(sample, self.tokenizer, self.config.max_train_seq_len,
                                    temperature=self.config.temperature)
                    for sample in self.converter(record, calls[record.id])
                ]
            except AlignmentError as exc:  # one bad record must not stop the run: say which
                log.error("skipping record %s: %s", record.id, exc)
                errors.append(exc)
        self.skipped_records = len(errors)
        if not tokenized:
            if errors:
                raise errors[0]
            raise TrainingError(
                f"records {[r.id for r in records][:8]} have no completed LLM call to train on"
            )
        pad_id = self.tokenizer.pad_token_id
        return collate(tokenized, pad_id if pad_id is not None else self.tokenizer.eos_token_id)


def reference_model(model_dir: str | Path, device: torch.device) -> Any:
    """A frozen float32 copy of the model in ``model_dir`` (the KL reference policy)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device).eval().requires_grad_(False)
    return model
