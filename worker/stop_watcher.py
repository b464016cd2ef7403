"""The engine host's stop watcher: which batches being served must stop (cancelled, expired).

A thread of its own asks ``stop_checker`` every ``poll_s`` about the watched batches. The
check reads Redis, so while Redis is slow or restarting the engine thread keeps stepping;
it applies what the watcher found between two steps (:meth:`StopWatcher.fresh_stops`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from worker.host_records import StopChecker

log = logging.getLogger(__name__)


class StopWatcher:
    def __init__(self, stop_checker: StopChecker, poll_s: float, closing: threading.Event):
        self._checker = stop_checker
        self._poll_s = poll_s
        self._closing = closing
        self._lock = threading.Lock()  # guards _watched, _stopped and the versions
        self._watched: Counter[str] = Counter()
        self._stopped: dict[str, str] = {}
        self._version = 0  # bumped whenever _stopped gains a batch
        self._seen = 0  # the version fresh_stops last returned
        self._thread = threading.Thread(target=self._run, name="engine-host-stops", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def watch(self, batch_id: str) -> bool:
        """Check this batch from now on; says whether it was not watched before."""
        with self._lock:
            self._watched[batch_id] += 1
            return self._watched[batch_id] == 1

    def unwatch(self, batch_id: str) -> None:
        with self._lock:
            self._watched[batch_id] -= 1
            if self._watched[batch_id] <= 0:
                del self._watched[batch_id]
                self._stopped.pop(batch_id, None)

    def stop_reason(self, batch_id: str) -> str | None:
        """The batch's stop reason as of the last check (at most ``poll_s`` old)."""
        with self._lock:
            return self._stopped.get(batch_id)

    def fresh_stops(self) -> dict[str, str] | None:
        """Every stopped batch, when the watcher found a new stop since the last call."""
        with self._lock:
            if self._version == self._seen:
                return None
            self._seen = self._version
            return dict(self._stopped)

    def _run(self) -> None:
        while not self._closing.wait(self._poll_s):
            with self._lock:
                batches = set(self._watched)
            if not batches:
                continue
            try:
                stops = self._checker(batches)
            except Exception:
                log.exception("checking batches for a stop failed; retrying at the next poll")
                continue
            with self._lock:
                fresh = {b: r for b, r in stops.items() if self._stopped.get(b) != r}
                if fresh:
                    self._stopped.update(fresh)
                    self._version += 1
