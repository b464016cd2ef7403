"""Service settings from the environment (prefix ``KVBATCH_``), behind a cached getter.

``KVBATCH_API_KEYS`` maps bearer keys to tenants, either ``"key1:tenantA,key2:tenantB"``
or a JSON object; ``KVBATCH_MODELS`` maps served model names to model directories, either
``"name=path,other=path"`` or JSON.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from jobs.limits import Limits
from jobs.service_settings import ServiceSettings


def _pairs(value: Any, separator: str) -> dict[str, str]:
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


class Settings(ServiceSettings):
    """The API's settings: the shared service settings plus keys, served models and limits."""

    model_config = SettingsConfigDict(env_prefix="KVBATCH_", extra="ignore")

    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    models: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    max_requests_per_file: int = 50_000
    max_file_bytes: int = 200_000_000
    max_n: int = 8
    max_tokens: int = 4096
    max_errors_reported: int = 100
    shard_size: int = 256
    max_json_body_bytes: int = 1_000_000
    batch_file_ttl_s: int = 30 * 24 * 3600
    intake_threads: int = 2

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> dict[str, str]:
        return _pairs(value, ":")

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> dict[str, str]:
        return _pairs(value, "=")

    def limits(self) -> Limits:
        return Limits(
            max_requests_per_file=self.max_requests_per_file,
            max_file_bytes=self.max_file_bytes,
            max_line_bytes=self.max_line_bytes,
            max_n=self.max_n,
            max_tokens=self.max_tokens,
            max_errors_reported=self.max_errors_reported,
            shard_size=self.shard_size,
            served_models=frozenset(self.models),
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
