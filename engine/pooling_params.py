"""What a caller may ask of an embedding, validated once when a request enters the engine."""

from __future__ import annotations

from dataclasses import dataclass


class PoolingParamsError(ValueError):
    """A pooling parameter is out of range; the message names the field."""


@dataclass(slots=True, frozen=True)
class PoolingParams:
    """Per-request pooling settings, in vLLM's shape.

    ``dimensions`` keeps the first ``dimensions`` values of the pooled vector and normalizes
    them again (Matryoshka truncation); the engine refuses it for a model that does not say it
    was trained for that.
    """

    dimensions: int | None = None

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise PoolingParamsError(f"dimensions must be at least 1, got {self.dimensions}")
