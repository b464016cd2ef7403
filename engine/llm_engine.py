"""The engine loop: requests in, one schedule -> run -> sample -> postprocess step at a time.

A user request is named by the caller's key (any hashable: a string, a tuple, a frozen
dataclass); its outputs carry that key back, so the caller never parses an id. A request
with ``n > 1`` becomes ``n`` engine requests with ids of the engine's own; the first is the
parent whose prompt blocks the others share. The engine returns one ``RequestOutput`` per
user request once all of its samples have finished.

A request with ``PoolingParams`` is an embedding: prefill only, in the same steps as the
generation requests; the pooler folds each of its chunks' hidden states in, and the step its
last chunk runs it finishes (its KV blocks freed) and comes back as a ``PoolingRequestOutput``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.grammar import CompiledGrammar, GrammarBitmask, GrammarCache, StructuredOutputs
from engine.lora_manager import LoRAManager
from engine.lora_request import LoRARequest
from engine.model_runner import ModelRunner
from engine.outputs import CompletionOutput, PoolingOutput, PoolingRequestOutput, RequestOutput
from engine.pooler import Pooler, PoolingConfig
from engine.pooling_params import PoolingParams
from engine.rejection_sampler import sample_step
from engine.request import Request, RequestId, RequestStatus
from engine.sampler import Sampler, TokenLogprobs
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.scheduler_output import ScheduledRequest, SchedulerOutput
from engine.speculator import Speculator, make_speculator
from engine.stats import EngineStats, StepStats, StepTimes
from engine.structured_outputs import StructuredOutputsBounds, check_structured_outputs
from engine.tokenizer import Tokenizer, has_tokenizer


class InvalidRequestError(ValueError):
    """A request the engine cannot run as given (empty or over-long prompt, bad token ids...)."""


@dataclass(slots=True)
class _Sample:
    """Engine-side bookkeeping of one of a user request's ``n`` samples."""

    request: Request
    detokenizer: IncrementalDetokenizer | None
    logprobs: list[TokenLogprobs] | None
    stop_reason: str | int | None = None


@dataclass(slots=True)
class _RequestGroup:
    request_id: Hashable  # the caller's key
    prompt: str | None
    prompt_token_ids: list[int]
    samples: list[_Sample] = field(default_factory=list)
    error: str | None = None  # the engine could not run it (its grammar failed to compile)

    @property
    def finished(self) -> bool:
        return all(s.request.status.is_finished for s in self.samples)

    def to_output(self) -> RequestOutput:
        outputs = [
            CompletionOutput(
                index=i,
                text=s.detokenizer.text if s.detokenizer else "",
                token_ids=list(s.request.output_token_ids),
                finish_reason=s.request.status.finish_reason,
                stop_reason=s.stop_reason,
                logprobs=s.logprobs,
            )
            for i, s in enumerate(self.samples)
        ]
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outputs,
            finished=self.finished,
            num_cached_tokens=self.samples[0].request.num_cached_tokens,
            error=self.error,
        )


@dataclass(slots=True)
class _PoolingGroup:
    """An embedding request: one prefill-only engine request, pooled when its last chunk runs."""

    request_id: Hashable  # the caller's key
    request: Request
    prompt: str | None

    def to_output(self, embedding: list[float]) -> PoolingRequestOutput:
        return PoolingRequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.request.prompt_token_ids,
            outputs=PoolingOutput(embedding),
        )


EngineOutput = RequestOutput | PoolingRequestOutput


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        self.model_config = self.runner.model_config
        self.max_model_len = self.runner.max_model_len
        self.tokenizer = (
            Tokenizer.from_pretrained(config.model) if has_tokenizer(config.model) else None
        )
        self.scheduler = Scheduler(config, self.runner.num_kv_blocks, self.max_model_len)
        self.lora: LoRAManager | None = None
        if self.scheduler.lora_slots is not None:
            self.lora = LoRAManager(
                self.runner.model,
                self.scheduler.lora_slots,
                config.max_lora_rank,
                self.runner.device,
                config.lora_download_dir,
            )
        self.sampler = Sampler(self.model_config.vocab_size, seed=config.seed)
        self.stats = EngineStats(num_kv_blocks_total=self.runner.num_kv_blocks)
        self._groups: dict[Hashable, _RequestGroup] = {}
        self._samples: dict[RequestId, tuple[_RequestGroup, _Sample]] = {}
        self._finishing: list[_RequestGroup] = []  # groups a sample of which finished this step
        self._arrivals = itertools.count()
        self._owners: dict[RequestId, Hashable] = {}  # engine request -> the caller's key
        self.structured: StructuredOutputs | None = None
        if self.tokenizer is not None:
            cache = GrammarCache(
                self.tokenizer, self.model_config.vocab_size, config.num_grammar_threads
            )
            self.structured = StructuredOutputs(cache, self.model_config.vocab_size)
        self._schema_bounds = StructuredOutputsBounds(
            max_schema_bytes=config.max_schema_bytes, max_schema_depth=config.max_schema_depth
        )
        self._mask_thread = ThreadPoolExecutor(1, thread_name_prefix="grammar-mask")
        # Groups whose grammar is still compiling: outside the scheduler until it is ready.
        self._compiling: list[tuple[_RequestGroup, Future[CompiledGrammar]]] = []
        self.pooling_config = PoolingConfig.from_model_dir(config.model, config.pooling_type)
        self.pooler = Pooler(self.pooling_config)
        self._pooling: dict[Hashable, _PoolingGroup] = {}
        self.speculator: Speculator | None = None
        if config.speculative is not None:
            self.speculator = make_speculator(config, self.runner, self.max_model_len)

    @property
    def eos_token_id(self) -> int | None:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return self.tokenizer.eos_token_id
        return self.model_config.eos_token_ids[0] if self.model_config.eos_token_ids else None

    def add_request(
        self,
        request_id: Hashable,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
        arrival_time: float | None = None,
        tenant: Hashable | None = None,
    ) -> None:
        """Queue a request (to generate, or to embed with ``PoolingParams``), under
        ``lora_request``'s adapter if given; raises ``InvalidRequestError`` for one that
        could never run, ``LoRAAdapterError`` for an adapter that cannot.

        The scheduler serves waiting requests by ``(priority, arrival_time)``; without an
        ``arrival_time`` a request arrives after every earlier one. A caller that orders
        requests its own way (a fair-queuing tag) passes it for every request. ``tenant``
        names whose request it is, for the tenants' shares of each step
        (``EngineConfig.fair_step_rows``)."""
        if request_id in self._groups or request_id in self._pooling:
            raise InvalidRequestError(f"request id {request_id!r} is already in the engine")
        if arrival_time is not None and not math.isfinite(arrival_time):
            raise InvalidRequestError(f"arrival_time must be finite, got {arrival_time}")
        text, token_ids = self._tokenize(prompt)
        if lora_request is not None:
            if self.lora is None:
                raise InvalidRequestError("LoRA requests need an engine made with enable_lora=True")
            if isinstance(params, PoolingParams):
                raise InvalidRequestError("embedding requests cannot run under a LoRA adapter")
            self.lora.register(lora_request)
        if isinstance(params, PoolingParams):
            self._add_pooling(request_id, text, token_ids, params, priority, arrival_time, tenant)
            return
        if params.max_tokens is None:  # the rest of the context (re-checked by the dataclass)
            params = replace(params, max_tokens=max(1, self.max_model_len - len(token_ids)))
        self._validate(token_ids, params)
        compiling = self._grammar_future(params)
        group = _RequestGroup(request_id, text, token_ids)
        parent: Request | None = None
        serial = next(self._arrivals)
        arrival = float(serial) if arrival_time is None else arrival_time
        for i in range(params.n):
            child_params = self._child_params(params, i)
            request = Request(
                request_id=RequestId(f"{serial}#{i}"),
                prompt_token_ids=list(token_ids),
                sampling_params=child_params,
                eos_token_id=self.eos_token_id,
                arrival_time=arrival,
                priority=priority,
                parent=parent,
                lora_request=lora_request,
                tenant=tenant,
            )
            parent = parent or request
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, token_ids, child_params)
            sample = _Sample(request, detok, [] if params.logprobs is not None else None)
            group.samples.append(sample)
            self._samples[request.request_id] = (group, sample)
            self._owners[request.request_id] = request_id
        self._groups[request_id] = group
        if compiling is None:
            self._schedule_group(group, None)
        else:
            self._compiling.append((group, compiling))
            self._start_compiled()

    def add_lora(self, lora_request: LoRARequest) -> None:
        """Read and check an adapter ahead of its requests (a service registering the
        adapters it serves); raises ``LoRAAdapterError`` for one that cannot run here."""
        if self.lora is None:
            raise InvalidRequestError("LoRA adapters need an engine made with enable_lora=True")
        self.lora.register(lora_request)

    def list_loras(self) -> list[LoRARequest]:
        """The adapters this engine has read, by ``int_id``."""
        if self.lora is None:
            return []
        return [self.lora.adapters[i].request for i in sorted(self.lora.adapters)]

    def _grammar_future(self, params: SamplingParams) -> Future[CompiledGrammar] | None:
        """Check a request's output constraint and start compiling it (or find it compiled)."""
        constraint = params.structured_outputs
        if constraint is None:
            return None
        if self.structured is None:
            raise InvalidRequestError("structured outputs need a tokenizer; this model has none")
        check_structured_outputs(constraint, self._schema_bounds)
        self.structured.cache.check(constraint)
        return self.structured.cache.get(constraint)

    def _schedule_group(self, group: _RequestGroup, compiled: CompiledGrammar | None) -> None:
        for sample in group.samples:
            if compiled is not None:
                assert self.structured is not None
                self.structured.start(sample.request, compiled)
            self.scheduler.add_request(sample.request)

    def _start_compiled(self, wait_s: float = 0.0) -> None:
        """Hand the groups whose grammar is ready to the scheduler; with ``wait_s``, first wait
        that long for one to become ready (a step with nothing else to run)."""
        if not self._compiling:
            return
        if wait_s > 0:
            wait([f for _, f in self._compiling], timeout=wait_s, return_when=FIRST_COMPLETED)
        still: list[tuple[_RequestGroup, Future[CompiledGrammar]]] = []
        for group, future in self._compiling:
            if not future.done():
                still.append((group, future))
            elif future.exception() is not None:
                group.error = f"the grammar failed to compile: {future.exception()}"
                for sample in group.samples:
                    sample.request.status = RequestStatus.FINISHED_ABORTED
                self._finishing.append(group)
            else:
                self._schedule_group(group, future.result())
        self._compiling = still

    def _add_pooling(
        self,
        request_id: Hashable,
        text: str | None,
        token_ids: list[int],
        params: PoolingParams,
        priority: int,
        arrival_time: float | None,
        tenant: Hashable | None,
    ) -> None:
        self._validate_pooling(token_ids, params)
        serial = next(self._arrivals)
        request = Request(
            request_id=RequestId(str(serial)),
            prompt_token_ids=list(token_ids),
            sampling_params=SamplingParams(max_tokens=1),
            arrival_time=float(serial) if arrival_time is None else arrival_time,
            priority=priority,
            pooling_params=params,
            tenant=tenant,
        )
        self._pooling[request_id] = _PoolingGroup(request_id, request, text)
        self._owners[request.request_id] = request_id
        self.scheduler.add_request(request)

    def abort_request(self, request_id: Hashable) -> RequestOutput | None:
        """Stop a request now, wherever it is; returns what it had produced so far (nothing
        for an embedding request)."""
        pooling = self._pooling.pop(request_id, None)
        if pooling is not None:
            self.scheduler.finish_requests(
                [pooling.request.request_id], RequestStatus.FINISHED_ABORTED
            )
            self.pooler.release(pooling.request.request_id)
            self._owners.pop(pooling.request.request_id, None)
            return None
        group = self._groups.pop(request_id, None)
        if group is None:
            return None
        self._compiling = [(g, f) for g, f in self._compiling if g is not group]
        ids = [s.request.request_id for s in group.samples if not s.request.status.is_finished]
        self.scheduler.finish_requests(ids, RequestStatus.FINISHED_ABORTED)
        for sample in group.samples:  # those still compiling never reached the scheduler
            if not sample.request.status.is_finished:
                sample.request.status = RequestStatus.FINISHED_ABORTED
        self._forget(group)
        return group.to_output()

    def has_unfinished_requests(self) -> bool:
        return bool(self._groups or self._pooling)

    def running_request_ids(self) -> set[Hashable]:
        """The caller keys of the requests the scheduler is running now (in the last step's
        batch, unless they finished in it)."""
        return {self._owners[r.request_id] for r in self.scheduler.running}

    def reset_prefix_cache(self) -> None:
        """Drop every cached prompt block (raises while requests run)."""
        self.scheduler.kv_cache.pool.reset_cache()

    def step(self) -> list[EngineOutput]:
        """Run one engine step; return the user requests that finished in it."""
        start = time.perf_counter()
        self._start_compiled()
        plan = self.scheduler.schedule()
        if plan.is_empty:
            self._start_compiled(wait_s=0.01)  # only compiling requests: wait, do not spin
            return [*self._pop_finished()]
        scheduled_at = time.perf_counter()
        if self.lora is not None:
            self.lora.load_pending()
        inputs = self.runner.prepare(plan)
        prepared_at = time.perf_counter()
        sampled = [s for s in plan.scheduled if s.sample]
        sampled_requests = [s.request for s in sampled]
        masking = None
        if self.structured is not None and self.structured.active:
            # The grammar masks are filled on the CPU while the device runs the forward pass.
            masking = self._mask_thread.submit(_fill_masks, self.structured, sampled)
        pooling_chunks = _pooling_chunks(plan)
        if pooling_chunks:
            logits, hidden = self.runner.forward_pooling(inputs)
            self.pooler.add_chunks(pooling_chunks, hidden)
        else:
            logits = self.runner.forward(inputs)
        forwarded_at = time.perf_counter()
        allowed, allowed_drafts = masking.result() if masking is not None else (None, None)
        new_tokens, new_logprobs = sample_step(
            self.sampler, sampled, logits, allowed, allowed_drafts
        )
        sampled_at = time.perf_counter()
        num_tokens_before = [r.num_tokens for r in sampled_requests]
        self.scheduler.update_from_output(plan, new_tokens)
        for request, before, tokens, logprobs in zip(
            sampled_requests, num_tokens_before, new_tokens, new_logprobs, strict=True
        ):
            num_appended = request.num_tokens - before
            if num_appended:
                self._postprocess(request, tokens[:num_appended], logprobs[:num_appended])
        self.stats.record_speculation(sampled, [len(t) for t in new_tokens])
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        finished: list[EngineOutput] = [*self._pop_finished(), *self._pop_pooled(pooling_chunks)]
        end = time.perf_counter()
        times = StepTimes(
            schedule_s=scheduled_at - start,
            prepare_s=prepared_at - scheduled_at,
            forward_s=forwarded_at - prepared_at,
            sample_s=sampled_at - forwarded_at,
            postprocess_s=end - sampled_at,
        )
        self._record_step(plan, len(sampled_requests), times, inputs.graph_size is not None)
        return finished

    def _postprocess(
        self, request: Request, token_ids: list[int], logprobs: list[TokenLogprobs | None]
    ) -> None:
        """Feed the tokens a step appended, one at a time, to the grammar, the logprobs and
        the detokenizer. A stop string ends the request on the token that completed it: the
        tokens after it (accepted drafts) are taken back out of the request."""
        group, sample = self._samples[request.request_id]
        for i, (token_id, token_logprobs) in enumerate(zip(token_ids, logprobs, strict=True)):
            last = i == len(token_ids) - 1
            if self.structured is not None:
                self.structured.accept(request, token_id)
            if sample.logprobs is not None and token_logprobs is not None:
                sample.logprobs.append(token_logprobs)
            detok = sample.detokenizer
            stop_string = detok.update([token_id]) if detok else None
            if stop_string is None and last and request.status.is_finished and detok:
                stop_string = detok.flush()
            if stop_string is not None:
                del request.token_ids[request.num_tokens - (len(token_ids) - 1 - i) :]
                sample.stop_reason = stop_string
                if request.status.is_finished:
                    request.status = RequestStatus.FINISHED_STOPPED
                else:
                    self.scheduler.finish_requests(
                        [request.request_id], RequestStatus.FINISHED_STOPPED
                    )
                break
            if (
                last
                and request.status is RequestStatus.FINISHED_STOPPED
                and token_id in request.sampling_params.stop_token_ids
            ):
                sample.stop_reason = token_id
        if request.status.is_finished:
            self._finishing.append(group)

    def _pop_finished(self) -> list[RequestOutput]:
        """The groups whose last sample finished: requests only finish on a sampled token,
        so only the groups ``_postprocess`` saw finish a sample this step are candidates."""
        done = []
        for group in self._finishing:
            if self._groups.get(group.request_id) is group and group.finished:
                del self._groups[group.request_id]
                self._forget(group)
                self.stats.num_finished_requests += 1
                done.append(group)
        self._finishing.clear()
        return [g.to_output() for g in done]

    def _pop_pooled(
        self, chunks: list[tuple[ScheduledRequest, slice]]
    ) -> list[PoolingRequestOutput]:
        """Embedding requests whose last chunk ran this step: pooled, and finished at once so
        that their KV blocks go back to the pool before the next step."""
        done = []
        for scheduled, _ in chunks:
            request = scheduled.request
            if request.status is not RequestStatus.RUNNING:  # aborted meanwhile
                continue
            if request.num_computed_tokens < request.num_prompt_tokens:
                continue
            group = self._pooling.pop(self._owners.pop(request.request_id))
            self.scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)
            assert request.pooling_params is not None
            embedding = self.pooler.finish(
                request.request_id, request.num_prompt_tokens, request.pooling_params.dimensions
            )
            self.stats.num_finished_requests += 1
            done.append(group.to_output(embedding))
        return done

    def _forget(self, group: _RequestGroup) -> None:
        for sample in group.samples:
            self._samples.pop(sample.request.request_id, None)
            self._owners.pop(sample.request.request_id, None)
            self.sampler.release(sample.request.request_id)
            if self.speculator is not None:
                self.speculator.release(sample.request.request_id)
            if self.structured is not None:
                self.structured.release(sample.request.request_id)

    def _record_step(
        self, plan: SchedulerOutput, num_sampled: int, times: StepTimes, used_cuda_graph: bool
    ) -> None:
        stats = self.stats
        num_context_tokens = 0
        for scheduled in plan.scheduled:
            end = scheduled.start_position + scheduled.num_new_tokens
            num_context_tokens += end
            # Every sampled chunk yields one new token, the last chunk of a prefill included
            # (its token is the answer's first). The computed positions are prompt work,
            # except a decode's single input: the token sampled one step earlier.
            # Drafts are neither (record_speculation counts the accepted ones as generated).
            num_real = scheduled.num_new_tokens - scheduled.num_draft_tokens
            stats.num_generated_tokens += int(scheduled.sample)
            stats.num_prompt_tokens += num_real - int(scheduled.sample and num_real == 1)
        cache = self.scheduler.stats()
        stats.num_kv_blocks_used = cache.num_used_blocks
        stats.prefix_cache_queries = cache.prefix_cache_queries
        stats.prefix_cache_hits = cache.prefix_cache_hits
        stats.num_preemptions = cache.num_preemptions
        stats.num_running = self.scheduler.num_running
        stats.num_waiting = self.scheduler.num_waiting
        step = StepStats(
            num_batched_tokens=plan.num_batched_tokens,
            num_scheduled_requests=len(plan.scheduled),
            num_sampled=num_sampled,
            num_context_tokens=num_context_tokens,
            times=times,
            used_cuda_graph=used_cuda_graph,
        )
        stats.record_step(step)

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer: pass token ids, not text")
            return prompt, self.tokenizer.encode(prompt)
        return None, list(prompt)

    def _check_token_ids(self, token_ids: list[int], what: str) -> None:
        """``what`` names the tokens in the error: the "prompt" or the embedding "input"."""
        if not token_ids:
            raise InvalidRequestError(f"the {what} is empty")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise InvalidRequestError(f"{what} token ids must be in [0, {vocab})")

    def _check_fits_cache(self, num_tokens: int, what: str) -> None:
        """A request whose positions outnumber the whole KV cache could never be scheduled."""
        blocks_needed = -(-num_tokens // self.config.block_size)
        if blocks_needed > self.runner.num_kv_blocks:
            raise InvalidRequestError(
                f"{what} needs {blocks_needed} KV blocks but the cache "
                f"has only {self.runner.num_kv_blocks}"
            )

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        self._check_token_ids(token_ids, "prompt")
        assert params.max_tokens is not None, "resolved by add_request"
        total = len(token_ids) + params.max_tokens
        if total > self.max_model_len:
            raise InvalidRequestError(
                f"prompt ({len(token_ids)} tokens) plus max_tokens ({params.max_tokens}) is "
                f"{total}, over the model's context length of {self.max_model_len} tokens"
            )
        self._check_fits_cache(total, f"a request of {total} tokens")
        vocab = self.model_config.vocab_size
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; this model has none")
        if any(not 0 <= t < vocab for t in [*params.stop_token_ids, *params.logit_bias]):
            raise InvalidRequestError(f"stop_token_ids and logit_bias keys must be in [0, {vocab})")

    def _validate_pooling(self, token_ids: list[int], params: PoolingParams) -> None:
        self._check_token_ids(token_ids, "input")
        if len(token_ids) > self.max_model_len:
            raise InvalidRequestError(
                f"the input has {len(token_ids)} tokens, over the model's context length of "
                f"{self.max_model_len} tokens"
            )
        self._check_fits_cache(len(token_ids) + 1, f"an input of {len(token_ids)} tokens")
        self.check_dimensions(params.dimensions)

    def check_dimensions(self, dimensions: int | None) -> None:
        """Refuse ``dimensions`` for a model not trained for Matryoshka truncation, or
        outside what it was trained for."""
        if dimensions is None:
            return
        allowed = self.pooling_config.matryoshka_dimensions
        if allowed is None:
            raise InvalidRequestError(
                "this model does not support matryoshka representation: dimensions cannot be set"
            )
        hidden = self.model_config.hidden_size
        if dimensions > hidden or (allowed and dimensions not in allowed):
            raise InvalidRequestError(
                f"dimensions must be one of {list(allowed)}"
                if allowed
                else f"dimensions must be at most {hidden}"
            )

    def _child_params(self, params: SamplingParams, index: int) -> SamplingParams:
        """Sample ``index`` of ``n``: its own seed (seed + index) and every model EOS as a stop."""
        extra_eos = [t for t in self.model_config.eos_token_ids if t != self.eos_token_id]
        stop_ids = params.stop_token_ids
        if extra_eos and not params.ignore_eos:
            stop_ids = [*stop_ids, *(t for t in extra_eos if t not in stop_ids)]
        seed = None if params.seed is None else params.seed + index
        return replace(params, n=1, seed=seed, stop_token_ids=stop_ids)


def _pooling_chunks(plan: SchedulerOutput) -> list[tuple[ScheduledRequest, slice]]:
    """The pooling requests' chunks of a step with their rows in the step's flat tokens."""
    chunks = []
    offset = 0
    for scheduled in plan.scheduled:
        end = offset + scheduled.num_new_tokens
        if scheduled.request.pooling_params is not None:
            chunks.append((scheduled, slice(offset, end)))
        offset = end
    return chunks


def _fill_masks(
    structured: StructuredOutputs, sampled: list[ScheduledRequest]
) -> tuple[GrammarBitmask | None, GrammarBitmask | None]:
    """Grammar masks of a step's plain rows and of its draft-verifying rows."""
    plain = [s.request for s in sampled if not s.num_draft_tokens]
    verifying = [s for s in sampled if s.num_draft_tokens]
    allowed = structured.fill_bitmask(plain) if plain else None
    if not verifying:
        return allowed, None
    drafts = [s.draft_token_ids for s in verifying]
    return allowed, structured.fill_draft_bitmask([s.request for s in verifying], drafts)
