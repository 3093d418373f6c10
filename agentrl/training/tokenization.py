"""Training samples to tensors: from the engine's token ids, or through the chat template.

A :class:`~agentrl.training.datasets.DBRecordData` becomes one token sequence.

**Token-exact** (:attr:`DBRecordData.token_exact`: the service returned prompt and completion
ids, SGLang and the CPU engine): the sequence is the first turn's ``prompt_token_ids``, its
``completion_token_ids``, then for each later turn the prompt ids beyond the previous turn's
prompt + completion (the tool or user messages and the next assistant header) and its completion
ids: exactly the tokens the engine saw and sampled. Prompt ids have loss mask 0; completion ids
loss mask 1 with their behaviour logprobs as ``old_logprobs``.

**Fallback** (services that return no ids, e.g. external APIs), built piece by piece:

1. before each trained turn, the text the chat template adds (system prompt, user/tool messages,
   the assistant header) is tokenized with loss mask 0;
2. the turn's sampled ``completion_token_ids`` follow with loss mask 1, their behaviour logprobs
   as ``old_logprobs``. When the service reported no token ids, the template's rendering of the
   assistant message (plus the end-of-turn token) is tokenized instead, with NaN
   ``old_logprobs`` (the trainer uses the policy's own, detached).

   The sampled tokens must decode to the assistant message the template renders (whitespace at
   the ends aside); when they do not, :class:`~agentrl.errors.AlignmentError` names the record
   and turn.

Each trained token carries the temperature its behaviour logprob is of (the call's, else the
config's), so the trainer scores the policy with the same distribution (ratio 1 on-policy).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrl.errors import AlignmentError
from agentrl.training.datasets import DBRecordData, TrainTurn

log = logging.getLogger(__name__)


@dataclass
class TokenizedSample:
    """One sample as flat per-token lists (length T, aligned on the token).

    Attributes:
        record_id: the Record it comes from.
        input_ids: token ids.
        loss_mask: 1 on tokens the policy generated in trained turns.
        old_logprobs: behaviour log-prob of each token (NaN where unknown or untrained).
        advantages: advantage of each token (0 outside trained turns).
        created_at_step: global step at which each token was sampled (0 outside trained turns).
        temperatures: sampling temperature of each trained token's logprob (1.0 elsewhere).
        score: the trajectory's reward.
        token_exact: built from the engine's ids (else re-rendered with the chat template).
    """

    record_id: str
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    created_at_step: list[int] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    score: float = 0.0
    token_exact: bool = False

    def extend(
        self,
        ids: list[int],
        trained: bool,
        logprobs: list[float] | None = None,
        turn: TrainTurn | None = None,
        temperature: float = 1.0,
    ) -> None:
        """Append tokens; trained ones carry ``turn``'s advantage and step and ``temperature``."""
        n = len(ids)
        self.input_ids += ids
        self.loss_mask += [int(trained)] * n
        self.old_logprobs += logprobs if logprobs else [math.nan] * n
        self.advantages += [turn.advantage if trained and turn else 0.0] * n
        self.created_at_step += [turn.created_at_step if trained and turn else 0] * n
        self.temperatures += [temperature if trained else 1.0] * n

    def truncate(self, max_len: int) -> None:
        """Keep the first ``max_len`` tokens."""
        for name in _PER_TOKEN:
            setattr(self, name, getattr(self, name)[:max_len])


_PER_TOKEN = (
    "input_ids", "loss_mask", "old_logprobs", "advantages", "created_at_step", "temperatures"
)


