"""How each request of a shard ends up as a line of the output or the error file."""

from __future__ import annotations

import secrets
import time

from engine.outputs import PoolingRequestOutput, RequestOutput
from engine.sampler import TokenLogprobs
from engine.tokenizer import Tokenizer
from jobs.embedding_bodies import EmbeddingBody
from jobs.ids import new_request_id
from jobs.lines import LineError, OutputLine, ResponseEnvelope
from jobs.request_bodies import ChatCompletionBody, RequestBody
from jobs.response_bodies import ResponsesBody
from jobs.responses import (
    Choice,
    Completion,
    TokenLogprob,
    chat_completion_body,
    embedding_list_body,
    error_body,
    response_body,
    text_completion_body,
)


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
            request=body.model_dump(mode="json", exclude_none=True),
        )
    elif isinstance(body, ChatCompletionBody):
        payload = chat_completion_body(
            completion,
            response_id=f"chatcmpl-{secrets.token_hex(12)}",
            model=body.model,
            created=created,
        )
    else:
        payload = text_completion_body(
            completion,
            response_id=f"cmpl-{secrets.token_hex(12)}",
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


def error_line(custom_id: str, code: str, message: str) -> OutputLine:
    """A request that did not run to the end: ``response: null`` and an ``error``."""
    return OutputLine(
        id=new_request_id(), custom_id=custom_id, error=LineError(code=code, message=message)
    )


def _req() -> str:
    return f"req_{secrets.token_hex(16)}"


def _line(custom_id: str, envelope: ResponseEnvelope) -> OutputLine:
    return OutputLine(id=new_request_id(), custom_id=custom_id, response=envelope)
