"""``kvbatch run-batch``: a batch file through one in-process engine, vLLM run-batch style.

Reads an OpenAI batch JSONL (a path or ``s3://bucket/key``), runs every line through one
engine, and writes one result line per input line, in input order: answers to the output
file and failures (400 lines, engine errors) to the errors file, in OpenAI's error-line
shape, as the Batch API splits them.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lora_request import LoRARequest
from jobs.storage import LocalStorage, S3Storage, Storage, WriterScope, read_lines
from jobs.wire.body_refusals import refusal_of
from jobs.wire.deep_json import DeepJSONError, load_deep, too_deep_rejection
from jobs.wire.line_check import rejection_of
from jobs.wire.lines import OutputLine, RequestLine, parse_input_line
from worker.engine_host import EngineHost
from worker.host_records import HostResult, Submission
from worker.line_parts import PendingLines, requests_of
from worker.output_lines import error_line, refused_line

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


def _parse(raw: bytes | None, line_no: int) -> RequestLine | OutputLine:
    """The line as a request, or (when it cannot be one) its error line."""
    if raw is None:
        return error_line(f"line-{line_no}", "line_too_long", "the line is too long")
    try:
        obj = json.loads(raw)
    except RecursionError:
        return _too_deep_line(raw, line_no)
    except ValueError:
        obj = None
    custom_id = f"line-{line_no}"
    if isinstance(obj, dict):
        custom_id = str(obj.get("custom_id") or custom_id)
        body = obj.get("body")
        refusal = refusal_of(str(obj.get("url")), body) if isinstance(body, dict) else None
        if refusal is not None:  # a feature we do not serve, named as the service names it
            return refused_line(custom_id, refusal.message, code=refusal.code, param=refusal.param)
    try:
        return parse_input_line(raw)
    except ValidationError as exc:
        rejection = rejection_of(exc)
        return refused_line(
            custom_id, rejection.message, code=rejection.code, param=rejection.param
        )


def _too_deep_line(raw: bytes, line_no: int) -> OutputLine:
    """A line nested deeper than ``json.loads`` goes: its 400, as intake words it."""
    try:
        obj = load_deep(raw)
    except DeepJSONError:
        return error_line(f"line-{line_no}", "invalid_json_line", "the line is not valid JSON")
    custom_id = f"line-{line_no}"
    if isinstance(obj, dict) and isinstance(obj.get("body"), dict):
        custom_id = str(obj.get("custom_id") or custom_id)
        rejection = too_deep_rejection(obj["body"])
        return refused_line(
            custom_id, rejection.message, code=rejection.code, param=rejection.param
        )
    return error_line(custom_id, "invalid_json_line", "the line is nested too deeply")


@dataclass(slots=True)
class RunCounts:
    answered: int = 0
    failed: int = 0


class _InOrderWriter:
    """Writes answers in input order although the engine finishes them in any order; each
    to the output file (a 200) or the errors file (anything else)."""

    def __init__(self, out: Any, errors: Any) -> None:
        self._out = out
        self._errors = errors
        self._ready: dict[int, OutputLine] = {}
        self._next = 0
        self.counts = RunCounts()

    def put(self, position: int, line: OutputLine) -> None:
        self._ready[position] = line
        while self._next in self._ready:
            ready = self._ready.pop(self._next)
            answered = ready.response is not None and ready.response.status_code == 200
            (self._out if answered else self._errors).write(
                ready.model_dump_json().encode() + b"\n"
            )
            if answered:
                self.counts.answered += 1
            else:
                self.counts.failed += 1
            self._next += 1


def run_batch(
    input_url: str | Path,
    output_url: str | Path,
    errors_url: str | Path,
    model_dir: str | Path,
    lora_modules: Mapping[str, str] | None = None,
    **engine_args: Any,
) -> RunCounts:
    """Answer every line of ``input_url`` into ``output_url`` and ``errors_url``.

    ``lora_modules`` (adapter name -> PEFT directory, vLLM's ``--lora-modules``): a line
    whose ``model`` names one runs under that adapter, with LoRA switched on."""
    adapters = {
        name: LoRARequest(name, int_id, path)
        for int_id, (name, path) in enumerate(sorted((lora_modules or {}).items()), start=1)
    }
    if adapters:
        engine_args = {**engine_args, "enable_lora": True}
    config = EngineConfig(model=str(model_dir), **engine_args)
    host = EngineHost(lambda: LLMEngine(config), stop_checker=lambda batches: {})
    host.start()
    try:
        with (
            _location(input_url) as (source, in_key),
            _location(output_url) as (sink, out_key),
            _location(errors_url) as (error_sink, errors_key),
            WriterScope(sink.writer(out_key)) as out,
            WriterScope(error_sink.writer(errors_key)) as errors,
        ):
            writer = _InOrderWriter(out, errors)
            run = _OfflineRun(host, writer, adapters)
            for raw in read_lines(source, in_key, MAX_LINE_BYTES):
                if raw != b"":
                    run.add(raw)
            run.finish()
    finally:
        host.close()
    return writer.counts


class _OfflineRun:
    """Lines in flight until the last of their requests' results is in and the line can be
    answered (in input order, by the writer)."""

    def __init__(
        self, host: EngineHost, writer: _InOrderWriter, adapters: Mapping[str, LoRARequest]
    ) -> None:
        self.host = host
        self.writer = writer
        self.adapters = adapters
        self.num_lines = 0
        self._results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
        self._pending = PendingLines("offline")

    def add(self, raw: bytes | None) -> None:
        """Submit one line (waiting for room in the engine), or answer it with its error."""
        position, self.num_lines = self.num_lines, self.num_lines + 1
        parsed = _parse(raw, self.num_lines)
        if isinstance(parsed, OutputLine):
            self.writer.put(position, parsed)
            return
        requests = requests_of(parsed, self.host.engine, self.adapters)
        if isinstance(requests, OutputLine):
            self.writer.put(position, requests)
            return
        keys = self._pending.add(position, parsed, len(requests))
        for key, request in zip(keys, requests, strict=True):
            submission = Submission(
                key,
                "offline",
                request.prompt,
                request.params,
                self._results.put,
                lora_request=request.lora_request,
            )
            self.host.submit(submission)
            while not self._results.empty():
                self._collect(self._results.get())

    def finish(self) -> None:
        while self._pending.pending:
            self._collect(self._results.get())

    def _collect(self, result: HostResult) -> None:
        done = self._pending.collect(result, self.host.engine.tokenizer)
        if done is not None:
            position, answer = done
            self.writer.put(position, answer.line)
