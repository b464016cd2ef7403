"""Engine settings: what a user passes to ``LLM(model=..., **engine_args)``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.speculative_config import SpeculativeConfig, SpeculativeConfigError

if TYPE_CHECKING:  # torch loads where a device or dtype is asked for: the settings name
    import torch  # EngineConfig without it (jobs/settings.py)


class EngineConfigError(ValueError):
    """An engine argument is invalid or inconsistent with the model."""


_DTYPES = ("float32", "bfloat16", "float16")
LOAD_FORMATS = ("safetensors", "dummy")


@dataclass(slots=True)
class EngineConfig:
    """``num_kv_blocks=None`` sizes the KV cache from ``kv_cache_memory_gb`` (CPU) or from
    free GPU memory times ``gpu_memory_utilization`` (CUDA). The CPU cache is mapped at
    start and becomes resident as it fills, not all at once (engine/model_runner.py).

    ``load_format="dummy"`` fills the weights with seeded random values instead of reading a
    checkpoint, so a directory holding only ``config.json`` runs (benchmarks of a model's
    shape). ``enforce_eager`` turns off CUDA graphs for decode steps. ``sync_step_timing``
    waits for the device at the end of each forward pass so that the per-phase step times in
    the stats are device times (it costs the overlap of the sampler's launches with the tail
    of the forward pass). ``cpu_packed_weights`` (fp32 on the CPU) trades twice the weights'
    memory for faster steps of few rows: see engine/models/packed_weights.py.
    """

    model: str
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda when available
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_gb: float = 1.0
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    seed: int = 0
    load_format: str = "safetensors"
    enforce_eager: bool = False
    sync_step_timing: bool = True
    # fp32 on the CPU: each projection's weight is kept a second time, packed for the CPU's
    # matmul kernel (twice the weights' memory), so steps of a few rows per request do not
    # repack every weight on every call (engine/models/packed_weights.py).
    cpu_packed_weights: bool = True
    # Tenants' shares of a step (engine/scheduler.py): while requests of two or more tenants
    # are in the engine, a step runs no more requests of one tenant than the next-busiest
    # tenant has there, but never caps a tenant below this many. 0: off. None: 8 on the
    # CPU, where a step's time grows with its rows; off on CUDA, where a decode step takes
    # about as long at 8 rows as at 256 and capping would only cost throughput.
    fair_step_rows: int | None = None
    # Structured outputs: the largest constraint one request may hand the grammar compiler,
    # and the threads compiling grammars off the step loop.
    max_schema_bytes: int = 1_000_000
    max_schema_depth: int = 64
    num_grammar_threads: int = 2
    pooling_type: str | None = None  # last | mean | cls; default: the model's own files
    # Speculative decoding (vLLM's dict, the record, or the dict as JSON text as vLLM's
    # --speculative-config and KVBATCH_ENGINE_SPECULATIVE_CONFIG take it): see
    # engine/speculative_config.py.
    speculative_config: SpeculativeConfig | dict[str, Any] | str | None = None
    # Multi-LoRA (vLLM's arguments): requests may name PEFT adapters; up to ``max_loras`` of
    # them sit in device slots at once, each of rank at most ``max_lora_rank``. Adapters on
    # S3 are downloaded into ``lora_download_dir`` (default: a temporary directory).
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    lora_download_dir: str | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise EngineConfigError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_batched_tokens < 1:
            raise EngineConfigError("max_num_batched_tokens must be at least 1")
        if self.max_num_seqs < 1:
            raise EngineConfigError("max_num_seqs must be at least 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise EngineConfigError("num_kv_blocks must be at least 2")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise EngineConfigError(f"dtype must be auto or one of {sorted(_DTYPES)}")
        if self.load_format not in LOAD_FORMATS:
            raise EngineConfigError(f"load_format must be one of {LOAD_FORMATS}")
        if min(self.max_schema_bytes, self.max_schema_depth, self.num_grammar_threads) < 1:
            raise EngineConfigError(
                "max_schema_bytes, max_schema_depth and num_grammar_threads must be positive"
            )
        if self.pooling_type not in (None, "last", "mean", "cls"):
            raise EngineConfigError("pooling_type must be last, mean or cls")
        if self.max_loras < 1 or not 1 <= self.max_lora_rank <= 512:
            raise EngineConfigError("max_loras must be at least 1 and max_lora_rank in [1, 512]")
        if self.fair_step_rows is not None and self.fair_step_rows < 0:
            raise EngineConfigError("fair_step_rows must be 0 (off) or positive")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise EngineConfigError("gpu_memory_utilization must be in (0, 1]")
        if isinstance(self.speculative_config, str):
            try:
                self.speculative_config = json.loads(self.speculative_config)
            except ValueError as exc:
                raise EngineConfigError(f"speculative_config is not valid JSON: {exc}") from exc
            if not isinstance(self.speculative_config, dict):
                raise EngineConfigError("speculative_config must be a JSON object")
        if isinstance(self.speculative_config, dict):
            try:
                self.speculative_config = SpeculativeConfig.from_dict(self.speculative_config)
            except SpeculativeConfigError as exc:
                raise EngineConfigError(str(exc)) from exc

    @property
    def speculative(self) -> SpeculativeConfig | None:
        """The checked speculative settings (``__post_init__`` turned a dict into one)."""
        assert not isinstance(self.speculative_config, dict | str)
        return self.speculative_config

    @property
    def step_row_floor(self) -> int:
        """``fair_step_rows`` resolved for this device; 0: tenants' shares are off."""
        if self.fair_step_rows is not None:
            return self.fair_step_rows
        return 8 if self.torch_device.type == "cpu" else 0

    @property
    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype
