"""Shard results: written once per shard, counted once per request, whatever redelivers.

A shard task may run more than once (a worker killed mid-shard, a visibility timeout), so
nothing it does may add up twice:

    storage  results/{batch}/{shard:05d}.jsonl          successes, in input order
             results/{batch}/{shard:05d}.errors.jsonl   failures, in input order
             results/{batch}/{shard:05d}.partial.jsonl  lines a running shard finished
                                                         (jobs/state/checkpoints.py)
    redis    P:shards_done:{batch}        set   shard indexes whose two objects are final
             P:shard_deliveries:{batch}   hash  shard index -> times a task started it
             P:shard_failed_runs:{batch}  hash  shard index -> runs that ended in an error
                                                the worker caught (storage down, shutdown)
             P:shard_counts:{batch}       hash  "{shard}:{counter}" -> what that run added
             P:shard_lease:{batch}:{shard}      "a worker runs it now", expires unless renewed
             P:shard_seen:{batch}         hash  shard index -> when a run of it last started
                                                (or the watchdog last sent it again)
             P:shards_order:{batch}       list  shard indexes in the order they were done
             P:shard_lines:{batch}        hash  shard index -> "{outputs} {errors}" lines
             P:shard_running:{batch}      hash  shard index -> lease token of the run that
                                                started it and has not ended (cleared by that
                                                run, however it ends, unless it died)
             P:shard_resends:{batch}      hash  shard index -> times the watchdog resent it
             P:stop:{batch}               str   why the batch stops early ("expired")
             P:finalize:{batch}           lock  one finalizer at a time

A rerun of a half-done shard first takes back what its previous run added to the batch's
live counters, counts again the lines that run committed, computes the rest and overwrites
both objects; a shard already in the done set is not run again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from jobs.state.locks import owned_lock
from jobs.state.records import COUNTER_FIELDS
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.storage import Storage, WriterScope
from jobs.wire.lines import OutputLine

BOOKKEEPING_TTL_S = 7 * 24 * 3600

# Compare-and-set on the lease key, atomic in Redis: KEYS[1] lease, ARGV token [, ttl].
_HOLD_LEASE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# Mark a shard done once: KEYS done set, order list, line counts, batch hash;
# ARGV index, outputs, errors, ttl. The first mark appends the shard to the order that
# jobs/pipeline/live_results.py pages through and counts its lines as downloadable.
_MARK_DONE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'result_lines', tonumber(ARGV[2]) + tonumber(ARGV[3]))
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return redis.call('SCARD', KEYS[1])
"""
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Compare-and-delete on one hash field: KEYS[1] hash, ARGV field, value it must hold.
_CLEAR_FIELD = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class StopReason(StrEnum):
    """Why a batch ends before all its requests ran, and the error code its lines get."""

    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def code(self) -> str:
        return f"batch_{self.value}"

    @property
    def message(self) -> str:
        if self is StopReason.CANCELLED:
            return "The batch was cancelled before this request finished."
        return "The batch expired before this request finished."

    @property
    def status(self) -> BatchStatus:
        """The status a batch stopped for this reason ends in."""
        return BatchStatus(self.value)

    @classmethod
    def of_status(cls, status: BatchStatus) -> StopReason | None:
        """The reason a batch in ``status`` stops its requests for (None: it does not)."""
        return cls(status.value) if status.value in cls._value2member_map_ else None


def results_prefix(batch_id: str) -> str:
    return f"results/{batch_id}/"


def result_key(batch_id: str, index: int, errors: bool) -> str:
    suffix = ".errors.jsonl" if errors else ".jsonl"
    return f"{results_prefix(batch_id)}{index:05d}{suffix}"


@dataclass(frozen=True, slots=True)
class Deliveries:
    """How often a shard's task has started, and how many of those runs ended in an error
    their worker caught; the rest died with their worker or are running now."""

    starts: int
    failed_runs: int

    @property
    def unfinished(self) -> int:
        return self.starts - self.failed_runs


@dataclass(slots=True)
class ShardOutcome:
    """One shard's lines, in input order, split by where they go."""

    outputs: list[OutputLine] = field(default_factory=list)
    errors: list[OutputLine] = field(default_factory=list)


def write_shard_results(storage: Storage, batch_id: str, index: int, outcome: ShardOutcome) -> None:
    """Write (or overwrite) the shard's two result objects; each appears whole or not at all."""
    for errors, lines in ((False, outcome.outputs), (True, outcome.errors)):
        with WriterScope(storage.writer(result_key(batch_id, index, errors))) as out:
            for line in lines:
                out.write(line.model_dump_json().encode() + b"\n")


