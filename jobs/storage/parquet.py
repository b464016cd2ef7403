"""Parquet in and out: input files as row batches, output JSONL turned into a table.

An input table has the columns ``custom_id``, ``method``, ``url`` and ``body`` (JSON text).
Each row becomes the JSON line it stands for, so one checker validates both formats.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import Storage, WriterScope, read_lines
from jobs.storage.base import CHUNK_BYTES
from jobs.wire.output_schema import ParsedColumn, answer_text

MAGIC = b"PAR1"
INPUT_COLUMNS = ("custom_id", "method", "url", "body")
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("custom_id", pa.string()),
        ("status_code", pa.int32()),
        ("request_id", pa.string()),
        ("response_body", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
    ]
)


class ParquetInputError(ValueError):
    """The Parquet file cannot be read as a batch input (bad footer, missing columns)."""


def is_parquet(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _row_line(row: dict[str, object]) -> bytes:
    body = row.get("body")
    if isinstance(body, str | bytes):
        # Text that is not JSON stays a string, which the checker refuses as a non-object body.
        try:
            row = {**row, "body": json.loads(body)}
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        except RecursionError:
            # Too deep to decode here: the JSON text goes into the line as it is, and the
            # checker's own deep reader answers the line with a 400.
            text = body.encode() if isinstance(body, str) else body
            rest = {k: v for k, v in row.items() if v is not None and k != "body"}
            head = json.dumps({**rest, "body": None}).encode().removesuffix(b"null}")
            return head + text + b"}"
    return json.dumps({k: v for k, v in row.items() if v is not None}).encode()


def iter_parquet_lines(path: Path, batch_rows: int = 1024) -> Iterator[bytes]:
    """Yield one JSON line per row, reading ``batch_rows`` rows at a time."""
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ParquetInputError(f"not a readable Parquet file: {exc}") from exc
    names = table.schema_arrow.names
    missing = [c for c in INPUT_COLUMNS if c not in names]
    if missing:
        raise ParquetInputError(f"Parquet input lacks columns: {', '.join(missing)}")
    for batch in table.iter_batches(batch_size=batch_rows, columns=list(INPUT_COLUMNS)):
        for row in batch.to_pylist():
            yield _row_line(row)


def _output_row(line: bytes, parsed: ParsedColumn | None = None) -> dict[str, object]:
    record = json.loads(line)
    response = record.get("response") or {}
    error = record.get("error") or {}
    extra: dict[str, object] = {}
    if parsed is not None:
        body = response.get("body")
        text = answer_text(body) if isinstance(body, dict) else None
        extra = {"content": text, "parsed": parsed.parse(text)}
    return {
        **extra,
        "id": record.get("id"),
        "custom_id": record.get("custom_id"),
        "status_code": response.get("status_code"),
        "request_id": response.get("request_id"),
        "response_body": json.dumps(response["body"]) if "body" in response else None,
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }


def jsonl_to_parquet(
    storage: Storage,
    source_key: str,
    target_key: str,
    rows_per_group: int = 4096,
    json_schema: dict[str, object] | None = None,
) -> int:
    """Convert an output (or error) JSONL object into a Parquet object; returns row count.

    With the batch's one ``json_schema``, each row also gets the answer's text (``content``)
    and the answer parsed into a typed ``parsed`` column (see ``jobs/wire/output_schema.py``).
    Rows are written in groups of ``rows_per_group`` to a local temporary file (Parquet
    needs a seekable sink for its footer), then streamed to storage.
    """
    parsed = ParsedColumn(json_schema) if json_schema is not None else None
    schema = OUTPUT_SCHEMA
    if parsed is not None:
        schema = schema.append(pa.field("content", pa.string()))
        schema = schema.append(pa.field("parsed", parsed.type))
    num_rows = 0
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp.name, schema) as writer:
            rows: list[dict[str, object]] = []
            for line in read_lines(storage, source_key, max_line_bytes=1 << 40):
                if line:
                    rows.append(_output_row(line, parsed))
                if len(rows) == rows_per_group:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    num_rows += len(rows)
                    rows.clear()
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                num_rows += len(rows)
        scope = WriterScope(storage.writer(target_key))
        with scope as out, open(tmp.name, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                out.write(chunk)
    return num_rows
