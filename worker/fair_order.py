"""Tenants take turns inside one engine: start-time fair queuing tags for its waiting queue.

The engine serves waiting requests by ``(priority, arrival_time)``. Arriving in plain order,
a tenant whose shards reached the worker first keeps every later tenant's lines behind its
own waiting ones. Instead each request is tagged when the host admits it::

    start  = max(virtual clock, the tenant's last finish)
    finish = start + cost                       (cost: the sequences it runs, its ``n``)

and the tag is its ``arrival_time``. The virtual clock is the smallest start tag among the
requests in the engine (the oldest work still being served), so a tenant that has been
served a lot carries tags far ahead of it, while a newcomer starts at the clock and goes
before the busy tenant's waiting lines::

    tenant A (busy):  running 0 1 2 3 | waiting 4 5 6 7 8 9
    tenant B (new):   clock = 0  ───►   B's lines tagged 0 1 2 ...  → next slots go to B

Running requests are never displaced: tags only order the waiting queue (and which running
request a full KV cache preempts first, the one furthest ahead of its share). Priority
still comes first, so tags only decide among requests of one priority. The clock never
goes back; once the engine is empty every tenant starts even at the clock again.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class FairOrder:
    """Tags per tenant for the requests one engine holds; the engine thread's alone."""

    _clock: float = 0.0
    _finish: dict[str, float] = field(default_factory=dict)  # tenant -> last finish tag
    _open: dict[Hashable, tuple[float, int]] = field(default_factory=dict)  # id -> (start, n)
    _starts: list[tuple[float, int]] = field(default_factory=list)  # heap; stale ones dropped
    _live: set[int] = field(default_factory=set)  # admission numbers still open
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def clock(self) -> float:
        """The virtual time: the smallest start tag still open (it never goes back)."""
        while self._starts and self._starts[0][1] not in self._live:
            heapq.heappop(self._starts)
        if self._starts:
            self._clock = max(self._clock, self._starts[0][0])
        return self._clock

    @property
    def num_open(self) -> int:
        return len(self._open)

    def admit(self, request_id: Hashable, tenant: str, cost: float = 1.0) -> float:
        """Tag a request entering the engine; returns its start tag (its ``arrival_time``)."""
        if cost <= 0:
            raise ValueError(f"a request's cost must be positive, got {cost}")
        assert request_id not in self._open, "request ids are unique in the engine"
        start = max(self.clock, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + cost
        number = next(self._numbers)
        self._open[request_id] = (start, number)
        self._live.add(number)
        heapq.heappush(self._starts, (start, number))
        return start

    def done(self, request_id: Hashable) -> None:
        """The request left the engine (answered, stopped, aborted); unknown ids are ignored."""
        entry = self._open.pop(request_id, None)
        if entry is None:
            return
        self._live.discard(entry[1])
        if not self._open:
            # Empty engine: every tenant starts even, at the latest finish tag.
            self._clock = max([self._clock, *self._finish.values()])
            self._finish.clear()
            self._starts.clear()
        elif len(self._starts) > 2 * len(self._open) + 64:  # drop stale heap entries
            self._starts = [s for s in self._starts if s[1] in self._live]
            heapq.heapify(self._starts)
