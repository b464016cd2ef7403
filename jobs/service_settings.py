"""Settings every kvbatch process shares: where Redis, the broker and object storage live.

The API and the worker read the same ``KVBATCH_*`` variables for these, so one environment
wires the whole service; each process adds its own settings in a subclass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.storage import LocalStorage, S3Storage, Storage

# Celery's Redis transport consumes priority 0 first: keep one list per level 0-9 so that
# every metadata.priority value is its own step (kombu's default merges them into 0/3/6/9).
PRIORITY_STEPS = list(range(10))


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KVBATCH_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "kvbatch"
    broker_url: str | None = None
    shard_queue: str = "kvbatch.shards"
    broker_key_prefix: str = ""

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

    max_line_bytes: int = 2_000_000

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    def broker_transport_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"priority_steps": PRIORITY_STEPS}
        if self.broker_key_prefix:
            options["global_keyprefix"] = self.broker_key_prefix
        return options


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
