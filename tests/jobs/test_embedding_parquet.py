"""An embeddings batch's Parquet output: one row per input, vectors as fixed-size floats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import LocalStorage, WriterScope
from jobs.storage.embedding_parquet import embeddings_to_parquet
from jobs.wire.responses import embedding_list_body, error_body


def _write(storage: LocalStorage, key: str, lines: list[dict]) -> None:
    with WriterScope(storage.writer(key)) as out:
        for line in lines:
            out.write(json.dumps(line).encode() + b"\n")


def _ok(custom_id: str, vectors: list[list[float]], encoding: str) -> dict:
    body = embedding_list_body(vectors, model="m", prompt_tokens=9, encoding_format=encoding)
    response = {"status_code": 200, "request_id": "r", "body": body}
    return {"id": "b", "custom_id": custom_id, "response": response, "error": None}


def test_rows_per_input_in_a_fixed_size_column(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    refused = {"status_code": 400, "request_id": "r", "body": error_body("too long", code="x")}
    _write(
        storage,
        "out.jsonl",
        [
            _ok("a", [[1.0, 0.0, 0.0], [0.0, 0.5, 0.25]], "float"),
            _ok("b", [[0.5, 0.5, -1.0]], "base64"),
            {"id": "c", "custom_id": "c", "response": refused, "error": None},
        ],
    )
    assert embeddings_to_parquet(storage, "out.jsonl", "out.parquet") == 4
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    rows = table.to_pylist()
    assert [(r["custom_id"], r["index"], r["embedding"]) for r in rows] == [
        ("a", 0, [1.0, 0.0, 0.0]),
        ("a", 1, [0.0, 0.5, 0.25]),
        ("b", 0, [0.5, 0.5, -1.0]),
        ("c", None, None),
    ]
    assert rows[0]["prompt_tokens"] == 9
    assert (rows[3]["status_code"], rows[3]["error_message"]) == (400, "too long")


def test_mixed_dimensions_fall_back_to_a_list_column(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    _write(storage, "out.jsonl", [_ok("a", [[1.0, 0.0]], "float"), _ok("b", [[1.0]], "float")])
    embeddings_to_parquet(storage, "out.jsonl", "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.column("embedding").to_pylist() == [[1.0, 0.0], [1.0]]
