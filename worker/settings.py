"""The worker's settings: the shared service ones plus the engine and reliability knobs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from jobs.service_settings import ServiceSettings


class WorkerSettings(ServiceSettings):
    """``KVBATCH_*`` variables; ``KVBATCH_WORKER_MODEL`` is the engine's model directory."""

    worker_model: str = "models/smollm2-135m-instruct"

    # Reliability (see worker/celeryconfig.py for how they are used).
    visibility_timeout_s: int = 3600
    unacked_restore_interval_s: int = 60
    max_shard_deliveries: int = 5
    shard_lease_s: int = 30
    finalize_lock_s: int = 600

    # Scheduling inside one worker process. How many shards a worker takes is decided by its
    # intake from the engine's capacity (worker/intake.py); ``shard_threads`` only bounds
    # how many it may hold at once (unset: a quarter of max_num_seqs, so shards of four
    # lines or more can fill the engine).
    shard_threads: int | None = Field(default=None, ge=1)
    max_pending_requests: int = 512
    stop_poll_s: float = 0.5

    # Periodic work and monitoring.
    expiry_interval_s: float = 15.0
    beat_schedule_path: Path = Path("var/celerybeat-schedule")
    stats_interval_s: float = 2.0
    # Prometheus /metrics of this worker's engine, on loopback unless told otherwise (a
    # container sets 0.0.0.0 inside its private network); KVBATCH_METRICS_PORT=0 turns it off.
    metrics_port: int = 9300
    metrics_host: str = "127.0.0.1"

    # Engine arguments (``EngineConfig`` fields).
    engine_dtype: str = "auto"
    engine_device: str = "auto"
    engine_block_size: int = 16
    engine_max_num_seqs: int = 256
    engine_max_num_batched_tokens: int = 2048
    engine_kv_cache_memory_gb: float = 1.0  # CPU
    engine_gpu_memory_utilization: float = 0.9  # CUDA
    engine_enforce_eager: bool = False  # CUDA: no graphs for decode steps
    # Structured outputs: the largest JSON schema (bytes, nesting levels) a line may send.
    engine_max_schema_bytes: int = 1_000_000
    engine_max_schema_depth: int = 64
    # Speculative decoding, vLLM's dict as JSON, e.g. KVBATCH_ENGINE_SPECULATIVE_CONFIG=
    # '{"method": "ngram", "num_speculative_tokens": 4, "disable_by_batch_size": 32}'
    # (engine/speculative_config.py). Off when unset.
    engine_speculative_config: dict[str, Any] | None = None

    # Fault injection (worker/faults.py), for the reliability tests only: off when unset.
    fault_crash_marker: str | None = None
    fault_crash_at: Literal["admit", "step"] = "admit"

    def shard_threads_or_default(self) -> int:
        if self.shard_threads is not None:
            return self.shard_threads
        return max(4, self.engine_max_num_seqs // 4)

    def engine_args(self) -> dict[str, Any]:
        return {
            "dtype": self.engine_dtype,
            "device": self.engine_device,
            "block_size": self.engine_block_size,
            "max_num_seqs": self.engine_max_num_seqs,
            "max_num_batched_tokens": self.engine_max_num_batched_tokens,
            "kv_cache_memory_gb": self.engine_kv_cache_memory_gb,
            "gpu_memory_utilization": self.engine_gpu_memory_utilization,
            "enforce_eager": self.engine_enforce_eager,
            "max_schema_bytes": self.engine_max_schema_bytes,
            "max_schema_depth": self.engine_max_schema_depth,
            "speculative_config": self.engine_speculative_config,
        }


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
