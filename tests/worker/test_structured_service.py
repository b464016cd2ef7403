"""Structured outputs through the whole service with the official SDK: the extraction corpus,
vLLM's guided extras, bad schemas as 400 lines, and a typed Parquet table."""

from __future__ import annotations

import io
import json
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest

from infra.harness.batches import batch_line, jsonl, result_lines, wait_batch
from infra.harness.extraction_corpus import DOCUMENTS, SCHEMAS, Document, extraction_messages
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow

MAX_TOKENS = {"review": 60, "invoice": 130, "staff": 60}


def _line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    return batch_line(custom_id, url, **body)


def _extraction_line(doc: Document) -> dict[str, Any]:
    schema = {"name": doc.schema_name, "schema": SCHEMAS[doc.schema_name], "strict": True}
    return _line(
        doc.doc_id,
        messages=extraction_messages(doc),
        temperature=0,
        max_tokens=MAX_TOKENS[doc.schema_name],
        response_format={"type": "json_schema", "json_schema": schema},
    )


def _run(
    stack: Stack,
    lines: list[dict[str, Any]],
    endpoint: str = "/v1/chat/completions",
    raw_lines: tuple[tuple[str, bytes], ...] = (),
    **meta: str,
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``lines`` and ``raw_lines`` (``(custom_id, line text)``: lines too deep for
    ``json.dumps`` to write) as one batch through the SDK."""
    client = stack.client()
    content = jsonl(lines) + b"".join(raw + b"\n" for _, raw in raw_lines)
    file = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=meta or None,
    )
    done = wait_batch(client, batch.id, {"completed", "failed"}, timeout_s=900)
    assert done.status == "completed", done
    if meta.get("output_format") == "parquet":
        return done, [], []
    outputs, errors = result_lines(client, done)
    custom_ids = [line["custom_id"] for line in lines] + [cid for cid, _ in raw_lines]
    assert_each_once(custom_ids, outputs, errors)
    return done, outputs, errors


def test_extraction_corpus_through_the_service(stack: Stack) -> None:
    lines = [_extraction_line(d) for d in DOCUMENTS]
    json_mode = [
        _line(
            f"object-{i}",
            messages=extraction_messages(d),
            temperature=0,
            max_tokens=60,
            response_format={"type": "json_object"},
        )
        for i, d in enumerate(DOCUMENTS[::12])
    ]
    staff = SCHEMAS["staff"]
    doc = DOCUMENTS[-1]
    vllm_style = [
        _line(
            "so-json",
            messages=extraction_messages(doc),
            temperature=0,
            max_tokens=60,
            structured_outputs={"json": staff},
        ),
        _line(
            "guided-json",
            messages=extraction_messages(doc),
            temperature=0,
            max_tokens=60,
            guided_json=staff,
        ),
        _line(
            "guided-choice",
            messages=[{"role": "user", "content": "Is the sky blue?"}],
            max_tokens=4,
            guided_choice=["yes", "no"],
        ),
    ]
    _, outputs, errors = _run(stack, lines + json_mode + vllm_style)
    assert errors == []
    by_id = {line["custom_id"]: line["response"]["body"]["choices"][0] for line in outputs}
    finished = 0
    for doc in DOCUMENTS:
        choice = by_id[doc.doc_id]
        if choice["finish_reason"] == "stop":
            finished += 1
            answer = json.loads(choice["message"]["content"])
            jsonschema.validate(answer, SCHEMAS[doc.schema_name])
        else:
            assert choice["finish_reason"] == "length"
    assert finished >= len(DOCUMENTS) // 2
    for line in json_mode:
        choice = by_id[line["custom_id"]]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"]), dict)
    for custom_id in ("so-json", "guided-json"):
        jsonschema.validate(json.loads(by_id[custom_id]["message"]["content"]), staff)
    assert by_id["guided-choice"]["message"]["content"] in ("yes", "no")


def test_completion_lines_take_guided_regex_and_choice(stack: Stack) -> None:
    url = "/v1/completions"
    lines = [
        _line(
            "date",
            url,
            prompt="The date today is",
            max_tokens=12,
            temperature=0,
            guided_regex=r"20[0-9]{2}-[01][0-9]-[0-3][0-9]",
        ),
        _line(
            "colour",
            url,
            prompt="My favourite colour is",
            max_tokens=6,
            temperature=0,
            structured_outputs={"choice": ["red", "green", "blue"]},
        ),
    ]
    _, outputs, errors = _run(stack, lines, endpoint=url)
    assert errors == []
    texts = {line["custom_id"]: line["response"]["body"]["choices"][0]["text"] for line in outputs}
    assert len(texts["date"]) == 10 and texts["date"][:2] == "20" and texts["date"][4] == "-"
    assert texts["colour"] in ("red", "green", "blue")


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def _too_deep_to_dump(custom_id: str, levels: int) -> bytes:
    """A chat line whose schema nests ``levels`` arrays, past what ``json.dumps`` writes."""
    schema = '{"type": "array", "items": ' * levels + '{"type": "string"}' + "}" * levels
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": "SCHEMA"}}
    line = _line(custom_id, messages=[{"role": "user", "content": "Hi"}], response_format=fmt)
    return json.dumps(line).encode().replace(b'"SCHEMA"', schema.encode())


def test_bad_schemas_are_400_lines(stack: Stack) -> None:
    """Each bad schema is its line's 400, naming the path inside the schema; the good line
    and the batch complete. A 900-level schema reaches the engine's depth bound; a
    1,000-level one is deeper than ``json.loads`` goes and is answered at intake."""

    def with_schema(custom_id: str, schema: dict[str, Any]) -> dict[str, Any]:
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        return _line(
            custom_id,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            response_format=fmt,
        )

    bad = {
        "unknown-type": (
            with_schema("unknown-type", {"type": "object", "properties": {"n": {"type": "nmber"}}}),
            "response_format.json_schema.schema.properties.n.type: 'nmber' is not valid",
        ),
        "ref-loop": (
            with_schema(
                "ref-loop",
                {
                    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                    "properties": {"x": {"$ref": "#/$defs/a"}},
                },
            ),
            "response_format.json_schema.schema.properties.x.$ref: the references loop",
        ),
        "ten-mb": (
            with_schema("ten-mb", {"type": "object", "description": "x" * 10_000_000}),
            "response_format.json_schema.schema: the schema is 100000",
        ),
        "deep": (
            with_schema("deep", _deep(900)),
            "response_format.json_schema.schema" + ".items" * 65 + ": the schema is nested deeper",
        ),
        "regex": (
            _line(
                "regex",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
                guided_regex="(unclosed",
            ),
            "guided_regex: Regex parsing error",
        ),
    }
    good = _line(
        "good",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        response_format={"type": "json_object"},
    )
    deep_1000 = _too_deep_to_dump("deep-1000", 1000)
    expected = {cid: message for cid, (_, message) in bad.items()}
    expected["deep-1000"] = (
        "response_format.json_schema.schema.items.items.items.items.items…: nested 1003 levels"
    )
    batch, outputs, errors = _run(
        stack, [good, *(line for line, _ in bad.values())], raw_lines=(("deep-1000", deep_1000),)
    )
    assert [line["custom_id"] for line in outputs] == ["good"]
    counts = batch.request_counts
    assert counts is not None and (counts.completed, counts.failed) == (1, len(expected))
    for line in errors:
        response = line["response"]
        assert response["status_code"] == 400
        assert response["body"]["error"]["message"].startswith(expected[line["custom_id"]])


def test_parquet_output_has_a_typed_parsed_column(stack: Stack) -> None:
    """The nested invoice type is checked in tests/jobs/test_output_schema.py; here the staff
    schema (short answers that finish on this small model) goes through the whole service."""
    docs = [d for d in DOCUMENTS if d.schema_name == "staff"][:4]
    lines = [_extraction_line(d) for d in docs]
    lines.append({**_extraction_line(docs[0]), "custom_id": "cut"})
    lines[-1]["body"] = {**lines[-1]["body"], "max_tokens": 8}
    batch, _, _ = _run(stack, lines, output_format="parquet")
    client = stack.client()
    assert batch.output_file_id is not None
    table = pq.read_table(io.BytesIO(client.files.content(batch.output_file_id).read()))
    parsed_type = table.schema.field("parsed").type
    assert [parsed_type.field(i).name for i in range(parsed_type.num_fields)] == list(
        SCHEMAS["staff"]["properties"]
    )
    rows = {row["custom_id"]: row for row in table.to_pylist()}
    assert rows["cut"]["parsed"] is None and rows["cut"]["content"].startswith("{")
    parsed = 0
    for doc in docs:
        row = rows[doc.doc_id]
        finish = json.loads(row["response_body"])["choices"][0]["finish_reason"]
        if finish == "stop":
            parsed += 1
            assert row["parsed"] == json.loads(row["content"])
        else:
            assert row["parsed"] is None
    assert parsed >= 1
