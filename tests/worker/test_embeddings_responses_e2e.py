"""Embeddings and Responses batches through the whole service, read with the official SDK."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response

from engine import LLM
from infra.harness.batches import batch_line, chat_line, jsonl, result_lines, wait_batch
from infra.harness.extraction_corpus import DOCUMENTS, SCHEMAS, extraction_messages
from infra.harness.service import MODEL, SMOLLM2
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "hello", "Tokens " * 60]
TOKEN_IDS = [[504, 2365, 314, 253, 1848], [28, 29, 30]]


def embedding_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return batch_line(custom_id, "/v1/embeddings", **body)


def submit(stack: Stack, endpoint: str, lines: list[dict[str, Any]], **metadata: str) -> str:
    client = stack.client()
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata or None,
    ).id


GOOD_EMBEDDING_LINES = [
    embedding_line("one-text", input=TEXTS[0]),
    embedding_line("texts", input=TEXTS, encoding_format="float", user="u-1"),
    embedding_line("texts-b64", input=TEXTS[1:3], encoding_format="base64"),
    embedding_line("ids", input=TOKEN_IDS[0]),
    embedding_line("id-lists", input=TOKEN_IDS, encoding_format="base64"),
]
BAD_EMBEDDING_LINES = [
    (embedding_line("empty", input=[]), "input", "empty list"),
    (embedding_line("too-many", input=["x"] * 2049), "input", "at most 2048 items"),
    (embedding_line("too-long", input=[28] * 8193), "input", "context length of 8192"),
    (embedding_line("dims", input="x", dimensions=8), "dimensions", "matryoshka"),
]


def _vectors(body: dict[str, Any]) -> list[list[float]]:
    """The vectors as the SDK hands them over: base64 decoded the way its ``embeddings.create``
    decodes it (little-endian float32), then the body parsed by its own type."""
    data = []
    for item in body["data"]:
        value = item["embedding"]
        if isinstance(value, str):
            value = np.frombuffer(base64.b64decode(value), dtype="<f4").tolist()
        data.append({**item, "embedding": value})
    parsed = CreateEmbeddingResponse.model_validate({**body, "data": data})
    assert [d.index for d in parsed.data] == list(range(len(parsed.data)))
    return [d.embedding for d in parsed.data]


def test_embeddings_batch_matches_offline_engine(stack: Stack) -> None:
    lines = GOOD_EMBEDDING_LINES + [line for line, _, _ in BAD_EMBEDDING_LINES]
    jsonl_batch = submit(stack, "/v1/embeddings", lines)
    parquet_batch = submit(stack, "/v1/embeddings", GOOD_EMBEDDING_LINES, output_format="parquet")

    llm = LLM(str(SMOLLM2), runner="pooling")
    expected = {
        "one-text": llm.embed([TEXTS[0]], use_tqdm=False),
        "texts": llm.embed(TEXTS, use_tqdm=False),
        "texts-b64": llm.embed(TEXTS[1:3], use_tqdm=False),
        "ids": llm.embed([TOKEN_IDS[0]], use_tqdm=False),
        "id-lists": llm.embed(TOKEN_IDS, use_tqdm=False),
    }
    client = stack.client()
    batch = wait_batch(client, jsonl_batch, {"completed", "failed"})
    assert batch.status == "completed", batch
    outputs, errors = result_lines(client, batch)
    assert_each_once([line["custom_id"] for line in lines], outputs, errors)
    assert [o["custom_id"] for o in outputs] == [line["custom_id"] for line in GOOD_EMBEDDING_LINES]
    for output in outputs:
        body = output["response"]["body"]
        want = expected[output["custom_id"]]
        got = _vectors(body)
        assert len(got) == len(want)
        for vector, reference in zip(got, want, strict=True):
            assert vector == pytest.approx(reference.outputs.embedding, abs=1e-5)
        assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in want)
    by_id = {e["custom_id"]: e["response"] for e in errors}
    for line, param, words in BAD_EMBEDDING_LINES:
        response = by_id[line["custom_id"]]
        assert response["status_code"] == 400
        error = response["body"]["error"]
        assert error["param"] == param and words in error["message"], error
    counts, usage = batch.request_counts, batch.usage
    assert counts is not None and usage is not None
    assert (counts.completed, counts.failed) == (
        len(GOOD_EMBEDDING_LINES),
        len(BAD_EMBEDDING_LINES),
    )
    assert usage.input_tokens == sum(len(o.prompt_token_ids) for v in expected.values() for o in v)

    batch = wait_batch(client, parquet_batch, {"completed", "failed"})
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None
    table = pq.read_table(io.BytesIO(client.files.content(batch.output_file_id).read()))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 576)
    rows = table.to_pylist()
    want_rows = [
        (line["custom_id"], i, out.outputs.embedding)
        for line in GOOD_EMBEDDING_LINES
        for i, out in enumerate(expected[line["custom_id"]])
    ]
    assert [(r["custom_id"], r["index"]) for r in rows] == [(c, i) for c, i, _ in want_rows]
    for row, (_, _, vector) in zip(rows, want_rows, strict=True):
        assert row["embedding"] == pytest.approx(vector, abs=1e-5)


QUESTIONS = ["Name a color.", "What is 2 + 2?", "Say hello in French."]


def responses_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return batch_line(custom_id, "/v1/responses", **body)


def _structured_pairs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``text.format`` json_schema and json_object lines and their chat twins, which ask for
    the same output through ``response_format``."""
    doc = next(d for d in DOCUMENTS if d.schema_name == "staff")
    messages = extraction_messages(doc)
    schema = SCHEMAS["staff"]
    formats = [
        (
            "r-schema",
            {"type": "json_schema", "name": "staff", "schema": schema, "strict": True},
            {"type": "json_schema", "json_schema": {"name": "staff", "schema": schema}},
            60,
        ),
        ("r-object", {"type": "json_object"}, {"type": "json_object"}, 16),
    ]
    return [
        (
            responses_line(
                custom_id,
                input=messages,
                temperature=0,
                max_output_tokens=max_tokens,
                text={"format": text_format},
            ),
            {
                **chat_line(custom_id),
                "body": {
                    "model": MODEL,
                    "messages": messages,
                    "temperature": 0,
                    "max_tokens": max_tokens,
                    "response_format": response_format,
                },
            },
        )
        for custom_id, text_format, response_format, max_tokens in formats
    ]


