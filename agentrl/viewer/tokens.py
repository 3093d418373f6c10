"""Token text for the record page: the run's tokenizer, loaded once on first use, off the page's
critical path (the page shows ids at once; its script asks for the text afterwards)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from agentrl.errors import AgentRLError
from agentrl.inference.model_files import resolve_model_path

log = logging.getLogger(__name__)


class TokenText:
    """Turns token ids into the text of each token, with the tokenizer of the run's model.

    Args:
        model_name_or_path: the config's ``model_name_or_path`` (empty: the default SmolLM2).

    The tokenizer loads on the first :meth:`decode` (about a second); a model that cannot be
    found is remembered and reported by :attr:`unavailable`, and pages keep showing ids.
    """

    def __init__(self, model_name_or_path: str) -> None:
        self.model_name_or_path = model_name_or_path
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.unavailable: str | None = None

    def _load(self) -> Any:
        with self._lock:
            if self._tokenizer is None and self.unavailable is None:
                try:
                    path = resolve_model_path(self.model_name_or_path)
                    from transformers import AutoTokenizer  # heavy: on first use

                    self._tokenizer = AutoTokenizer.from_pretrained(path)
                except (AgentRLError, OSError, ValueError) as exc:
                    self.unavailable = f"no tokenizer for {self.model_name_or_path!r}: {exc}"
                    log.warning("viewer shows token ids only: %s", self.unavailable)
            return self._tokenizer

    def decode(self, token_ids: list[int]) -> list[str] | None:
        """The text of each token (special tokens by name, a newline as ``↵`` + newline).

        Returns:
            One string per id, or ``None`` when no tokenizer could be loaded.
        """
        tokenizer = self._load()
        if tokenizer is None:
            return None
        pieces = tokenizer.convert_ids_to_tokens(token_ids)
        return [tokenizer.convert_tokens_to_string([p]).replace("\n", "↵\n") for p in pieces]
