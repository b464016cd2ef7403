"""kvbatch's paged-KV continuous-batching engine.

``from engine import LLM, SamplingParams`` is the public surface. The names load lazily so that
importing a light module (``engine.request``, ``engine.sampling_params``) does not pull in the
model runner and torch's model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.llm import LLM
    from engine.llm_engine import InvalidRequestError, LLMEngine
    from engine.lora_request import LoRAAdapterError, LoRARequest
    from engine.outputs import CompletionOutput, RequestOutput
    from engine.sampling_params import SamplingParams, SamplingParamsError
    from engine.structured_outputs import StructuredOutputsError, StructuredOutputsParams

_EXPORTS = {
    "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "InvalidRequestError": "engine.llm_engine",
    "EngineConfig": "engine.config",
    "LoRAAdapterError": "engine.lora_request",
    "LoRARequest": "engine.lora_request",
    "CompletionOutput": "engine.outputs",
    "RequestOutput": "engine.outputs",
    "SamplingParams": "engine.sampling_params",
    "SamplingParamsError": "engine.sampling_params",
    "StructuredOutputsError": "engine.structured_outputs",
    "StructuredOutputsParams": "engine.structured_outputs",
}

__all__ = [
    "LLM",
    "CompletionOutput",
    "EngineConfig",
    "InvalidRequestError",
    "LLMEngine",
    "LoRAAdapterError",
    "LoRARequest",
    "RequestOutput",
    "SamplingParams",
    "SamplingParamsError",
    "StructuredOutputsError",
    "StructuredOutputsParams",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
