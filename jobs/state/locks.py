"""Redis locks that only their owner releases.

A lock taken with ``SET NX EX`` and released with a plain ``DEL`` breaks as soon as a holder
outlives its TTL (a long finalization, a paused process): the next holder takes the expired
key, and the first one's ``DEL`` then deletes the *second* holder's lock, letting a third
in beside it. redis-py's ``Lock`` stores a random token and releases (or extends) with a
compare-and-delete script, so a late release is a no-op on someone else's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import LockError

log = logging.getLogger(__name__)


@contextmanager
def owned_lock(client: Any, key: str, ttl_s: float) -> Iterator[bool]:
    """Try once to take ``key`` for ``ttl_s``; yields whether this caller holds it.

    On exit the lock is released only if this caller still owns it. The token is not
    thread-local, so a helper thread may extend it for the holder.
    """
    lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
    acquired = bool(lock.acquire())
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except LockError:  # expired, perhaps taken by another: theirs now, left alone
                log.warning("lock %s expired before its holder released it", key)
