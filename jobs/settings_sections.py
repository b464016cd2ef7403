"""The sections of :class:`jobs.settings.Settings`; each field is ``KVBATCH_<FIELD>``.

Plain pydantic models: only the root model reads the environment (jobs/settings.py). The
worker section nests the engine's own ``EngineConfig`` (a plain dataclass that loads no torch),
so the engine's arguments are declared once; nothing else of the engine is named here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from engine.config import EngineConfig
from jobs.adapters import RegisteredAdapter, check_adapters, parse_adapters
from jobs.limits import Limits
from jobs.pipeline.admission import ALL_PRIORITIES
from jobs.pipeline.routing import model_shard_queue
from jobs.state.quotas import Quota

# Celery's Redis transport consumes priority 0 first: keep one list per level 0-9 so that
# every metadata.priority value is its own step (kombu's default merges them into 0/3/6/9).
PRIORITY_STEPS = list(range(10))
SENTINEL_SCHEME = "sentinel://"
DEFAULT_MODEL = "models/smollm2-135m-instruct"
_LIMITS = Limits()


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RedisSection(_Section):
    """Where the state store and the broker live, and the names the deployment uses in them."""

    # ``redis://`` or, for Redis Sentinel, ``sentinel://h1:26379;sentinel://h2:26379/0``
    # (the same form serves as ``broker_url``); the master's name is ``redis_sentinel_master``.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinel_master: str = "mymaster"
    key_prefix: str = "kvbatch"
    broker_url: str | None = None
    # The Celery broker's keys (queues, ``unacked``, ``unacked_index``): under
    # ``{key_prefix}:broker:`` unless set ("" puts them at the top level of the database).
    broker_key_prefix: str | None = None
    # Housekeeping tasks; each served model's shards go to "{shard_queue}.{model}"
    # (jobs/pipeline/routing.py).
    shard_queue: str = "kvbatch.shards"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def resolved_broker_key_prefix(self) -> str:
        """Where the broker's keys live: deployments sharing a Redis never share a queue."""
        if self.broker_key_prefix is not None:
            return self.broker_key_prefix
        return f"{self.key_prefix}:broker:"

    def broker_transport_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"priority_steps": PRIORITY_STEPS}
        if self.resolved_broker_url.startswith(SENTINEL_SCHEME):
            options["master_name"] = self.redis_sentinel_master
        if self.resolved_broker_key_prefix:
            options["global_keyprefix"] = self.resolved_broker_key_prefix
        return options


class ServingSection(_Section):
    """What the deployment serves: model names and the LoRA adapters on them."""

    # Served model names -> model directories: "name=path,other=path" or JSON. The API
    # accepts batches for these names; a worker whose model directory is one of them
    # serves it under that name (worker/settings.py).
    models: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # LoRA adapters a line's ``model`` may name: "name=base_model:path,..." or JSON
    # (jobs/adapters.py). Their batches run on a worker holding the base model.
    lora_adapters: Annotated[dict[str, RegisteredAdapter], NoDecode] = Field(default_factory=dict)

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
    def _adapters_of_served_models(self) -> ServingSection:
        check_adapters(self.lora_adapters, self.models)
        return self

    def served_names(self) -> frozenset[str]:
        return frozenset(self.models) | frozenset(self.lora_adapters)


class StorageSection(_Section):
    """Where files live: a local directory or an S3 bucket (jobs/connections.py opens it)."""

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


class LimitsSection(_Section):
    """The configurable :class:`~jobs.limits.Limits` (its defaults, OpenAI's, written there)."""

    max_requests_per_file: int = _LIMITS.max_requests_per_file
    max_file_bytes: int = _LIMITS.max_file_bytes
    max_line_bytes: int = _LIMITS.max_line_bytes
    max_n: int = _LIMITS.max_n
    max_tokens: int = _LIMITS.max_tokens
    max_embedding_inputs: int = _LIMITS.max_embedding_inputs
    max_errors_reported: int = _LIMITS.max_errors_reported
    shard_size: int = _LIMITS.shard_size


class ApiSection(_Section):
    """The API's own: bearer keys, priorities, quotas, retention and request handling.

    ``KVBATCH_API_KEYS`` maps bearer keys to tenants, ``"key1:tenantA,key2:tenantB"`` or a
    JSON object; ``KVBATCH_TENANT_PRIORITIES`` gives tenants a ``metadata.priority`` range
    other than ``KVBATCH_PRIORITY_RANGE`` (``1-9``), ``"tenantA=0-9"`` or JSON.
    """

    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # metadata.priority values a tenant may ask for ("lo-hi"; 0 is the most urgent).
    priority_range: str = "1-9"
    tenant_priorities: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    max_json_body_bytes: int = 1_000_000
    batch_file_ttl_s: int = 30 * 24 * 3600
    # Output and error files without output_expires_after: kept this long (default 30 days).
    output_file_ttl_s: int = Field(default=30 * 24 * 3600, ge=3600)
    intake_threads: int = 2
    # Quotas by "tenant/model", "tenant" or "*" (JSON): jobs/state/quotas.py.
    tenant_quotas: dict[str, Quota] = Field(default_factory=dict)
    # Signs the cursors of /v1/batches/{id}/results; empty: derived from the API keys.
    results_cursor_secret: str = ""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> dict[str, str]:
        return parse_pairs(value, ":")

    @field_validator("tenant_priorities", mode="before")
    @classmethod
    def _parse_priorities(cls, value: Any) -> dict[str, str]:
        pairs = parse_pairs(value, "=")
        for text in pairs.values():
            priority_range(text)
        return pairs

    @field_validator("priority_range")
    @classmethod
    def _check_range(cls, value: str) -> str:
        priority_range(value)
        return value

    def priorities_of(self, tenant: str) -> range:
        """The ``metadata.priority`` values ``tenant`` may set."""
        return priority_range(self.tenant_priorities.get(tenant, self.priority_range))


