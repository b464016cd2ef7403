"""Failure isolation: a step that raises must not fail every request in flight.

The host aborts them all and reruns them in isolation, halving the group at each failure::

    step fails with k requests ─► [first half] [second half]   (rerun one group at a time)
        a group fails alone     ─► split it in two again
        one request fails alone ─► the culprit: it gets the error

Every other request is rerun from its prompt and answered as if nothing happened (greedy
and seeded sampling give the same tokens). New submissions wait until the suspects are
cleared; finding one culprit among k requests takes about log2(k) failed steps.
"""

from __future__ import annotations

from collections import deque

from worker.host_records import Submission


class StepIsolation:
    def __init__(self) -> None:
        self._groups: deque[list[Submission]] = deque()  # rerun one at a time, front first

    @property
    def active(self) -> bool:
        """Whether suspects wait for a rerun (new submissions wait meanwhile)."""
        return bool(self._groups)

    def failed(self, in_flight: list[Submission]) -> Submission | None:
        """A step failed with ``in_flight`` (already aborted): the culprit when it ran alone,
        else None, and the requests wait here to be rerun in two halves."""
        if len(in_flight) == 1:
            return in_flight[0]
        half = len(in_flight) // 2
        self._groups.extendleft([in_flight[half:], in_flight[:half]])
        return None

    def next_group(self) -> list[Submission]:
        """The next group to rerun (call when the engine is idle and :attr:`active`)."""
        return self._groups.popleft()

    def drain(self) -> list[Submission]:
        """Every suspect still waiting (the host is closing)."""
        waiting = [s for group in self._groups for s in group]
        self._groups.clear()
        return waiting
