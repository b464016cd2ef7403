"""The engine's LoRA adapters: read and checked once on the host, copied into device slots.

Reading an adapter (files, JSON, safetensors, shape checks) happens when a request first
names it, in ``add_request``, so a bad adapter fails that request alone and the step loop
never touches a file. The step loop only copies a host copy into a slot the scheduler just
assigned (``load_pending``): a few small device copies, queued before the step's kernels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from engine.lora_adapter import LoRAAdapter, LoRAAdapterError, load_adapter, local_adapter_dir
from engine.lora_request import LoRARequest
from engine.lora_slots import LoRASlotTable
from engine.models.lora import write_slot


class LoRAManager:
    def __init__(
        self,
        model: nn.Module,
        slots: LoRASlotTable,
        max_rank: int,
        device: torch.device,
        download_dir: str | None,
    ) -> None:
        self.model = model
        self.slots = slots
        self.max_rank = max_rank
        self.pin = device.type == "cuda"
        self._download_dir = Path(download_dir) if download_dir else None
        # Every adapter seen, by int_id; kept on the host for the engine's lifetime.
        self.adapters: dict[int, LoRAAdapter] = {}

    def register(self, request: LoRARequest) -> LoRAAdapter:
        """The adapter of ``request``, read and checked on first use; raises
        ``LoRAAdapterError`` for one that cannot run here."""
        known = self.adapters.get(request.int_id)
        if known is not None:
            if known.request.path != request.path:
                raise LoRAAdapterError(
                    f"LoRA int_id {request.int_id} already names adapter "
                    f"{known.request.name!r} at {known.request.path!r}, not {request.path!r}"
                )
            return known
        adapter_dir = local_adapter_dir(request.path, self.download_dir)
        adapter = load_adapter(request, adapter_dir, self.model, self.max_rank, self.pin)
        self.adapters[request.int_id] = adapter
        return adapter

    @property
    def download_dir(self) -> Path:
        if self._download_dir is None:
            self._download_dir = Path(tempfile.mkdtemp(prefix="kvbatch-lora-"))
        return self._download_dir

    def load_pending(self) -> int:
        """Copy the adapters the scheduler just gave slots into them; returns how many."""
        pending = self.slots.take_pending()
        for slot, int_id in pending:
            write_slot(self.model, slot, self.adapters[int_id].weights)
        return len(pending)
