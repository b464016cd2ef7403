"""The worker's settings: the shared service ones plus the engine and reliability knobs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from engine.config import EngineConfig
from engine.lora_request import LoRARequest
from jobs.service_settings import ServiceSettings
from worker.adapter_table import adapter_requests

DEFAULT_MODEL = "models/smollm2-135m-instruct"


class WorkerSettings(ServiceSettings):
    """``KVBATCH_*`` variables; ``KVBATCH_WORKER_MODEL`` is the engine's model directory."""

    model_config = SettingsConfigDict(
        env_prefix="KVBATCH_", extra="ignore", env_nested_delimiter="_", env_nested_max_split=1
    )

    worker_model: str = DEFAULT_MODEL
    # The model name this worker serves, whose shard queue it consumes (unset: derived from
    # ``worker_model``, see :meth:`served_name`).
    worker_served_name: str | None = None

    # Reliability (see worker/celeryconfig.py for how they are used).
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

    # Scheduling inside one worker process. How many shards a worker takes is decided by its
    # intake from the engine's capacity (worker/intake.py); ``shard_threads`` only bounds
    # how many it may hold at once (unset: a quarter of max_num_seqs, so shards of four
    # lines or more can fill the engine).
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
    # ``KVBATCH_ENGINE_<FIELD>`` (``KVBATCH_ENGINE_MAX_NUM_SEQS``...); its model is
    # ``worker_model``.
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

    def served_name(self) -> str:
        """The served model name: ``worker_served_name``; else the ``KVBATCH_MODELS`` name
        whose directory is ``worker_model``; else that directory's name (the name
        ``kvbatch up`` serves a model under)."""
        if self.worker_served_name:
            return self.worker_served_name
        own = Path(self.worker_model).resolve()
        for name, path in sorted(self.models.items()):
            if Path(path).resolve() == own:
                return name
        return Path(self.worker_model).name

    def consumed_queues(self) -> list[str]:
        """Housekeeping, and the shard queue of the model this worker serves."""
        return self.model_router().worker_queues(self.served_name())

    def adapters(self) -> dict[str, LoRARequest]:
        """The ``KVBATCH_LORA_ADAPTERS`` entries of the model this worker serves."""
        return adapter_requests(self.lora_adapters, self.served_name())

    def engine_config(self) -> EngineConfig:
        """The engine this worker runs: the engine section on ``worker_model``, with LoRA on
        when adapters of its model are registered (``KVBATCH_ENGINE_MAX_LORAS`` and
        ``KVBATCH_ENGINE_MAX_LORA_RANK`` size it)."""
        config = replace(self.engine, model=self.worker_model)
        if self.adapters() and not config.enable_lora:
            config = replace(config, enable_lora=True)
        return config


_installed: WorkerSettings | None = None


def install_worker_settings(settings: WorkerSettings) -> None:
    """Make ``settings`` this process's worker settings (a command line's choices on top of
    the environment), before the Celery app and the engine's runtime read them."""
    global _installed
    _installed = settings


def get_worker_settings() -> WorkerSettings:
    """This process's worker settings: the installed ones, else read from ``KVBATCH_*`` once."""
    global _installed
    if _installed is None:
        _installed = WorkerSettings()
    return _installed
