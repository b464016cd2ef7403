"""The engine host's inbox: submissions from every shard task, bounded for back-pressure.

``put`` blocks while ``max_pending`` requests are pending (queued or in the engine), so a
shard that submits faster than the engine answers waits instead of piling up memory;
``release`` frees a slot when a request is answered.
"""

from __future__ import annotations

import queue
import threading

from worker.host_records import Submission, Withdrawal


class SubmissionQueue:
    def __init__(self, max_pending: int, closing: threading.Event) -> None:
        assert max_pending >= 1
        self._max_pending = max_pending
        self._closing = closing
        self._items: queue.SimpleQueue[Submission | Withdrawal] = queue.SimpleQueue()
        self._room = threading.Condition()
        self._num_pending = 0

    @property
    def num_pending(self) -> int:
        return self._num_pending

    def put(self, submission: Submission) -> bool:
        """Queue a request; blocks while ``max_pending`` requests are pending. False, and
        nothing queued, once the host is closing."""
        with self._room:
            self._room.wait_for(
                lambda: self._num_pending < self._max_pending or self._closing.is_set()
            )
            if self._closing.is_set():
                return False
            self._num_pending += 1
        self._items.put(submission)
        return True

    def wake(self) -> None:
        """Wake every caller waiting for room (the host is closing)."""
        with self._room:
            self._room.notify_all()

    def put_withdrawal(self, withdrawal: Withdrawal) -> None:
        """Queue a withdrawal behind what is queued (it takes no slot)."""
        self._items.put(withdrawal)

    def take(self, wait_s: float | None) -> list[Submission | Withdrawal]:
        """Everything queued now; with ``wait_s``, first wait up to that long for one."""
        items: list[Submission | Withdrawal] = []
        if wait_s is not None:
            try:
                items.append(self._items.get(timeout=wait_s))
            except queue.Empty:
                return items
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items

    def release(self) -> None:
        """One pending request was answered: its slot is free."""
        with self._room:
            self._num_pending -= 1
            self._room.notify_all()
