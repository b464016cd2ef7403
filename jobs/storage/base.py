"""The one interface every object store behind kvbatch speaks.

Everything is streamed: writers take chunks, readers yield chunks, so neither the API nor the
worker ever holds a whole file. The calls are blocking; async callers run them in a thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Protocol

CHUNK_BYTES = 1 << 20


class ObjectNotFound(KeyError):
    """No object is stored under the key."""


class ObjectWriter(Protocol):
    """An object being written; invisible to readers until :meth:`commit`."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> int:
        """Make the object visible; returns its size in bytes."""
        ...

    def abort(self) -> None:
        """Drop everything written so far (and any partial upload)."""
        ...


class Storage(Protocol):
    def writer(self, key: str) -> ObjectWriter: ...

    def read_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]: ...

    def read_head(self, key: str, num_bytes: int) -> bytes: ...

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """A seekable local path with the object's bytes (for formats like Parquet)."""
        ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def close(self) -> None: ...


class WriterScope:
    """``with WriterScope(storage.writer(key)) as w:`` commits on success, aborts on error."""

    def __init__(self, writer: ObjectWriter) -> None:
        self.writer = writer
        self.size = 0

    def __enter__(self) -> ObjectWriter:
        return self.writer

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.size = self.writer.commit()
        else:
            self.writer.abort()


def read_lines(storage: Storage, key: str, max_line_bytes: int) -> Iterator[bytes | None]:
    """Yield each line of an object without its newline; ``None`` for a line over the limit.

    An over-long line is skipped as it streams past, never buffered whole:

        chunk:  ...abc\\nxxxxxxxxxxxxxxxxxxxxxxxxxxxx|xxxxxx\\ndef...
                      └──── longer than max ─────────────┘ → None
    """
    pending = bytearray()
    too_long = False
    for chunk in storage.read_chunks(key):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not too_long:
                pending += piece
                too_long = len(pending) > max_line_bytes
                if too_long:
                    pending.clear()
            if end < 0:
                break
            yield None if too_long else bytes(pending).rstrip(b"\r")
            pending.clear()
            too_long = False
            start = end + 1
    if too_long:
        yield None
    elif pending:
        yield bytes(pending).rstrip(b"\r")
