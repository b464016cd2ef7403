"""Object storage on any S3-compatible endpoint (AWS, MinIO, moto) through boto3."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from jobs.storage.base import CHUNK_BYTES, ObjectNotFound

MIN_PART_BYTES = 5 * 1024 * 1024


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3Writer:
    """Buffers up to one part; small objects become one PUT, large ones a multipart upload.

    S3 requires every part but the last to be at least 5 MiB, so the buffer flushes only
    once it holds ``part_bytes`` (>= 5 MiB). A failed upload is aborted, never left dangling.
    """

    def __init__(self, client: Any, bucket: str, key: str, part_bytes: int) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._part_bytes = max(part_bytes, MIN_PART_BYTES)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) >= self._part_bytes:
            try:
                self._flush_part()
            except Exception:
                self.abort()
                raise

    def _flush_part(self) -> None:
        if self._upload_id is None:
            started = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        done = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"ETag": done["ETag"], "PartNumber": number})
        self._buffer.clear()

    def commit(self) -> int:
        try:
            if self._upload_id is None:
                self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer)
                )
            else:
                if self._buffer:
                    self._flush_part()
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except Exception:
            self.abort()
            raise
        self._buffer.clear()
        return self._size

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )


class S3Storage:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_bytes: int = 8 * 1024 * 1024,
        max_attempts: int = 5,
        create_bucket: bool = False,
    ) -> None:
        config = Config(retries={"mode": "standard", "max_attempts": max_attempts})
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        self.bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._part_bytes = part_bytes
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            self._client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return self._prefix + key

    def writer(self, key: str) -> S3Writer:
        return S3Writer(self._client, self.bucket, self._key(key), self._part_bytes)

    def _get(self, key: str, **kwargs: Any) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from exc
            raise

    def read_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        body = self._get(key)["Body"]
        try:
            yield from body.iter_chunks(chunk_bytes)
        finally:
            body.close()

    def read_head(self, key: str, num_bytes: int) -> bytes:
        if self.size(key) == 0:
            return b""
        body = self._get(key, Range=f"bytes=0-{num_bytes - 1}")["Body"]
        with body:
            data: bytes = body.read()
        return data

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        with tempfile.NamedTemporaryFile(prefix="kvbatch-", suffix=".obj") as handle:
            for chunk in self.read_chunks(key):
                handle.write(chunk)
            handle.flush()
            yield Path(handle.name)

    def size(self, key: str) -> int:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def close(self) -> None:
        self._client.close()
