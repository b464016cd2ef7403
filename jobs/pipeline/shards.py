"""Shards: a valid input split into files of ``shard_size`` requests, one Celery task each.

Shard ``n`` holds input lines ``[n * shard_size, (n + 1) * shard_size)`` in input order, so
the worker recovers each request's position without extra bookkeeping:

    requests:  0 .. 255 | 256 .. 511 | 512 .. 600
    shards:    00000    | 00001      | 00002
"""

from __future__ import annotations

from jobs.storage import ObjectWriter, Storage


def shard_prefix(batch_id: str) -> str:
    return f"shards/{batch_id}/"


def shard_key(batch_id: str, index: int) -> str:
    return f"{shard_prefix(batch_id)}{index:05d}.jsonl"


class ShardWriter:
    """Appends valid lines, starting a new shard object every ``shard_size`` lines."""

    def __init__(self, storage: Storage, batch_id: str, shard_size: int) -> None:
        assert shard_size >= 1
        self._storage = storage
        self._batch_id = batch_id
        self._shard_size = shard_size
        self._writer: ObjectWriter | None = None
        self._lines_in_shard = 0
        self.num_shards = 0
        self.num_lines = 0

    def add(self, line: bytes) -> None:
        if self._writer is None:
            self._writer = self._storage.writer(shard_key(self._batch_id, self.num_shards))
        self._writer.write(line + b"\n")
        self._lines_in_shard += 1
        self.num_lines += 1
        if self._lines_in_shard == self._shard_size:
            self._close_shard()

    def _close_shard(self) -> None:
        assert self._writer is not None
        self._writer.commit()
        self._writer = None
        self._lines_in_shard = 0
        self.num_shards += 1

    def finish(self) -> int:
        """Commit the last partial shard; returns the number of shards."""
        if self._writer is not None:
            self._close_shard()
        return self.num_shards

    def discard(self) -> None:
        """Abort the open shard and delete every shard written (the input was invalid)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._storage.delete_prefix(shard_prefix(self._batch_id))
