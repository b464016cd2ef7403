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

    A speculative step verifies guesses: the last ``num_draft_tokens`` of ``token_ids`` are
    drafts past the request's real tokens, and the runner returns ``1 + num_draft_tokens``
    logits rows for it (one per draft, one for the token after them)::

        token_ids:  [ t(n-1) | d1 d2 d3 ]     positions n-1 .. n+2
        logits:       row 0    row 1..3       row i checks d(i+1); row 3 gives the bonus
    """

    request: Request
    token_ids: list[int]
    start_position: int
    block_ids: list[int]
    sample: bool
    num_draft_tokens: int = 0
    num_new_tokens: int = field(init=False)  # len(token_ids), read many times per step

    def __post_init__(self) -> None:
        self.num_new_tokens = len(self.token_ids)
        assert self.num_draft_tokens == 0 or self.sample

    @property
    def num_logits(self) -> int:
        return 1 + self.num_draft_tokens if self.sample else 0

    @property
    def draft_token_ids(self) -> list[int]:
        return self.token_ids[self.num_new_tokens - self.num_draft_tokens :]


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def num_draft_tokens(self) -> int:
        return sum(s.num_draft_tokens for s in self.scheduled)

    @property
    def sampled_requests(self) -> list[Request]:
        return [s.request for s in self.scheduled if s.sample]

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
