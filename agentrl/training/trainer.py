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

Works as a single process on CPU (``agentrl train``) and under ``torchrun``: each rank claims its
own groups, gradients are averaged by DistributedDataParallel, and rank 0 alone publishes,
increments the global step, checkpoints and logs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record
from agentrl.errors import AlignmentError, OrphanedRunStateError, TrainingError
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
    optimizer_storage_dtype,
    restore_rng,
    rng_state,
    save_step,
    step_dir,
)
from agentrl.training.datasets import get_record_converter
from agentrl.training.loss import (
    LOG_RATIO_LIMIT,
    LossOutput,
    LossParams,
    aggregation_normalizer,
    get_loss,
    kl_penalty,
    loss_normalizer,
    token_logprobs,
)
from agentrl.training.metrics import MetricsLogger, reduce_metrics
from agentrl.training.records import ClaimedGroup, RecordClaimer
from agentrl.training.tokenization import TrainBatch, collate, tokenize_sample
from agentrl.training.trackers import open_trackers
from agentrl.training.weights import WeightPublisher, no_publish

log = logging.getLogger(__name__)

_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
_UNBOUNDED_STEPS = 1_000_000


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` for a plain single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    """The local GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Trainer:
    """GRPO-family training on the READY records of a run.

    Args:
        config: the run configuration (training section).
        dbs: connections (records, dispatch logs, the global step counter).
        publish: called with ``(model_dir, version)`` after each step to update the inference
            services; the default publishes nothing.
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
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.to(self.device).train()
        # --- firsthour: checkpoint dtype, KL reference, stop flag (issue 15 / 12.6) ---
        self.optimizer_dtype = optimizer_storage_dtype(config.checkpoint_optimizer_dtype)
        self.ref_model = reference_model(base_dir, self.device) if config.kl_coef > 0 else None
        self.stop_requested = False
        # --- end firsthour ---
        self.module: Any = self.model
        if self.world_size > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = get_scheduler(
            _SCHEDULES[config.lr_schedule],
            self.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_steps or _UNBOUNDED_STEPS,
        )
        self.loss_fn = get_loss(config.loss_calculater)
        self.loss_params = LossParams.from_config(config)
        self.converter = get_record_converter(config.record_converter)
        self.claimer = RecordClaimer(config, dbs)
        self.global_step = GlobalStep(dbs)
        self.steps_done = 0
        self.skipped_records = 0
        self.skipped_micro_batches: list[list[str]] = []
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
        self._counts = self.claimer.rollout_counts()
        self._dropped = 0
        self.after_step: Callable[[int], object] | None = None
        """Called with the new global step after each step (rank 0 evaluations)."""

    @property
    def metrics_path(self) -> Path:
        """The JSONL file of per-step metrics: ``<output_dir>/<name>/metrics.jsonl``."""
        return Path(self.config.output_dir) / self.config.name / "metrics.jsonl"

    def _resume(self, path: Path) -> None:
        """Restore optimizer, scheduler, RNG and the global step from checkpoint ``path``."""
        state = load_state(path)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        restore_rng(state.rng)
        # the global step counts the optimizer steps in the served weights: steps after the
        # checkpoint (weights-only, not resumable) are lost, so the counter goes back with them
        if self.rank == 0:
            self.global_step.set(state.step)
        self.resumed_step = state.step
        log.info("resumed from %s (step %d)", path, state.step)

    # --- the loop --------------------------------------------------------------------------------

    def train(self) -> list[dict[str, float]]:
        """Train until ``max_steps`` steps are done or sampling finished and nothing is left.

        Returns:
            The metrics of each step taken by this call.
        """
        history: list[dict[str, float]] = []
        if self.resumed_step is not None and self.is_main:
            self.publish(step_dir(self.root, self.resumed_step), self.global_step.get())
        try:
            while not self._reached_max_steps() and not self.stop_requested:
                groups = self.wait_for_groups()
                if not self._all_ranks_have(groups):
                    self.claimer.give_back(r for g in groups for r in g.records)
                    break
                history.append(self.step(groups))
                if self.after_step is not None and self.is_main:  # the driver's evaluation
                    self.after_step(self.global_step.get())
            self.save_checkpoint_now()
            if self.is_main and not self.stop_requested:
                set_training_finished(self.dbs, True)  # beat pushes no more training epochs
        finally:
            self.logger.close()
        return history

    def _reached_max_steps(self) -> bool:
        return bool(self.config.max_steps) and self.global_step.get() >= self.config.max_steps

    def _all_ranks_have(self, groups: list[ClaimedGroup]) -> bool:
        """Whether every rank has a batch (ranks step together or stop together)."""
        if self.world_size == 1:
            return bool(groups)
        flag = torch.tensor([1 if groups else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

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

    def step(self, groups: list[ClaimedGroup]) -> dict[str, float]:
        """One optimizer step on ``groups``, then publish, count, checkpoint and log.

        Returns:
            The step's metrics (also written to the JSONL file).
        """
        started = time.monotonic()
        step = self.global_step.get()
        records = [r for g in groups for r in g.records]
        try:
            batch = self.build_batch(groups)
            metrics = self.optimize(batch, step)
        except BaseException:
            self.claimer.give_back(records)
            raise
        if self.is_main:
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
        if self.world_size > 1:
            dist.barrier()
        self.steps_done += 1
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
        metrics[M.TRAIN_SEQUENCES] = float(len(batch))
        metrics[M.TRAIN_SKIPPED_RECORDS] = float(self.skipped_records)
        metrics[M.PERF_STEP_TIME_S] = time.monotonic() - started
        if self.is_main:
            self.logger.log(step + 1, metrics)
        return metrics

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

    def optimize(self, batch: TrainBatch, step: int) -> dict[str, float]:
        """One AdamW step on ``batch`` (gradient accumulation over micro-batches).

        A micro-batch whose loss, or whose gradient with respect to the policy's logprobs, is
        not finite is skipped (counted in ``train/skipped_micro_batches``, logged with its
        record ids, kept in :attr:`skipped_micro_batches`). The step is not applied
        (``optim/step_applied`` 0, gradients dropped) when the total gradient norm is not finite
        or every micro-batch was skipped.

        Args:
            batch: the padded batch, ``(B, T)`` tensors.
            step: the global step of the weights being trained (for staleness).

        Returns:
            Loss, clip, staleness, optimizer and throughput metrics.
        """
        started = time.monotonic()
        self.optimizer.zero_grad(set_to_none=True)
        aggregation = self.config.loss_aggregation
        normalizer = loss_normalizer(self.config.loss_calculater, batch.loss_mask, aggregation)
        kl_normalizer = aggregation_normalizer(aggregation, batch.loss_mask)
        parts: list[dict[str, float]] = []
        weights: list[float] = []
        total_loss = 0.0
        self.skipped_micro_batches = []
        size = self.config.micro_batch_size
        for start in range(0, len(batch), size):
            micro = batch.slice(start, start + size).to(self.device)
            out, extra = self._micro_step(micro, step, normalizer, kl_normalizer)
            if out is None:
                self.skipped_micro_batches.append(micro.record_ids)
                continue
            total_loss += float(out.loss.detach().item())
            parts.append({**out.metrics, **extra})
            weights.append(float(micro.loss_mask.sum().item()))
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        lr = float(self.scheduler.get_last_lr()[0])
        applied = self._any_rank(bool(parts)) and math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
            self.scheduler.step()
        else:
            log.error("step %d not applied: gradient norm %s over records %s", step + 1,
                      grad_norm, batch.record_ids)
            self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.monotonic() - started
        metrics = reduce_metrics(parts, weights)
        tokens = float(batch.attention_mask.sum().item())
        staleness = (step - batch.created_at_step).clamp(min=0).float()[batch.loss_mask > 0]
        metrics.update(
            {
                M.LOSS_POLICY: total_loss,
                M.OPTIM_GRAD_NORM: grad_norm,
                M.OPTIM_LR: lr,
                M.OPTIM_STEP_APPLIED: float(applied),
                M.TRAIN_SKIPPED_MICRO_BATCHES: float(len(self.skipped_micro_batches)),
                M.TRAIN_TOKEN_EXACT_RATE: sum(batch.token_exact) / max(len(batch), 1),
                M.PERF_TOKENS: tokens,
                M.PERF_TRAINED_TOKENS: float(batch.loss_mask.sum().item()),
                M.PERF_TOKENS_PER_S: tokens / max(elapsed, 1e-9),
                M.STALENESS_MEAN: float(staleness.mean().item()) if staleness.numel() else 0.0,
                M.STALENESS_MAX: float(staleness.max().item()) if staleness.numel() else 0.0,
            }
        )
        return metrics

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank (so that all ranks apply a step or none does)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _micro_step(
        self, micro: TrainBatch, step: int, normalizer: float, kl_normalizer: float = 1.0
    ) -> tuple[LossOutput | None, dict[str, float]]:
        """Forward + backward of one micro-batch at the sampling temperatures.

        With ``kl_coef > 0`` the loss includes :func:`~agentrl.training.loss.kl_penalty` to the
        reference model (normalized by ``kl_normalizer``).

        Returns:
            The loss output and extra metrics; ``(None, {})`` when the loss or its gradient
            with respect to the policy's logprobs is not finite (nothing is accumulated then).
        """
        logits = self.module(
            input_ids=micro.input_ids, attention_mask=micro.attention_mask, use_cache=False
        ).logits  # (b, t, V)
        logprobs = token_logprobs(logits, micro.input_ids, micro.temperatures)  # (b, t)
        known = ~torch.isnan(micro.old_logprobs)
        old = torch.where(known, micro.old_logprobs, logprobs.detach())
        staleness = (step - micro.created_at_step).clamp(min=0)
        out = self.loss_fn(
            logprobs, old, micro.advantages, micro.loss_mask, staleness, self.loss_params,
            normalizer=normalizer,
        )
        if self.ref_model is not None:  # KL to the reference policy (issue 12.6)
            ref = model_logprobs(self.ref_model, micro)
            kl = kl_penalty(logprobs, ref, micro.loss_mask, self.loss_params, kl_normalizer)
            out = LossOutput(out.loss + kl.loss, {**out.metrics, **kl.metrics})
        (grad,) = torch.autograd.grad(out.loss, logprobs, retain_graph=True)  # (b, t)
        if not (torch.isfinite(out.loss) and torch.isfinite(grad).all()):
            log.error("skipping a micro-batch of records %s: loss %s, gradient finite: %s",
                      micro.record_ids, float(out.loss.detach()), bool(torch.isfinite(grad).all()))
            if self.world_size > 1:  # every rank must join DDP's gradient all-reduce
                (logprobs.sum() * 0.0).backward()
            return None, {}
        logprobs.backward(grad)
        if out.metrics.get(M.POLICY_LOG_RATIO_CLAMPED, 0.0) > 0:
            log.warning("records %s: behaviour logprobs more than %.0f nats from the policy's "
                        "(log-ratio clamped)", micro.record_ids, LOG_RATIO_LIMIT)
        mask = micro.loss_mask
        diff = (old - logprobs.detach()) * mask
        extra = {M.POLICY_BEHAVIOUR_KL: float(diff.sum().item() / max(mask.sum().item(), 1))}
        return out, extra


def reference_model(model_dir: str | Path, device: torch.device) -> Any:
    """A frozen float32 copy of the model in ``model_dir`` (the KL reference policy)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device).eval().requires_grad_(False)
    return model


def model_logprobs(model: Any, batch: TrainBatch) -> torch.Tensor:
    """Per-token log-probs of ``batch`` under ``model`` at the batch's sampling temperatures
    (no grad), ``(B, T)``."""
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
    return token_logprobs(logits, batch.input_ids, batch.temperatures)
