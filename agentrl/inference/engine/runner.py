"""`ModelRunner`: a causal LM on torch + transformers that decodes padded batches with a KV cache.

The runner owns the model and tokenizer of the CPU engine. :meth:`ModelRunner.generate` takes a
batch of :class:`GenerationRequest` (token ids + sampling parameters), left-pads the prompts, runs
one prefill and then one decode step per token for the whole batch (rows that finish are pruned
from the KV cache), and fills each request's sampled token ids and their logprobs.

Logprobs are those of the sampling distribution before top-p, ``log_softmax(logits / T)`` in
nats, as SGLang's sampler returns them by default (a greedy row, ``T`` below
:data:`~agentrl.inference.protocol.GREEDY_TEMPERATURE`, gets ``T = 1``): a forward pass of the same
model over the same tokens at the same temperature gives the same values. Every model access
holds :attr:`ModelRunner.lock`; each sampled token records the :attr:`ModelRunner.weight_version`
of the forward pass that produced it (SGLang's ``weight_versions`` spans).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from agentrl.errors import WeightUpdateError
from agentrl.inference.protocol import GREEDY_TEMPERATURE

log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """One sequence to sample, with its sampling parameters and, once done, its output.

    Attributes:
        prompt_ids: prompt token ids, shape ``(P,)``.
        max_new_tokens: most tokens to sample (tokens).
        temperature: sampling temperature; below ``GREEDY_TEMPERATURE`` is greedy.
        top_p: nucleus probability mass in (0, 1].
        stop: strings that end the completion (the text is cut before them).
        stop_token_ids: token ids that end the completion (kept in ``output_ids``).
        ignore_eos: keep sampling past end-of-sequence tokens (benchmarks).
        generator: a seeded generator for reproducible sampling, or ``None``.
        output_ids: sampled token ids, shape ``(C,)``.
        output_logprobs: ``log_softmax(logits / T)[output_ids[i]]`` in nats, shape ``(C,)``.
        weight_versions: ``[{version, start, end}]``: output tokens ``start:end`` were sampled by
            weights ``version`` (one span unless the weights changed during the request).
        text: the decoded completion (special tokens skipped, cut before a stop string).
        finish_reason: ``stop`` | ``length`` | ``abort``, set when done.
        matched_stop: the stop string or token id that ended it, if any.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    generator: torch.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    weight_versions: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    matched_stop: str | int | None = None

    @property
    def done(self) -> bool:
        """Whether sampling of this sequence has ended."""
        return self.finish_reason is not None


