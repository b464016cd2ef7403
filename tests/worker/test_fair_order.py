"""Start-time fair queuing tags: a newcomer tenant goes ahead of a busy tenant's waiting work."""

from __future__ import annotations

import pytest

from worker.fair_order import FairOrder


def test_one_tenant_keeps_its_own_order() -> None:
    order = FairOrder()
    assert [order.admit(("a", i), "a") for i in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_newcomer_starts_at_the_clock_ahead_of_the_busy_tenants_backlog() -> None:
    order = FairOrder()
    busy = [order.admit(("a", i), "a") for i in range(12)]  # 0 .. 11, the engine full of A
    for i in range(4):  # A's first four answered: the clock is A's oldest open tag
        order.done(("a", i))
    assert order.clock == 4.0
    newcomer = [order.admit(("b", i), "b") for i in range(3)]
    assert newcomer == [4.0, 5.0, 6.0]
    # A's lines tagged 7 .. 11 wait behind all of B's (equal tags keep the order of
    # arrival), and A's next line queues behind its own backlog.
    assert sum(t > max(newcomer) for t in busy) == 5
    assert order.admit(("a", 12), "a") == 12.0


def test_two_busy_tenants_alternate() -> None:
    order = FairOrder()
    tags = {t: [order.admit((t, i), t) for i in range(3)] for t in ("a", "b")}
    assert tags == {"a": [0.0, 1.0, 2.0], "b": [0.0, 1.0, 2.0]}


def test_cost_weighs_a_request_and_the_clock_never_goes_back() -> None:
    order = FairOrder()
    assert order.admit("wide", "a", cost=4) == 0.0
    assert order.admit("next", "a") == 4.0
    order.done("next")
    assert order.clock == 0.0
    order.done("wide")  # the engine is empty: every tenant starts even at the last finish
    assert order.clock == 5.0 and order.num_open == 0
    assert order.admit("later", "b") == 5.0 and order.admit("again", "a") == 5.0
    order.done("unknown")  # an id never admitted (refused before its tag) is ignored
    with pytest.raises(ValueError, match="cost"):
        order.admit("free", "a", cost=0)


def test_stale_heap_entries_are_dropped() -> None:
    order = FairOrder()
    order.admit("oldest", "a")
    for i in range(500):
        order.admit(i, "b")
        order.done(i)
    assert len(order._starts) <= 2 * order.num_open + 65
    assert order.clock == 0.0