class ShardLedger:
    """The Redis half of the layout above; every call is one round trip or one pipeline."""

    def __init__(self, client: redis.Redis, store: JobStore) -> None:
        self._store = store
        # redis-py types replies as ``bytes | str`` whatever ``decode_responses`` says.
        self._redis: Any = client

    def _key(self, name: str, batch_id: str, *rest: str) -> str:
        return self._store.key(name, batch_id, *rest)

    # -- deliveries and completion ------------------------------------------------------
    def record_delivery(self, batch_id: str, index: int) -> Deliveries:
        """Count one more start of this shard; returns the starts so far and how many of the
        earlier ones ended in an error their worker caught."""
        key = self._key("shard_deliveries", batch_id)
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, str(index), 1)
            pipe.expire(key, BOOKKEEPING_TTL_S)
            pipe.hget(self._key("shard_failed_runs", batch_id), str(index))
            count, _, failed = pipe.execute()
        return Deliveries(int(count), int(failed or 0))

    def record_failed_run(self, batch_id: str, index: int) -> None:
        """A run of this shard ended in an error its worker caught and will retry: it did not
        kill the worker, so it does not bring the shard closer to being given up."""
        key = self._key("shard_failed_runs", batch_id)
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, str(index), 1)
            pipe.expire(key, BOOKKEEPING_TTL_S)
            pipe.execute()

    def is_done(self, batch_id: str, index: int) -> bool:
        return bool(self._redis.sismember(self._key("shards_done", batch_id), str(index)))

    def mark_done(
        self, batch_id: str, index: int, num_outputs: int = 0, num_errors: int = 0
    ) -> int:
        """Record the shard's objects as final; returns how many shards are done.

        ``num_outputs`` / ``num_errors`` are the lines of its two objects: from now on they
        are downloadable while the batch runs, in the order shards were done.
        """
        keys = [
            self._key("shards_done", batch_id),
            self._key("shards_order", batch_id),
            self._key("shard_lines", batch_id),
            self._store.key("batch", batch_id),
        ]
        args = [index, num_outputs, num_errors, BOOKKEEPING_TTL_S]
        return int(self._redis.eval(_MARK_DONE, len(keys), *keys, *args))

    def done_shards(self, batch_id: str) -> set[int]:
        return {int(i) for i in self._redis.smembers(self._key("shards_done", batch_id))}

    # -- live counters ---------------------------------------------------------------------
    def add_counts(self, batch_id: str, index: int, **deltas: int) -> None:
        """Bump the batch's counters and remember what this shard's run added."""
        unknown = set(deltas) - set(COUNTER_FIELDS)
        assert not unknown, f"not a batch counter: {unknown}"
        batch_key = self._store.key("batch", batch_id)
        shard_key = self._key("shard_counts", batch_id)
        with self._redis.pipeline() as pipe:
            for name, delta in deltas.items():
                pipe.hincrby(batch_key, name, delta)
                pipe.hincrby(shard_key, f"{index}:{name}", delta)
            pipe.expire(shard_key, BOOKKEEPING_TTL_S)
            pipe.execute()

    def take_back_counts(self, batch_id: str, index: int) -> None:
        """Undo what an earlier, unfinished run of this shard added to the batch's counters."""
        shard_key = self._key("shard_counts", batch_id)
        names = [f"{index}:{name}" for name in COUNTER_FIELDS]
        previous = self._redis.hmget(shard_key, names)
        batch_key = self._store.key("batch", batch_id)
        with self._redis.pipeline() as pipe:
            for name, value in zip(COUNTER_FIELDS, previous, strict=True):
                if value and int(value):
                    pipe.hincrby(batch_key, name, -int(value))
            pipe.hdel(shard_key, *names)
            pipe.execute()

    # -- leases: which shards a live worker is running ---------------------------------------
    def hold_lease(self, batch_id: str, index: int, ttl_s: int, token: str = "held") -> bool:
        """Take or renew the shard's lease for ``token``; False while another run holds it.

        One run at a time per shard: two deliveries of one shard (a duplicate message, a
        redelivery racing a slow run) must never run side by side and count twice.
        """
        key = self._key("shard_lease", batch_id, str(index))
        return bool(self._redis.eval(_HOLD_LEASE, 1, key, token, ttl_s))

    def drop_lease(self, batch_id: str, index: int, token: str = "held") -> None:
        """Give the lease back, unless it has expired and another run holds it now."""
        self._redis.eval(_DROP_LEASE, 1, self._key("shard_lease", batch_id, str(index)), token)

    def leased(self, batch_id: str, indices: list[int]) -> set[int]:
        """Which of ``indices`` a live run holds now."""
        with self._redis.pipeline() as pipe:
            for index in indices:
                pipe.exists(self._key("shard_lease", batch_id, str(index)))
            held = pipe.execute()
        return {index for index, exists in zip(indices, held, strict=True) if exists}

    def any_lease(self, batch_id: str, num_shards: int) -> bool:
        keys = [self._key("shard_lease", batch_id, str(i)) for i in range(num_shards)]
        return bool(keys) and int(self._redis.exists(*keys)) > 0

    # -- runs started and not ended: a lapsed lease among them is a dead run ---------------
    def mark_running(self, batch_id: str, index: int, token: str) -> None:
        key = self._key("shard_running", batch_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(key, str(index), token)
            pipe.expire(key, BOOKKEEPING_TTL_S)
            pipe.execute()

    def clear_running(self, batch_id: str, index: int, token: str) -> bool:
        """Forget the run ``token`` of this shard, unless a later run has replaced it."""
        key = self._key("shard_running", batch_id)
        return bool(self._redis.eval(_CLEAR_FIELD, 1, key, str(index), token))

    def running(self, batch_id: str) -> dict[int, str]:
        """Shard index -> token of each run that started and has not ended (or died)."""
        raw = self._redis.hgetall(self._key("shard_running", batch_id))
        return {int(index): token for index, token in raw.items()}

    def count_resend(self, batch_id: str, index: int) -> None:
        key = self._key("shard_resends", batch_id)
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, str(index), 1)
            pipe.expire(key, BOOKKEEPING_TTL_S)
            pipe.execute()

    def resends(self, batch_id: str) -> dict[int, int]:
        """How many times the watchdog sent each shard again (kept until the TTL, to audit)."""
        raw = self._redis.hgetall(self._key("shard_resends", batch_id))
        return {int(index): int(count) for index, count in raw.items()}

    # -- signs of life: when each shard last had a message known to be live ------------------
    def mark_seen(self, batch_id: str, indices: list[int], now: float) -> None:
        if not indices:
            return
        key = self._key("shard_seen", batch_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(key, mapping={str(index): repr(now) for index in indices})
            pipe.expire(key, BOOKKEEPING_TTL_S)
            pipe.execute()

    def last_seen(self, batch_id: str) -> dict[int, float]:
        raw = self._redis.hgetall(self._key("shard_seen", batch_id))
        return {int(index): float(when) for index, when in raw.items()}

    # -- stopping and finalizing -----------------------------------------------------------
    def request_stop(self, batch_id: str, reason: StopReason) -> None:
        self._redis.set(self._key("stop", batch_id), reason.value, ex=BOOKKEEPING_TTL_S, nx=True)

    def stop_flag(self, batch_id: str) -> StopReason | None:
        raw = self._redis.get(self._key("stop", batch_id))
        return StopReason(raw) if raw else None

    def finalizer_lock(self, batch_id: str, ttl_s: int) -> AbstractContextManager[bool]:
        """One finalizer per batch: yields whether this caller holds the lock
        (jobs/state/locks.py)."""
        return owned_lock(self._redis, self._key("finalize", batch_id), ttl_s)

    def finalizer_held(self, batch_id: str) -> bool:
        return bool(self._redis.exists(self._key("finalize", batch_id)))

    def forget(self, batch_id: str, num_shards: int) -> None:
        """Drop the bookkeeping of a finished batch (the done set stays to stop late reruns)."""
        keys = [
            self._key("shard_deliveries", batch_id),
            self._key("shard_failed_runs", batch_id),
            self._key("shard_counts", batch_id),
            self._key("shard_seen", batch_id),
            self._key("shard_running", batch_id),
            *(self._key("shard_lease", batch_id, str(i)) for i in range(num_shards)),
        ]
        self._redis.delete(*keys)

    def batch_ids(self) -> list[str]:
        """Every batch id in the store (a SCAN over batch records, for the periodic sweep)."""
        prefix = self._store.key("batch", "")
        return [key[len(prefix) :] for key in self._redis.scan_iter(match=f"{prefix}*", count=500)]
