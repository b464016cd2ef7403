"""The sampler: one step's logits in, one next token (and optional logprobs) per request out.

Order of operations, per row (vLLM's order)::

    raw logits --log_softmax--> logprobs (returned as is)
        |
        +-> logit_bias -> min_tokens mask -> repetition / presence / frequency penalties
              |
              +-- temperature == 0 --> argmax
              +-- otherwise --> / temperature -> top_k -> top_p -> min_p -> softmax
                                -> argmax(probs / Exponential(1) noise)

The exponential race ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)`` draws token ``i`` with
probability ``p_i``. When the Triton kernels run (CUDA) and every random row asks for nothing
but a temperature and no seed (the common case), one fused kernel draws the same distribution
in a single read of the logits (``kernels.sample_gumbel``), seeded per step from the sampler's
own CPU generator. Each seeded request owns a ``torch.Generator`` seeded once and draws exactly
one ``[V]`` noise vector per generated token, so its random stream depends only on the request,
not on batch size or its row in the batch. Unseeded requests share the sampler's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.grammar import GrammarBitmask
from engine.logits_processors import (
    PenaltyState,
    apply_logit_bias,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    mask_tokens,
)
from engine.request import Request
from engine.sampling_params import SamplingParams
from kernels import sample_gumbel, use_triton
from kernels.sampling import MAX_SEED


@dataclass(slots=True)
class TokenLogprobs:
    """Log-probabilities at one generated position, from the raw (unprocessed) logits."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens, best first (k = params.logprobs)


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None where params.logprobs is None


@dataclass(slots=True)
class _RequestState:
    """Per-request state that must survive across steps (and preemption) until release."""

    generator: torch.Generator | None = None
    penalties: PenaltyState | None = None


def _temperature_only(params: SamplingParams, vocab_size: int) -> bool:
    """No truncation of the distribution and no per-request random stream."""
    return (
        params.seed is None
        and (params.top_k <= 0 or params.top_k >= vocab_size)
        and params.top_p >= 1.0
        and params.min_p <= 0.0
    )


