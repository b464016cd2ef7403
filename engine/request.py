"""One sequence inside the engine: its tokens, how many of them have KV in the cache, its state."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NewType

from engine.lora_request import LoRARequest
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams

RequestId = NewType("RequestId", str)


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(self)


@dataclass(slots=True, eq=False)
class Request:
    """A sequence the scheduler moves through WAITING -> RUNNING (<-> PREEMPTED) -> FINISHED_*.

    ``num_computed_tokens`` counts the tokens whose K/V sit in the cache; each step it catches
    up with ``num_tokens`` by at most the scheduler's token budget::

        token_ids:   [ p0 p1 p2 ... p(P-1) | o0 o1 ... ]   prompt, then sampled outputs
                     |<-- num_computed -->|<- to do ->|

    ``parent`` is set on the 2nd..nth sample of an ``n > 1`` request: such a child shares the
    parent's full prompt blocks (ref-counted) instead of computing them again.

    ``tenant`` is whose request it is, for the tenants' shares of a step (any hashable the
    caller names; ``None`` is one tenant like any other).

    ``lora_request`` runs it under a LoRA adapter; ``lora_slot`` is the device slot holding
    that adapter while the request runs (set and cleared by the scheduler), -1 otherwise.
    """

    request_id: RequestId
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = 0.0
    priority: int = 0  # lower runs first, then FCFS by arrival
    parent: Request | None = None
    pooling_params: PoolingParams | None = None  # set: prefill only, pooled, never sampled
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first schedule
    num_preemptions: int = 0
    block_hashes: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    # Guessed next tokens for the next step to verify (speculative decoding); never part of
    # ``token_ids`` until the target model agrees.
    draft_token_ids: list[int] = field(default_factory=list)
    lora_request: LoRARequest | None = None
    lora_slot: int = -1
    tenant: Hashable | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def block_hash_keys(self) -> tuple[object, ...]:
        """What besides the tokens decides this request's K/V: its adapter (so the prefix
        cache never hands one adapter's blocks to another, or to the base model)."""
        return () if self.lora_request is None else ("lora", self.lora_request.int_id)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    @property
    def max_tokens(self) -> int:
        limit = self.sampling_params.max_tokens
        assert limit is not None, "the engine resolves max_tokens=None when a request enters"
        return limit

    @property
    def is_decoding(self) -> bool:
        """Every token but the last has its K/V cached: the next step is a decode."""
        return self.num_computed_tokens == self.num_tokens - 1

    def check_token_stop(self) -> RequestStatus | None:
        """The finished state implied by the last sampled token, if any (stop strings are
        checked later, on text, by the detokenizer)."""
        params = self.sampling_params
        if self.num_output_tokens >= self.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if self.num_output_tokens <= params.min_tokens:
            return None
        last = self.token_ids[-1]
        if not params.ignore_eos and last == self.eos_token_id:
            return RequestStatus.FINISHED_STOPPED
        if last in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        return None