def eos_token_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The end-of-sequence token ids of a model: generation config, model config and tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def sample_next(
    logits: torch.Tensor, requests: list[GenerationRequest]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and return it with its logprob under the sampling distribution.

    Follows SGLang 0.5.23's ``Sampler.forward``: probabilities ``softmax(logits / T)``, top-p
    applied to the sampling only, logprobs ``log_softmax(logits / T)`` of the sampled token;
    greedy rows (``T < GREEDY_TEMPERATURE``) take the argmax and the logprobs of ``T = 1``.

    Args:
        logits: next-token logits, shape ``(B, V)``, float32.
        requests: the ``B`` requests the rows belong to (their temperature, top-p, generator).

    Returns:
        ``(tokens, logprobs)``: shapes ``(B,)`` (int64) and ``(B,)`` (nats).
    """
    greedy = [r.temperature < GREEDY_TEMPERATURE for r in requests]
    temps = torch.tensor(
        [1.0 if g else r.temperature for g, r in zip(greedy, requests, strict=True)],
        dtype=logits.dtype,
    )
    logprobs_all = torch.log_softmax(logits / temps[:, None], dim=-1)  # (B, V)
    probs = logprobs_all.exp()  # (B, V)
    top_p = torch.tensor([r.top_p for r in requests], dtype=logits.dtype)
    if bool((top_p < 1.0).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p[:, None]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    tokens = torch.empty(len(requests), dtype=torch.long)
    shared = [i for i, r in enumerate(requests) if r.generator is None and not greedy[i]]
    if shared:
        tokens[shared] = torch.multinomial(probs[shared], 1).squeeze(-1)
    for i, req in enumerate(requests):
        if greedy[i]:
            tokens[i] = int(logits[i].argmax())
        elif req.generator is not None:
            tokens[i] = int(torch.multinomial(probs[i], 1, generator=req.generator))
    return tokens, logprobs_all.gather(-1, tokens[:, None]).squeeze(-1)


def context_length(model_config: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest sequence the model takes, in tokens: ``max_position_embeddings`` of its
    config (the tokenizer's ``model_max_length`` is a huge placeholder for many models), else
    the tokenizer's value."""
    positions = getattr(model_config, "max_position_embeddings", None)
    return int(positions) if positions else int(tokenizer.model_max_length)


class ModelRunner:
    """A causal LM and its tokenizer, decoding batches on the CPU (float32).

    Args:
        model_path: a local HF model directory (config, safetensors, tokenizer).
        seed: seed of the shared sampling generator (``torch.manual_seed``).
        weight_version: the version of the weights loaded at start.
        weights_cpu_backup: keep the weights loaded since start across :meth:`release` /
            :meth:`resume` (SGLang's ``--enable-weights-cpu-backup``); without it, as SGLang's
            memory saver without a backup, resume does not bring them back (here: it loads the
            start model) while the weight version stays what it was.

    Attributes:
        context_length: the model's context length in tokens (:func:`context_length`).

    Raises:
        OSError: the directory has no loadable model.
    """

    def __init__(
        self,
        model_path: str | Path,
        seed: int = 0,
        weight_version: str = "0",
        weights_cpu_backup: bool = False,
    ) -> None:
        self.model_path = str(model_path)
        self.weights_path = str(model_path)
        self.weight_version = weight_version
        self.weights_cpu_backup = weights_cpu_backup
        torch.manual_seed(seed)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.model_path)
        self.model: Any | None = None
        self.lock = threading.RLock()
        self._load(self.model_path)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.context_length = context_length(self.model.config, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.eos_ids or {0})

    # --- weights -------------------------------------------------------------------------------

    def _load(self, path: str) -> None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.model = model

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (False after :meth:`release`)."""
        return self.model is not None

    def release(self) -> None:
        """Drop the model's weights from memory; :meth:`resume` reloads the last weights when
        ``weights_cpu_backup`` is set, else the start model."""
        with self.lock:
            self.model = None
            if not self.weights_cpu_backup:
                self.weights_path = self.model_path

    def resume(self) -> None:
        """Reload the weights: the start model, then the last ``load_weights`` directory (one
        loaded while released, or any with ``weights_cpu_backup``)."""
        with self.lock:
            if self.model is None:
                self._load(self.model_path)
                if self.weights_path != self.model_path:
                    self._copy_weights(self._read_state_dict(self.weights_path), self.weights_path)

    @staticmethod
    def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise WeightUpdateError(path, "no *.safetensors file in the directory")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        return state

    def _copy_weights(self, state: dict[str, torch.Tensor], path: str) -> None:
        if self.model is None:
            raise WeightUpdateError(path, "the engine's memory is released")
        params = dict(self.model.named_parameters(remove_duplicate=False))
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise WeightUpdateError(path, f"tensors the model does not have: {unknown[:5]}")
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        missing = sorted(set(params) - set(state) - tied)
        if missing:
            raise WeightUpdateError(path, f"tensors missing from the checkpoint: {missing[:5]}")
        with torch.no_grad():
            for name, tensor in state.items():
                if tuple(params[name].shape) != tuple(tensor.shape):
                    raise WeightUpdateError(
                        path, f"{name}: shape {tuple(tensor.shape)} != {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor.to(params[name].dtype))

    def load_weights(self, path: str | Path, version: str | None = None) -> None:
        """Load the safetensors weights of an HF directory into the model in place.

        The files are read outside :attr:`lock`; the copy happens between two decode steps
        (the HTTP layer only lets it happen mid-request while generation is paused). While the
        memory is released, the directory is remembered and loaded by :meth:`resume`.

        Args:
            path: the HF directory.
            version: the new :attr:`weight_version` (``None``: unchanged).

        Raises:
            WeightUpdateError: no safetensors, unknown/missing tensors, or a shape mismatch.
        """
        path = str(path)
        state = self._read_state_dict(path)
        with self.lock:
            if self.model is not None:
                self._copy_weights(state, path)
            self.weights_path = path  # while released: loaded by resume()
            if version is not None:
                self.weight_version = version

    # --- tokens --------------------------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> list[int]:
        """Token ids of ``messages`` (and ``tools``) through the chat template, with the
        assistant generation prompt."""
        normalized = []
        for msg in messages:
            msg = dict(msg)
            content = msg.get("content")
            if content is None:
                msg["content"] = ""
            elif isinstance(content, list):
                msg["content"] = "".join(
                    part.get("text", "") for part in content if isinstance(part, dict)
                )
            normalized.append(msg)
        text = self.tokenizer.apply_chat_template(
            normalized, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens skipped."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # --- forward passes ------------------------------------------------------------------------

    def score(self, ids: list[int]) -> list[float | None]:
        """``log p(ids[t] | ids[:t])`` for every position (``None`` for the first), in nats."""
        with self.lock, torch.inference_mode():
            if self.model is None:
                raise WeightUpdateError(self.weights_path, "the engine's memory is released")
            logits = self.model(torch.tensor([ids])).logits[0].float()  # (T, V)
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            picked = logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
        return [None, *[float(x) for x in picked]]

    def generate(
        self,
        requests: list[GenerationRequest],
        before_step: Callable[[], bool] | None = None,
    ) -> None:
        """Sample every request of the batch to completion, filling its outputs.

        Args:
            requests: the batch; each row keeps its own sampling parameters.
            before_step: called before each decode step outside :attr:`lock` (pausing happens
                there); returning False aborts the remaining rows (``finish_reason="abort"``).
        """
        active = [r for r in requests if r.max_new_tokens > 0]
        for req in requests:
            if req.max_new_tokens <= 0:
                req.finish_reason = "length"
        if not active:
            return
        width = max(len(r.prompt_ids) for r in active)
        input_ids = torch.full((len(active), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(active), width), dtype=torch.long)
        for i, req in enumerate(active):
            input_ids[i, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            mask[i, width - len(req.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
        cache = None
        step_ids, step_pos = input_ids, positions
        while active:
            if before_step is not None and not before_step():
                for req in active:
                    req.finish_reason = "abort"
                return
            with self.lock, torch.inference_mode():
                if self.model is None:
                    for req in active:
                        req.finish_reason = "abort"
                    return
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=step_pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kw: cache},
                )
                version = self.weight_version
            cache = getattr(out, "cache", None) or out.past_key_values
            tokens, logprobs = sample_next(out.logits[:, -1, :].float(), active)
            keep = []
            for i, req in enumerate(active):
                self._append(req, int(tokens[i]), float(logprobs[i]), version)
                if not req.done:
                    keep.append(i)
            if len(keep) < len(active):
                if not keep:
                    break
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask, tokens, step_pos = mask[index], tokens[index], step_pos[index]
                active = [active[i] for i in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=-1)
            step_ids = tokens[:, None]
            step_pos = step_pos[:, -1:] + 1

    def _append(self, req: GenerationRequest, token: int, logprob: float, version: str) -> None:
        """Record one sampled token (and the weights that sampled it); decide whether the
        request is finished."""
        req.output_ids.append(token)
        req.output_logprobs.append(logprob)
        spans, count = req.weight_versions, len(req.output_ids)
        if spans and spans[-1]["version"] == version:
            spans[-1]["end"] = count
        else:
            spans.append({"version": version, "start": count - 1, "end": count})
        if token in req.stop_token_ids or (token in self.eos_ids and not req.ignore_eos):
            req.finish_reason, req.matched_stop = "stop", token
        if req.stop:
            text = self.decode(req.output_ids)
            for stop in req.stop:
                cut = text.find(stop)
                if cut >= 0:
                    req.finish_reason, req.matched_stop, req.text = "stop", stop, text[:cut]
                    return
        if not req.done and len(req.output_ids) >= req.max_new_tokens:
            req.finish_reason = "length"
        if req.done:
            req.text = self.decode(req.output_ids)
