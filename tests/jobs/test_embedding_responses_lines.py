"""Embeddings and Responses lines: what passes, and each bad body's clear 400."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response

from jobs.limits import Limits
from jobs.wire.line_check import LineChecker
from jobs.wire.lines import EmbeddingLine, RejectedLine, ResponsesLine, parse_shard_line
from jobs.wire.responses import Choice, Completion, embedding_list_body, response_body

MODEL = "m"
LIMITS = Limits(max_tokens=100, served_models=frozenset({MODEL}))
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"


def line(url: str, **body: Any) -> bytes:
    return json.dumps(
        {"custom_id": "c", "method": "POST", "url": url, "body": {"model": MODEL, **body}}
    ).encode()


ACCEPTED = [
    (EMBEDDINGS, line(EMBEDDINGS, input="one text")),
    (EMBEDDINGS, line(EMBEDDINGS, input=["a", "b"], encoding_format="base64", user="u")),
    (EMBEDDINGS, line(EMBEDDINGS, input=[1, 2, 3], dimensions=8)),
    (EMBEDDINGS, line(EMBEDDINGS, input=[[1, 2], [3]], encoding_format="float")),
    (EMBEDDINGS, line(EMBEDDINGS, input=["x"] * 2048)),
    (RESPONSES, line(RESPONSES, input="hi")),
    (
        RESPONSES,
        line(
            RESPONSES,
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "message", "role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
            instructions="be brief",
            max_output_tokens=20,
            temperature=0,
            top_p=0.5,
            text={"format": {"type": "text"}},
            metadata={"k": "v"},
            user="u",
            store=False,
        ),
    ),
    (RESPONSES, line(RESPONSES, input="hi", text={"format": {"type": "json_object"}})),
    (
        RESPONSES,
        line(
            RESPONSES,
            input="hi",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                    "strict": True,
                }
            },
        ),
    ),
]


@pytest.mark.parametrize(("url", "raw"), ACCEPTED)
def test_good_lines_pass(url: str, raw: bytes) -> None:
    assert LineChecker(url, LIMITS).check(1, raw) is None
    parsed = parse_shard_line(raw)
    assert isinstance(parsed, EmbeddingLine if url == EMBEDDINGS else ResponsesLine)


def test_embedding_inputs_in_order() -> None:
    parsed = parse_shard_line(line(EMBEDDINGS, input=[[5, 6], [7]]))
    assert isinstance(parsed, EmbeddingLine)
    assert parsed.body.inputs == [[5, 6], [7]]
    single = parse_shard_line(line(EMBEDDINGS, input=[5, 6]))
    assert isinstance(single, EmbeddingLine) and single.body.inputs == [[5, 6]]


# (name, url, line, code, param, words of the message)
REJECTED = [
    (
        "empty input list",
        EMBEDDINGS,
        line(EMBEDDINGS, input=[]),
        "invalid_request",
        "input",
        "input must not be an empty list",
    ),
    (
        "empty string",
        EMBEDDINGS,
        line(EMBEDDINGS, input=""),
        "invalid_request",
        "input",
        "empty string",
    ),
    (
        "2,049 inputs",
        EMBEDDINGS,
        line(EMBEDDINGS, input=["x"] * 2049),
        "invalid_request",
        "input",
        "at most 2048 items, got 2049",
    ),
    (
        "bad encoding",
        EMBEDDINGS,
        line(EMBEDDINGS, input="x", encoding_format="int8"),
        "invalid_request",
        "encoding_format",
        "float",
    ),
    (
        "dimensions 0",
        EMBEDDINGS,
        line(EMBEDDINGS, input="x", dimensions=0),
        "invalid_request",
        "dimensions",
        "greater than or equal to 1",
    ),
    (
        "unknown embeddings field",
        EMBEDDINGS,
        line(EMBEDDINGS, input="x", pooling="max"),
        "unsupported_parameter",
        "pooling",
        "pooling",
    ),
    (
        "tools",
        RESPONSES,
        line(RESPONSES, input="x", tools=[{"type": "web_search"}]),
        "unsupported_parameter",
        "tools",
        "tool calling",
    ),
    (
        "previous_response_id",
        RESPONSES,
        line(RESPONSES, input="x", previous_response_id="r"),
        "unsupported_parameter",
        "previous_response_id",
        "previous_response_id",
    ),
    (
        "reasoning",
        RESPONSES,
        line(RESPONSES, input="x", reasoning={"effort": "low"}),
        "unsupported_parameter",
        "reasoning",
        "reasoning",
    ),
    (
        "background",
        RESPONSES,
        line(RESPONSES, input="x", background=True),
        "unsupported_parameter",
        "background",
        "background",
    ),
    (
        "json_schema without a schema",
        RESPONSES,
        line(RESPONSES, input="x", text={"format": {"type": "json_schema", "name": "n"}}),
        "missing_required_parameter",
        "text.format.schema",
        "text.format.schema",
    ),
    (
        "json_schema with a bad name",
        RESPONSES,
        line(
            RESPONSES,
            input="x",
            text={"format": {"type": "json_schema", "name": "a b", "schema": {}}},
        ),
        "invalid_request",
        "text.format.name",
        "text.format.name",
    ),
    (
        "unknown text format",
        RESPONSES,
        line(RESPONSES, input="x", text={"format": {"type": "yaml"}}),
        "invalid_request",
        "text.format",
        "json_schema",
    ),
    (
        "image input",
        RESPONSES,
        line(
            RESPONSES,
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}],
        ),
        "unsupported_value",
        "input.0.content.0",
        "input_image",
    ),
    (
        "function call item",
        RESPONSES,
        line(RESPONSES, input=[{"type": "function_call_output", "call_id": "c", "output": "o"}]),
        "unsupported_value",
        "input.0.type",
        "function_call_output",
    ),
    (
        "unknown responses field",
        RESPONSES,
        line(RESPONSES, input="x", foo=1),
        "unsupported_parameter",
        "foo",
        "foo",
    ),
    (
        "max_output_tokens over the limit",
        RESPONSES,
        line(RESPONSES, input="x", max_output_tokens=101),
        "invalid_request",
        "max_output_tokens",
        "at most 100",
    ),
    ("empty input", RESPONSES, line(RESPONSES, input=""), "invalid_request", "input", "at least 1"),
]


@pytest.mark.parametrize(
    ("name", "url", "raw", "code", "param", "words"), REJECTED, ids=[r[0] for r in REJECTED]
)
def test_a_bad_body_is_the_lines_400(
    name: str, url: str, raw: bytes, code: str, param: str, words: str
) -> None:
    issue = LineChecker(url, LIMITS).check(1, raw)
    assert isinstance(issue, RejectedLine), name
    assert (issue.rejection.code, issue.rejection.param) == (code, param)
    assert words in issue.rejection.message


def test_embedding_bodies_parse_as_the_sdk_types() -> None:
    vectors = [[0.5, -0.25, 1.0], [0.0, 1.0, 0.0]]
    plain = embedding_list_body(vectors, model=MODEL, prompt_tokens=7, encoding_format="float")
    parsed = CreateEmbeddingResponse.model_validate(plain)
    assert [d.embedding for d in parsed.data] == vectors
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens == 7
    packed = embedding_list_body(vectors, model=MODEL, prompt_tokens=7, encoding_format="base64")
    raw = base64.b64decode(packed["data"][1]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == vectors[1]


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_response_body_parses_as_the_sdk_type(finish: str) -> None:
    completion = Completion([Choice("Hello there", finish)], prompt_tokens=5, completion_tokens=3)
    body = response_body(
        completion,
        response_id="resp_1",
        message_id="msg_1",
        model=MODEL,
        created=1,
        request={"instructions": "be brief", "max_output_tokens": 3, "metadata": {"k": "v"}},
    )
    parsed = Response.model_validate(body)
    assert parsed.output_text == "Hello there"
    assert parsed.usage is not None and parsed.usage.total_tokens == 8
    assert parsed.status == ("incomplete" if finish == "length" else "completed")
    if finish == "length":
        assert parsed.incomplete_details is not None
        assert parsed.incomplete_details.reason == "max_output_tokens"
    else:
        assert parsed.incomplete_details is None
