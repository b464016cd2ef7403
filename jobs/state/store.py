"""Files and batches in Redis: records, per-tenant indexes, counters and status moves.

Layout under a configurable prefix ``P`` (tests use a unique one)::

    P:seq                       INCR counter: creation order, unique per record
    P:file:{id}                 hash  FileRecord
    P:batch:{id}                hash  BatchRecord (+ integer counter fields)
    P:files:{tenant}            zset  file ids scored by seq
    P:file_expiry               zset  file ids scored by expires_at (jobs/pipeline/file_expiry.py)
    P:stored_bytes              hash  tenant -> bytes of the files it holds
    P:batches:{tenant}          zset  batch ids scored by seq
    P:validating                set   batch ids whose input still needs validating
    P:stats:batch_status        hash  status -> batches in it, moved with every transition
    P:ended                     set   batch ids that ended and whose webhook event is not
                                      yet queued (jobs/webhooks/events.py)

Nothing lives only in a process: an API restart resumes every batch in ``P:validating``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis

from jobs.state.ids import BatchId, TenantId
from jobs.state.locks import owned_lock
from jobs.state.records import BatchRecord, FileRecord
from jobs.state.status import BatchStatus, sources_of

R = TypeVar("R", FileRecord, BatchRecord)

# Move a batch to ARGV[1] if its status is one of ARGV[3 .. 2+ARGV[2]]; then set the
# remaining ARGV as field/value pairs and move one count between statuses in KEYS[2].
# A move into an end state also adds the batch to KEYS[3] (P:ended, for its webhook).
# Returns the previous status, or "!" .. current status.
_TRANSITION_LUA = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return '!' end
local n = tonumber(ARGV[2])
for i = 3, 2 + n do
  if ARGV[i] == current then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
    redis.call('HINCRBY', KEYS[2], current, -1)
    redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
    for j = 3 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
    if KEYS[3] then redis.call('SADD', KEYS[3], redis.call('HGET', KEYS[1], 'id')) end
    return current
  end
end
return '!' .. current
"""


class InvalidCursor(ValueError):
    """``after`` names no record in this tenant's list."""


@dataclass(slots=True)
class Page(Generic[R]):
    items: list[R]
    has_more: bool


