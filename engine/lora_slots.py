"""Which adapter each device slot holds, who uses it, and which to evict: pure bookkeeping.

The scheduler asks for a slot when it admits a request of an adapter and gives it back when
the request stops running (finished or preempted). A slot in use is never evicted; an idle
one keeps its adapter, so the next request of that adapter needs no copy, until a different
adapter needs the room: the least recently used idle slot goes first::

    slots:  [ A (2 users) | B (idle, used at t=5) | C (idle, used at t=9) ]
    acquire(D) -> evicts B, queues "load D into slot 1"; acquire(E) then evicts C

When every slot is in use by another adapter, ``acquire`` returns None and the request waits.
The loads queue here; the engine copies the weights before the step that needs them runs.
"""

from __future__ import annotations

from collections import OrderedDict


class LoRASlotTable:
    def __init__(self, num_slots: int) -> None:
        assert num_slots >= 1
        self.num_slots = num_slots
        self.adapter_of: list[int | None] = [None] * num_slots  # slot -> adapter int_id
        self.users = [0] * num_slots
        self._slot_of: dict[int, int] = {}  # adapter int_id -> slot
        self._idle: OrderedDict[int, None] = OrderedDict((s, None) for s in range(num_slots))
        self._pending: list[tuple[int, int]] = []  # (slot, int_id) to load, in order
        self.num_loads = 0
        self.num_evictions = 0

    def can_acquire(self, int_id: int) -> bool:
        """Whether ``acquire(int_id)`` would succeed now (it changes nothing)."""
        return int_id in self._slot_of or bool(self._idle)

    def acquire(self, int_id: int) -> int | None:
        """A slot holding (or about to hold) adapter ``int_id`` for one more user, or None
        when all slots are in use by other adapters."""
        slot = self._slot_of.get(int_id)
        if slot is None:
            slot = self._take_idle_slot()
            if slot is None:
                return None
            self._slot_of[int_id] = slot
            self.adapter_of[slot] = int_id
            self._pending.append((slot, int_id))
            self.num_loads += 1
        self._idle.pop(slot, None)
        self.users[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        assert self.users[slot] > 0, f"slot {slot} released more often than acquired"
        self.users[slot] -= 1
        if self.users[slot] == 0:
            self._idle[slot] = None  # most recently used: evicted last

    def take_pending(self) -> list[tuple[int, int]]:
        """The ``(slot, int_id)`` loads queued since the last call, oldest first."""
        pending, self._pending = self._pending, []
        return pending

    def _take_idle_slot(self) -> int | None:
        """An empty idle slot first, else the least recently used idle one (evicted)."""
        empty = next((s for s in self._idle if self.adapter_of[s] is None), None)
        slot = empty if empty is not None else next(iter(self._idle), None)
        if slot is None:
            return None
        previous = self.adapter_of[slot]
        if previous is not None:
            del self._slot_of[previous]
            self.adapter_of[slot] = None
            self.num_evictions += 1
        del self._idle[slot]
        return slot
