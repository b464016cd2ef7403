"""Service settings from the environment (prefix ``KVBATCH_``), behind a cached getter.

``KVBATCH_API_KEYS`` maps bearer keys to tenants, either ``"key1:tenantA,key2:tenantB"``
or a JSON object (``KVBATCH_MODELS`` is a shared service setting: jobs/service_settings.py).
``KVBATCH_TENANT_PRIORITIES`` gives tenants a
``metadata.priority`` range other than ``KVBATCH_PRIORITY_RANGE`` (``1-9``), either
``"tenantA=0-9"`` or JSON.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from jobs.limits import Limits
from jobs.pipeline.admission import ALL_PRIORITIES
from jobs.service_settings import ServiceSettings, parse_pairs
from jobs.state.quotas import Quota


def _priority_range(text: str) -> range:
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected a priority range like '1-9', got {text!r}")
    allowed = range(int(low), int(high) + 1)
    if not allowed or allowed.start < ALL_PRIORITIES.start or allowed.stop > ALL_PRIORITIES.stop:
        raise ValueError(f"a priority range lies within 0-9, got {text!r}")
    return allowed


_LIMITS = Limits()
_LIMIT_SETTINGS = (
    "max_requests_per_file",
    "max_file_bytes",
    "max_line_bytes",
    "max_n",
    "max_tokens",
    "max_embedding_inputs",
    "max_errors_reported",
    "shard_size",
)


class Settings(ServiceSettings):
    """The API's settings: the shared service settings plus keys, served models and limits."""

    model_config = SettingsConfigDict(env_prefix="KVBATCH_", extra="ignore")

    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # metadata.priority values a tenant may ask for ("lo-hi"; 0 is the most urgent).
    priority_range: str = "1-9"
    tenant_priorities: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    # Limits (defaults: jobs/limits.py); max_line_bytes is a shared service setting.
    max_requests_per_file: int = _LIMITS.max_requests_per_file
    max_file_bytes: int = _LIMITS.max_file_bytes
    max_n: int = _LIMITS.max_n
    max_tokens: int = _LIMITS.max_tokens
    max_embedding_inputs: int = _LIMITS.max_embedding_inputs
    max_errors_reported: int = _LIMITS.max_errors_reported
    shard_size: int = _LIMITS.shard_size
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
            _priority_range(text)
        return pairs

    @field_validator("priority_range")
    @classmethod
    def _check_range(cls, value: str) -> str:
        _priority_range(value)
        return value

    def priorities_of(self, tenant: str) -> range:
        """The ``metadata.priority`` values ``tenant`` may set."""
        return _priority_range(self.tenant_priorities.get(tenant, self.priority_range))

    def limits(self) -> Limits:
        """The limits this API enforces: the defaults, overridden by these settings."""
        values = {name: getattr(self, name) for name in _LIMIT_SETTINGS}
        return replace(_LIMITS, **values, served_models=self.served_names())


@lru_cache
def get_settings() -> Settings:
    return Settings()
