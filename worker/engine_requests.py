"""A batch line's request body as engine requests: each prompt and its SamplingParams
(or PoolingParams, for an embedding: one engine request per input).

Defaults follow OpenAI, not the engine: ``temperature`` 1, ``top_p`` 1, ``n`` 1, and no
``max_tokens`` means "the rest of the context" (``max_tokens=None``: the engine fills it in
once the prompt is tokenized).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.lora_request import LoRARequest
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams
from engine.structured_outputs import StructuredOutputsParams
from jobs.wire.embedding_bodies import EmbeddingBody
from jobs.wire.request_bodies import ChatCompletionBody, CompletionBody, RequestBody
from jobs.wire.response_bodies import JsonObjectTextFormat, JsonSchemaTextFormat, ResponsesBody
from worker.host_records import ChatPrompt, PromptInput


@dataclass(slots=True)
class EngineRequest:
    prompt: PromptInput
    params: SamplingParams | PoolingParams
    # The adapter the line's ``model`` names (worker/adapter_table.py); None: the base model.
    lora_request: LoRARequest | None = None


def _num_logprobs(body: RequestBody) -> int | None:
    if isinstance(body, ChatCompletionBody):
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


def _prompt(body: RequestBody) -> PromptInput:
    if isinstance(body, CompletionBody):
        return body.prompt
    messages = []
    for message in body.messages:
        content = message.content
        text = content if isinstance(content, str) else "\n".join(p.text for p in content)
        entry = {"role": message.role, "content": text}
        if message.name is not None:
            entry["name"] = message.name
        messages.append(entry)
    return ChatPrompt(messages)


def _constraint(body: RequestBody) -> StructuredOutputsParams | None:
    """The body's output constraint, named by the field it came from (for error messages)."""
    if isinstance(body, ChatCompletionBody) and body.response_format is not None:
        fmt = body.response_format
        if fmt.type == "json_object":
            return StructuredOutputsParams(json_object=True, origin="response_format")
        if fmt.type == "json_schema":
            schema = fmt.json_schema.json_schema
            origin = "response_format.json_schema.schema"
            if schema is None:  # OpenAI: no schema means any JSON object
                return StructuredOutputsParams(json_object=True, origin=origin)
            return StructuredOutputsParams(json=schema, origin=origin)
    if body.structured_outputs is not None:
        so = body.structured_outputs
        return StructuredOutputsParams(
            json=so.json_schema,
            json_object=bool(so.json_object),
            regex=so.regex,
            choice=so.choice,
            grammar=so.grammar,
            origin="structured_outputs",
        )
    if body.guided_json is not None:
        return StructuredOutputsParams(json=body.guided_json, origin="guided_json")
    if body.guided_regex is not None:
        return StructuredOutputsParams(regex=body.guided_regex, origin="guided_regex")
    if body.guided_choice is not None:
        return StructuredOutputsParams(choice=body.guided_choice, origin="guided_choice")
    return None


def engine_request(body: RequestBody) -> EngineRequest:
    """Map every supported body field onto the engine; raises SamplingParamsError if invalid."""
    limit = body.token_limit
    params = SamplingParams(
        n=body.n or 1,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
        stop=body.stop_list,
        stop_token_ids=list(body.stop_token_ids or []),
        max_tokens=limit,
        min_tokens=body.min_tokens or 0,
        ignore_eos=bool(body.ignore_eos),
        logprobs=_num_logprobs(body),
        structured_outputs=_constraint(body),
    )
    return EngineRequest(_prompt(body), params)


def _text_constraint(body: ResponsesBody) -> StructuredOutputsParams | None:
    """``text.format`` as an output constraint, named by the field it came from."""
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, JsonObjectTextFormat):
        return StructuredOutputsParams(json_object=True, origin="text.format")
    if isinstance(fmt, JsonSchemaTextFormat):
        return StructuredOutputsParams(json=fmt.json_schema, origin="text.format.schema")
    return None


def responses_request(body: ResponsesBody) -> EngineRequest:
    """A Responses line: its messages through the chat template, one sample."""
    params = SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        max_tokens=body.max_output_tokens,
        structured_outputs=_text_constraint(body),
    )
    return EngineRequest(ChatPrompt(body.messages()), params)


def embedding_requests(body: EmbeddingBody) -> list[EngineRequest]:
    """An embeddings line: one prefill-only request per input, in input order."""
    params = PoolingParams(dimensions=body.dimensions)
    return [EngineRequest(item, params) for item in body.inputs]


def engine_requests(body: RequestBody | EmbeddingBody | ResponsesBody) -> list[EngineRequest]:
    """Every engine request one line's body makes; raises ValueError for a bad value."""
    if isinstance(body, EmbeddingBody):
        return embedding_requests(body)
    if isinstance(body, ResponsesBody):
        return [responses_request(body)]
    return [engine_request(body)]
