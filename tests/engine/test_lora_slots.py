"""The adapter slot table: reuse, LRU eviction of idle slots only, waiting when all are busy."""

from __future__ import annotations

from engine.lora_slots import LoRASlotTable


def test_same_adapter_shares_its_slot_and_loads_once() -> None:
    table = LoRASlotTable(2)
    assert table.acquire(7) == table.acquire(7) == 0
    assert table.take_pending() == [(0, 7)] and table.users == [2, 0]
    table.release(0)
    table.release(0)
    assert table.acquire(7) == 0 and table.take_pending() == [], "an idle slot keeps its adapter"


def test_busy_slots_are_never_evicted_and_idle_ones_go_lru() -> None:
    table = LoRASlotTable(2)
    a, b = table.acquire(1), table.acquire(2)
    assert a == 0 and b == 1
    assert table.acquire(3) is None, "both slots busy: the request waits"
    table.release(b)
    table.release(a)  # slot 0 is now the most recently used
    assert table.acquire(3) == b, "the least recently used idle slot is evicted"
    assert table.acquire(1) == a, "adapter 1 still sat in its idle slot"
    assert table.acquire(2) is None
    assert table.take_pending() == [(0, 1), (1, 2), (1, 3)]
    assert table.num_evictions == 1 and table.adapter_of == [1, 3]
