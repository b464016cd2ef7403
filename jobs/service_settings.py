"""Settings every kvbatch process shares: where Redis, the broker and object storage live.

The API and the worker read the same ``KVBATCH_*`` variables for these, so one environment
wires the whole service; each process adds its own settings in a subclass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from jobs.adapters import RegisteredAdapter, check_adapters, parse_adapters
from jobs.limits import Limits
from jobs.pipeline.fair_share import FairShareSettings
from jobs.pipeline.routing import ModelRouter, model_shard_queue
from jobs.state.redis_policy import check_eviction_policy
from jobs.storage import LocalStorage, S3Storage, Storage
from jobs.webhooks.settings import WebhookSettings

# Celery's Redis transport consumes priority 0 first: keep one list per level 0-9 so that
# every metadata.priority value is its own step (kombu's default merges them into 0/3/6/9).
PRIORITY_STEPS = list(range(10))
SENTINEL_SCHEME = "sentinel://"


class ServiceSettings(WebhookSettings, FairShareSettings):
    model_config = SettingsConfigDict(env_prefix="KVBATCH_", extra="ignore")

    # ``redis://`` or, for Redis Sentinel, ``sentinel://h1:26379;sentinel://h2:26379/0``
    # (the same form serves as ``broker_url``); the master's name is ``redis_sentinel_master``.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinel_master: str = "mymaster"
    key_prefix: str = "kvbatch"
    broker_url: str | None = None
    # Housekeeping tasks; each served model's shards go to "{shard_queue}.{model}"
    # (jobs/pipeline/routing.py).
    shard_queue: str = "kvbatch.shards"
    # Served model names -> model directories: "name=path,other=path" or JSON. The API
    # accepts batches for these names; a worker whose model directory is one of them
    # serves it under that name (worker/settings.py).
    models: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # LoRA adapters a line's ``model`` may name: "name=base_model:path,..." or JSON
    # (jobs/adapters.py). Their batches run on a worker holding the base model.
    lora_adapters: Annotated[dict[str, RegisteredAdapter], NoDecode] = Field(default_factory=dict)
    # The Celery broker's keys (queues, ``unacked``, ``unacked_index``): under
    # ``{key_prefix}:broker:`` unless set ("" puts them at the top level of the database).
    broker_key_prefix: str | None = None

    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path = Path("var/storage")
    s3_bucket: str = "kvbatch"
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_part_bytes: int = 8 * 1024 * 1024
    s3_create_bucket: bool = False

    max_line_bytes: int = Limits().max_line_bytes

    # How long a worker's Redis commands keep retrying through a Redis restart (seconds).
    redis_ride_out_s: float = 30.0
    # Start even on a Redis whose maxmemory-policy may evict keys (jobs/state/redis_policy.py).
    allow_evicting_redis: bool = False

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> dict[str, str]:
        models = parse_pairs(value, "=")
        for name in models:  # each name is a queue's suffix: refused now, not at dispatch
            model_shard_queue("q", name)
        return models

    @field_validator("lora_adapters", mode="before")
    @classmethod
    def _parse_adapters(cls, value: Any) -> dict[str, RegisteredAdapter]:
        return parse_adapters(value)

    @model_validator(mode="after")
    def _adapters_of_served_models(self) -> ServiceSettings:
        check_adapters(self.lora_adapters, self.models)
        return self

    def served_names(self) -> frozenset[str]:
        """Every name a line's ``model`` may use: the served models and their adapters."""
        return frozenset(self.models) | frozenset(self.lora_adapters)

    def model_router(self) -> ModelRouter:
        """Where each served model's (and adapter's) shards go."""
        adapters = {name: a.base for name, a in self.lora_adapters.items()}
        return ModelRouter(self.shard_queue, adapters=adapters)

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    def broker_transport_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"priority_steps": PRIORITY_STEPS}
        if self.resolved_broker_url.startswith(SENTINEL_SCHEME):
            options["master_name"] = self.redis_sentinel_master
        if self.resolved_broker_key_prefix:
            options["global_keyprefix"] = self.resolved_broker_key_prefix
        return options

    @property
    def resolved_broker_key_prefix(self) -> str:
        """Where the broker's keys live: deployments sharing a Redis never share a queue."""
        if self.broker_key_prefix is not None:
            return self.broker_key_prefix
        return f"{self.key_prefix}:broker:"


def parse_pairs(value: Any, separator: str) -> dict[str, str]:
    """``"a=b,c=d"`` (with ``separator``) or a JSON object, as a dict of strings."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    text = str(value or "").strip()
    if text.startswith("{"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, val = item.partition(separator)
        if not sep or not key or not val:
            raise ValueError(f"expected 'name{separator}value', got {item!r}")
        pairs[key.strip()] = val.strip()
    return pairs


def check_redis_policies(settings: ServiceSettings) -> None:
    """Refuse to run on a state store or broker Redis that may evict keys (start-up)."""
    urls = {"KVBATCH_REDIS_URL": settings.redis_url, "the broker": settings.resolved_broker_url}
    for what, url in urls.items():
        if url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
            client = redis_client(url, settings.redis_sentinel_master, decode_responses=True)
            try:
                check_eviction_policy(client, what, settings.allow_evicting_redis)
            finally:
                client.close()


def open_storage(settings: ServiceSettings) -> Storage:
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


def open_redis(settings: ServiceSettings) -> redis.Redis:
    """A Redis client that rides out a restart of Redis instead of failing at once.

    Connection errors are retried with backoff (0.1 s doubling, capped at 2 s) for about
    ``redis_ride_out_s``: a shard that is writing counts when Redis restarts waits for it
    and carries on, rather than failing and waiting for its message's visibility timeout.
    Worker processes use it; the API keeps a fail-fast client so that a request during an
    outage is answered (503) rather than held.
    """
    backoff = ExponentialBackoff(cap=2.0, base=0.1)
    waited, retries = 0.0, 0
    while waited < settings.redis_ride_out_s:
        retries += 1
        waited += backoff.compute(retries)
    return redis_client(
        settings.redis_url,
        settings.redis_sentinel_master,
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
