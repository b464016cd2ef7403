"""Streaming ``multipart/form-data`` uploads straight into storage.

The request body is fed chunk by chunk to python-multipart's push parser; file bytes are
handed to a storage writer (in a worker thread) once a megabyte has gathered, so memory stays
flat whatever the file size and an oversized upload is refused with 413 as soon as it
crosses the limit, not after it has been read.

    request.stream() ─► MultipartParser.write ─► callbacks fill _Parts ─► writer.write (thread)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anyio import CancelScope, to_thread
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import APIError
from jobs.storage import ObjectWriter, Storage

FLUSH_BYTES = 1 << 20
MAX_FIELD_BYTES = 64 * 1024
MULTIPART_OVERHEAD_BYTES = 1 << 20


@dataclass(slots=True)
class Upload:
    filename: str
    size: int
    fields: dict[str, str]


@dataclass(slots=True)
class _Parts:
    """What the parser's callbacks have seen so far; the upload loop drains ``pending``."""

    max_file_bytes: int
    fields: dict[str, str] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str = ""
    in_file: bool = False
    filename: str | None = None
    field_data: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    file_bytes: int = 0

    def on_part_begin(self) -> None:
        self.headers.clear()
        self.field_data.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", b""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        self.in_file = b"filename" in options
        if self.in_file:
            if self.filename is not None:
                raise APIError(400, "only one file may be uploaded per request", param="file")
            if self.name != "file":
                raise APIError(400, "the file part must be named 'file'", param=self.name)
            self.filename = options[b"filename"].decode("utf-8", "replace") or "upload.jsonl"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise APIError(
                    413,
                    f"file exceeds the {self.max_file_bytes} byte limit",
                    param="file",
                    code="file_too_large",
                )
            self.pending += data[start:end]
        else:
            self.field_data += data[start:end]
            if len(self.field_data) > MAX_FIELD_BYTES:
                raise APIError(413, f"form field {self.name!r} is too large", param=self.name)

    def on_part_end(self) -> None:
        if not self.in_file:
            self.fields[self.name] = self.field_data.decode("utf-8", "replace")
        self.in_file = False


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise APIError(400, "expected a multipart/form-data body with a 'file' part")
    return options[b"boundary"]


def _check_length(request: Request, max_file_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > max_file_bytes + MULTIPART_OVERHEAD_BYTES
    ):
        raise APIError(
            413,
            f"file exceeds the {max_file_bytes} byte limit",
            param="file",
            code="file_too_large",
        )


async def receive_upload(
    request: Request, storage: Storage, key: str, max_file_bytes: int
) -> Upload:
    """Stream the request's ``file`` part into ``storage[key]``; other parts become fields."""
    boundary = _boundary(request)
    _check_length(request, max_file_bytes)
    parts = _Parts(max_file_bytes)
    callbacks = {name: getattr(parts, name) for name in dir(_Parts) if name.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    writer: ObjectWriter = await to_thread.run_sync(storage.writer, key)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if len(parts.pending) >= FLUSH_BYTES:
                data = bytes(parts.pending)
                parts.pending.clear()
                await to_thread.run_sync(writer.write, data)
        parser.finalize()
        if parts.filename is None:
            raise APIError(400, "missing the 'file' part", param="file")
        await to_thread.run_sync(writer.write, bytes(parts.pending))
        size = await to_thread.run_sync(writer.commit)
    except MultipartParseError as exc:
        await to_thread.run_sync(writer.abort)
        raise APIError(400, f"malformed multipart body: {exc}") from exc
    except BaseException:
        with CancelScope(shield=True):
            await to_thread.run_sync(writer.abort)
        raise
    return Upload(filename=parts.filename, size=size, fields=parts.fields)
