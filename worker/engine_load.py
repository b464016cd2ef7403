"""How full the engine was kept: occupancy over time, and time lost waiting for work.

The engine thread reports each step (how long, how many requests it held) and each idle
spell (no request in flight); a watcher thread, only while the engine is idle, asks the
broker how many shards wait in the queue. Time idle while shards waited is the waste the
intake (worker/intake.py) exists to avoid: a full engine would have run them.

    engine thread:  ─step─step─step─┤ idle ............................├─step─
    queue watcher:                   ·  depth 0  ·  depth 3  ·  depth 3 ·
    counted as idle_with_queued_work_s:           ◄─────────────────────►
                    (from the probe before the first that saw shards waiting, so the
                     measure errs towards more waste, never less)

``request_seconds`` integrates the requests in each step over its wall time: a rate of it
divided by ``capacity`` (``max_num_seqs``) is the occupancy over any window, which is how
Prometheus reads it; ``occupancy`` is the same over the recent steps and idle spells.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

QueueDepth = Callable[[], int]


@dataclass(slots=True)
class _Totals:
    busy_s: float = 0.0  # inside engine steps
    idle_s: float = 0.0  # nothing in flight
    idle_with_queued_work_s: float = 0.0  # nothing in flight while the queue held shards
    request_seconds: float = 0.0  # sum over steps of requests in the step x step time


class EngineLoad:
    """Thread-safe meter; ``step``, ``idle_began`` and ``idle_ended`` come from the engine
    thread, ``queue_seen`` from the queue watcher, ``snapshot`` from anywhere."""

    def __init__(self, capacity: int, *, window: int = 256) -> None:
        assert capacity >= 1
        self.capacity = capacity
        self._lock = threading.Lock()
        self._totals = _Totals()
        self._num_running = 0
        self._idle_since: float | None = None
        self._last_probe: tuple[float, int] | None = None  # (when, depth) in this idle spell
        # (end time, cumulative request_seconds) for the recent occupancy
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)
        self.idle = threading.Event()  # set while idle: the watcher polls only then

    def step(self, started: float, ended: float, num_requests: int) -> None:
        with self._lock:
            t = self._totals
            t.busy_s += ended - started
            t.request_seconds += num_requests * (ended - started)
            self._num_running = num_requests
            self._recent.append((ended, t.request_seconds))

    def idle_began(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._idle_since is None:
                self._idle_since = now
                self._last_probe = None
                self._num_running = 0
                self._recent.append((now, self._totals.request_seconds))
        self.idle.set()

    def idle_ended(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.idle.clear()
        with self._lock:
            if self._idle_since is None:
                return
            t = self._totals
            t.idle_s += now - self._idle_since
            if self._last_probe is not None and self._last_probe[1] > 0:
                t.idle_with_queued_work_s += now - self._last_probe[0]
            self._idle_since = None
            self._last_probe = None
            self._recent.append((now, t.request_seconds))

    def queue_seen(self, depth: int, now: float | None = None) -> None:
        """The queue held ``depth`` shards at ``now``; counts waste if the engine is idle."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._idle_since is None:
                return
            if depth > 0:
                since = self._last_probe[0] if self._last_probe else self._idle_since
                self._totals.idle_with_queued_work_s += now - max(since, self._idle_since)
            self._last_probe = (now, depth)

    def snapshot(self) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            t = self._totals
            idle_s = t.idle_s + (now - self._idle_since if self._idle_since is not None else 0)
            occupancy = 0.0
            if len(self._recent) >= 2:
                (t0, r0), (t1, r1) = self._recent[0], self._recent[-1]
                end = now if self._idle_since is not None else t1
                if end > t0:
                    occupancy = (r1 - r0) / (self.capacity * (end - t0))
            return {
                "engine_capacity": self.capacity,
                "engine_occupancy": occupancy,
                "engine_occupancy_now": self._num_running / self.capacity,
                "engine_busy_s": t.busy_s,
                "engine_idle_s": idle_s,
                "engine_idle_with_queued_work_s": t.idle_with_queued_work_s,
                "engine_request_seconds": t.request_seconds,
            }


def watch_queue(
    load: EngineLoad, depth: QueueDepth, closing: threading.Event, poll_s: float = 0.1
) -> None:
    """The queue watcher's loop: while the engine is idle, read the queue's depth."""
    while not closing.is_set():
        if not load.idle.wait(0.5):
            continue
        try:
            load.queue_seen(depth())
        except Exception as exc:  # the broker is away: the shard tasks report that loudly
            log.warning("reading the shard queue's depth failed: %s", exc)
            closing.wait(5.0)
        closing.wait(poll_s)
