"""kvbatch's one configuration: a pydantic-settings model with a section per concern.

Every process (API, worker, beat, Flower, ``kvbatch up``) reads the same model, once, through
:func:`get_settings`; a command line's choices go on top with :func:`use_settings`. The
environment variables are flat and keep their names: each section's fields are read as
``KVBATCH_<FIELD>`` (Flower's as ``KVBATCH_FLOWER_<FIELD>``, the engine's as
``KVBATCH_ENGINE_<FIELD>``)::

    Settings
      ├── redis        KVBATCH_REDIS_URL, KVBATCH_KEY_PREFIX, KVBATCH_SHARD_QUEUE, ...
      ├── serving      KVBATCH_MODELS, KVBATCH_LORA_ADAPTERS
      ├── storage      KVBATCH_STORAGE_BACKEND, KVBATCH_S3_*, ...
      ├── limits       KVBATCH_MAX_*, KVBATCH_SHARD_SIZE
      ├── api          KVBATCH_API_KEYS, KVBATCH_PRIORITY_RANGE, KVBATCH_TENANT_QUOTAS, ...
      ├── worker       KVBATCH_WORKER_MODEL, KVBATCH_SHARD_THREADS, ...
      │     └── engine KVBATCH_ENGINE_<FIELD>: engine/config.py's EngineConfig itself
      ├── reliability  KVBATCH_VISIBILITY_TIMEOUT_S, KVBATCH_SHARD_LEASE_S, ...
      ├── webhooks     KVBATCH_WEBHOOK_* (jobs/webhooks/settings.py)
      ├── fair_share   KVBATCH_FAIR_SHARE_* (jobs/pipeline/fair_share.py)
      └── flower       KVBATCH_FLOWER_BASIC_AUTH, _ADDRESS, _PORT

Nothing is read at import time: the first :func:`get_settings` reads the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, cast

from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from engine.config import EngineConfig
from jobs.limits import Limits
from jobs.pipeline.fair_share import FairShareSettings
from jobs.pipeline.routing import ModelRouter
from jobs.settings_sections import (
    ApiSection,
    FlowerSection,
    LimitsSection,
    RedisSection,
    ReliabilitySection,
    ServingSection,
    StorageSection,
    WorkerSection,
)
from jobs.webhooks.settings import WebhookSettings

PREFIX = "KVBATCH_"
# How each section's fields are named in the environment (default: ``KVBATCH_<FIELD>``).
_SECTION_ENV: dict[str, dict[str, Any]] = {
    "flower": {"env_prefix": "KVBATCH_FLOWER_"},
    # KVBATCH_ENGINE_MAX_NUM_SEQS -> worker.engine.max_num_seqs
    "worker": {"env_nested_delimiter": "_", "env_nested_max_split": 1},
}


class _SectionsFromEnv(PydanticBaseSettingsSource):
    """Reads every section from flat ``KVBATCH_*`` variables with pydantic-settings' own
    environment source (JSON for dicts and lists, ``NoDecode`` fields left as text)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = parse_env_vars(environ, case_sensitive=False)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads whole sections

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            options = {"env_prefix": PREFIX} | _SECTION_ENV.get(name, {})
            section = cast("type[BaseSettings]", field.annotation)
            source = EnvSettingsSource(section, case_sensitive=False, **options)
            source.env_vars = self.env_vars
            found = source()
            if found:
                values[name] = found
        return values


class Settings(BaseSettings):
    """The whole service's configuration; see the module doc for its sections."""

    model_config = SettingsConfigDict(extra="ignore")

    redis: RedisSection = Field(default_factory=RedisSection)
    serving: ServingSection = Field(default_factory=ServingSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    api: ApiSection = Field(default_factory=ApiSection)
    worker: WorkerSection = Field(default_factory=WorkerSection)
    reliability: ReliabilitySection = Field(default_factory=ReliabilitySection)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    fair_share: FairShareSettings = Field(default_factory=FairShareSettings)
    flower: FlowerSection = Field(default_factory=FlowerSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _SectionsFromEnv(settings_cls, os.environ)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """The settings a process started with ``environ`` reads (``kvbatch up``'s children)."""
        return cls.model_validate(_SectionsFromEnv(cls, environ)())

    @classmethod
    def from_flat(cls, values: Mapping[str, object]) -> Settings:
        """Settings from flat names, as in the environment without ``KVBATCH_``
        (``{"shard_size": 4, "redis_url": ...}``); the environment fills the rest."""
        return cls.model_validate(_nest(values))

    def updated(self, **flat: object) -> Settings:
        """A copy with the flat-named fields replaced (not validated again, like
        ``model_copy``): a command line's choices on top of the environment's."""
        sections = {
            name: getattr(self, name).model_copy(update=fields)
            for name, fields in _nest(flat).items()
        }
        return self.model_copy(update=sections)

    def to_env(self, *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
        """These settings as the ``KVBATCH_*`` variables that read back into them (sections
        in ``exclude`` left out, and unset optional fields). The engine's fields are left
        out too: a worker's engine comes from its own ``KVBATCH_ENGINE_*`` variables."""
        env: dict[str, str] = {}
        for section, prefix, name in _env_fields():
            value = getattr(getattr(self, section), name)
            if section in exclude or value is None or name == "engine":
                continue
            plain = to_jsonable_python(value)
            text = json.dumps(plain) if isinstance(plain, dict | list) else str(plain)
            env[f"{prefix}{name.upper()}"] = text
        return env

    def served_names(self) -> frozenset[str]:
        """Every name a line's ``model`` may use: the served models and their adapters."""
        return self.serving.served_names()

    def model_router(self) -> ModelRouter:
        """Where each served model's (and adapter's) shards go."""
        adapters = {name: a.base for name, a in self.serving.lora_adapters.items()}
        return ModelRouter(self.redis.shard_queue, adapters=adapters)

    def enforced_limits(self) -> Limits:
        """The limits the API enforces: the defaults, overridden by the limits section."""
        values = self.limits.model_dump()
        return replace(Limits(), **values, served_models=self.served_names())


def env_names() -> set[str]:
    """Every ``KVBATCH_*`` variable the settings read (the engine's one per field)."""
    names = {f"{prefix}{name.upper()}" for _, prefix, name in _env_fields() if name != "engine"}
    return names | {f"{PREFIX}ENGINE_{field.name.upper()}" for field in fields(EngineConfig)}


def _env_fields() -> list[tuple[str, str, str]]:
    """(section, variable prefix, field) for every field of every section."""
    rows = []
    for section, field in Settings.model_fields.items():
        prefix = _SECTION_ENV.get(section, {}).get("env_prefix", PREFIX)
        model = cast("type[BaseModel]", field.annotation)
        rows += [(section, prefix, name) for name in model.model_fields]
    return rows


def _nest(flat: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """Flat names (``flower_port`` for Flower's) placed in their sections."""
    where = {
        (name if prefix == PREFIX else f"{section}_{name}"): (section, name)
        for section, prefix, name in _env_fields()
    }
    nested: dict[str, dict[str, object]] = {}
    for key, value in flat.items():
        if key not in where:
            raise KeyError(f"no setting is named {key!r} (KVBATCH_{key.upper()})")
        section, name = where[key]
        nested.setdefault(section, {})[name] = value
    return nested


_current: Settings | None = None


def get_settings() -> Settings:
    """This process's settings: those :func:`use_settings` installed, else the environment's
    (read once, on first use)."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def use_settings(settings: Settings) -> None:
    """Make ``settings`` this process's (a command line's choices on top of the environment)
    before the Celery app, the API or the engine's runtime read them."""
    global _current
    _current = settings
