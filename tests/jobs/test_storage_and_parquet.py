"""Storage backends, the streaming line reader and the Parquet output helper."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from infra.harness.redis_server import free_port
from jobs.storage import LocalStorage, ObjectNotFound, S3Storage, Storage, WriterScope, read_lines
from jobs.storage.parquet import jsonl_to_parquet
from jobs.storage.s3 import MIN_PART_BYTES


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_s3(url: str, bucket: str) -> S3Storage:
    return S3Storage(
        bucket,
        prefix="p",
        endpoint_url=url,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        create_bucket=True,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    return make_s3(request.getfixturevalue("s3_url"), f"b-{tmp_path.name[-8:].lower()}")


def put(storage: Storage, key: str, data: bytes) -> None:
    with WriterScope(storage.writer(key)) as writer:
        writer.write(data)


def test_round_trip_and_delete(storage: Storage) -> None:
    put(storage, "a/b.txt", b"hello")
    assert b"".join(storage.read_chunks("a/b.txt")) == b"hello"
    assert storage.size("a/b.txt") == 5 and storage.read_head("a/b.txt", 2) == b"he"
    with storage.local_copy("a/b.txt") as path:
        assert path.read_bytes() == b"hello"
    storage.delete_prefix("a/")
    with pytest.raises(ObjectNotFound):
        storage.size("a/b.txt")


def test_aborted_writer_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(RuntimeError), WriterScope(storage.writer("gone")) as writer:
        writer.write(b"x" * (MIN_PART_BYTES + 10))  # starts a multipart upload on S3
        raise RuntimeError("client went away")
    with pytest.raises(ObjectNotFound):
        storage.size("gone")


def test_s3_multipart_upload_and_abort(s3_url: str) -> None:
    storage = make_s3(s3_url, "multipart")
    data = bytes(range(256)) * (MIN_PART_BYTES * 2 // 256 + 7)
    writer = storage.writer("big")
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start : start + (1 << 20)])
    assert writer.commit() == len(data)
    assert b"".join(storage.read_chunks("big")) == data
    raw = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    aborted = storage.writer("half")
    aborted.write(b"y" * MIN_PART_BYTES)
    aborted.abort()
    assert raw.list_multipart_uploads(Bucket="multipart").get("Uploads", []) == []


def test_read_lines_skips_over_long_lines(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    put(storage, "f", b"a\r\n" + b"x" * 50 + b"\nbb\n\nccc")
    assert list(read_lines(storage, "f", max_line_bytes=10)) == [b"a", None, b"bb", b"", b"ccc"]
    put(storage, "g", b"short\n" + b"y" * 30)
    assert list(read_lines(storage, "g", max_line_bytes=10)) == [b"short", None]


def test_jsonl_to_parquet(storage: Storage) -> None:
    lines = [
        {
            "id": "batch_req_1",
            "custom_id": "a",
            "response": {"status_code": 200, "request_id": "r1", "body": {"object": "x"}},
            "error": None,
        },
        {
            "id": "batch_req_2",
            "custom_id": "b",
            "response": None,
            "error": {"code": "batch_cancelled", "message": "cancelled"},
        },
    ]
    put(storage, "out.jsonl", b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    assert jsonl_to_parquet(storage, "out.jsonl", "out.parquet", rows_per_group=1) == 2
    with storage.local_copy("out.parquet") as path:
        rows = pq.read_table(path).to_pylist()
    assert [r["custom_id"] for r in rows] == ["a", "b"]
    assert rows[0]["status_code"] == 200 and json.loads(rows[0]["response_body"]) == {"object": "x"}
    assert rows[1]["error_code"] == "batch_cancelled" and rows[1]["response_body"] is None
