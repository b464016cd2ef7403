"""Sending a shard's message again when its run died or the broker lost it.

Two ways a shard of an ``in_progress`` batch can stall, and what the periodic sweep does:

- **Its run died** (SIGKILL, OOM, a lost node). With the ``threads`` pool Celery never
  notices: the message comes back only after the broker's visibility timeout (an hour by
  default). But every run marks its shard running (``P:shard_running``) under its lease,
  renewed every third of ``shard_lease_s``, and clears the mark however it ends. A mark
  whose lease has lapsed is a dead run: the shard is sent again at once, so a dead worker's
  shard runs again about ``shard_lease_s`` plus one sweep interval after the kill. A shard
  that is only queued (no worker's intake had room to start it) has no mark and is left
  where it is.
- **Its message vanished.** Celery's Redis transport takes a message off its queue
  (``BRPOP``) and records it as unacknowledged in a second round trip. If Redis stops
  between the two, the message is nowhere in Redis (seen in our Redis-restart test: the
  queue's ``RPOP`` is in the AOF, the unacked ``HSET`` is not) and nothing would ever send
  it. A shard that is not done, not running (no lease) and has shown no sign of life (a run
  starting, or an earlier resend) for ``silence_s`` gets its message sent again.
  ``silence_s`` is set well above the visibility timeout, so a shard merely waiting in a
  long queue is rarely resent; when it is, that is harmless.

A second message for a shard is always harmless: runs of one shard take turns under its
lease, and a run of a shard already done does nothing.
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
    def dispatch(self, batch_id: str, shard_index: int, priority: int, model: str) -> str: ...


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
        running = self.ledger.running(batch_id)  # read before the leases: see ShardRunner._lease
        leased = self.ledger.leased(batch_id, undone)
        quiet = {index: now - max(started, seen.get(index, 0.0)) for index in undone}
        dead = [i for i in undone if i in running and i not in leased]
        silent = [i for i in undone if i not in leased and quiet[i] > self.silence_s]
        resend = sorted({*dead, *silent})
        priority = priority_of(batch.metadata)
        assert batch.model, "an in_progress batch has its model (set by intake)"
        for index in resend:
            if index in running:
                log.warning("the run of shard %s/%d died: sending it again", batch_id, index)
            else:
                log.warning(
                    "shard %s/%d silent for %.0f s: sending it again", batch_id, index, quiet[index]
                )
            self.sender.dispatch(batch_id, index, priority, batch.model)
            if index in running:  # sent: the dead run is accounted for (unless one replaced it)
                self.ledger.clear_running(batch_id, index, running[index])
            self.ledger.count_resend(batch_id, index)
        self.ledger.mark_seen(batch_id, resend, now)
        return resend