def _has_penalties(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


class Sampler:
    """Chooses next tokens for a batch of requests; ``release`` a request when it finishes."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.seed = seed
        self._shared_generators: dict[torch.device, torch.Generator] = {}
        self._kernel_seeds = torch.Generator().manual_seed(seed)  # one seed per fused draw
        self._states: dict[str, _RequestState] = {}

    def release(self, request_id: str) -> None:
        self._states.pop(request_id, None)

    def sample(
        self, logits: Tensor, requests: list[Request], allowed: GrammarBitmask | None = None
    ) -> SamplerOutput:
        """``logits`` is ``[len(requests), vocab_size]``, row i for ``requests[i]``; it is not
        modified. ``allowed`` masks the constrained rows before anything else (their logprobs
        are those of the masked distribution). Call once per token each request will actually
        append: a seeded request's random stream advances on every call."""
        assert logits.shape == (len(requests), self.vocab_size), logits.shape
        raw = logits.float()
        if allowed is not None:
            raw = raw.clone() if raw is logits else raw
            allowed.apply(raw)
        processed = self._process(raw, requests)
        token_ids = self._choose(processed, requests)
        token_list = token_ids.tolist()
        return SamplerOutput(token_list, gather_logprobs(raw, token_ids, token_list, requests))

    def _state(self, request: Request) -> _RequestState:
        state = self._states.get(request.request_id)
        if state is None:
            state = self._states[request.request_id] = _RequestState()
        return state

    def _process(self, raw: Tensor, requests: list[Request]) -> Tensor:
        """Bias, min_tokens and penalties; returns ``raw`` itself when none applies."""
        bias_rows: list[int] = []
        bias_cols: list[int] = []
        bias_vals: list[float] = []
        ban_rows: list[int] = []
        ban_cols: list[int] = []
        penalty_rows: list[int] = []
        for i, request in enumerate(requests):
            params = request.sampling_params
            for token_id, value in params.logit_bias.items():
                bias_rows.append(i)
                bias_cols.append(token_id)
                bias_vals.append(value)
            if request.num_output_tokens < params.min_tokens:
                banned = list(params.stop_token_ids)
                if not params.ignore_eos and request.eos_token_id is not None:
                    banned.append(request.eos_token_id)
                ban_rows.extend([i] * len(banned))
                ban_cols.extend(banned)
            if _has_penalties(params):
                penalty_rows.append(i)
        if not (bias_rows or ban_rows or penalty_rows):
            return raw
        logits = raw.clone()
        apply_logit_bias(logits, bias_rows, bias_cols, bias_vals)
        mask_tokens(logits, ban_rows, ban_cols)
        if penalty_rows:
            self._penalise(logits, penalty_rows, requests)
        return logits

    def _penalise(self, logits: Tensor, rows: list[int], requests: list[Request]) -> None:
        states: list[PenaltyState] = []
        for i in rows:
            request = requests[i]
            state = self._state(request)
            if state.penalties is None:
                state.penalties = PenaltyState.create(
                    request.prompt_token_ids, self.vocab_size, logits.device
                )
            prompt_len = request.num_prompt_tokens
            state.penalties.catch_up(request.token_ids[prompt_len:])
            states.append(state.penalties)
        params = [requests[i].sampling_params for i in rows]
        logits[rows] = apply_penalties(
            logits[rows],
            states,
            [p.repetition_penalty for p in params],
            [p.presence_penalty for p in params],
            [p.frequency_penalty for p in params],
        )

    def _choose(self, logits: Tensor, requests: list[Request]) -> Tensor:
        """``logits`` is not modified."""
        params = [r.sampling_params for r in requests]
        random_rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if not random_rows:
            return greedy(logits)
        if len(random_rows) == len(requests):
            return self._sample_random(requests, logits)
        token_ids = torch.empty(len(requests), dtype=torch.long, device=logits.device)
        greedy_rows = [i for i, p in enumerate(params) if p.is_greedy]
        token_ids[greedy_rows] = greedy(logits[greedy_rows])
        token_ids[random_rows] = self._sample_random(
            [requests[i] for i in random_rows], logits[random_rows]
        )
        return token_ids

    def _sample_random(self, requests: list[Request], logits: Tensor) -> Tensor:
        """``logits`` holds just these requests' rows; it is not modified."""
        params = [r.sampling_params for r in requests]
        if use_triton(logits) and all(_temperature_only(p, self.vocab_size) for p in params):
            inv_temperature = torch.tensor([1.0 / p.temperature for p in params])
            seed = int(torch.randint(0, MAX_SEED, (), generator=self._kernel_seeds))
            return sample_gumbel(logits, inv_temperature.to(logits.device, non_blocking=True), seed)
        probs = self.probs(requests, logits)
        noise = self._exponential_noise(requests, probs)
        return probs.div_(noise).argmax(dim=-1)

    def probs(self, requests: list[Request], logits: Tensor) -> Tensor:
        """The distribution a random row samples from: temperature, top-k, top-p, min-p,
        softmax (``logits`` holds just these requests' rows; it is not modified)."""
        params = [r.sampling_params for r in requests]
        temperature = torch.tensor([p.temperature for p in params], device="cpu")
        logits = logits / temperature.to(logits.device, non_blocking=True).unsqueeze(1)
        logits = apply_top_k_top_p(logits, [p.top_k for p in params], [p.top_p for p in params])
        logits = apply_min_p(logits, [p.min_p for p in params])
        return logits.softmax(dim=-1)

    def process(self, logits: Tensor, requests: list[Request]) -> Tensor:
        """Bias, min_tokens and penalties of the rows (fp32; ``logits`` is not modified)."""
        return self._process(logits.float(), requests)

    def generator_for(self, request: Request, device: torch.device) -> torch.Generator:
        """The random stream a request draws from: its own when seeded, else the shared one."""
        seed = request.sampling_params.seed
        if seed is None:
            return self._shared_generator(device)
        state = self._state(request)
        if state.generator is None:
            state.generator = torch.Generator(device=device).manual_seed(seed)
        return state.generator

    def _exponential_noise(self, requests: list[Request], probs: Tensor) -> Tensor:
        """Exp(1) noise, one ``[V]`` draw per row from the row's own stream."""
        device = probs.device
        shared_rows = [i for i, r in enumerate(requests) if r.sampling_params.seed is None]
        if len(shared_rows) == len(requests):  # the common case: one draw for the batch
            noise = torch.empty_like(probs).exponential_(generator=self._shared_generator(device))
        else:
            noise = torch.empty_like(probs)
            for i, request in enumerate(requests):
                if request.sampling_params.seed is not None:
                    noise[i].exponential_(generator=self.generator_for(request, device))
            if shared_rows:
                draw = torch.empty(len(shared_rows), probs.shape[1], device=device)
                noise[shared_rows] = draw.exponential_(generator=self._shared_generator(device))
        # A zero draw would turn a zero probability into 0/0 = NaN, which argmax would pick.
        return noise.clamp_(min=torch.finfo(noise.dtype).tiny)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._shared_generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(self.seed)
            self._shared_generators[device] = generator
        return generator


def greedy(logits: Tensor) -> Tensor:
    """Each row's first largest logit, as ``argmax(dim=-1)``, whose CPU kernel is the slower:
    a decode step's 33 x 49,152 SmolLM2 logits took 1.2 ms against 0.44 ms for ``max``'s
    indices (2 threads, Intel Xeon VM), ~0.2 s of the 64-prompt workload's 249 steps. Both
    return the first of equal maxima and the index of a NaN."""
    return logits.max(dim=-1).indices


def gather_logprobs(
    raw: Tensor, token_ids: Tensor, token_list: list[int], requests: list[Request]
) -> list[TokenLogprobs | None]:
    """Log-softmax of the raw logits (what the model believes, before any sampling setting), for
    the rows that asked; one top-k over the largest k asked, sliced per row."""
    out: list[TokenLogprobs | None] = [None] * len(requests)
    rows = [i for i, r in enumerate(requests) if r.sampling_params.logprobs is not None]
    if not rows:
        return out
    logprobs = torch.log_softmax(raw[rows], dim=-1)
    chosen = logprobs.gather(1, token_ids[rows].unsqueeze(1)).squeeze(1).tolist()
    ks = [requests[i].sampling_params.logprobs or 0 for i in rows]
    top_values, top_ids = logprobs.topk(max(ks), dim=-1)
    values, ids = top_values.tolist(), top_ids.tolist()
    for j, (i, k) in enumerate(zip(rows, ks, strict=True)):
        top = list(zip(ids[j][:k], values[j][:k], strict=True))
        out[i] = TokenLogprobs(token_list[i], chosen[j], top)
    return out
