"""A batch line's engine requests in flight, until the last one's result answers the line.

A line makes one engine request, or one per input (an embeddings line). Each request is
named by its :class:`LinePart` (the run's scope, the line's position, the part), which the
engine carries through to its output, so a result finds its line without parsing an id.
The service (``worker/shard_runner.py``) and ``kvbatch run-batch`` (``worker/offline.py``)
both answer lines through :meth:`PendingLines.collect`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from engine.llm_engine import InvalidRequestError, LLMEngine
from engine.lora_request import LoRARequest
from engine.tokenizer import Tokenizer
from jobs.wire.embedding_bodies import EmbeddingBody
from jobs.wire.lines import OutputLine, RequestLine
from worker.engine_requests import EngineRequest, engine_requests
from worker.host_records import HostResult
from worker.output_lines import LineAnswer, line_answer, refused_line


@dataclass(frozen=True, slots=True)
class LinePart:
    scope: Hashable  # unique among the runs sharing one engine: (batch id, shard) or "offline"
    position: int  # the line's place in its file or shard
    part: int  # which of the line's engine requests


@dataclass(slots=True)
class PendingLines:
    scope: Hashable
    _lines: dict[int, RequestLine] = field(default_factory=dict)
    _parts: dict[int, list[HostResult | None]] = field(default_factory=dict)
    pending: set[LinePart] = field(default_factory=set)  # requests still in the engine

    def add(self, position: int, line: RequestLine, num_parts: int) -> list[LinePart]:
        """Expect ``num_parts`` results for this line; the keys to submit them under."""
        assert num_parts >= 1 and position not in self._lines
        self._lines[position] = line
        self._parts[position] = [None] * num_parts
        keys = [LinePart(self.scope, position, part) for part in range(num_parts)]
        self.pending.update(keys)
        return keys

    def collect(
        self, result: HostResult, tokenizer: Tokenizer | None
    ) -> tuple[int, LineAnswer] | None:
        """File one result under its line; the line's position and answer once all its
        parts are in, else None."""
        key = result.request_id
        assert isinstance(key, LinePart) and key in self.pending, "a result of this run"
        self.pending.remove(key)
        parts = self._parts[key.position]
        parts[key.part] = result
        if any(p is None for p in parts):
            return None
        del self._parts[key.position]
        line = self._lines.pop(key.position)
        answer = line_answer(line, [p for p in parts if p is not None], tokenizer)
        return key.position, answer


def requests_of(
    line: RequestLine, engine: LLMEngine, adapters: Mapping[str, LoRARequest] | None = None
) -> list[EngineRequest] | OutputLine:
    """The engine requests a line makes, or its 400 line when a value is out of range.

    A line whose ``model`` is one of ``adapters`` (this worker's, by name) runs under that
    adapter; the engine reads and checks it when the request is added, and refuses it there
    (a 400 line) when it cannot run on this model.
    """
    try:
        requests = engine_requests(line.body)
        lora = (adapters or {}).get(line.body.model)
        for request in requests:
            request.lora_request = lora
        if isinstance(line.body, EmbeddingBody):
            engine.check_dimensions(line.body.dimensions)
    except ValueError as exc:
        param = "dimensions" if isinstance(exc, InvalidRequestError) else None
        return refused_line(line.custom_id, str(exc), param=param)
    return requests