@dataclass
class TrainBatch:
    """Padded tensors of a batch of samples, all ``(B, T)``, right-padded.

    Attributes:
        input_ids: long token ids (padding: the tokenizer's pad id).
        attention_mask: 1 on real tokens.
        loss_mask: 1 on trained tokens.
        old_logprobs: float32 behaviour log-probs (NaN where unknown).
        advantages: float32 per-token advantages.
        created_at_step: long global step of each token's sampling.
        temperatures: float32 temperature each token's logprob is taken at (1.0 on padding).
        record_ids: the Record of each row.
        scores: the reward of each row's trajectory.
        token_exact: whether each row was built from the engine's ids.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    created_at_step: torch.Tensor
    temperatures: torch.Tensor
    record_ids: list[str]
    scores: list[float]
    token_exact: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def slice(self, start: int, stop: int) -> TrainBatch:
        """Rows ``start:stop`` (a micro-batch), trimmed to their longest row."""
        length = int(self.attention_mask[start:stop].sum(-1).max().item())
        return TrainBatch(
            **{name: getattr(self, name)[start:stop, :length] for name in _BATCH_TENSORS},
            record_ids=self.record_ids[start:stop],
            scores=self.scores[start:stop],
            token_exact=self.token_exact[start:stop],
        )

    def to(self, device: torch.device | str) -> TrainBatch:
        """The batch with every tensor on ``device``."""
        return TrainBatch(
            **{name: getattr(self, name).to(device) for name in _BATCH_TENSORS},
            record_ids=self.record_ids,
            scores=self.scores,
            token_exact=self.token_exact,
        )


_BATCH_TENSORS = (
    "input_ids", "attention_mask", "loss_mask", "old_logprobs", "advantages", "created_at_step",
    "temperatures",
)


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, generation: bool) -> str:
    """The chat template's text for ``messages``."""
    return str(
        tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation
        )
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without added BOS/EOS."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _norm(text: str) -> str:
    return " ".join(text.split())


def tokenize_sample(
    sample: DBRecordData, tokenizer: Any, max_len: int = 4096, temperature: float = 1.0
) -> TokenizedSample:
    """Tokenize one sample: from the engine's ids when it has them, else with the model's chat
    template (see the module docstring).

    Args:
        sample: the conversation and its trained turns.
        tokenizer: a Hugging Face tokenizer with a chat template.
        max_len: longest sequence in tokens; longer ones are truncated (with a warning).
        temperature: the temperature of turns that do not name theirs (config ``temperature``).

    Returns:
        The token-aligned lists.

    Raises:
        AlignmentError: a token-exact turn's prompt ids do not continue the sequence, or (the
            fallback) the template does not render the conversation as growing text, or a
            turn's sampled tokens do not decode to the assistant message the template renders.
    """
    out = TokenizedSample(
        record_id=sample.record_id, score=sample.score, token_exact=sample.token_exact
    )
    if sample.token_exact:
        _from_engine_ids(sample, out, temperature)
    else:
        _from_template(sample, tokenizer, out, temperature)
    if len(out.input_ids) > max_len:
        log.warning(
            "record %s: %d tokens truncated to max_train_seq_len=%d",
            sample.record_id, len(out.input_ids), max_len,
        )
        out.truncate(max_len)
    return out


def _temperature(turn: TrainTurn, default: float) -> float:
    return turn.temperature if turn.temperature is not None else default


def _from_engine_ids(sample: DBRecordData, out: TokenizedSample, temperature: float) -> None:
    """Prompt ids of the first turn, then per turn the new prompt ids and the completion ids."""
    for turn in sample.turns:
        prompt = turn.prompt_token_ids
        if prompt[: len(out.input_ids)] != out.input_ids:
            raise AlignmentError(
                sample.record_id,
                f"dispatch {turn.dispatch_id}: its prompt ids do not continue the sequence of "
                "the earlier turns (the converter should have started a new one)",
            )
        out.extend(prompt[len(out.input_ids):], trained=False)
        out.extend(turn.completion_token_ids, trained=True, logprobs=turn.logprobs or None,
                   turn=turn, temperature=_temperature(turn, temperature))


