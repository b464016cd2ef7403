"""Input and output lines of a batch file, as the Batch API defines them.

An input line is ``{"custom_id", "method", "url", "body"}``; its ``url`` picks the body model.
Output and error lines share one shape: a ``response`` envelope or an ``error``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from jobs.wire.embedding_bodies import EmbeddingBody
from jobs.wire.request_bodies import ChatCompletionBody, CompletionBody
from jobs.wire.response_bodies import ResponsesBody

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
EMBEDDINGS_URL = "/v1/embeddings"
RESPONSES_URL = "/v1/responses"
SUPPORTED_ENDPOINTS = (CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL, RESPONSES_URL)


class _LineBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]


class ChatLine(_LineBase):
    url: Literal["/v1/chat/completions"]
    body: ChatCompletionBody


class CompletionLine(_LineBase):
    url: Literal["/v1/completions"]
    body: CompletionBody


class EmbeddingLine(_LineBase):
    url: Literal["/v1/embeddings"]
    body: EmbeddingBody


class ResponsesLine(_LineBase):
    url: Literal["/v1/responses"]
    body: ResponsesBody


RequestLine = ChatLine | CompletionLine | EmbeddingLine | ResponsesLine
InputLine = Annotated[RequestLine, Field(discriminator="url")]
INPUT_LINE = TypeAdapter[RequestLine](InputLine)


def parse_input_line(raw: bytes | str) -> RequestLine:
    """Parse one request line that already passed validation."""
    return INPUT_LINE.validate_python(json.loads(raw))


class BodyRejection(BaseModel):
    """Why the endpoint would refuse a line's body, as its 400 error body says it."""

    code: str
    message: str
    param: str | None = None


class RejectedLine(BaseModel):
    """A shard entry for a line whose body the endpoint would refuse.

    OpenAI runs such a line as a request and answers it with a 400 in the error file, while
    the rest of the batch runs; intake keeps only its ``custom_id`` and the reason.
    """

    model_config = ConfigDict(extra="forbid")

    custom_id: str
    rejection: BodyRejection


ShardLine = RequestLine | RejectedLine
_SHARD_LINE = TypeAdapter[ShardLine](InputLine | RejectedLine)


def parse_shard_line(raw: bytes | str) -> ShardLine:
    """Parse one line of a shard: a request that passed validation, or a rejected one.

    The JSON is read by the same parser as intake's: pydantic's own stops at a few hundred
    levels of nesting, and a line intake accepted (a deep JSON schema) must not fail its shard
    on every delivery.
    """
    return _SHARD_LINE.validate_python(json.loads(raw))


class ResponseEnvelope(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any]


class LineError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of the output file (``response`` set) or the error file (either set)."""

    id: str
    custom_id: str
    response: ResponseEnvelope | None = None
    error: LineError | None = None
