"""The model runner: owns the weights and the paged KV cache, runs one scheduler step at a time."""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.config import EngineConfig, EngineConfigError
from engine.cuda_graphs import DecodeGraphs, graph_batch_sizes
from engine.models.attention import KVCache
from engine.models.cpu_decoder import CpuDecoder
from engine.models.inputs import InputBuffers, ModelInputs
from engine.models.loader import load_model
from engine.models.lora import LoRAContext, attach_lora
from engine.models.model_config import ModelConfig
from engine.models.packed_weights import Layout, pack_weights, packing_layout
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledRequest, SchedulerOutput
from kernels import prepare as prepare_kernels
from kernels import use_triton


class ModelRunner:
    """Loads ``config.model`` on ``config.torch_device`` in ``config.torch_dtype`` and sizes the
    KV cache: ``config.num_kv_blocks`` when given, else from ``kv_cache_memory_gb`` on the CPU,
    else from free GPU memory after a warm-up forward pass. On CUDA (unless
    ``enforce_eager``) it then captures CUDA graphs for decode steps.

    A step is ``prepare`` (inputs into the persistent buffers) then ``forward`` (logits).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = config.torch_device
        self.dtype = config.torch_dtype
        self.block_size = config.block_size
        self.model_config = ModelConfig.from_pretrained(config.model)
        self.max_model_len = resolve_max_model_len(config, self.model_config)
        self.model = load_model(
            config.model,
            self.model_config,
            self.device,
            self.dtype,
            self.max_model_len,
            random_seed=config.seed if config.load_format == "dummy" else None,
        )
        # Adapter slots are allocated before the KV cache is sized, so that they count as
        # weights; they start zeroed (a zero delta) and fill as the engine loads adapters.
        self.lora: LoRAContext | None = None
        if config.enable_lora:
            self.lora = attach_lora(self.model, config.max_loras, config.max_lora_rank)
        layout = packing_layout(self.device, self.dtype) if config.cpu_packed_weights else None
        if layout is not None and pack_weights(self.model, layout) and layout is Layout.PANELS:
            self.model.cpu_decoder = CpuDecoder.of(self.model)
        self.buffers = InputBuffers(
            max_num_tokens=config.max_num_batched_tokens,
            max_num_reqs=config.max_num_seqs,
            max_blocks_per_req=-(-self.max_model_len // self.block_size),
            block_size=self.block_size,
            device=self.device,
            max_loras=config.max_loras if config.enable_lora else 0,
        )
        self.num_kv_blocks = self._count_kv_blocks()
        self.kv_caches = self._allocate_kv_caches(self.num_kv_blocks)
        prepare_kernels(self.device, self.dtype)
        self.graphs: DecodeGraphs | None = None
        if self._wants_cuda_graphs():
            self.graphs = DecodeGraphs(
                self.model,
                self.kv_caches,
                self.buffers,
                graph_batch_sizes(config.max_num_seqs),
                self.max_model_len,
            )
            self.graphs.capture()

    @property
    def kv_block_bytes(self) -> int:
        """Bytes of one block across all layers, keys and values."""
        mc = self.model_config
        per_layer = self.block_size * mc.num_kv_heads * mc.head_dim * self.dtype.itemsize
        return 2 * mc.num_layers * per_layer

    def prepare(self, output: SchedulerOutput) -> ModelInputs:
        """Write a non-empty step's inputs into the buffers (padded for a CUDA graph when
        one can replay it) and start their copy to the device."""
        assert not output.is_empty
        size = self.graphs.size_for(output.scheduled) if self.graphs is not None else None
        if size is not None:
            assert self.graphs is not None
            return self.graphs.build_inputs(output.scheduled, size)
        return self.buffers.build(output.scheduled)

    @torch.inference_mode()
    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """fp32 logits ``[num_sampled, vocab_size]`` of prepared inputs."""
        if inputs.graph_size is not None:
            assert self.graphs is not None
            logits = self.model.compute_logits(self.graphs.replay(inputs))
        else:
            logits = self._forward_eager(inputs, self.kv_caches)
        if self.config.sync_step_timing and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return logits

    @torch.inference_mode()
    def forward_pooling(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """An eager step that also returns every token's final hidden state: fp32 logits
        ``[num_sampled, vocab_size]`` and ``[num_tokens, hidden_size]`` for the pooler."""
        assert inputs.graph_size is None, "pooling chunks are never sampled, so never graphed"
        hidden = self.model(
            inputs.input_ids, inputs.positions, inputs.attn, self.kv_caches, inputs.lora
        )
        return self.model.compute_logits(hidden[inputs.logits_indices]), hidden

    def _forward_eager(self, inputs: ModelInputs, kv_caches: list[KVCache]) -> torch.Tensor:
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.attn, kv_caches, inputs.lora)
        return self.model.compute_logits(hidden[inputs.logits_indices])

    def _wants_cuda_graphs(self) -> bool:
        """Graphs need the Triton kernels: the PyTorch references read metadata on the host."""
        if self.device.type != "cuda" or self.config.enforce_eager:
            return False
        return use_triton(self.kv_caches[0].k_cache)

    def _allocate_kv_caches(self, num_blocks: int) -> list[KVCache]:
        """Zero-filled, because attention may read (masked) slots never written: garbage there
        could hold NaN, and ``0 * NaN`` would leak into the output.

        Each layer's caches are ``[num_blocks, block_size, num_kv_heads, head_dim]``; on the
        CPU that is a view of head-major memory ``[num_blocks, num_kv_heads, block_size,
        head_dim]``, so each KV head's rows of a block lie together (4 KB for SmolLM2). The
        CPU attention reads a row's context one KV head at a time, and from a block laid out
        position by position it took a head's 256 bytes of every 768: 33 decodes over 334
        tokens, 30 layers, random block tables over 2 GB of cache, 2 threads, AMD EPYC Zen 5
        VM (a harness, medians of 20 alternating rounds): 20.2-21.4 ms a step's attention
        position-major against 16.5-17.5 ms head-major. Every kernel takes the caches by
        their strides."""
        mc = self.model_config
        shape = (2, mc.num_layers, num_blocks, self.block_size, mc.num_kv_heads, mc.head_dim)
        if self.device.type == "cpu":
            head_major = (*shape[:3], shape[4], shape[3], shape[5])
            kv = _calloc_zeros(head_major, self.dtype).transpose(3, 4)
        else:
            kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return [KVCache(kv[0, layer], kv[1, layer]) for layer in range(mc.num_layers)]

    def _count_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type == "cuda":
            budget = self._profile_cuda_budget()
            source = f"gpu_memory_utilization={self.config.gpu_memory_utilization}"
        else:
            budget = int(self.config.kv_cache_memory_gb * 2**30)
            source = f"kv_cache_memory_gb={self.config.kv_cache_memory_gb}"
        num_blocks = budget // self.kv_block_bytes
        if num_blocks < 2:
            raise EngineConfigError(
                f"{source} leaves room for {max(num_blocks, 0)} KV blocks of "
                f"{self.kv_block_bytes} bytes; at least 2 are needed"
            )
        return num_blocks

    @torch.inference_mode()
    def _profile_cuda_budget(self) -> int:
        """Bytes for the KV cache: ``free * gpu_memory_utilization`` minus a step's activations.

        A warm-up step of the largest shape the scheduler may send (one long prefill beside
        ``max_num_seqs - 1`` decodes, all sampled) measures the activation peak; memory our
        allocator caches but does not use counts as free. The decode graphs, captured later,
        take their (small) memory pool from the ``1 - gpu_memory_utilization`` left over.
        """
        torch.cuda.synchronize(self.device)
        weights = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        scheduled = self._warmup_batch()
        num_blocks = sum(len(s.block_ids) for s in scheduled)
        caches = self._allocate_kv_caches(num_blocks)
        self._forward_eager(self.buffers.build(scheduled), caches)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        activations = peak - weights - num_blocks * self.kv_block_bytes
        del caches
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int((free + cached) * self.config.gpu_memory_utilization) - activations

    def _warmup_batch(self) -> list[ScheduledRequest]:
        """The scheduler's largest step: ``max_num_batched_tokens`` tokens over as many
        sequences as it may run, the long prefills (each at most ``max_model_len``) first and
        a one-token decode for every sequence slot left."""
        num_seqs = min(self.config.max_num_seqs, self.config.max_num_batched_tokens)
        budget = self.config.max_num_batched_tokens
        lengths: list[int] = []
        while len(lengths) < num_seqs:
            slots_after = num_seqs - len(lengths) - 1
            length = max(1, min(self.max_model_len, budget - slots_after))
            lengths.append(length)
            budget -= length
        scheduled, next_block = [], 0
        for i, length in enumerate(lengths):
            num_blocks = math.ceil(length / self.block_size)
            tokens = [0] * length
            request = Request(RequestId(f"warmup-{i}"), tokens, SamplingParams())
            blocks = list(range(next_block, next_block + num_blocks))
            scheduled.append(ScheduledRequest(request, tokens, 0, blocks, sample=True))
            next_block += num_blocks
        return scheduled


def resolve_max_model_len(config: EngineConfig, model_config: ModelConfig) -> int:
    """``config.max_model_len`` if set (it may only shrink the model's context), else the
    model's own."""
    limit = model_config.max_position_embeddings
    if config.max_model_len is None:
        return limit
    if not 0 < config.max_model_len <= limit:
        raise EngineConfigError(
            f"max_model_len={config.max_model_len} must be in [1, {limit}] for this model "
            f"(its max_position_embeddings)"
        )
    return config.max_model_len


_ALIGN = 64  # a cache line, and what oneDNN and the vector kernels like their rows on


def _calloc_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor in host memory from ``calloc`` (numpy's ``zeros``), 64-byte aligned.

    ``torch.zeros`` writes every byte at once: the CPU default of 1 GiB cost ~1 s of each
    engine start and 1 GiB resident from the start. Large ``calloc`` blocks are fresh pages
    the kernel zeroes when first touched, so a page costs only once the cache reaches it.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.from_numpy(np.zeros(nbytes + _ALIGN, dtype=np.uint8))
    start = -raw.data_ptr() % _ALIGN
    return raw[start : start + nbytes].view(dtype).view(shape)
