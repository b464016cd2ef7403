"""The body of a ``/v1/responses`` line: the part of OpenAI's Responses API a batch serves.

A text in, a text out: ``input`` as a string or as message items with ``input_text``
parts, ``instructions`` as the system message, sampling and length settings. Features of
Responses we do not serve (tools, stored conversations, reasoning, background runs) are
named by :mod:`jobs.wire.body_refusals` before the model sees the body. ``text.format`` takes
chat's structured outputs: ``json_object`` and ``json_schema``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Responses fields we do not serve; each refusal names the field.
UNSERVED_FIELDS = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "parallel_tool_calls": "tool calling is not supported",
    "previous_response_id": "stored responses are not kept: send the whole conversation",
    "conversation": "stored conversations are not kept: send the whole conversation",
    "reasoning": "reasoning settings are not supported",
    "background": "background responses are not supported in a batch",
    "include": "include is not supported",
    "prompt": "prompt templates are not supported",
    "max_tool_calls": "tool calling is not supported",
    "top_logprobs": "logprobs are not supported on /v1/responses",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    # An assistant turn of the history carries ``output_text`` parts.
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText]


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectTextFormat(_Strict):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchemaTextFormat(_Strict):
    """Responses' ``json_schema`` format: chat's ``json_schema`` spec, flattened into
    ``format``. The schema itself is checked by the engine (a bad one is a 400 line naming
    the path inside ``text.format.schema``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextSettings(_Strict):
    format: (
        Annotated[
            TextFormat | JsonObjectTextFormat | JsonSchemaTextFormat, Field(discriminator="type")
        ]
        | None
    ) = None


class ResponsesBody(_Strict):
    model: str = Field(min_length=1)
    input: str | list[InputMessage] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    text: TextSettings | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Harmless in a batch: nothing is streamed, and nothing needs storing to be answered.
    stream: Literal[False] | None = None
    store: bool | None = None
    service_tier: str | None = None
    truncation: Literal["disabled"] | None = None

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages: ``instructions`` first, as the system turn."""
        turns = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*turns, {"role": "user", "content": self.input}]
        for item in self.input:
            content = item.content
            text = content if isinstance(content, str) else "\n".join(p.text for p in content)
            turns.append({"role": item.role, "content": text})
        return turns
