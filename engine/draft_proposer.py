"""Draft-model proposals: a small model with the target's tokenizer guesses the next tokens.

The draft keeps its own paged KV cache (its own block pool, no prefix caching) and, for each
request, a shadow sequence of the tokens whose K/V it holds. Before proposing, the shadow is
cut back to its common prefix with the request (drafts the target rejected are dropped), then
the draft catches up on the request's new tokens and decodes greedily::

    request:  [ p0 .. p9 | o0 o1 o2 ]          o1 o2 accepted last step, o2 the bonus
    shadow:   [ p0 .. p9 | o0 o1 x  ]          x was rejected: keep 12, recompute o2
    forward 1:            [ o2 ]       -> d1   (a whole prompt, chunked, the first time)
    forward 2..k:         [ d1 ] -> d2, [ d2 ] -> d3 ...

The catch-up forward takes at most ``max_num_batched_tokens`` tokens in all; a request whose
catch-up does not fit (a long new prompt) gets no drafts this step and continues next step,
and one the draft cannot hold in its cache simply gets none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from engine.config import EngineConfig, EngineConfigError
from engine.kv_cache_manager import KVCacheManager
from engine.model_runner import ModelRunner
from engine.models.model_config import ModelConfig
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledRequest
from engine.speculative_config import SpeculativeConfig


class DraftModelProposer:
    def __init__(self, config: EngineConfig, spec: SpeculativeConfig, target: ModelRunner) -> None:
        assert spec.model is not None
        draft_model_config = ModelConfig.from_pretrained(spec.model)
        if draft_model_config.vocab_size != target.model_config.vocab_size:
            raise EngineConfigError(
                f"the draft model's vocabulary ({draft_model_config.vocab_size} tokens) differs "
                f"from the target's ({target.model_config.vocab_size}): they must share a "
                "tokenizer"
            )
        self.max_model_len = min(target.max_model_len, draft_model_config.max_position_embeddings)
        draft_config = replace(
            config,
            model=spec.model,
            num_kv_blocks=target.num_kv_blocks,
            max_model_len=self.max_model_len,
            enable_prefix_caching=False,
            enforce_eager=True,
            pooling_type=None,
            speculative_config=None,
        )
        self.runner = ModelRunner(draft_config)
        self.kv_cache = KVCacheManager(target.num_kv_blocks, config.block_size, False)
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self._shadows: dict[RequestId, Request] = {}

    def propose_batch(self, requests: Sequence[Request], max_drafts: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in requests]
        chunks: list[ScheduledRequest] = []
        rows: list[int] = []  # which request each sampled chunk belongs to
        budget = self.max_num_batched_tokens
        for i, (request, num_drafts) in enumerate(zip(requests, max_drafts, strict=True)):
            num_drafts = min(num_drafts, self.max_model_len - request.num_tokens)
            if budget <= 0 or num_drafts <= 0:
                continue
            chunk = self._catch_up(request, num_drafts, budget)
            if chunk is None:
                continue
            budget -= chunk.num_new_tokens
            chunks.append(chunk)
            if chunk.sample:
                rows.append(i)
        if not chunks:
            return drafts
        tokens = self._run(chunks)
        for i, token in zip(rows, tokens, strict=True):
            drafts[i].append(token)
        self._decode_rounds(requests, max_drafts, rows, drafts)
        return drafts

    def release(self, request_id: RequestId) -> None:
        shadow = self._shadows.pop(request_id, None)
        if shadow is not None:
            self.kv_cache.free(shadow)

    def _catch_up(self, request: Request, num_drafts: int, budget: int) -> ScheduledRequest | None:
        """The draft's next chunk of ``request``'s tokens, with slots for the decodes after
        it; None when the draft's cache is full."""
        shadow = self._shadow(request)
        num_valid = 0
        limit = min(shadow.num_computed_tokens, request.num_tokens - 1)
        while num_valid < limit and shadow.token_ids[num_valid] == request.token_ids[num_valid]:
            num_valid += 1
        shadow.token_ids = list(request.token_ids)
        shadow.num_computed_tokens = num_valid
        num_new = min(request.num_tokens - num_valid, budget)
        sample = num_valid + num_new == request.num_tokens
        num_slots = num_new + (num_drafts - 1 if sample else 0)
        block_ids = self.kv_cache.allocate_slots(shadow, num_slots)
        if block_ids is None:
            self.release(request.request_id)
            return None
        tokens = shadow.token_ids[num_valid : num_valid + num_new]
        return ScheduledRequest(shadow, tokens, num_valid, block_ids, sample=sample)

    def _decode_rounds(
        self,
        requests: Sequence[Request],
        max_drafts: list[int],
        rows: list[int],
        drafts: list[list[int]],
    ) -> None:
        """Decode one token per round for each request still short of its drafts."""
        while True:
            active = [
                i for i in rows if len(drafts[i]) < min(max_drafts[i], self._room(requests[i]))
            ]
            if not active:
                return
            chunks = []
            for i in active:
                shadow = self._shadows[requests[i].request_id]
                token = drafts[i][-1]
                shadow.token_ids.append(token)
                position = shadow.num_tokens - 1
                block_ids = self.kv_cache.get_block_ids(shadow)
                chunks.append(ScheduledRequest(shadow, [token], position, block_ids, sample=True))
            for i, token in zip(active, self._run(chunks), strict=True):
                drafts[i].append(token)

    def _room(self, request: Request) -> int:
        return self.max_model_len - request.num_tokens

    @torch.inference_mode()
    def _run(self, chunks: list[ScheduledRequest]) -> list[int]:
        """One draft forward pass; the greedy token of each sampled chunk. Marks the chunks'
        tokens computed."""
        logits = self.runner.forward(self.runner.buffers.build(chunks))
        for chunk in chunks:
            chunk.request.num_computed_tokens = chunk.start_position + chunk.num_new_tokens
        result: list[int] = logits.argmax(dim=-1).tolist()
        return result

    def _shadow(self, request: Request) -> Request:
        shadow = self._shadows.get(request.request_id)
        if shadow is None:
            shadow = Request(request.request_id, request.prompt_token_ids, SamplingParams())
            self._shadows[request.request_id] = shadow
        return shadow
