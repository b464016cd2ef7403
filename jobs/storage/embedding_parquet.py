"""An embeddings batch's results as Parquet: one row per input, the vector as floats.

A night's index loads straight into an array with no JSON to parse::

    custom_id | index | embedding (fixed_size_list<float32>[d]) | prompt_tokens | error...
    doc-1     | 0     | [0.01, -0.2, ...]                        | 12            |
    doc-1     | 1     | [...]                                    | 12            |
    doc-2     | null  | null                                     | null          | 400 ...

``prompt_tokens`` is the line's, repeated on each of its rows. The vectors of one batch all
have one length (one model, one ``dimensions``) and the column is a fixed-size list of it;
a batch whose lines asked for different ``dimensions`` gets a plain list column instead.
Base64 answers are decoded to the same floats.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import Storage, WriterScope, read_lines
from jobs.storage.base import CHUNK_BYTES


def _vector(value: list[float] | str) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


def _rows(storage: Storage, key: str) -> Iterator[dict[str, Any]]:
    for line in read_lines(storage, key, max_line_bytes=1 << 40):
        if not line:
            continue
        record = json.loads(line)
        response = record.get("response") or {}
        body = response.get("body") or {}
        error = record.get("error") or body.get("error") or {}
        base = {
            "id": record.get("id"),
            "custom_id": record.get("custom_id"),
            "status_code": response.get("status_code"),
            "request_id": response.get("request_id"),
            "error_code": error.get("code"),
            "error_message": error.get("message"),
        }
        data = body.get("data") if response.get("status_code") == 200 else None
        if not data:
            yield {**base, "index": None, "embedding": None, "prompt_tokens": None}
            continue
        tokens = (body.get("usage") or {}).get("prompt_tokens")
        for item in data:
            vector = _vector(item["embedding"])
            yield {**base, "index": item["index"], "embedding": vector, "prompt_tokens": tokens}


def _schema(vector_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("custom_id", pa.string()),
            ("index", pa.int32()),
            ("embedding", vector_type),
            ("prompt_tokens", pa.int64()),
            ("status_code", pa.int32()),
            ("request_id", pa.string()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
        ]
    )


def _vector_type(storage: Storage, key: str) -> pa.DataType:
    """``fixed_size_list<float32>[d]`` when every vector has length ``d``, else a list."""
    sizes = {len(r["embedding"]) for r in _rows(storage, key) if r["embedding"] is not None}
    if len(sizes) == 1:
        return pa.list_(pa.float32(), sizes.pop())
    return pa.list_(pa.float32())


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {name: [r[name] for r in rows] for name in schema.names}
    vector_type = schema.field("embedding").type
    columns["embedding"] = pa.array(
        [None if v is None else v.tolist() for v in columns["embedding"]], type=vector_type
    )
    return pa.Table.from_pydict(columns, schema=schema)


def embeddings_to_parquet(
    storage: Storage, source_key: str, target_key: str, rows_per_group: int = 4096
) -> int:
    """Convert an embeddings output (or error) JSONL object into Parquet; returns row count."""
    schema = _schema(_vector_type(storage, source_key))
    num_rows = 0
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp.name, schema) as writer:
            rows: list[dict[str, Any]] = []
            for row in _rows(storage, source_key):
                rows.append(row)
                if len(rows) == rows_per_group:
                    writer.write_table(_table(rows, schema))
                    num_rows += len(rows)
                    rows.clear()
            if rows:
                writer.write_table(_table(rows, schema))
                num_rows += len(rows)
        with WriterScope(storage.writer(target_key)) as out, open(tmp.name, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                out.write(chunk)
    return num_rows