class WorkerSection(_Section):
    """One worker process: its model, its engine, its scheduling and its monitoring."""

    worker_model: str = DEFAULT_MODEL
    # The model name this worker serves, whose shard queue it consumes (unset: derived from
    # ``worker_model``, see worker/settings.py's ``served_name``).
    worker_served_name: str | None = None
    # How many shards a worker takes is decided by its intake from the engine's capacity
    # (worker/intake.py); ``shard_threads`` only bounds how many it may hold at once (unset:
    # a quarter of max_num_seqs, so shards of four lines or more can fill the engine).
    shard_threads: int | None = Field(default=None, ge=1)
    max_pending_requests: int = 512
    stop_poll_s: float = 0.5
    # Tenants take turns in the engine's waiting queue (worker/fair_order.py); off: requests
    # wait in the order they reached the worker.
    fair_engine_order: bool = True
    # Periodic work and monitoring.
    expiry_interval_s: float = 15.0
    beat_schedule_path: Path = Path("var/celerybeat-schedule")
    stats_interval_s: float = 2.0
    # Prometheus /metrics of this worker's engine, on loopback unless told otherwise (a
    # container sets 0.0.0.0 inside its private network); KVBATCH_METRICS_PORT=0 turns it off.
    metrics_port: int = 9300
    metrics_host: str = "127.0.0.1"
    # The engine's arguments: ``EngineConfig`` itself, each field read from
    # ``KVBATCH_ENGINE_<FIELD>``; its model is ``worker_model``.
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(model=DEFAULT_MODEL))
    # Fault injection (worker/faults.py), for the reliability tests only: off when unset.
    fault_crash_marker: str | None = None
    fault_crash_at: Literal["admit", "step"] = "admit"

    @model_validator(mode="before")
    @classmethod
    def _engine_model(cls, data: Any) -> Any:
        """The engine section's ``model`` is ``worker_model`` (its one required field)."""
        if isinstance(data, dict) and isinstance(data.get("engine"), dict):
            model = data.get("worker_model", DEFAULT_MODEL)
            data["engine"] = {"model": str(model), **data["engine"]}
        return data

    def shard_threads_or_default(self) -> int:
        if self.shard_threads is not None:
            return self.shard_threads
        return max(4, self.engine.max_num_seqs // 4)


class ReliabilitySection(_Section):
    """Redelivery, leases, checkpoints and shutdown (worker/celeryconfig.py uses them)."""

    visibility_timeout_s: int = 3600
    unacked_restore_interval_s: int = 60
    max_shard_deliveries: int = 5
    shard_lease_s: int = 30
    finalize_lock_s: int = 600
    # On SIGTERM, running shards get this long to finish; then their requests are withdrawn,
    # their finished lines kept and the shards handed back to the queue. Keep it below the
    # orchestrator's grace period (Kubernetes terminationGracePeriodSeconds: 120).
    shutdown_grace_s: float = Field(default=90.0, gt=0)
    # A running shard commits its finished lines after this many lines or seconds, so a
    # rerun after a crash computes only the rest (jobs/state/checkpoints.py).
    shard_commit_lines: int = Field(default=8, ge=1)
    shard_commit_interval_s: float = Field(default=2.0, gt=0)
    # How long a worker's Redis commands keep retrying through a Redis restart (seconds).
    redis_ride_out_s: float = 30.0
    # Start even on a Redis whose maxmemory-policy may evict keys (jobs/state/redis_policy.py).
    allow_evicting_redis: bool = False


class FlowerSection(_Section):
    """Flower, the task monitor (``KVBATCH_FLOWER_<FIELD>``; infra/flower_command.py)."""

    basic_auth: str | None = None
    address: str = "127.0.0.1"
    port: int = 5555


def priority_range(text: str) -> range:
    """``"lo-hi"`` as the range of priorities it allows (within 0-9)."""
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected a priority range like '1-9', got {text!r}")
    allowed = range(int(low), int(high) + 1)
    if not allowed or allowed.start < ALL_PRIORITIES.start or allowed.stop > ALL_PRIORITIES.stop:
        raise ValueError(f"a priority range lies within 0-9, got {text!r}")
    return allowed


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
