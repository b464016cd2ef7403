"""Constrained decoding: grammars compiled off the step loop, one matcher per sample, one
token bitmask per step.

::

    add_request ──► GrammarCache.get(key) ── first time: compile on a worker thread ──┐
        (the request waits outside the scheduler until its grammar is ready; the     │
         batch keeps stepping)                                                        ▼
    step: scheduled rows ──► fill_bitmask (each constrained row asks its matcher) ──► sampler
          sampled token ──► accept (the matcher advances; a sample whose matcher lags its
                            output tokens, after a rerun, is rebuilt from them first)

The grammar engine is xgrammar: its compiled grammars precompute, per parser state, which
tokens are always or never allowed, so a step's mask costs microseconds per row, and a
compiled grammar is shared read-only by every matcher of every request using that schema.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import xgrammar as xgr
from torch import Tensor

from engine.request import Request, RequestId
from engine.structured_outputs import StructuredOutputsError, StructuredOutputsParams
from engine.tokenizer import Tokenizer

CompiledGrammar = xgr.CompiledGrammar

# A speculative decoder may take back at most this many accepted tokens (see ``rollback``).
MAX_ROLLBACK_TOKENS = 16


@dataclass(slots=True)
class GrammarStats:
    """What constrained decoding has cost so far (seconds are wall-clock)."""

    num_compiles: int = 0
    compile_s: float = 0.0
    num_cache_hits: int = 0
    num_mask_steps: int = 0
    mask_s: float = 0.0
    num_masked_rows: int = 0

    @property
    def mask_s_per_step(self) -> float:
        return self.mask_s / self.num_mask_steps if self.num_mask_steps else 0.0


class GrammarCache:
    """Compiled grammars by canonical key, compiled on a small thread pool.

    ``get`` returns a future at once; every request with the same key shares it, so a job of
    50,000 lines with one schema compiles it once per worker process. The ``max_entries``
    most recently used grammars are kept (a request holds its own grammar while it runs).
    """

    def __init__(
        self, tokenizer: Tokenizer, vocab_size: int, num_threads: int = 2, max_entries: int = 256
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._num_threads = num_threads
        self._compiler: xgr.GrammarCompiler | None = None  # made by the first compile
        self._compiler_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="grammar")
        self._futures: OrderedDict[str, Future[xgr.CompiledGrammar]] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self.stats = GrammarStats()

    def get(self, params: StructuredOutputsParams) -> Future[xgr.CompiledGrammar]:
        with self._lock:
            future = self._futures.get(params.key)
            if future is not None:
                self._futures.move_to_end(params.key)
                self.stats.num_cache_hits += 1
                return future
            future = self._pool.submit(self._compile, params)
            self._futures[params.key] = future
            if len(self._futures) > self._max_entries:
                self._futures.popitem(last=False)
            return future

    def check(self, params: StructuredOutputsParams) -> None:
        """Turn the constraint into a grammar without the tokenizer (milliseconds): what the
        grammar engine does not support or cannot parse is refused here, on entry."""
        if params.key in self._futures:
            return
        try:
            _grammar(params)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise StructuredOutputsError(f"{params.origin}: {_first_line(exc)}") from exc

    def _compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        compiler = self._grammar_compiler()
        start = time.perf_counter()
        compiled = compiler.compile_grammar(_grammar(params))
        with self._lock:
            self.stats.num_compiles += 1
            self.stats.compile_s += time.perf_counter() - start
        return compiled

    def _grammar_compiler(self) -> xgr.GrammarCompiler:
        """Built on first use: reading the vocabulary (~0.4 s for SmolLM2's 49,152 tokens)
        would otherwise delay the start of every engine, constrained requests or not."""
        with self._compiler_lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer.hf_tokenizer, vocab_size=self._vocab_size
                )
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=self._num_threads, cache_enabled=False
                )
            return self._compiler


def _grammar(params: StructuredOutputsParams) -> xgr.Grammar:
    if params.kind == "json":
        return xgr.Grammar.from_json_schema(json.dumps(params.json), any_whitespace=False)
    if params.kind == "json_object":  # OpenAI's JSON mode: an object, not any JSON value
        return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=False)
    if params.kind == "regex":
        assert params.regex is not None
        return xgr.Grammar.from_regex(params.regex)
    if params.kind == "choice":
        return xgr.Grammar.from_ebnf(params.choice_grammar())
    assert params.grammar is not None
    return xgr.Grammar.from_ebnf(params.grammar)


def _first_line(exc: Exception) -> str:
    """The grammar engine's message without its C++ log prefix (time, source file, line)."""
    text = str(exc).strip() or type(exc).__name__
    return _LOG_PREFIX.sub("", text.splitlines()[0])[:500]


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


@dataclass(slots=True)
class _Matcher:
    matcher: xgr.GrammarMatcher
    num_accepted: int = 0  # output tokens the matcher has consumed


@dataclass(slots=True)
class GrammarBitmask:
    """Allowed tokens of this step's constrained rows (the other rows of ``bitmask`` are
    never read)."""

    rows: list[int]
    bitmask: Tensor  # [num_sampled, ceil(vocab_size / 32)] int32, bit set = allowed

    def apply(self, logits: Tensor) -> None:
        """Set every disallowed token of the constrained rows to -inf, in place."""
        mask = self.bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, mask, indices=self.rows)


