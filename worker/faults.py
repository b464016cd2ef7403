"""Fault injection for the reliability tests: an engine that breaks on a marked request.

Off unless ``KVBATCH_FAULT_CRASH_MARKER`` is set. A request whose prompt holds the marker
makes the engine raise a ``RuntimeError`` (not the ``ValueError`` of a request it refuses),
exactly as a bug in the engine would: when it is admitted (``KVBATCH_FAULT_CRASH_AT=admit``)
or in every step it takes part in after its first (``step``: the whole step fails, with
every other request in it). The tests check that only the marked requests fail and that
the worker and every other batch carry on.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

from engine.config import EngineConfig
from engine.llm_engine import EngineOutput, LLMEngine
from engine.outputs import RequestOutput

CrashPoint = Literal["admit", "step"]


class InjectedEngineFault(RuntimeError):
    """What the fault-injecting engine raises for a marked request."""


class FaultInjectingEngine(LLMEngine):
    """The real engine, except that a prompt containing ``marker`` breaks it at ``at``."""

    def __init__(self, config: EngineConfig, marker: str, at: CrashPoint = "admit") -> None:
        super().__init__(config)
        self.marker = marker
        self.at = at
        self._marked: set[Hashable] = set()

    def add_request(
        self, request_id: Hashable, prompt: str | list[int], *args: Any, **kw: Any
    ) -> None:
        text = prompt
        if isinstance(prompt, list) and self.tokenizer is not None:
            text = self.tokenizer.decode(prompt)
        if isinstance(text, str) and self.marker in text:
            if self.at == "admit":
                raise InjectedEngineFault(f"injected engine fault for {request_id}")
            self._marked.add(request_id)
        super().add_request(request_id, prompt, *args, **kw)

    def step(self) -> list[EngineOutput]:
        if marked := self.running_request_ids() & self._marked:
            raise InjectedEngineFault(
                f"injected engine fault in a step with {sorted(map(str, marked))}"
            )
        return super().step()

    def abort_request(self, request_id: Hashable) -> RequestOutput | None:
        self._marked.discard(request_id)
        return super().abort_request(request_id)
