"""Speculative decoding settings, in vLLM's ``speculative_config`` shape, checked on entry.

Two proposers guess the next ``num_speculative_tokens`` tokens of a running request; the
target model verifies all of them in one forward pass and keeps the agreeing prefix:

- ``{"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": M,
  "prompt_lookup_min": m}``: prompt lookup. The request's last ``n`` tokens (``M >= n >= m``)
  are searched for earlier in its own tokens; the tokens that followed are the guess. Free to
  propose, and strong when outputs copy their input (extraction).
- ``{"model": draft_dir, "num_speculative_tokens": k}``: a small model with the target's
  tokenizer decodes ``k`` tokens greedily in its own paged KV cache.

``disable_by_batch_size``: no proposals in a step whose running batch has at least that many
requests; a large batch is compute-bound, so verifying guesses there costs more than it saves.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

MAX_SPECULATIVE_TOKENS = 16
METHODS = ("ngram", "draft_model")


class SpeculativeConfigError(ValueError):
    """Raised as ``EngineConfigError`` by the engine config (kept apart to avoid a cycle)."""


@dataclass(slots=True, frozen=True)
class SpeculativeConfig:
    num_speculative_tokens: int
    method: str = "ngram"
    prompt_lookup_max: int = 5
    prompt_lookup_min: int = 2
    model: str | None = None
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        k = self.num_speculative_tokens
        if not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise SpeculativeConfigError(
                f"num_speculative_tokens must be in [1, {MAX_SPECULATIVE_TOKENS}], got {k}"
            )
        if self.method not in METHODS:
            raise SpeculativeConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "draft_model" and not self.model:
            raise SpeculativeConfigError("a draft_model speculative_config needs a model")
        if self.method == "ngram" and self.model is not None:
            raise SpeculativeConfigError("method ngram takes no model")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise SpeculativeConfigError(
                "need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                f"min={self.prompt_lookup_min}, max={self.prompt_lookup_max}"
            )
        if self.disable_by_batch_size is not None and self.disable_by_batch_size < 1:
            raise SpeculativeConfigError("disable_by_batch_size must be at least 1")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeculativeConfig:
        """vLLM's keys; ``{"model": dir}`` without a method means a draft model."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpeculativeConfigError(f"unknown speculative_config keys: {unknown}")
        if "num_speculative_tokens" not in raw:
            raise SpeculativeConfigError("speculative_config needs num_speculative_tokens")
        values = dict(raw)
        if values.get("model") is not None and "method" not in values:
            values["method"] = "draft_model"
        try:
            return cls(**values)
        except TypeError as exc:
            raise SpeculativeConfigError(f"bad speculative_config: {exc}") from exc