@dataclass(slots=True)
class StructuredOutputs:
    """The engine's side of constrained decoding: compile futures, matchers, bitmasks."""

    cache: GrammarCache
    vocab_size: int
    _matchers: dict[RequestId, _Matcher] = field(default_factory=dict)
    # Fills the rows of a step's bitmask on several threads (half the cores by default).
    _batch: xgr.BatchGrammarMatcher = field(default_factory=xgr.BatchGrammarMatcher)
    _compiled: dict[RequestId, xgr.CompiledGrammar] = field(default_factory=dict)

    @property
    def stats(self) -> GrammarStats:
        return self.cache.stats

    @property
    def active(self) -> bool:
        """Whether any request in the engine is constrained."""
        return bool(self._matchers)

    def start(self, request: Request, compiled: xgr.CompiledGrammar) -> None:
        """Give ``request`` its own matcher over a (shared) compiled grammar."""
        self._compiled[request.request_id] = compiled
        self._matchers[request.request_id] = _Matcher(self._new_matcher(compiled))

    def release(self, request_id: RequestId) -> None:
        self._matchers.pop(request_id, None)
        self._compiled.pop(request_id, None)

    def rollback(self, request_id: RequestId, num_tokens: int) -> None:
        """Take back the last ``num_tokens`` accepted tokens (for speculative decoding, whose
        rejected draft tokens the matcher has already seen)."""
        state = self._matchers[request_id]
        if num_tokens > min(state.num_accepted, MAX_ROLLBACK_TOKENS):
            raise ValueError(
                f"cannot roll back {num_tokens} tokens: {state.num_accepted} accepted, "
                f"at most {MAX_ROLLBACK_TOKENS} kept"
            )
        state.matcher.rollback(num_tokens)
        state.num_accepted -= num_tokens

    def fill_bitmask(self, requests: list[Request]) -> GrammarBitmask | None:
        """The allowed tokens of each constrained request in ``requests`` (the step's sampled
        rows, in order), or None when none is constrained."""
        rows = [i for i, r in enumerate(requests) if r.request_id in self._matchers]
        if not rows:
            return None
        start = time.perf_counter()
        bitmask = xgr.allocate_token_bitmask(len(requests), self.vocab_size)
        matchers = [self._synced(requests[i]).matcher for i in rows]
        self._batch.batch_fill_next_token_bitmask(matchers, bitmask, indices=rows)
        stats = self.stats
        stats.num_mask_steps += 1
        stats.num_masked_rows += len(rows)
        stats.mask_s += time.perf_counter() - start
        return GrammarBitmask(rows, bitmask)

    def fill_draft_bitmask(
        self, requests: list[Request], drafts: list[list[int]]
    ) -> GrammarBitmask | None:
        """The allowed tokens of the rows that verify drafts (``1 + len(drafts[j])`` rows for
        ``requests[j]``, in order), or None when none is constrained.

        Row ``i`` of a request is its mask after its tokens and its first ``i`` drafts: the
        matcher walks the drafts, then rolls back, since which of them the target accepts is
        known only after the forward pass. The walk stops at a draft the grammar refuses:
        that draft's row forbids it, so it and the drafts after it are rejected anyway.
        """
        rows: list[int] = []
        bitmask: Tensor | None = None
        first = 0
        for request, draft in zip(requests, drafts, strict=True):
            if request.request_id in self._matchers:
                if bitmask is None:
                    num_rows = sum(len(d) + 1 for d in drafts)
                    bitmask = xgr.allocate_token_bitmask(num_rows, self.vocab_size)
                matcher = self._synced(request).matcher
                num_walked = 0
                for i in range(len(draft) + 1):
                    if matcher.is_terminated():
                        break
                    matcher.fill_next_token_bitmask(bitmask, first + i)
                    rows.append(first + i)
                    if i == len(draft) or not matcher.accept_token(draft[i]):
                        break
                    num_walked += 1
                if num_walked:
                    matcher.rollback(num_walked)
            first += len(draft) + 1
        return GrammarBitmask(rows, bitmask) if bitmask is not None else None

    def accept(self, request: Request, token_id: int) -> None:
        """Advance ``request``'s matcher by the token the sampler chose from its mask."""
        state = self._matchers.get(request.request_id)
        if state is None:
            return
        if state.matcher.is_terminated():
            state.num_accepted += 1  # the stop token after a completed grammar (ignore_eos)
            return
        accepted = state.matcher.accept_token(token_id)
        assert accepted, f"{request.request_id}: token {token_id} was outside its grammar mask"
        state.num_accepted += 1

    def _synced(self, request: Request) -> _Matcher:
        """The request's matcher, rebuilt from its output tokens if it has fallen out of step
        with them (a request rerun from scratch, or tokens appended without ``accept``)."""
        state = self._matchers[request.request_id]
        outputs = request.output_token_ids
        if state.num_accepted != len(outputs):
            state = _Matcher(self._new_matcher(self._compiled[request.request_id]))
            for token_id in outputs:
                if state.matcher.is_terminated():
                    break
                accepted = state.matcher.accept_token(token_id)
                assert accepted, f"{request.request_id}: output token {token_id} breaks its grammar"
            state.num_accepted = len(outputs)
            self._matchers[request.request_id] = state
        return state

    @staticmethod
    def _new_matcher(compiled: xgr.CompiledGrammar) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(compiled, max_rollback_tokens=MAX_ROLLBACK_TOKENS)
