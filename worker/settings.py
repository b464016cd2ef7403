"""What a worker derives from the settings (jobs/settings.py): the name it serves, the queues
it consumes, its LoRA adapters and the engine it runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.config import EngineConfig
from engine.lora_request import LoRARequest
from jobs.settings import Settings
from worker.adapter_table import adapter_requests


def served_name(settings: Settings) -> str:
    """The served model name: ``worker_served_name``; else the ``KVBATCH_MODELS`` name whose
    directory is ``worker_model``; else that directory's name (the name ``kvbatch up``
    serves a model under)."""
    worker = settings.worker
    if worker.worker_served_name:
        return worker.worker_served_name
    own = Path(worker.worker_model).resolve()
    for name, path in sorted(settings.serving.models.items()):
        if Path(path).resolve() == own:
            return name
    return Path(worker.worker_model).name


def consumed_queues(settings: Settings) -> list[str]:
    """Housekeeping, and the shard queue of the model this worker serves."""
    return settings.model_router().worker_queues(served_name(settings))


def worker_adapters(settings: Settings) -> dict[str, LoRARequest]:
    """The ``KVBATCH_LORA_ADAPTERS`` entries of the model this worker serves."""
    return adapter_requests(settings.serving.lora_adapters, served_name(settings))


def worker_engine_config(settings: Settings) -> EngineConfig:
    """The engine this worker runs: the engine section on ``worker_model``, with LoRA on
    when adapters of its model are registered (``KVBATCH_ENGINE_MAX_LORAS`` and
    ``KVBATCH_ENGINE_MAX_LORA_RANK`` size it)."""
    config = replace(settings.worker.engine, model=settings.worker.worker_model)
    if worker_adapters(settings) and not config.enable_lora:
        config = replace(config, enable_lora=True)
    return config
