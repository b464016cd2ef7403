"""Object storage on a local directory: the embedded default (``./var/storage``)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import BinaryIO

from jobs.storage.base import CHUNK_BYTES, ObjectNotFound


class LocalWriter:
    """Writes to a hidden temporary file and renames it into place on commit (atomic)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        self._file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def commit(self) -> int:
        self._file.close()
        os.replace(self._tmp, self._path)
        return self._size

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def writer(self, key: str) -> LocalWriter:
        return LocalWriter(self._path(key))

    def read_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        with handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

    def read_head(self, key: str, num_bytes: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read(num_bytes)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        path = self._path(key)
        if not path.exists():
            raise ObjectNotFound(key)
        return nullcontext(path)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            for item in path.parent.glob(f"{path.name}*"):
                if item.is_file():
                    item.unlink(missing_ok=True)

    def close(self) -> None:
        return None
