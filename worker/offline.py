"""``kvbatch run-batch``: a batch file through one in-process engine, vLLM run-batch style.

Reads an OpenAI batch JSONL (a path or ``s3://bucket/key``), runs every line through one
engine, and writes one result line per input line, in input order, to the output (a path
or ``s3://``): successes and errors in the same file, as vLLM's ``run_batch`` does.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from jobs.lines import ChatLine, CompletionLine, OutputLine, parse_input_line
from jobs.storage import LocalStorage, S3Storage, Storage, WriterScope, read_lines
from worker.engine_host import EngineHost, HostResult, Submission
from worker.output_lines import completion_of, error_line, refused_line, success_line
from worker.sampling import engine_request

MAX_LINE_BYTES = 200_000_000


@contextmanager
def _location(url: str | Path) -> Iterator[tuple[Storage, str]]:
    """Storage and key for a local path or an ``s3://bucket/key`` URL (boto3's own config)."""
    text = str(url)
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ValueError(f"expected s3://bucket/key, got {text!r}")
        storage: Storage = S3Storage(bucket)
    else:
        path = Path(text).resolve()
        storage, key = LocalStorage(path.parent), path.name
    try:
        yield storage, key
    finally:
        storage.close()


def _parse(raw: bytes | None, line_no: int) -> ChatLine | CompletionLine | OutputLine:
    """The line as a request, or (when it cannot be one) its error line."""
    if raw is None:
        return error_line(f"line-{line_no}", "line_too_long", "the line is too long")
    try:
        return parse_input_line(raw)
    except ValidationError as exc:
        try:
            custom_id = str(json.loads(raw).get("custom_id") or f"line-{line_no}")
        except (ValueError, AttributeError):
            custom_id = f"line-{line_no}"
        return refused_line(custom_id, f"invalid request line: {exc.errors()[0]['msg']}")


class _InOrderWriter:
    """Writes answers in input order although the engine finishes them in any order."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._ready: dict[int, OutputLine] = {}
        self._next = 0

    def put(self, position: int, line: OutputLine) -> None:
        self._ready[position] = line
        while self._next in self._ready:
            self._out.write(self._ready.pop(self._next).model_dump_json().encode() + b"\n")
            self._next += 1


def run_batch(
    input_url: str | Path, output_url: str | Path, model_dir: str | Path, **engine_args: Any
) -> int:
    """Answer every line of ``input_url`` into ``output_url``; returns the number of lines."""
    config = EngineConfig(model=str(model_dir), **engine_args)
    host = EngineHost(lambda: LLMEngine(config), stop_checker=lambda batches: {})
    host.start()
    try:
        with (
            _location(input_url) as (source, in_key),
            _location(output_url) as (sink, out_key),
            WriterScope(sink.writer(out_key)) as out,
        ):
            run = _OfflineRun(host, _InOrderWriter(out))
            for raw in read_lines(source, in_key, MAX_LINE_BYTES):
                if raw != b"":
                    run.add(raw)
            run.finish()
    finally:
        host.close()
    return run.num_lines


class _OfflineRun:
    def __init__(self, host: EngineHost, writer: _InOrderWriter) -> None:
        self.host = host
        self.writer = writer
        self.num_lines = 0
        self._results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
        self._requests: dict[int, ChatLine | CompletionLine] = {}

    def add(self, raw: bytes | None) -> None:
        """Submit one line (waiting for room in the engine), or answer it with its error."""
        position, self.num_lines = self.num_lines, self.num_lines + 1
        parsed = _parse(raw, self.num_lines)
        if isinstance(parsed, OutputLine):
            self.writer.put(position, parsed)
            return
        try:
            request = engine_request(parsed.body)
        except ValueError as exc:
            self.writer.put(position, refused_line(parsed.custom_id, str(exc)))
            return
        self._requests[position] = parsed
        submission = Submission(
            str(position),
            "offline",
            request.prompt,
            request.params,
            self._results.put,
            fill_context=request.fill_context,
        )
        self.host.submit(submission)
        while not self._results.empty():
            self._answer(self._results.get())

    def finish(self) -> None:
        while self._requests:
            self._answer(self._results.get())

    def _answer(self, result: HostResult) -> None:
        position = int(result.request_id)
        line = self._requests.pop(position)
        if result.refused is not None:
            self.writer.put(position, refused_line(line.custom_id, result.refused))
        elif result.output is None or result.failed is not None:
            self.writer.put(
                position, error_line(line.custom_id, "engine_error", str(result.failed))
            )
        else:
            completion = completion_of(result.output, self.host.engine.tokenizer)
            self.writer.put(position, success_line(line.custom_id, line.body, completion))
