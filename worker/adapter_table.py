"""The LoRA adapters one worker runs: the ``KVBATCH_LORA_ADAPTERS`` entries of its model.

Each becomes the engine's ``LoRARequest``. Its ``int_id`` (the engine's key for the loaded
weights, the device slot and the prefix cache) is the adapter's place among all the
deployment's adapters in name order, so it is the same in every worker and one id never
names two adapters in one engine.

The worker reads every adapter of its model while its engine loads (:func:`preload_adapters`),
so an S3 download does not stall the steps of other lines later; an adapter that cannot run
is logged there and answers each of its lines with a 400 error line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.lora_request import LoRAAdapterError, LoRARequest
from jobs.adapters import RegisteredAdapter

if TYPE_CHECKING:  # the engine's module imports torch: worker.celeryconfig reads this one
    from engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)


def adapter_requests(
    adapters: Mapping[str, RegisteredAdapter], served_model: str
) -> dict[str, LoRARequest]:
    """The adapters of ``served_model``, by the name a line's ``model`` uses."""
    return {
        name: LoRARequest(name, int_id, adapters[name].path)
        for int_id, name in enumerate(sorted(adapters), start=1)
        if adapters[name].base == served_model
    }


def preload_adapters(engine: LLMEngine, adapters: Mapping[str, LoRARequest]) -> list[str]:
    """Read and check each adapter into ``engine`` ahead of its lines; the names of those
    that cannot run here (logged: their lines are refused one by one when they come, and a
    download that failed for a passing reason is tried again then)."""
    if not adapters:
        return []
    refused = []
    for name, request in sorted(adapters.items()):
        try:
            engine.add_lora(request)
        except LoRAAdapterError as exc:
            log.warning("LoRA adapter %r cannot run on this model: %s", name, exc)
            refused.append(name)
        except Exception:
            log.exception("reading LoRA adapter %r failed", name)
            refused.append(name)
    return refused
