"""Which LoRA adapter a request runs under: vLLM's ``LoRARequest(name, int_id, path)``."""

from __future__ import annotations

from dataclasses import dataclass


class LoRAAdapterError(ValueError):
    """An adapter that cannot run on this engine: missing or corrupt files, a rank over
    ``max_lora_rank``, an unsupported PEFT feature, or shapes of another base model.

    Declared here, beside the request, so that code which only names adapters (a worker's
    adapter table, read by its Celery configuration and so by Flower) need not import torch.
    """


@dataclass(frozen=True, slots=True)
class LoRARequest:
    """A PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``), a
    local path or an ``s3://`` prefix.

    ``int_id`` is the adapter's identity inside the engine: it keys the loaded weights, the
    device slot and the prefix cache (blocks computed under one adapter are never reused
    under another), so one engine must never see two different adapters with the same id.
    ``name`` is what outputs and logs call it.
    """

    name: str
    int_id: int
    path: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a LoRARequest needs a name")
        if isinstance(self.int_id, bool) or not isinstance(self.int_id, int) or self.int_id < 1:
            raise ValueError(f"LoRARequest int_id must be a positive integer, got {self.int_id!r}")
        if not self.path:
            raise ValueError("a LoRARequest needs the adapter's path")
