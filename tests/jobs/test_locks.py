"""Locks and leases on a real Redis: a holder whose lock expired cannot free the next one's."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from jobs.state.ids import BatchId
from jobs.state.shard_ledger import ShardLedger
from jobs.state.store import JobStore

BATCH = BatchId("batch_0123abcd")
LockFactory = Callable[[JobStore, ShardLedger], AbstractContextManager[bool]]


LOCKS: dict[str, tuple[str, LockFactory]] = {
    "finalizer": ("finalize", lambda store, ledger: ledger.finalizer_lock(BATCH, 60)),
    "intake": ("intake", lambda store, ledger: store.intake_lock(BATCH, 60)),
}


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_an_expired_holder_does_not_release_the_next_holders_lock(
    store: JobStore, ledger: ShardLedger, name: str
) -> None:
    kind, take = LOCKS[name]
    key = store.key(kind, BATCH)
    with take(store, ledger) as first:
        assert first
        with take(store, ledger) as meanwhile:
            assert not meanwhile, "one holder at a time"
        store.client.delete(key)  # the first holder's TTL runs out while it still works
        second = take(store, ledger)
        assert second.__enter__()
    # The first holder has left its block: the second one's lock must still stand.
    assert store.client.exists(key)
    with take(store, ledger) as third:
        assert not third, "a third holder got in beside the second"
    second.__exit__(None, None, None)
    assert not store.client.exists(key)
    with take(store, ledger) as later:
        assert later


def test_an_expired_lease_holder_does_not_drop_the_next_runs_lease(
    store: JobStore,
    ledger: ShardLedger,
) -> None:
    assert ledger.hold_lease(BATCH, 0, ttl_s=60, token="first")
    assert not ledger.hold_lease(BATCH, 0, ttl_s=60, token="second")
    store.client.delete(store.key("shard_lease", BATCH, "0"))  # the first run's lease lapsed
    assert ledger.hold_lease(BATCH, 0, ttl_s=60, token="second")
    ledger.drop_lease(BATCH, 0, token="first")
    assert ledger.leased(BATCH, [0]) == {0}
    assert not ledger.hold_lease(BATCH, 0, ttl_s=60, token="first"), "the renewal must fail"
    ledger.drop_lease(BATCH, 0, token="second")
    assert ledger.leased(BATCH, [0]) == set()
