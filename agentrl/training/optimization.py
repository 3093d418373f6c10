"""One optimizer step of the policy, the same on one rank or many (collective-safe).

:class:`PolicyOptimizer` owns the data-parallel module, AdamW and the learning-rate schedule,
and :meth:`PolicyOptimizer.optimize` takes one step on this rank's share of the batch::

    normalizer = sum over ranks of trained tokens (or sequences)    # one all-reduce
    micro      = max over ranks of this rank's micro-batch count    # one all-reduce
    for i in range(micro):                 # a rank out of rows runs a zero-weight micro-batch
        forward, loss / normalizer * world_size, backward         # DDP/FSDP average → sum
    clip the global gradient norm; apply the step on every rank or on none

so every rank issues the same collectives in the same order whatever its data, and the step
equals a single-rank step on the whole batch (the gradient is the sum over ranks' tokens divided
by the global count). A non-finite micro-batch is skipped by its rank alone (it still joins the
backward with a zero gradient); a non-finite total gradient norm is the same number on every
rank, so every rank drops the step together.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from transformers import get_scheduler

from agentrl.configs import AgentTrainingConfig
from agentrl.training import metrics as M
from agentrl.training.distributed import (
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    padding_micro_batch,
    resolve_data_parallel,
    world_size,
    wrap_model,
)
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
from agentrl.training.metrics import reduce_metrics
from agentrl.training.tokenization import TrainBatch

log = logging.getLogger(__name__)

SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
UNBOUNDED_STEPS = 1_000_000


class PolicyOptimizer:
    """The policy's data-parallel module, optimizer and schedule, and its step.

    Args:
        config: ``data_parallel``, ``gradient_checkpointing``, ``fsdp_cpu_offload``, the loss,
            learning-rate and batching fields.
        model: the Hugging Face causal LM (float32, CPU); with ``fsdp`` it is sharded in place.
        device: this rank's device.
        ref_model: the frozen reference policy for ``kl_coef > 0`` (``None``: no KL term).
        pad_id: the token id of zero-weight padding micro-batches.

    Raises:
        ValueError: ``data_parallel: none`` with more than one rank, or a model without
            decoder layers to shard.
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        model: Any,
        device: torch.device,
        *,
        ref_model: Any = None,
        pad_id: int = 0,
    ) -> None:
        self.config, self.model, self.device = config, model, device
        self.world_size = world_size()
        self.data_parallel = resolve_data_parallel(config.data_parallel, self.world_size)
        self.model.train()
        self.module: Any = wrap_model(
            model,
            self.data_parallel,
            device,
            gradient_checkpointing=config.gradient_checkpointing,
            cpu_offload=config.fsdp_cpu_offload,
        )
        self.ref_model = ref_model
        self.pad_id = pad_id
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = get_scheduler(
            SCHEDULES[config.lr_schedule],
            self.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_steps or UNBOUNDED_STEPS,
        )
        self.loss_fn = get_loss(config.loss_calculater)
        self.loss_params = LossParams.from_config(config)
        self.skipped_micro_batches: list[list[str]] = []

    def optimize(self, batch: TrainBatch, step: int) -> dict[str, float]:
        """One AdamW step on ``batch`` (this rank's share; gradient accumulation over
        micro-batches).

        A micro-batch whose loss, or whose gradient with respect to the policy's logprobs, is
        not finite is skipped (counted in ``train/skipped_micro_batches``, logged with its
        record ids, kept in :attr:`skipped_micro_batches`). The step is not applied
        (``optim/step_applied`` 0, gradients dropped) when the total gradient norm is not finite
        or every micro-batch of every rank was skipped. With several ranks every rank must call
        this once per step (an empty share is fine).

        Args:
            batch: the padded batch, ``(B, T)`` tensors (``B`` may be 0 on a rank).
            step: the global step of the weights being trained (for staleness).

        Returns:
            Loss (summed over ranks), clip, staleness, optimizer and throughput metrics
            (tokens summed over ranks; per-token ratios of this rank).
        """
        started = time.monotonic()
        self.optimizer.zero_grad(set_to_none=True)
        aggregation = self.config.loss_aggregation
        normalizer = self._global_normalizer(
            loss_normalizer(self.config.loss_calculater, batch.loss_mask, aggregation), batch
        )
        kl_normalizer = self._global_normalizer(
            aggregation_normalizer(aggregation, batch.loss_mask), batch
        )
        parts, weights, total_loss = self._accumulate(batch, step, normalizer, kl_normalizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        lr = float(self.scheduler.get_last_lr()[0])
        applied = any_rank(bool(parts), self.device) and math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
            self.scheduler.step()
        else:
            log.error(
                "step %d not applied: gradient norm %s over records %s",
                step + 1,
                grad_norm,
                batch.record_ids,
            )
            self.optimizer.zero_grad(set_to_none=True)
        metrics = reduce_metrics(parts, weights)
        metrics.update(self._step_metrics(batch, step, total_loss, grad_norm, lr, applied))
        metrics[M.PERF_TOKENS_PER_S] = metrics[M.PERF_TOKENS] / max(
            time.monotonic() - started, 1e-9)
        return metrics

    def _accumulate(
        self, batch: TrainBatch, step: int, normalizer: float, kl_normalizer: float
    ) -> tuple[list[dict[str, float]], list[float], float]:
        """Forward and backward of every micro-batch of this rank (plus zero-weight ones up to
        the largest rank's count), skipping the non-finite ones.

        Returns:
            The metrics and trained-token weight of each kept micro-batch, and the summed loss.
        """
        parts: list[dict[str, float]] = []
        weights: list[float] = []
        total_loss = 0.0
        self.skipped_micro_batches = []
        size = self.config.micro_batch_size
        local = math.ceil(len(batch) / size)
        count = int(all_reduce_max(float(local), self.device)) if self.world_size > 1 else local
        for index in range(count):
            if index < local:
                micro = batch.slice(index * size, (index + 1) * size).to(self.device)
            else:  # this rank is out of rows: join the others' collectives, train nothing
                micro = padding_micro_batch(self.pad_id).to(self.device)
            out, extra = self._micro_step(micro, step, normalizer, kl_normalizer)
            if index >= local:
                continue
            if out is None:
                self.skipped_micro_batches.append(micro.record_ids)
                continue
            total_loss += float(out.loss.detach().item())
            parts.append({**out.metrics, **extra})
            weights.append(float(micro.loss_mask.sum().item()))
        return parts, weights, total_loss

    def _step_metrics(self, batch: TrainBatch, step: int, total_loss: float, grad_norm: float,
                      lr: float, applied: bool) -> dict[str, float]:
        """Loss, optimizer, token and staleness metrics of a step (sums over ranks)."""
        tokens = all_reduce_sum(float(batch.attention_mask.sum().item()), self.device)
        trained = all_reduce_sum(float(batch.loss_mask.sum().item()), self.device)
        total_loss = all_reduce_sum(total_loss, self.device)
        staleness = (step - batch.created_at_step).clamp(min=0).float()[batch.loss_mask > 0]
        metrics = {
            M.LOSS_POLICY: total_loss,
            M.OPTIM_GRAD_NORM: grad_norm,
            M.OPTIM_LR: lr,
            M.OPTIM_STEP_APPLIED: float(applied),
            M.TRAIN_SKIPPED_MICRO_BATCHES: float(len(self.skipped_micro_batches)),
            M.TRAIN_TOKEN_EXACT_RATE: sum(batch.token_exact) / max(len(batch), 1),
            M.PERF_TOKENS: tokens,
            M.PERF_TRAINED_TOKENS: trained,
            M.STALENESS_MEAN: float(staleness.mean().item()) if staleness.numel() else 0.0,
            M.STALENESS_MAX: float(staleness.max().item()) if staleness.numel() else 0.0,
        }
        if self.world_size > 1:
            metrics[M.TRAIN_RANKS] = float(self.world_size)
        return metrics

    def _global_normalizer(self, local: float, batch: TrainBatch) -> float:
        """``local`` (a normalizer of this rank's batch, >= 1) summed over ranks; a rank with
        no trained token adds 0. One rank: ``local`` itself."""
        if self.world_size == 1:
            return local
        mine = local if float(batch.loss_mask.sum().item()) > 0 else 0.0
        return max(1.0, all_reduce_sum(mine, self.device))

    def _micro_step(
        self, micro: TrainBatch, step: int, normalizer: float, kl_normalizer: float = 1.0
    ) -> tuple[LossOutput | None, dict[str, float]]:
        """Forward + backward of one micro-batch at the sampling temperatures.

        With ``kl_coef > 0`` the loss includes :func:`~agentrl.training.loss.kl_penalty` to the
        reference model (normalized by ``kl_normalizer``). The gradient is multiplied by the
        world size, since DDP and FSDP average gradients over ranks and ``normalizer`` is
        already global.

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
            logprobs,
            old,
            micro.advantages,
            micro.loss_mask,
            staleness,
            self.loss_params,
            normalizer=normalizer,
        )
        if self.ref_model is not None:  # KL to the reference policy (issue 12.6)
            ref = model_logprobs(self.ref_model, micro)
            kl = kl_penalty(logprobs, ref, micro.loss_mask, self.loss_params, kl_normalizer)
            out = LossOutput(out.loss + kl.loss, {**out.metrics, **kl.metrics})
        (grad,) = torch.autograd.grad(out.loss, logprobs, retain_graph=True)  # (b, t)
        if not (torch.isfinite(out.loss) and torch.isfinite(grad).all()):
            log.error(
                "skipping a micro-batch of records %s: loss %s, gradient finite: %s",
                micro.record_ids,
                float(out.loss.detach()),
                bool(torch.isfinite(grad).all()),
            )
            if self.world_size > 1:  # every rank must join the gradient all-reduce
                (logprobs.sum() * 0.0).backward()
            return None, {}
        logprobs.backward(grad * self.world_size if self.world_size > 1 else grad)
        if out.metrics.get(M.POLICY_LOG_RATIO_CLAMPED, 0.0) > 0:
            log.warning(
                "records %s: behaviour logprobs more than %.0f nats from the policy's "
                "(log-ratio clamped)",
                micro.record_ids,
                LOG_RATIO_LIMIT,
            )
        mask = micro.loss_mask
        diff = (old - logprobs.detach()) * mask
        extra = {M.POLICY_BEHAVIOUR_KL: float(diff.sum().item() / max(mask.sum().item(), 1))}
        return out, extra


def model_logprobs(model: Any, batch: TrainBatch) -> torch.Tensor:
    """Per-token log-probs of ``batch`` under ``model`` at the batch's sampling temperatures
    (no grad), ``(B, T)``."""
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
    return token_logprobs(logits, batch.input_ids, batch.temperatures)