class JobStore:
    """The repository the API and the worker share; ``client`` must decode responses."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        # redis-py types replies as ``bytes | str`` whatever ``decode_responses`` says.
        self._redis: Any = client
        self._prefix = prefix.rstrip(":")
        self._transition = client.register_script(_TRANSITION_LUA)

    @property
    def client(self) -> Any:
        """The Redis client, for records kept beside the store's (service stats)."""
        return self._redis

    def ping(self) -> None:
        self._redis.ping()

    def key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    # -- files ---------------------------------------------------------------------------
    def put_file(self, record: FileRecord) -> None:
        seq = self._redis.incr(self.key("seq"))
        with self._redis.pipeline() as pipe:
            pipe.hset(self.key("file", record.id), mapping=record.to_hash())
            pipe.zadd(self.key("files", record.tenant), {record.id: seq})
            if record.expires_at is not None:
                pipe.zadd(self.key("file_expiry"), {record.id: record.expires_at})
            pipe.hincrby(self.key("stored_bytes"), record.tenant, record.bytes)
            pipe.execute()

    def get_file(self, tenant: TenantId, file_id: str) -> FileRecord | None:
        raw = self._redis.hgetall(self.key("file", file_id))
        if not raw or raw["tenant"] != tenant:
            return None
        return FileRecord.from_hash(raw)

    def delete_file(self, record: FileRecord) -> bool:
        """Forget the file's record; False if it was already gone (a concurrent delete)."""
        with self._redis.pipeline() as pipe:
            pipe.delete(self.key("file", record.id))
            pipe.zrem(self.key("files", record.tenant), record.id)
            pipe.zrem(self.key("file_expiry"), record.id)
            deleted, _, _ = pipe.execute()
        if deleted:
            self._redis.hincrby(self.key("stored_bytes"), record.tenant, -record.bytes)
        return bool(deleted)

    def expired_file_ids(self, now: int, limit: int) -> list[str]:
        """Up to ``limit`` files whose ``expires_at`` is past, oldest first."""
        ids: list[str] = self._redis.zrangebyscore(
            self.key("file_expiry"), "-inf", now, start=0, num=limit
        )
        return ids

    def load_file(self, file_id: str) -> FileRecord | None:
        """A file by id, whoever owns it (for the expiry sweep)."""
        raw = self._redis.hgetall(self.key("file", file_id))
        return FileRecord.from_hash(raw) if raw else None

    def stored_bytes(self, tenant: TenantId) -> int:
        """Bytes of every file the tenant holds (inputs and outputs)."""
        return int(self._redis.hget(self.key("stored_bytes"), tenant) or 0)

    def list_files(
        self,
        tenant: TenantId,
        *,
        after: str | None,
        limit: int,
        newest_first: bool,
        purpose: str | None = None,
    ) -> Page[FileRecord]:
        def accept(raw: dict[str, str]) -> FileRecord | None:
            if raw["tenant"] != tenant or purpose not in (None, raw["purpose"]):
                return None
            return FileRecord.from_hash(raw)

        return self._page(self.key("files", tenant), "file", after, limit, newest_first, accept)

    # -- batches -------------------------------------------------------------------------
    def put_batch(self, record: BatchRecord) -> None:
        seq = self._redis.incr(self.key("seq"))
        with self._redis.pipeline() as pipe:
            pipe.hset(self.key("batch", record.id), mapping=record.to_hash())
            pipe.zadd(self.key("batches", record.tenant), {record.id: seq})
            pipe.hincrby(self.key("stats", "batch_status"), record.status.value, 1)
            pipe.execute()

    def load_batch(self, batch_id: str) -> BatchRecord | None:
        """A batch by id, whoever owns it (for the intake and the worker)."""
        raw = self._redis.hgetall(self.key("batch", batch_id))
        return BatchRecord.from_hash(raw) if raw else None

    def get_batch(self, tenant: TenantId, batch_id: str) -> BatchRecord | None:
        record = self.load_batch(batch_id)
        return record if record and record.tenant == tenant else None

    def list_batches(self, tenant: TenantId, *, after: str | None, limit: int) -> Page[BatchRecord]:
        def accept(raw: dict[str, str]) -> BatchRecord | None:
            record = BatchRecord.from_hash(raw)
            return record if record.tenant == tenant else None

        return self._page(self.key("batches", tenant), "batch", after, limit, True, accept)

    def transition(
        self,
        batch_id: BatchId,
        target: BatchStatus,
        now: int,
        extra: dict[str, str] | None = None,
    ) -> BatchStatus | None:
        """Move a batch to ``target`` if the lifecycle allows it from its current status.

        Returns the status it left, or ``None`` when the move was not allowed (a concurrent
        cancel, say). The ``*_at`` stamp and ``extra`` fields are set in the same step.
        """
        sources = [s.value for s in sources_of(target)]
        values = dict(extra or {})
        if target.timestamp_field:
            values[target.timestamp_field] = str(now)
        argv: list[str] = [target.value, str(len(sources)), *sources]
        for name, value in values.items():
            argv += [name, value]
        keys = [self.key("batch", batch_id), self.key("stats", "batch_status")]
        if target.is_terminal:
            keys.append(self.key("ended"))
        previous = self._transition(keys=keys, args=argv)
        return None if previous.startswith("!") else BatchStatus(previous)

    def batch_status_counts(self) -> dict[str, int]:
        """How many batches are in each status (what ``put_batch`` and moves recorded)."""
        raw: dict[str, str] = self._redis.hgetall(self.key("stats", "batch_status"))
        return {status: int(count) for status, count in raw.items()}

    # -- validation queue ----------------------------------------------------------------
    def mark_validating(self, batch_id: BatchId) -> None:
        self._redis.sadd(self.key("validating"), batch_id)

    def done_validating(self, batch_id: BatchId) -> None:
        self._redis.srem(self.key("validating"), batch_id)

    def validating_ids(self) -> list[BatchId]:
        return [BatchId(i) for i in self._redis.smembers(self.key("validating"))]

    def intake_lock(self, batch_id: BatchId, ttl_s: int) -> AbstractContextManager[bool]:
        """One validator per batch even with several API processes: yields whether this
        caller holds the lock, released on exit only while it still owns it."""
        return owned_lock(self._redis, self.key("intake", batch_id), ttl_s)

    # -- pagination ----------------------------------------------------------------------
    def _page(
        self,
        index: str,
        kind: str,
        after: str | None,
        limit: int,
        newest_first: bool,
        accept: Callable[[dict[str, str]], R | None],
    ) -> Page[R]:
        """Up to ``limit`` records listed in ``index`` past ``after`` that ``accept`` keeps.

        The hashes of one slice of ids are read in one pipelined round trip: a page of 20
        files costs two or three round trips to Redis, not twenty.
        """
        items: list[R] = []
        for ids in self._walk(index, after, newest_first, slice_size=limit + 1):
            with self._redis.pipeline(transaction=False) as pipe:
                for record_id in ids:
                    pipe.hgetall(self.key(kind, record_id))
                raws = pipe.execute()
            for raw in raws:
                record = accept(raw) if raw else None
                if record is None:
                    continue
                if len(items) == limit:
                    return Page(items, has_more=True)
                items.append(record)
        return Page(items, has_more=False)

    def _walk(
        self, index: str, after: str | None, newest_first: bool, slice_size: int
    ) -> Iterator[list[str]]:
        """Slices of the ids in ``index`` strictly past ``after``, read as they are consumed."""
        if after is None:
            bound = "+inf" if newest_first else "-inf"
        else:
            score = self._redis.zscore(index, after)
            if score is None:
                raise InvalidCursor(after)
            bound = f"({int(score)}"
        while True:
            if newest_first:
                rows = self._redis.zrevrangebyscore(
                    index, bound, "-inf", start=0, num=slice_size, withscores=True
                )
            else:
                rows = self._redis.zrangebyscore(
                    index, bound, "+inf", start=0, num=slice_size, withscores=True
                )
            if not rows:
                return
            yield [member for member, _ in rows]
            bound = f"({int(rows[-1][1])}"
