"""Fault injection for the reliability tests: an engine that breaks on a marked request.

Off unless ``KVBATCH_FAULT_CRASH_MARKER`` is set. The marked request goes through the real
admission path and the engine raises a ``RuntimeError`` (not the ``ValueError`` of a request
it refuses), exactly as a bug in the engine would; the tests check that only that request
fails and that the worker and every other batch carry on.
"""

from __future__ import annotations

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams


class InjectedEngineFault(RuntimeError):
    """What the fault-injecting engine raises for a marked request."""


class FaultInjectingEngine(LLMEngine):
    """The real engine, except that admitting a prompt containing ``marker`` raises."""

    def __init__(self, config: EngineConfig, marker: str) -> None:
        super().__init__(config)
        self.marker = marker

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        priority: int = 0,
    ) -> None:
        text = prompt
        if isinstance(prompt, list) and self.tokenizer is not None:
            text = self.tokenizer.decode(prompt)
        if isinstance(text, str) and self.marker in text:
            raise InjectedEngineFault(f"injected engine fault for {request_id}")
        super().add_request(request_id, prompt, params, priority)
