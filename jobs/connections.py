"""Connections the settings name: the state store's Redis and the object store.

The worker's Redis client rides out a restart of Redis; the API's fails fast (api/resources.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from jobs.pipeline.dispatch import ShardDispatcher
from jobs.settings_sections import SENTINEL_SCHEME, StorageSection
from jobs.state.redis_policy import check_eviction_policy
from jobs.storage import LocalStorage, S3Storage, Storage

if TYPE_CHECKING:
    from jobs.settings import Settings


def check_redis_policies(settings: Settings) -> None:
    """Refuse to run on a state store or broker Redis that may evict keys (start-up)."""
    where = settings.redis
    urls = {"KVBATCH_REDIS_URL": where.redis_url, "the broker": where.resolved_broker_url}
    for what, url in urls.items():
        if url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
            client = redis_client(url, where.redis_sentinel_master, decode_responses=True)
            try:
                check_eviction_policy(client, what, settings.reliability.allow_evicting_redis)
            finally:
                client.close()


def open_storage(settings: StorageSection) -> Storage:
    """The object store the settings name (a local directory or an S3 bucket)."""
    if settings.storage_backend == "s3":
        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            part_bytes=settings.s3_part_bytes,
            create_bucket=settings.s3_create_bucket,
        )
    return LocalStorage(settings.storage_dir)


def open_dispatcher(settings: Settings) -> ShardDispatcher:
    """The broker producer that sends each batch's shards to its model's queue."""
    return ShardDispatcher(
        settings.redis.resolved_broker_url,
        settings.model_router(),
        settings.redis.broker_transport_options(),
    )


class RideOut(Retry):
    """The retry policy of an :func:`open_redis` client: one object for all its connections.

    redis-py copies a client's ``Retry`` into each connection, so a policy replaced later
    (``set_retry``) reaches only commands not yet started, and a thread already riding out
    an outage goes on for up to ``redis_ride_out_s``. Shared, :meth:`end` stops those too.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> RideOut:
        return self

    def end(self) -> None:
        """Every command from now on, and every one riding out an outage right now (on any
        thread), fails at its next failed attempt: for a process that is shutting down."""
        self.update_retries(0)


def end_ride_out(client: redis.Redis) -> None:
    """Stop ``client`` (from :func:`open_redis`) riding out outages; see :class:`RideOut`."""
    retry = client.get_retry()
    assert isinstance(retry, RideOut), "a client from open_redis"
    retry.end()


def open_redis(settings: Settings) -> redis.Redis:
    """A Redis client that rides out a restart of Redis instead of failing at once.

    Connection errors are retried with backoff (0.1 s doubling, capped at 2 s) for about
    ``redis_ride_out_s``: a shard that is writing counts when Redis restarts waits for it
    and carries on, rather than failing and waiting for its message's visibility timeout.
    Worker processes use it; the API keeps a fail-fast client so that a request during an
    outage is answered (503) rather than held.
    """
    backoff = ExponentialBackoff(cap=2.0, base=0.1)
    waited, retries = 0.0, 0
    while waited < settings.reliability.redis_ride_out_s:
        retries += 1
        waited += backoff.compute(retries)
    return redis_client(
        settings.redis.redis_url,
        settings.redis.redis_sentinel_master,
        decode_responses=True,
        retry=RideOut(backoff, retries),
    )


def redis_client(url: str, sentinel_master: str, **options: Any) -> redis.Redis:
    """A client for ``url``; for a ``sentinel://`` URL, one that follows the master the
    sentinels name, reconnecting to the new one after a failover."""
    if not url.startswith(SENTINEL_SCHEME):
        return redis.Redis.from_url(url, **options)
    nodes, db = [], "0"
    for part in url.split(";"):
        address, _, path = part.removeprefix(SENTINEL_SCHEME).partition("/")
        host, _, port = address.partition(":")
        if not host or not (port or "0").isdigit():
            raise ValueError(f"not a sentinel URL: {url!r} (sentinel://host:port;...[/db])")
        nodes.append((host, int(port or 26379)))
        db = path or db
    sentinel = Sentinel(nodes, socket_timeout=options.get("socket_timeout", 5.0))
    client: redis.Redis = sentinel.master_for(sentinel_master, db=int(db), **options)
    return client
