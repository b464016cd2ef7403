"""Who gets drafts each step, from which proposer, and the acceptance counts.

After a step, every running request that is decoding and whose rows the rejection sampler can
verify (see ``engine/rejection_sampler.py``) gets up to ``num_speculative_tokens`` drafts, cut
so that neither ``max_tokens`` nor the context length can be overrun by accepting them all.
No request gets any while the running batch is at least ``disable_by_batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from engine.config import EngineConfig
from engine.draft_proposer import DraftModelProposer
from engine.model_runner import ModelRunner
from engine.ngram_proposer import NgramProposer
from engine.request import Request, RequestId
from engine.speculative_config import SpeculativeConfig


class Proposer(Protocol):
    def propose_batch(self, requests: Sequence[Request], max_drafts: list[int]) -> list[list[int]]:
        """Drafts for each request, at most ``max_drafts[i]`` for request ``i``."""
        ...

    def release(self, request_id: RequestId) -> None: ...


class NgramBatchProposer:
    """Prompt lookup, request by request (it needs no model)."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)

    def propose_batch(self, requests: Sequence[Request], max_drafts: list[int]) -> list[list[int]]:
        return [
            self.ngram.propose(r.token_ids, m) for r, m in zip(requests, max_drafts, strict=True)
        ]

    def release(self, request_id: RequestId) -> None:
        return None


def can_verify(request: Request) -> bool:
    """Rows of this request are processed alike at every draft position."""
    params = request.sampling_params
    return (
        request.pooling_params is None
        and params.repetition_penalty == 1.0
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
        and request.num_output_tokens >= params.min_tokens
    )


class Speculator:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer, max_model_len: int) -> None:
        self.config = config
        self.proposer = proposer
        self.max_model_len = max_model_len

    def propose(self, running: Sequence[Request]) -> int:
        """Set ``draft_token_ids`` on the running requests that get drafts; returns how many
        drafts were proposed in all."""
        limit = self.config.disable_by_batch_size
        if limit is not None and len(running) >= limit:
            return 0
        chosen: list[Request] = []
        max_drafts: list[int] = []
        for request in running:
            if not request.is_decoding or not can_verify(request):
                continue
            room = min(
                self.config.num_speculative_tokens,
                request.max_tokens - request.num_output_tokens - 1,
                self.max_model_len - request.num_tokens,
            )
            if room > 0:
                chosen.append(request)
                max_drafts.append(room)
        if not chosen:
            return 0
        drafts = self.proposer.propose_batch(chosen, max_drafts)
        for request, draft in zip(chosen, drafts, strict=True):
            request.draft_token_ids = draft
        return sum(len(d) for d in drafts)

    def release(self, request_id: RequestId) -> None:
        self.proposer.release(request_id)


def make_speculator(config: EngineConfig, runner: ModelRunner, max_model_len: int) -> Speculator:
    """The speculator ``config.speculative`` asks for (which must be set)."""
    spec = config.speculative
    assert spec is not None
    proposer: Proposer
    if spec.method == "ngram":
        proposer = NgramBatchProposer(spec)
    else:
        proposer = DraftModelProposer(config, spec, runner)
    return Speculator(spec, proposer, max_model_len)
