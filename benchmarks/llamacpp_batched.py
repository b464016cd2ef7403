"""Greedy continuous batching on llama.cpp through llama-cpp-python's low-level bindings.

llama-cpp-python's ``Llama`` object generates one sequence at a time; llama.cpp itself
batches many sequences in one ``llama_decode`` (each token tagged with its sequence id, all
sharing one unified KV cache), which is what its ``batched`` example and server do. This
loop drives that from Python with the engine's policy: each step, every running sequence
decodes one token, and the rest of a ``max_batch_tokens`` budget goes to prompt chunks of
waiting sequences, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as ll
import numpy as np

GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


@dataclass(slots=True)
class _Sequence:
    seq_id: int
    prompt: list[int]
    max_tokens: int
    num_fed: int = 0  # prompt tokens already decoded
    generated: list[int] = field(default_factory=list)


class _Step:
    """Fills a ``llama_batch`` token by token and remembers which tokens want logits."""

    def __init__(self, batch: ll.llama_batch) -> None:
        self.batch: Any = batch  # ctypes fields, assigned item by item
        self.n = 0
        self.rows: list[tuple[int, _Sequence]] = []  # batch index of a logits token, its seq

    def add(self, token: int, pos: int, seq: _Sequence, logits: bool) -> None:
        b, n = self.batch, self.n
        b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, logits
        b.seq_id[n][0] = seq.seq_id
        if logits:
            self.rows.append((n, seq))
        self.n += 1


@dataclass(slots=True)
class LlamaCppRun:
    seconds: float
    output_tokens: int
    outputs: list[list[int]]
    num_steps: int


def run_batched(
    gguf: Path,
    prompts: list[list[int]],
    max_tokens: list[int],
    *,
    threads: int,
    kv_f32: bool,
    ignore_eos: bool,
    max_batch_tokens: int = 2048,
) -> LlamaCppRun:
    """Generate greedily for every prompt; the clock covers the decode loop, not the load."""
    ll.llama_backend_init()
    mparams = ll.llama_model_default_params()
    model = ll.llama_model_load_from_file(str(gguf).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {gguf}")
    vocab = ll.llama_model_get_vocab(model)
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    cparams = ll.llama_context_default_params()
    needed = sum(len(p) + m for p, m in zip(prompts, max_tokens, strict=True))
    cparams.n_ctx = -(-needed // 256) * 256
    cparams.n_batch = max_batch_tokens
    cparams.n_ubatch = min(512, max_batch_tokens)
    cparams.n_seq_max = len(prompts)
    cparams.kv_unified = True
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.type_k = cparams.type_v = GGML_TYPE_F32 if kv_f32 else GGML_TYPE_F16
    ctx = ll.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    memory = ll.llama_get_memory(ctx)
    batch = ll.llama_batch_init(max_batch_tokens, 0, 1)
    waiting = [_Sequence(i, p, m) for i, (p, m) in enumerate(zip(prompts, max_tokens, strict=True))]
    running: list[_Sequence] = []
    done: dict[int, list[int]] = {}
    steps = 0
    start = time.perf_counter()
    try:
        while waiting or running:
            step = _Step(batch)
            for seq in running:
                step.add(seq.generated[-1], len(seq.prompt) + len(seq.generated) - 1, seq, True)
            while waiting and step.n < max_batch_tokens:
                seq = waiting[0]
                take = min(max_batch_tokens - step.n, len(seq.prompt) - seq.num_fed)
                for i in range(seq.num_fed, seq.num_fed + take):
                    step.add(seq.prompt[i], i, seq, i == len(seq.prompt) - 1)
                seq.num_fed += take
                if seq.num_fed == len(seq.prompt):
                    running.append(waiting.pop(0))
            batch.n_tokens = step.n
            if ll.llama_decode(ctx, batch) != 0:
                raise RuntimeError(f"llama_decode failed at step {steps}")
            steps += 1
            for i, seq in step.rows:
                logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                token = int(logits.argmax())
                seq.generated.append(token)
                stop = not ignore_eos and ll.llama_vocab_is_eog(vocab, token)
                if stop or len(seq.generated) >= seq.max_tokens:
                    running.remove(seq)
                    done[seq.seq_id] = seq.generated
                    ll.llama_memory_seq_rm(memory, seq.seq_id, -1, -1)
        seconds = time.perf_counter() - start
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        ll.llama_model_free(model)
    outputs = [done[i] for i in range(len(prompts))]
    return LlamaCppRun(seconds, sum(len(o) for o in outputs), outputs, steps)
