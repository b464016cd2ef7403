"""What the engine hands back for each finished request, in vLLM's shape."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from engine.sampler import TokenLogprobs


@dataclass(slots=True)
class CompletionOutput:
    """One of the ``n`` samples of a request."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    logprobs: list[TokenLogprobs] | None = None


@dataclass(slots=True)
class RequestOutput:
    request_id: Hashable  # the key the caller gave ``add_request``
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None  # set when the engine could not run the request at all

    @property
    def num_output_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


@dataclass(slots=True)
class PoolingOutput:
    embedding: list[float]


@dataclass(slots=True)
class PoolingRequestOutput:
    """One embedding request's result, in vLLM's shape: ``output.outputs.embedding``."""

    request_id: Hashable  # the key the caller gave ``add_request``
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: PoolingOutput
    finished: bool = True