def _from_template(
    sample: DBRecordData, tokenizer: Any, out: TokenizedSample, temperature: float
) -> None:
    """The fallback: the chat template's text between the sampled turns."""
    eos_id = tokenizer.eos_token_id
    eos_text = tokenizer.eos_token or ""
    covered = ""
    for turn in sample.turns:
        k = turn.message_index
        prompt = _render(tokenizer, sample.messages[:k], sample.tools, generation=True)
        if not prompt.startswith(covered):
            raise AlignmentError(
                sample.record_id,
                f"turn {k}: the chat template's prompt does not extend the earlier turns' text "
                "(a template that rewrites history needs its own record_converter)",
            )
        out.extend(_encode(tokenizer, prompt[len(covered):]), trained=False)
        message = sample.messages[k]
        full = _render(tokenizer, sample.messages[: k + 1], sample.tools, generation=False)
        empty = _render(
            tokenizer, sample.messages[:k] + [{**message, "content": ""}], sample.tools, False
        )
        if not (full.startswith(prompt) and empty.startswith(prompt)):
            raise AlignmentError(
                sample.record_id, f"turn {k}: the template renders no assistant header prompt"
            )
        footer = empty[len(prompt):]
        rendered = full[len(prompt):]
        content = rendered[: len(rendered) - len(footer)] if rendered.endswith(footer) else rendered
        ends_turn = bool(eos_text) and footer.startswith(eos_text)
        ids = list(turn.completion_token_ids)
        turn_temperature = _temperature(turn, temperature)
        if ids:
            _check_decodes_to(sample, turn, tokenizer, ids, content)
            out.extend(ids, trained=True, logprobs=turn.logprobs or None, turn=turn,
                       temperature=turn_temperature)
            covered = prompt + content + (eos_text if ids[-1] == eos_id else "")
        else:
            ids = _encode(tokenizer, content) + ([eos_id] if ends_turn else [])
            out.extend(ids, trained=True, turn=turn, temperature=turn_temperature)
            covered = prompt + content + (eos_text if ends_turn else "")


def _check_decodes_to(
    sample: DBRecordData, turn: TrainTurn, tokenizer: Any, ids: list[int], content: str
) -> None:
    """Raise AlignmentError unless ``ids`` (without a final EOS) decode to ``content``."""
    body = ids[:-1] if ids[-1] == tokenizer.eos_token_id else ids
    sampled = tokenizer.decode(body, skip_special_tokens=False)
    if sampled == content or _norm(sampled) == _norm(content):
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(sampled, content, strict=False)) if a != b),
        min(len(sampled), len(content)),
    )
    raise AlignmentError(
        sample.record_id,
        f"turn {turn.message_index} (dispatch {turn.dispatch_id}): sampled tokens decode to "
        f"text that differs from the rendered message at character {at}: "
        f"{sampled[max(0, at - 20):at + 40]!r} vs {content[max(0, at - 20):at + 40]!r}",
    )


def collate(samples: list[TokenizedSample], pad_id: int) -> TrainBatch:
    """Right-pad samples into one :class:`TrainBatch`.

    Args:
        samples: tokenized samples (at least one).
        pad_id: the id padding positions get (they are masked out by ``attention_mask``).

    Returns:
        Tensors of shape ``(B, T)`` with ``T`` the longest sample.
    """
    batch, length = len(samples), max(len(s.input_ids) for s in samples)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    loss_mask = torch.zeros((batch, length), dtype=torch.float32)
    old_logprobs = torch.full((batch, length), math.nan, dtype=torch.float32)
    advantages = torch.zeros((batch, length), dtype=torch.float32)
    created = torch.zeros((batch, length), dtype=torch.long)
    temperatures = torch.ones((batch, length), dtype=torch.float32)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
        old_logprobs[row, :n] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        advantages[row, :n] = torch.tensor(s.advantages, dtype=torch.float32)
        created[row, :n] = torch.tensor(s.created_at_step, dtype=torch.long)
        temperatures[row, :n] = torch.tensor(s.temperatures, dtype=torch.float32)
    # Position 0 is never predicted (nothing precedes it): never train it.
    loss_mask[:, 0] = 0
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        old_logprobs=old_logprobs,
        advantages=advantages,
        created_at_step=created,
        temperatures=temperatures,
        record_ids=[s.record_id for s in samples],
        scores=[s.score for s in samples],
        token_exact=[s.token_exact for s in samples],
    )