def test_responses_batch_matches_chat_batch(stack: Stack) -> None:
    """Each Responses line and its chat twin ask the same of the model: same greedy text,
    ``text.format`` structured outputs included."""
    pairs = [
        (
            responses_line("r-text", input=QUESTIONS[0], temperature=0, max_output_tokens=12),
            chat_line("r-text", QUESTIONS[0], temperature=0, max_tokens=12),
        ),
        (
            responses_line(
                "r-items",
                instructions="You answer briefly.",
                input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTIONS[1]}]}],
                temperature=0,
                max_output_tokens=12,
                metadata={"k": "v"},
                text={"format": {"type": "text"}},
                user="u",
            ),
            {
                **chat_line("r-items", temperature=0, max_tokens=12),
                "body": {
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": "You answer briefly."},
                        {"role": "user", "content": QUESTIONS[1]},
                    ],
                    "temperature": 0,
                    "max_tokens": 12,
                },
            },
        ),
        (
            responses_line("r-cut", input=QUESTIONS[2], temperature=0, max_output_tokens=2),
            chat_line("r-cut", QUESTIONS[2], temperature=0, max_tokens=2),
        ),
    ]
    bad = [
        (responses_line("bad-tools", input="x", tools=[{"type": "web_search"}]), "tools"),
        (
            responses_line("bad-prev", input="x", previous_response_id="resp_1"),
            "previous_response_id",
        ),
        (responses_line("bad-reasoning", input="x", reasoning={"effort": "low"}), "reasoning"),
        (responses_line("bad-background", input="x", background=True), "background"),
    ]
    bad_schema = responses_line(
        "bad-schema",
        input="x",
        text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "nmber"}}},
    )
    pairs += _structured_pairs()
    responses_batch = submit(
        stack, "/v1/responses", [r for r, _ in pairs] + [line for line, _ in bad] + [bad_schema]
    )
    chat_batch = submit(stack, "/v1/chat/completions", [c for _, c in pairs])
    client = stack.client()
    done = wait_batch(client, responses_batch, {"completed", "failed"})
    twin = wait_batch(client, chat_batch, {"completed", "failed"})
    assert done.status == twin.status == "completed"
    outputs, errors = result_lines(client, done)
    chat_outputs, _ = result_lines(client, twin)
    chats = {c["custom_id"]: c["response"]["body"] for c in chat_outputs}
    assert [o["custom_id"] for o in outputs] == [r["custom_id"] for r, _ in pairs]
    for output in outputs:
        response = Response.model_validate(output["response"]["body"])
        chat = chats[output["custom_id"]]
        assert response.object == "response"
        assert response.output_text == chat["choices"][0]["message"]["content"]
        assert response.usage is not None
        assert response.usage.input_tokens == chat["usage"]["prompt_tokens"]
        assert response.usage.output_tokens == chat["usage"]["completion_tokens"]
        cut = chat["choices"][0]["finish_reason"] == "length"
        assert response.status == ("incomplete" if cut else "completed")
        assert (response.incomplete_details is not None) == cut
    assert Response.model_validate(outputs[2]["response"]["body"]).status == "incomplete"
    assert Response.model_validate(outputs[1]["response"]["body"]).metadata == {"k": "v"}
    by_output = {o["custom_id"]: Response.model_validate(o["response"]["body"]) for o in outputs}
    schema_answer = by_output["r-schema"]
    assert schema_answer.status == "completed"
    jsonschema.validate(json.loads(schema_answer.output_text), SCHEMAS["staff"])
    assert schema_answer.text is not None and schema_answer.text.format is not None
    assert schema_answer.text.format.type == "json_schema"
    object_answer = by_output["r-object"]
    assert object_answer.output_text.startswith("{")
    if object_answer.status == "completed":
        assert isinstance(json.loads(object_answer.output_text), dict)
    by_id = {e["custom_id"]: e["response"] for e in errors}
    refused_schema = by_id.pop("bad-schema")
    assert refused_schema["status_code"] == 400
    assert refused_schema["body"]["error"]["message"].startswith("text.format.schema.type: ")
    for line, param in bad:
        response = by_id[line["custom_id"]]
        assert response["status_code"] == 400
        assert response["body"]["error"]["param"] == param
        assert param.split(".")[0] in response["body"]["error"]["message"]
