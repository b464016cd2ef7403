"""The LoRA adapters one worker runs: the ``KVBATCH_LORA_ADAPTERS`` entries of its model.

Each becomes the engine's ``LoRARequest``. Its ``int_id`` (the engine's key for the loaded
weights, the device slot and the prefix cache) is the adapter's place among all the
deployment's adapters in name order, so it is the same in every worker and one id never
names two adapters in one engine.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.lora_request import LoRARequest
from jobs.adapters import RegisteredAdapter


def adapter_requests(
    adapters: Mapping[str, RegisteredAdapter], served_model: str
) -> dict[str, LoRARequest]:
    """The adapters of ``served_model``, by the name a line's ``model`` uses."""
    return {
        name: LoRARequest(name, int_id, adapters[name].path)
        for int_id, name in enumerate(sorted(adapters), start=1)
        if adapters[name].base == served_model
    }
