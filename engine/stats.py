"""Engine statistics: cumulative counters plus a snapshot of the last step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class StepStats:
    num_batched_tokens: int
    num_scheduled_requests: int
    num_sampled: int
    step_time_s: float


@dataclass(slots=True)
class EngineStats:
    num_steps: int = 0
    num_prompt_tokens: int = 0  # tokens computed for prompts (incl. recomputation)
    num_generated_tokens: int = 0
    num_finished_requests: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0
    num_kv_blocks_total: int = 0
    num_kv_blocks_used: int = 0
    num_running: int = 0
    num_waiting: int = 0
    busy_time_s: float = 0.0
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
    def mean_tokens_per_step(self) -> float:
        total = self.num_prompt_tokens + self.num_generated_tokens
        return total / self.num_steps if self.num_steps else 0.0

    @property
    def mean_step_time_s(self) -> float:
        return self.busy_time_s / self.num_steps if self.num_steps else 0.0

    def record_step(self, step: StepStats, keep: int = 64) -> None:
        self.num_steps += 1
        self.busy_time_s += step.step_time_s
        self.max_tokens_per_step = max(self.max_tokens_per_step, step.num_batched_tokens)
        self.last_step = step
        self.recent.append(step)
        if len(self.recent) > keep:
            del self.recent[0]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("recent")
        data.update(
            num_kv_blocks_free=self.num_kv_blocks_free,
            prefix_hit_rate=self.prefix_hit_rate,
            mean_tokens_per_step=self.mean_tokens_per_step,
            mean_step_time_s=self.mean_step_time_s,
        )
        return data
