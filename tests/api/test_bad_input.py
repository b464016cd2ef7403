"""Table-driven: every kind of bad line or bad request gets its clear 4xx error, never a 5xx.

A file-level problem fails the batch at validation (this table); a body the endpoint would
refuse is a per-line 400 (tests/jobs/test_line_check.py, and through a worker in
tests/reliability/test_hostile_input.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from infra.harness.batches import chat_line, jsonl, wait_settled
from infra.harness.service import MODEL, LiveServer


def completion_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": MODEL, "prompt": "Once", **body},
    }


def with_body(**changes: Any) -> bytes:
    line = chat_line("c1")
    line["body"].update(changes)
    return jsonl([line])


def without(field: str) -> bytes:
    line = chat_line("c1")
    del line[field]
    return jsonl([line])


def envelope(**changes: Any) -> bytes:
    return jsonl([{**chat_line("c1"), **changes}])


GOOD = json.dumps(chat_line("good")).encode()

# (name, file bytes, expected code, expected line, expected param)
BAD_LINES: list[tuple[str, bytes, str, int | None, str | None]] = [
    ("bad json", GOOD + b"\n{oops\n", "invalid_json_line", 2, None),
    ("not an object", b"[1, 2]\n", "invalid_json_line", 1, None),
    ("invalid utf-8", GOOD + b"\n\xff\xfe{}\n", "invalid_encoding", 2, None),
    ("empty file", b"", "empty_file", None, None),
    ("only blank lines", b"\n\n\n", "empty_file", None, None),
    ("missing custom_id", without("custom_id"), "missing_required_parameter", 1, "custom_id"),
    ("missing body", without("body"), "missing_required_parameter", 1, "body"),
    ("missing url", without("url"), "missing_required_parameter", 1, "url"),
    ("missing method", without("method"), "missing_required_parameter", 1, "method"),
    ("numeric custom_id", envelope(custom_id=7), "invalid_custom_id", 1, "custom_id"),
    (
        "duplicate custom_id",
        jsonl([chat_line("d"), chat_line("d")]),
        "duplicate_custom_id",
        2,
        "custom_id",
    ),
    ("wrong method", envelope(method="GET"), "invalid_method", 1, "method"),
    ("unknown url", envelope(url="/v1/images"), "invalid_url", 1, "url"),
    ("embeddings url in a chat batch", envelope(url="/v1/embeddings"), "mismatched_url", 1, "url"),
    ("url not the batch's", jsonl([completion_line("c")]), "mismatched_url", 1, "url"),
    ("extra line field", envelope(extra=1), "unsupported_parameter", 1, "extra"),
    ("body not object", envelope(body="hi"), "invalid_request", 1, "body"),
    (
        "model missing",
        envelope(body={"messages": []}),
        "missing_required_parameter",
        1,
        "body.model",
    ),
    ("model not served", with_body(model="gpt-4o"), "model_not_found", 1, "body.model"),
    ("two models", GOOD + b"\n" + with_body(model="other"), "model_not_found", 2, "body.model"),
    ("too many lines", jsonl([chat_line(f"n{i}") for i in range(6)]), "too_many_requests", 6, None),
    ("over-long line", jsonl([chat_line("long", "z" * 5000)]), "line_too_long", 1, None),
    ("bad parquet", b"PAR1 not really parquet", "invalid_parquet", None, None),
]


@pytest.mark.parametrize(
    ("content", "code", "line", "param"),
    [case[1:] for case in BAD_LINES],
    ids=[case[0] for case in BAD_LINES],
)
def test_bad_line_fails_batch(
    live_local: LiveServer, content: bytes, code: str, line: int | None, param: str | None
) -> None:
    client = live_local.client()
    file = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    settled = wait_settled(client, batch.id)
    assert settled.status == "failed"
    assert settled.errors is not None and settled.errors.data
    first = settled.errors.data[0]
    assert (first.code, first.line, first.param) == (code, line, param), first.message
    assert first.message


def test_bad_bodies_pass_validation_as_lines_to_answer(live_local: LiveServer) -> None:
    """Bad parameters do not fail the batch: it starts, every line counted, for a worker."""
    client = live_local.client()
    content = jsonl([chat_line("ok"), chat_line("hot", temperature=5), chat_line("t", tools=[])])
    file = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    settled = wait_settled(client, batch.id)
    assert settled.status == "in_progress", settled.errors
    assert settled.request_counts is not None and settled.request_counts.total == 3


AUTH = {"Authorization": "Bearer key-alpha"}
BATCH = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}

# (name, method, path, json body or None, expected status, expected param)
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any] | None, int, str | None]] = [
    ("unknown route", "GET", "/v1/nothing", None, 404, None),
    ("wrong method", "PUT", "/v1/files", None, 405, None),
    ("unknown file", "GET", "/v1/files/file-123", None, 404, "file_id"),
    ("unknown file content", "GET", "/v1/files/file-123/content", None, 404, "file_id"),
    ("unknown batch", "GET", "/v1/batches/batch_123", None, 404, "batch_id"),
    ("cancel unknown", "POST", "/v1/batches/batch_123/cancel", None, 404, "batch_id"),
    ("files limit 0", "GET", "/v1/files?limit=0", None, 400, "limit"),
    ("files bad order", "GET", "/v1/files?order=up", None, 400, "order"),
    ("batches limit 101", "GET", "/v1/batches?limit=101", None, 400, "limit"),
    ("batches limit text", "GET", "/v1/batches?limit=many", None, 400, "limit"),
    ("unknown cursor", "GET", "/v1/batches?after=batch_nope", None, 400, "after"),
    ("batch missing file id", "POST", "/v1/batches", BATCH, 400, "input_file_id"),
    (
        "batch unknown file",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "file-x"},
        404,
        "input_file_id",
    ),
    (
        "batch embeddings: the endpoint is served, the file is not there",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "endpoint": "/v1/embeddings"},
        404,
        "input_file_id",
    ),
    (
        "batch bad endpoint",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "endpoint": "/v1/images"},
        400,
        "endpoint",
    ),
    (
        "batch 48h window",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "completion_window": "48h"},
        400,
        "completion_window",
    ),
    (
        "batch window words",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "completion_window": "soon"},
        400,
        "completion_window",
    ),
    ("batch extra field", "POST", "/v1/batches", {**BATCH, "input_file_id": "f", "x": 1}, 400, "x"),
    (
        "metadata 17 pairs",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "metadata": {str(i): "v" for i in range(17)}},
        400,
        "metadata",
    ),
    (
        "metadata long value",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "metadata": {"k": "v" * 513}},
        400,
        "metadata.k",
    ),
    (
        "metadata bad priority",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "metadata": {"priority": "high"}},
        400,
        "metadata.priority",
    ),
    (
        "metadata priority 0 not granted",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "metadata": {"priority": "0"}},
        400,
        "metadata.priority",
    ),
    (
        "metadata bad format",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "metadata": {"output_format": "csv"}},
        400,
        "metadata.output_format",
    ),
    (
        "metadata non-string",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f", "metadata": {"k": 1}},
        400,
        "metadata.k",
    ),
    (
        "json body too large",
        "POST",
        "/v1/batches",
        {**BATCH, "input_file_id": "f" * 30_000},
        413,
        None,
    ),
    ("unknown model", "GET", "/v1/models/gpt-nope", None, 404, "model"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request(
    live_local: LiveServer,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    param: str | None,
) -> None:
    response = httpx.request(method, live_local.url + path, json=body, headers=AUTH)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_malformed_json_body(live_local: LiveServer) -> None:
    response = httpx.post(
        live_local.url + "/v1/batches",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["message"]


UPLOADS: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("no file part", {"files": {"purpose": (None, "batch")}}, 400, "file"),
    ("no purpose", {"files": {"file": ("a.jsonl", b"{}")}}, 400, "purpose"),
    (
        "wrong purpose",
        {"files": {"file": ("a.jsonl", b"{}")}, "data": {"purpose": "vision"}},
        400,
        "purpose",
    ),
    (
        "expiry too short",
        {
            "files": {"file": ("a.jsonl", b"{}")},
            "data": {
                "purpose": "batch",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "10",
            },
        },
        400,
        "expires_after.seconds",
    ),
    (
        "file too large",
        {"files": {"file": ("a.jsonl", b"x" * 250_000)}, "data": {"purpose": "batch"}},
        413,
        "file",
    ),
    ("not multipart", {"json": {"purpose": "batch"}}, 400, None),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "param"), [c[1:] for c in UPLOADS], ids=[c[0] for c in UPLOADS]
)
def test_bad_upload(
    live_local: LiveServer, kwargs: dict[str, Any], status: int, param: str | None
) -> None:
    response = httpx.post(live_local.url + "/v1/files", headers=AUTH, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_oversized_chunked_upload_is_cut_off(live_local: LiveServer) -> None:
    """Without a Content-Length the limit still holds, counted as the bytes stream in."""
    boundary = "kvb"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    ).encode()

    def body() -> Any:
        yield head
        for _ in range(40):
            yield b"y" * 10_000

    response = httpx.post(
        live_local.url + "/v1/files",
        content=body(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413


def test_cancel_of_failed_batch_is_refused(live_local: LiveServer) -> None:
    client = live_local.client()
    file = client.files.create(file=("e.jsonl", b""), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_settled(client, batch.id).status == "failed"
    response = httpx.post(f"{live_local.url}/v1/batches/{batch.id}/cancel", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "batch_not_cancellable"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\batch.jsonl", "batch.jsonl"),
        ("in\x1b[31mput\x07.jsonl", "in[31mput.jsonl"),
        ("..", "upload.jsonl"),
    ],
)
def test_upload_filenames_are_stored_as_their_safe_base(
    live_local: LiveServer, sent: str, stored: str
) -> None:
    # Built by hand: HTTP clients escape control characters in a filename, a hostile one not.
    boundary = "kvb"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{sent}"\r\n'
            "\r\n"
        ).encode()
        + jsonl([chat_line("a")])
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        live_local.url + "/v1/files",
        content=body,
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == stored
    listed = live_local.client().files.retrieve(response.json()["id"])
    assert listed.filename == stored
