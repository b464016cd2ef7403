"""The typed plan one scheduler step hands to the model runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step: compute ``token_ids`` at positions
    ``start_position .. start_position + len(token_ids) - 1``.

    ``block_ids`` is the request's whole block table after this step's allocation, so slot of
    position ``p`` is ``block_ids[p // block_size] * block_size + p % block_size``.
    ``sample`` is true when the chunk reaches the request's last token: the runner returns a
    logits row for it and the engine samples the next token. A chunk of a longer prefill
    (chunked prefill) only fills the cache.
    """

    request: Request
    token_ids: list[int]
    start_position: int
    block_ids: list[int]
    sample: bool
    num_new_tokens: int = field(init=False)  # len(token_ids), read many times per step

    def __post_init__(self) -> None:
        self.num_new_tokens = len(self.token_ids)


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def sampled_requests(self) -> list[Request]:
        return [s.request for s in self.scheduled if s.sample]

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
