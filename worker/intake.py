"""When a worker takes its next shard: as its engine's capacity frees, not per thread.

A worker's outstanding requests are the lines of the shards it has taken and not yet
answered. It takes another shard while they stay below a watermark derived from the
engine: ``capacity`` (``max_num_seqs``, the requests one step can hold) plus one shard's
worth in reserve, so that the engine's waiting queue can refill the slots of finishing
requests while the next shard is fetched and read. The reserve is the size of the last
shard read, capped at ``capacity`` (a 512-line shard on a 256-sequence engine must not make
the worker reach for a second one that another worker could start at once):

    outstanding ─────────────────────────────────────────────►
    0                   capacity          capacity + reserve
    │   engine not full   │  waiting queue  │   intake closed: shards stay in Redis
    └──── intake open: take the most urgent shard in the queue ┘

A shard taken but not read yet counts as the size of the last shard read (the first one,
before any is read, as a whole capacity), so a worker refilling after a wave of finishes
takes several small shards at once instead of one per round trip.

The gate is a latch (``is_open``) read by the broker consumer before every fetch. Only the
consumer's thread closes it, at the moment it receives a shard: then no fetch is in flight,
so a closing gate never strands a message popped from the queue inside this process. Every
other event (a shard read, lines answered, a shard ended) can only open it. So a worker
overshoots the watermark by at most one shard, the one fetched through a gate that was
still open when a surprise (a shard larger than estimated) arrived.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(slots=True)
class IntakeTicket:
    """One shard task's handle on the intake: how many lines it has, how many are done."""

    intake: ShardIntake | None
    task_id: str

    def sized(self, num_lines: int) -> None:
        if self.intake is not None:
            self.intake.sized(self.task_id, num_lines)

    def answered(self, num_lines: int = 1) -> None:
        if self.intake is not None:
            self.intake.answered(self.task_id, num_lines)


NO_TICKET = IntakeTicket(None, "")


class ShardIntake:
    """Counts a worker's outstanding shard lines and decides whether to take another shard.

    ``max_shards`` bounds the shards held at once (the threads that run them).
    ``on_open`` is called, outside the lock, when the gate opens (it wakes the consumer).
    """

    def __init__(
        self, capacity: int, max_shards: int, on_open: Callable[[], None] | None = None
    ) -> None:
        assert capacity >= 1 and max_shards >= 1
        self.capacity = capacity
        self.max_shards = max_shards
        self.on_open = on_open or (lambda: None)
        self._lock = threading.Lock()
        self._unread: set[str] = set()  # task ids received, lines not counted yet
        self._lines: dict[str, int] = {}  # task id -> lines not answered yet
        self._outstanding = 0
        self._last_size = 0
        self._open = True
        self._num_taken = 0

    @property
    def watermark(self) -> int:
        return self.capacity + min(self.capacity, self._last_size)

    def is_open(self) -> bool:
        """Whether the consumer may fetch a shard now (any thread; a plain read)."""
        return self._open

    def received(self, task_id: str | None, *, is_shard: bool) -> None:
        """The consumer got a message (its thread, no fetch in flight): close if full."""
        with self._lock:
            if is_shard and task_id is not None:
                self._unread.add(task_id)
                self._num_taken += 1
            self._open = self._wants()

    def sized(self, task_id: str, num_lines: int) -> None:
        with self._lock:
            self._unread.discard(task_id)
            self._outstanding += num_lines - self._lines.get(task_id, 0)
            self._lines[task_id] = num_lines
            self._last_size = num_lines
        self._maybe_open()

    def answered(self, task_id: str, num_lines: int = 1) -> None:
        with self._lock:
            left = self._lines.get(task_id)
            if left is None:
                return
            done = min(left, num_lines)
            self._lines[task_id] = left - done
            self._outstanding -= done
        self._maybe_open()

    def finished(self, task_id: str | None) -> None:
        """The shard's task ended, whatever its outcome: its lines no longer count."""
        if task_id is None:
            return
        with self._lock:
            self._unread.discard(task_id)
            self._outstanding -= self._lines.pop(task_id, 0)
        self._maybe_open()

    @contextmanager
    def ticket(self, task_id: str | None) -> Iterator[IntakeTicket]:
        """A running shard task's ticket, released when the task ends."""
        try:
            yield IntakeTicket(self, task_id) if task_id is not None else NO_TICKET
        finally:
            self.finished(task_id)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "intake_open": int(self._open),
                "intake_watermark": self.watermark,
                "intake_outstanding": self._outstanding,
                "intake_shards_held": len(self._unread) + len(self._lines),
                "intake_shards_taken": self._num_taken,
            }

    def _wants(self) -> bool:
        estimate = self._last_size or self.capacity
        held = len(self._unread) + len(self._lines)
        expected = self._outstanding + len(self._unread) * estimate
        return held < self.max_shards and expected < self.watermark

    def _maybe_open(self) -> None:
        with self._lock:
            opened = not self._open and self._wants()
            if opened:
                self._open = True
        if opened:
            self.on_open()
