"""Request bodies a batch line may carry, one pydantic model per endpoint.

Unknown fields are rejected (``extra="forbid"``): a parameter we would silently ignore is a
wrong answer the caller cannot see. Fields that change nothing in a batch (``stream: false``,
``store``, ``service_tier``...) are accepted, as the endpoints accept them; features we do not
serve are named by :mod:`jobs.wire.body_refusals` before these models see the body. Bounds that
depend on configuration (``n``, ``max_tokens``) are checked by :func:`check_bounds`, not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.limits import Limits

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    """OpenAI's ``json_schema``; the schema itself is checked by the engine, which knows
    what its grammar compiler supports (a bad one is a 400 line naming the schema path)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class StructuredOutputsBody(_Strict):
    """vLLM's ``structured_outputs`` extra: exactly one constraint."""

    json_schema: dict[str, Any] | str | None = Field(default=None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SamplingBody(_Strict):
    """Fields shared by chat and text completions (OpenAI's plus vLLM's common extras)."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    top_k: int | None = Field(default=None, ge=-1)
    min_p: Probability | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    user: str | None = None
    # Harmless in a batch: the answer is never streamed, so ``stream_options`` has no effect.
    stream: Literal[False] | None = None
    stream_options: dict[str, Any] | None = None
    # vLLM's output constraints (at most one of them, and not with a JSON response_format).
    structured_outputs: StructuredOutputsBody | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingBody:
        given = self.constraint_fields
        if len(given) > 1:
            raise ValueError(f"give at most one output constraint, got {', '.join(given)}")
        return self

    @property
    def constraint_fields(self) -> list[str]:
        """The output-constraint fields this body sets."""
        names = ("structured_outputs", "guided_json", "guided_regex", "guided_choice")
        return [n for n in names if getattr(self, n) is not None]

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class ChatCompletionBody(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    # Accepted and ignored, as the endpoint does without tools or stored completions.
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None

    @property
    def constraint_fields(self) -> list[str]:
        given = super().constraint_fields
        if self.response_format is not None and self.response_format.type != "text":
            given.append("response_format")
        return given

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionBody:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("set max_tokens or max_completion_tokens, not both")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(SamplingBody):
    """A text completion of one prompt (text or token ids); prompt lists are refused."""

    prompt: str | list[Annotated[int, Field(ge=0)]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: Literal[False] | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[int]) -> str | list[int]:
        if len(value) == 0:
            raise ValueError("prompt must not be empty")
        return value


RequestBody = ChatCompletionBody | CompletionBody


def check_bounds(body: RequestBody, limits: Limits) -> tuple[str, str] | None:
    """The first configured bound ``body`` exceeds, as ``(param, message)``, or None."""
    if body.n is not None and body.n > limits.max_n:
        return "n", f"n must be at most {limits.max_n}, got {body.n}"
    limit = body.token_limit
    if limit is not None and limit > limits.max_tokens:
        param = "max_completion_tokens" if limit != body.max_tokens else "max_tokens"
        return param, f"{param} must be at most {limits.max_tokens}, got {limit}"
    if len(body.stop_list) > limits.max_stop_sequences:
        return "stop", f"at most {limits.max_stop_sequences} stop sequences are allowed"
    if body.min_tokens is not None and limit is not None and body.min_tokens > limit:
        return "min_tokens", f"min_tokens ({body.min_tokens}) exceeds the token limit ({limit})"
    return None
