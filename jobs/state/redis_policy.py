"""Refusing a Redis that may evict our keys.

Under any ``maxmemory-policy`` but ``noeviction`` a full Redis deletes keys to make room:
``allkeys-*`` may take a shard queue, kombu's ``unacked`` hash or a batch record;
``volatile-*`` takes keys with a TTL, which here include the done set of every shard, the
leases and the locks. Each loss is silent (a shard never runs, or runs twice). With
``noeviction`` a full Redis refuses writes instead: loud errors that the workers retry.
So the API and the workers check at start-up and stop unless told to accept the risk
(``KVBATCH_ALLOW_EVICTING_REDIS=true``, for a Redis that can never fill up).
"""

from __future__ import annotations

from typing import Any

SAFE_POLICY = "noeviction"


class EvictingRedis(RuntimeError):
    """The Redis at hand may evict keys the service cannot lose."""


def eviction_policy(client: Any) -> str:
    """The server's ``maxmemory-policy``, read through ``INFO`` (managed Redis services
    often rename or forbid ``CONFIG``)."""
    return str(client.info("memory")["maxmemory_policy"])


def check_eviction_policy(client: Any, what: str, allow_evicting: bool) -> str:
    """Raise ``EvictingRedis`` unless the server keeps every key or evicting is allowed;
    returns the policy."""
    policy = eviction_policy(client)
    if policy != SAFE_POLICY and not allow_evicting:
        raise EvictingRedis(
            f"the Redis behind {what} has maxmemory-policy {policy!r}: a full Redis would "
            f"silently delete queued shards or batch state. Set maxmemory-policy "
            f"{SAFE_POLICY} (CONFIG SET maxmemory-policy {SAFE_POLICY}, or in redis.conf), "
            "or start with KVBATCH_ALLOW_EVICTING_REDIS=true to accept the risk"
        )
    return policy
