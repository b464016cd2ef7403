"""Engine statistics: cumulative counters, where step time goes, and the last steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.scheduler_output import ScheduledRequest


@dataclass(slots=True)
class StepTimes:
    """Seconds one step (or, summed, many) spent in each phase of ``LLMEngine.step``.

    ``forward_s`` ends when the device has finished the forward pass if the engine runs with
    ``sync_step_timing`` (the default); without it, a CUDA forward is only its launch and the
    device time shows up in ``sample_s``, whose result the host waits for.
    """

    schedule_s: float = 0.0  # the scheduler's plan
    prepare_s: float = 0.0  # the plan turned into input tensors and copied to the device
    forward_s: float = 0.0  # the model, up to the logits
    sample_s: float = 0.0  # logits to token ids on the host
    postprocess_s: float = 0.0  # scheduler update, detokenizing, stop checks, outputs

    @property
    def total_s(self) -> float:
        return (
            self.schedule_s + self.prepare_s + self.forward_s + self.sample_s + self.postprocess_s
        )

    def add(self, other: StepTimes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class StepStats:
    num_batched_tokens: int
    num_scheduled_requests: int
    num_sampled: int
    num_context_tokens: int  # KV positions attention reads this step (sum of seq_lens)
    times: StepTimes = field(default_factory=StepTimes)
    used_cuda_graph: bool = False

    @property
    def step_time_s(self) -> float:
        return self.times.total_s

    @property
    def is_decode(self) -> bool:
        """Every scheduled request computes one token and samples it (what a graph replays)."""
        return self.num_batched_tokens == self.num_sampled == self.num_scheduled_requests


@dataclass(slots=True)
class EngineStats:
    num_steps: int = 0
    num_prompt_tokens: int = 0  # tokens computed for prompts (incl. recomputation)
    num_generated_tokens: int = 0  # tokens sampled (the first, at the end of prefill, too)
    num_batched_tokens: int = 0  # positions computed by the model
    num_finished_requests: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0
    num_kv_blocks_total: int = 0
    num_kv_blocks_used: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_cuda_graph_steps: int = 0
    # Speculative decoding: drafts verified, drafts the target agreed with, and how many
    # request-steps verified drafts (each emits its accepted drafts plus one token).
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_spec_verifications: int = 0
    phase_times: StepTimes = field(default_factory=StepTimes)
    last_step: StepStats | None = None
    max_tokens_per_step: int = 0
    recent: list[StepStats] = field(default_factory=list)

    @property
    def num_kv_blocks_free(self) -> int:
        return self.num_kv_blocks_total - self.num_kv_blocks_used

    @property
    def prefix_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a verifying request gains per step (accepted drafts plus its own token)."""
        if not self.num_spec_verifications:
            return 0.0
        return 1.0 + self.num_accepted_tokens / self.num_spec_verifications

    def record_speculation(
        self, sampled: Sequence[ScheduledRequest], num_new_tokens: Sequence[int]
    ) -> None:
        """Count one step's verified drafts (``num_new_tokens`` aligned with ``sampled``)."""
        for scheduled, count in zip(sampled, num_new_tokens, strict=True):
            if scheduled.num_draft_tokens:
                self.num_draft_tokens += scheduled.num_draft_tokens
                self.num_accepted_tokens += count - 1
                self.num_generated_tokens += count - 1
                self.num_spec_verifications += 1

    @property
    def mean_tokens_per_step(self) -> float:
        return self.num_batched_tokens / self.num_steps if self.num_steps else 0.0

    @property
    def busy_time_s(self) -> float:
        return self.phase_times.total_s

    @property
    def mean_step_time_s(self) -> float:
        return self.busy_time_s / self.num_steps if self.num_steps else 0.0

    def record_step(self, step: StepStats, keep: int = 64) -> None:
        self.num_steps += 1
        self.num_cuda_graph_steps += int(step.used_cuda_graph)
        self.num_batched_tokens += step.num_batched_tokens
        self.phase_times.add(step.times)
        self.max_tokens_per_step = max(self.max_tokens_per_step, step.num_batched_tokens)
        self.last_step = step
        self.recent.append(step)
        if len(self.recent) > keep:
            del self.recent[0]

    def as_dict(self) -> dict[str, Any]:
        """Flat numbers (plus ``last_step``) for logs, ``celery inspect`` and metrics: the
        counters, the phase times and every derived number (each property)."""
        data = asdict(self)
        data.pop("recent")
        phases = data.pop("phase_times")
        data.update({f"time_{name}": seconds for name, seconds in phases.items()})
        derived = (name for name, attr in vars(EngineStats).items() if isinstance(attr, property))
        data.update({name: getattr(self, name) for name in derived})
        return data
