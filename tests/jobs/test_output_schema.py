"""A batch's one JSON schema: found across lines at intake, a typed Parquet column at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infra.harness.batches import chat_line
from infra.harness.extraction_corpus import INVOICE_SCHEMA, STAFF_SCHEMA
from infra.harness.service import MODEL
from jobs.limits import Limits
from jobs.storage import LocalStorage, WriterScope
from jobs.storage.parquet import jsonl_to_parquet
from jobs.wire.line_check import LineChecker
from jobs.wire.lines import parse_input_line
from jobs.wire.output_schema import SharedSchema, arrow_type


def _body(**extra: Any) -> Any:
    return parse_input_line(json.dumps(chat_line("x", **extra)).encode()).body


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


def test_shared_schema_needs_every_line_to_ask_for_the_same_one() -> None:
    same = SharedSchema()
    for _ in range(3):
        same.note(_body(response_format=_json_schema(STAFF_SCHEMA)))
    assert same.schema_text is not None and json.loads(same.schema_text) == STAFF_SCHEMA
    # The typed column's fields come in the schema's own order.
    assert list(json.loads(same.schema_text)["properties"]) == list(STAFF_SCHEMA["properties"])
    reordered = SharedSchema()
    reordered.note(_body(response_format=_json_schema(STAFF_SCHEMA)))
    reordered.note(_body(response_format=_json_schema(dict(reversed(STAFF_SCHEMA.items())))))
    assert reordered.schema_text == same.schema_text  # one schema, whatever the key order
    mixed = SharedSchema()
    mixed.note(_body(response_format=_json_schema(STAFF_SCHEMA)))
    mixed.note(_body(response_format=_json_schema(INVOICE_SCHEMA)))
    mixed.note(_body(response_format=_json_schema(STAFF_SCHEMA)))
    assert mixed.schema_text is None
    partly = SharedSchema()
    partly.note(_body(response_format=_json_schema(STAFF_SCHEMA)))
    partly.note(_body())
    assert partly.schema_text is None


def test_arrow_type_follows_a_nested_schema() -> None:
    item = pa.struct(
        [("description", pa.string()), ("quantity", pa.int64()), ("unit_price", pa.float64())]
    )
    vendor = pa.struct([("name", pa.string()), ("country", pa.string())])
    assert arrow_type(INVOICE_SCHEMA) == pa.struct(
        [
            ("invoice_number", pa.string()),
            ("vendor", vendor),
            ("items", pa.list_(item)),
            ("total", pa.float64()),
        ]
    )
    assert arrow_type({"anyOf": [{"type": "string"}, {"type": "integer"}]}) == pa.string()
    assert arrow_type({"enum": ["a", "b"]}) == pa.string()


def _output_line(custom_id: str, content: str) -> bytes:
    body = {"object": "chat.completion", "choices": [{"message": {"content": content}}]}
    line = {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "req", "body": body},
        "error": None,
    }
    return json.dumps(line).encode() + b"\n"


def test_parquet_output_gets_a_typed_parsed_column(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    item = {"description": "hammer", "quantity": 2, "unit_price": 12}
    good: dict[str, Any] = {
        "invoice_number": "INV-1",
        "vendor": {"name": "Acme", "country": "Germany"},
        "items": [item],
        "total": 24,
    }
    cut = '{"invoice_number": "INV-2", "vendor": {"na'  # a max_tokens cut
    wrong = json.dumps({**good, "total": "lots"})  # JSON, but not valid under the schema
    with WriterScope(storage.writer("out.jsonl")) as out:
        for custom_id, content in (("a", json.dumps(good)), ("b", cut), ("c", wrong)):
            out.write(_output_line(custom_id, content))
    count = jsonl_to_parquet(
        storage, "out.jsonl", "out.parquet", rows_per_group=2, json_schema=INVOICE_SCHEMA
    )
    assert count == 3
    with storage.local_copy("out.parquet") as path:
        table = pq.read_table(path)
    assert table.schema.field("parsed").type == arrow_type(INVOICE_SCHEMA)
    rows = table.to_pylist()
    assert rows[0]["parsed"] == {
        **good,
        "total": 24.0,
        "items": [{**item, "unit_price": 12.0}],
    }
    assert [r["parsed"] for r in rows[1:]] == [None, None]
    assert [r["content"] for r in rows] == [json.dumps(good), cut, wrong]
    assert table.column("parsed").combine_chunks().field("vendor").field("name").to_pylist() == [
        "Acme",
        None,
        None,
    ]


def test_sample_extraction_batch_is_valid_with_one_schema() -> None:
    """``infra/samples/invoice_extraction.jsonl`` passes intake and yields a typed column."""
    sample = Path(__file__).resolve().parents[2] / "infra/samples/invoice_extraction.jsonl"
    checker = LineChecker("/v1/chat/completions", Limits(served_models=frozenset({MODEL})))
    lines = sample.read_bytes().splitlines()
    assert len(lines) >= 8
    for line_no, raw in enumerate(lines, start=1):
        assert checker.check(line_no, raw) is None
    text = checker.shared_schema.schema_text
    assert text is not None
    parsed_type = arrow_type(json.loads(text))
    assert pa.types.is_struct(parsed_type)
    assert pa.types.is_list(parsed_type.field("items").type)
