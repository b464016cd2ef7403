"""Sending a shard's message again when it has vanished from the broker.

Celery's Redis transport takes a message off its queue (``BRPOP``) and records it as
unacknowledged in a second round trip. If Redis stops between the two, the message is
nowhere in Redis: only the worker's memory held it, and that copy dies with the connection.
Seen in our Redis-restart test: the queue's ``RPOP`` is in the AOF, the unacked ``HSET`` is
not, and the shard never ran again. Nothing else would ever send it, so the batch would stay
``in_progress`` until it expired.

The watchdog runs with the periodic sweep. A shard of an ``in_progress`` batch that is not
done, is not running (no lease) and has shown no sign of life (a run starting, or an
earlier resend) for ``silence_s`` gets its message sent again. ``silence_s`` is set well
above the visibility timeout, after which the broker itself brings back the messages of
dead workers. A shard that was only waiting in a long queue may therefore get a second
message. That is harmless: runs of one shard take turns under its lease, and a run of a
shard already done does nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from jobs.pipeline.admission import priority_of
from jobs.state.shard_ledger import ShardLedger
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore

log = logging.getLogger(__name__)


class ShardSender(Protocol):
    def dispatch(self, batch_id: str, shard_index: int, priority: int) -> str: ...


@dataclass(slots=True)
class ShardWatchdog:
    store: JobStore
    ledger: ShardLedger
    sender: ShardSender
    silence_s: float
    clock: Callable[[], float] = time.time

    def sweep(self) -> list[tuple[str, int]]:
        """Resend every silent shard; returns the ``(batch_id, shard)`` pairs resent."""
        resent = []
        for batch_id in self.ledger.batch_ids():
            resent += [(batch_id, index) for index in self.check(batch_id)]
        return resent

    def check(self, batch_id: str) -> list[int]:
        """Resend the silent shards of one batch; returns their indexes."""
        batch = self.store.load_batch(batch_id)
        if batch is None or batch.status is not BatchStatus.IN_PROGRESS:
            return []  # a stopping batch needs no more runs: the finalizer ends it
        if self.ledger.stop_flag(batch_id) is not None:
            return []
        done = self.ledger.done_shards(batch_id)
        undone = [index for index in range(batch.num_shards) if index not in done]
        if not undone:
            return []
        now = self.clock()
        started = float(batch.timestamps.get("in_progress_at", now))  # when intake sent them
        seen = self.ledger.last_seen(batch_id)
        leased = self.ledger.leased(batch_id, undone)
        quiet = {index: now - max(started, seen.get(index, 0.0)) for index in undone}
        silent = [i for i in undone if i not in leased and quiet[i] > self.silence_s]
        priority = priority_of(batch.metadata)
        for index in silent:
            log.warning(
                "shard %s/%d silent for %.0f s: sending it again", batch_id, index, quiet[index]
            )
            self.sender.dispatch(batch_id, index, priority)
        self.ledger.mark_seen(batch_id, silent, now)
        return silent
