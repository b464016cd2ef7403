"""The body of a ``/v1/embeddings`` line, as OpenAI's endpoint takes it.

``input`` is one text, a list of texts, one list of token ids, or a list of them; each input
becomes its own engine request and the response keeps their order. Bounds that depend on
configuration (inputs per line) are checked by :func:`check_embedding_bounds`; tokens per
input are the model's context, which the engine checks once it has tokenized the text.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.limits import Limits

TokenIds = list[Annotated[int, Field(ge=0)]]
EmbeddingInput = str | list[str] | TokenIds | list[TokenIds]


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            items: list[str | list[int]] = [value]  # type: ignore[list-item]
        else:
            items = list(value)  # type: ignore[arg-type]
        if not items:
            raise ValueError("input must not be an empty list")
        for item in items:
            if len(item) == 0:
                raise ValueError("input must not contain an empty string or token list")
        return value

    @property
    def inputs(self) -> list[str | list[int]]:
        """Every input of the line, in order."""
        value = self.input
        if isinstance(value, str) or isinstance(value[0], int):
            return [value]  # type: ignore[list-item]
        return list(value)  # type: ignore[arg-type]


def check_embedding_bounds(body: EmbeddingBody, limits: Limits) -> tuple[str, str] | None:
    """The first configured bound ``body`` exceeds, as ``(param, message)``, or None."""
    count = len(body.inputs)
    if count > limits.max_embedding_inputs:
        return "input", (
            f"input must have at most {limits.max_embedding_inputs} items, got {count}"
        )
    return None
