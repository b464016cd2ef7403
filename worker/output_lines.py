"""How each request of a shard ends up as a line of the output or the error file."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from engine.outputs import PoolingRequestOutput, RequestOutput
from engine.sampler import TokenLogprobs
from engine.tokenizer import Tokenizer
from jobs.state.ids import new_request_id
from jobs.state.shard_ledger import StopReason
from jobs.wire.embedding_bodies import EmbeddingBody
from jobs.wire.lines import LineError, OutputLine, RejectedLine, RequestLine, ResponseEnvelope
from jobs.wire.request_bodies import ChatCompletionBody, RequestBody
from jobs.wire.response_bodies import ResponsesBody
from jobs.wire.responses import (
    Choice,
    Completion,
    TokenLogprob,
    completion_body,
    embedding_list_body,
    error_body,
    response_body,
)
from worker.host_records import Failed, Finished, HostResult, Interrupted, Refused, Stopped


def _token_text(tokenizer: Tokenizer | None, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False) if tokenizer else str(token_id)


def _logprobs(
    tokenizer: Tokenizer | None, steps: list[TokenLogprobs] | None
) -> list[TokenLogprob] | None:
    if steps is None:
        return None
    return [
        TokenLogprob(
            token=_token_text(tokenizer, step.token_id),
            logprob=step.logprob,
            top=[(_token_text(tokenizer, t), lp) for t, lp in step.top],
        )
        for step in steps
    ]


def completion_of(output: RequestOutput, tokenizer: Tokenizer | None) -> Completion:
    """The plain values a response body needs, read off an engine output."""
    choices = [
        Choice(
            text=o.text,
            finish_reason="length" if o.finish_reason == "length" else "stop",
            logprobs=_logprobs(tokenizer, o.logprobs),
        )
        for o in output.outputs
    ]
    return Completion(
        choices=choices,
        prompt_tokens=len(output.prompt_token_ids),
        completion_tokens=output.num_output_tokens,
        cached_tokens=output.num_cached_tokens,
    )


def success_line(
    custom_id: str, body: RequestBody | ResponsesBody, completion: Completion
) -> OutputLine:
    created = int(time.time())
    if isinstance(body, ResponsesBody):
        payload = response_body(
            completion,
            response_id=f"resp_{secrets.token_hex(24)}",
            message_id=f"msg_{secrets.token_hex(24)}",
            model=body.model,
            created=created,
            request=body.model_dump(mode="json", exclude_none=True, by_alias=True),
        )
    else:
        chat = isinstance(body, ChatCompletionBody)
        payload = completion_body(
            completion,
            chat=chat,
            response_id=f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}",
            model=body.model,
            created=created,
        )
    return _line(custom_id, ResponseEnvelope(status_code=200, request_id=_req(), body=payload))


def embedding_line(
    custom_id: str, body: EmbeddingBody, outputs: list[PoolingRequestOutput]
) -> OutputLine:
    """One embeddings line's answer: every input's vector, in input order."""
    payload = embedding_list_body(
        [o.outputs.embedding for o in outputs],
        model=body.model,
        prompt_tokens=sum(len(o.prompt_token_ids) for o in outputs),
        encoding_format=body.encoding_format or "float",
    )
    return _line(custom_id, ResponseEnvelope(status_code=200, request_id=_req(), body=payload))


def refused_line(
    custom_id: str, message: str, *, code: str = "invalid_request", param: str | None = None
) -> OutputLine:
    """A request the endpoint refuses (a bad parameter, too long for the context, bad token
    ids): a 400 with OpenAI's error body, as the API would answer it."""
    body = error_body(message, code=code, param=param)
    return _line(custom_id, ResponseEnvelope(status_code=400, request_id=_req(), body=body))


def rejected_line(line: RejectedLine) -> OutputLine:
    """The 400 of a line whose body failed validation at intake."""
    rejection = line.rejection
    return refused_line(
        line.custom_id, rejection.message, code=rejection.code, param=rejection.param
    )


def error_line(custom_id: str, code: str, message: str) -> OutputLine:
    """A request that did not run to the end: ``response: null`` and an ``error``."""
    return OutputLine(
        id=new_request_id(), custom_id=custom_id, error=LineError(code=code, message=message)
    )


def stopped_line(custom_id: str, reason: str) -> OutputLine:
    """A request its batch's stop (cancel, expiry, withdrawal) ended before its answer."""
    stop = StopReason(reason)
    return error_line(custom_id, stop.code, stop.message)


@dataclass(slots=True)
class LineAnswer:
    line: OutputLine
    ok: bool  # a 200 for the output file; else the error file
    counts: dict[str, int]  # what the line adds to its batch's counts and usage


def line_answer(
    line: RequestLine, results: list[HostResult], tokenizer: Tokenizer | None
) -> LineAnswer:
    """A line's answer from the results of its engine requests (one, or one per input of an
    embeddings line). One part that did not succeed makes the whole line's answer, as an
    endpoint that refuses one input of a request refuses the request."""
    failed = {"failed": 1}
    outputs: list[RequestOutput | PoolingRequestOutput] = []
    for number, result in enumerate(results):
        where = f"input {number}: " if len(results) > 1 else ""
        match result:
            case Finished(output=output):
                outputs.append(output)
            case Stopped(reason=reason):
                return LineAnswer(stopped_line(line.custom_id, reason), False, failed)
            case Refused(message=message):
                param = "input" if isinstance(line.body, EmbeddingBody) else None
                refused = refused_line(line.custom_id, f"{where}{message}", param=param)
                return LineAnswer(refused, False, failed)
            case Failed(message=message):
                error = error_line(line.custom_id, "engine_error", f"{where}{message}")
                return LineAnswer(error, False, failed)
            case Interrupted():
                error = error_line(line.custom_id, "engine_error", f"{where}no output")
                return LineAnswer(error, False, failed)
    if isinstance(line.body, EmbeddingBody):
        pooled = [o for o in outputs if isinstance(o, PoolingRequestOutput)]
        assert len(pooled) == len(outputs), "an embeddings line runs pooling requests"
        tokens = sum(len(o.prompt_token_ids) for o in pooled)
        answer = embedding_line(line.custom_id, line.body, pooled)
        return LineAnswer(answer, True, {"completed": 1, "input_tokens": tokens})
    (output,) = outputs
    assert isinstance(output, RequestOutput), "a generation line runs a generation request"
    completion = completion_of(output, tokenizer)
    counts = {
        "completed": 1,
        "input_tokens": completion.prompt_tokens,
        "cached_tokens": completion.cached_tokens,
        "output_tokens": completion.completion_tokens,
    }
    return LineAnswer(success_line(line.custom_id, line.body, completion), True, counts)


def _req() -> str:
    return f"req_{secrets.token_hex(16)}"


def _line(custom_id: str, envelope: ResponseEnvelope) -> OutputLine:
    return OutputLine(id=new_request_id(), custom_id=custom_id, response=envelope)
