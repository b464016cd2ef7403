"""CUDA graphs for decode steps.

A decode step of a small model is a few hundred kernels that each take longer to launch than to
run, so the GPU waits on the host. A CUDA graph records one forward pass and replays all of its
kernels with a single launch. A graph replays fixed shapes at fixed addresses, so one is
captured per batch size in ``sizes``; a step of ``n`` decodes replays the smallest graph of at
least ``n`` rows, its inputs written into the runner's persistent buffers and padded (see
``InputBuffers.build``). The graphs stop at the hidden states: the logits of the ``n`` real rows
are computed outside, so no graph holds a ``[size, vocab]`` output of its own.

Prefill and mixed steps run eagerly: their token counts vary too much to capture.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from engine.models.attention import KVCache
from engine.models.inputs import InputBuffers, ModelInputs
from engine.models.llama import LlamaForCausalLM
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledRequest


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to ``max_num_seqs`` (and that number itself):
    a step pads at most 15 rows, and small batches, whose launches matter most, pad little."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs]
    sizes += range(16, max_num_seqs, 16)
    return [*sizes, max_num_seqs]


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: Sequence[KVCache],
        buffers: InputBuffers,
        sizes: Sequence[int],
        max_seq_len: int,
    ) -> None:
        assert sizes and max(sizes) <= buffers.max_num_reqs
        self.model = model
        self.kv_caches = list(kv_caches)
        self.buffers = buffers
        self.sizes = sorted(set(sizes))
        self.max_seq_len = max_seq_len
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._hidden: dict[int, torch.Tensor] = {}  # each graph's output, [size, hidden_size]

    def size_for(self, scheduled: Sequence[ScheduledRequest]) -> int | None:
        """The graph size a step replays, or None when it must run eagerly (not all decodes,
        or more requests than the largest graph)."""
        num_reqs = len(scheduled)
        if num_reqs > self.sizes[-1]:
            return None
        if not all(s.sample and s.num_new_tokens == 1 for s in scheduled):
            return None
        return self.sizes[bisect.bisect_left(self.sizes, num_reqs)]

    def build_inputs(self, scheduled: Sequence[ScheduledRequest], size: int) -> ModelInputs:
        return self.buffers.build(scheduled, pad_to=size, max_seq_len=self.max_seq_len)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first, into one memory pool that the smaller graphs
        reuse. Each size runs once eagerly first, so Triton compiles outside the capture."""
        pool = None
        for size in reversed(self.sizes):
            inputs = self.build_inputs(self._dummy_step(size), size)
            self._forward(inputs)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._hidden[size] = self._forward(inputs)
            pool = graph.pool()
            self._graphs[size] = graph
        torch.cuda.synchronize()

    def replay(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states ``[inputs.num_reqs, hidden_size]`` of a step built by
        ``build_inputs``; valid until the next replay."""
        size = inputs.graph_size
        assert size is not None and size in self._graphs
        self._graphs[size].replay()
        return self._hidden[size][: inputs.num_reqs]

    def _forward(self, inputs: ModelInputs) -> torch.Tensor:
        return self.model(
            inputs.input_ids, inputs.positions, inputs.attn, self.kv_caches, inputs.lora
        )

    @staticmethod
    def _dummy_step(size: int) -> list[ScheduledRequest]:
        """``size`` decodes of token 0 at position 0 in block 0: the values do not matter,
        only the shapes; the real step overwrites the same buffers before each replay."""
        steps = []
        for i in range(size):
            request = Request(RequestId(f"capture-{i}"), [0], SamplingParams())
            steps.append(ScheduledRequest(request, [0], 0, [0], sample=True))
        return steps
