"""Pooling a prompt's hidden states into one embedding, chunk by chunk.

A pooling request is prefill only: the scheduler hands its prompt out in chunks (chunked
prefill, token budget) like any other, and after each chunk the pooler folds that chunk's
final hidden states into the request's running state::

    prompt:   [ t0 t1 t2 | t3 t4 t5 t6 | t7 t8 ]     three chunks
    CLS:        ^ row of position 0
    MEAN:       sum of every row / 9
    LAST:                                     ^ row of the last position

so no chunk's hidden states are kept past its step. How a model pools comes from its
sentence-transformers files (``modules.json`` naming a ``Pooling`` module whose
``config.json`` picks the mode, and a ``Normalize`` module) when it ships them; a decoder-only
model without them gets last-token pooling, L2-normalized (the Qwen3-Embedding and
e5-mistral recipe).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.request import RequestId
from engine.scheduler_output import ScheduledRequest


class PoolingType(enum.Enum):
    LAST = "last"
    MEAN = "mean"
    CLS = "cls"


# sentence-transformers' Pooling config keys, in the order it prefers them.
_ST_MODES = {
    "pooling_mode_lasttoken": PoolingType.LAST,
    "pooling_mode_mean_tokens": PoolingType.MEAN,
    "pooling_mode_cls_token": PoolingType.CLS,
}


class PoolingConfigError(ValueError):
    """A model's pooling files ask for something we do not serve."""


@dataclass(slots=True, frozen=True)
class PoolingConfig:
    """How one model turns hidden states into an embedding.

    ``matryoshka_dimensions`` is ``None`` for a model not trained for truncation, else the
    dimensions it was trained for (empty: any).
    """

    pooling_type: PoolingType = PoolingType.LAST
    normalize: bool = True
    matryoshka_dimensions: tuple[int, ...] | None = None

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, pooling_type: str | PoolingType | None = None
    ) -> PoolingConfig:
        """Read the model's sentence-transformers files when present; ``pooling_type`` (a
        caller's choice) overrides the mode they or the default give."""
        path = Path(model_dir)
        config = _read_json(path / "config.json") or {}
        matryoshka = _matryoshka(config)
        modules = _read_json(path / "modules.json")
        base = (
            cls(matryoshka_dimensions=matryoshka)
            if modules is None
            else _from_sentence_transformers(path, modules, matryoshka)
        )
        if pooling_type is None:
            return base
        return cls(PoolingType(pooling_type), base.normalize, base.matryoshka_dimensions)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _matryoshka(config: dict[str, Any]) -> tuple[int, ...] | None:
    """vLLM's convention: ``is_matryoshka`` or ``matryoshka_dimensions`` in config.json."""
    dims = config.get("matryoshka_dimensions")
    if isinstance(dims, list):
        return tuple(int(d) for d in dims)
    return () if config.get("is_matryoshka") else None


def _from_sentence_transformers(
    path: Path, modules: list[dict[str, Any]], matryoshka: tuple[int, ...] | None
) -> PoolingConfig:
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    pooling_type = PoolingType.MEAN  # sentence-transformers' own default mode
    if "Pooling" in kinds:
        pooling_dir = path / str(kinds["Pooling"].get("path", "1_Pooling"))
        raw = _read_json(pooling_dir / "config.json") or {}
        chosen = [mode for key, mode in _ST_MODES.items() if raw.get(key)]
        others = [
            k for k, v in raw.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES
        ]
        if others or len(chosen) > 1:
            raise PoolingConfigError(
                f"{pooling_dir / 'config.json'} asks for pooling {others or chosen}; "
                f"only one of {sorted(_ST_MODES)} is served"
            )
        if chosen:
            pooling_type = chosen[0]
    return PoolingConfig(pooling_type, "Normalize" in kinds, matryoshka)


class Pooler:
    """Running pooled state of every pooling request in flight, keyed by request id."""

    def __init__(self, config: PoolingConfig) -> None:
        self.config = config
        self._sums: dict[RequestId, torch.Tensor] = {}  # fp32 [hidden_size]

    def add_chunks(
        self, chunks: list[tuple[ScheduledRequest, slice]], hidden: torch.Tensor
    ) -> None:
        """Fold each chunk's rows ``hidden[rows]`` into its request's state. A chunk at
        position 0 starts the state afresh (a preempted request recomputes from there)."""
        kind = self.config.pooling_type
        for scheduled, rows in chunks:
            request_id = scheduled.request.request_id
            if scheduled.start_position == 0:
                self._sums.pop(request_id, None)
            block = hidden[rows]
            if kind is PoolingType.MEAN:
                part = block.float().sum(dim=0)
                previous = self._sums.get(request_id)
                self._sums[request_id] = part if previous is None else previous + part
            elif kind is PoolingType.CLS:
                if scheduled.start_position == 0:
                    self._sums[request_id] = block[0].float()
            else:
                self._sums[request_id] = block[-1].float()

    def finish(self, request_id: RequestId, num_tokens: int, dimensions: int | None) -> list[float]:
        """The request's embedding (its state dropped): mean divided out, truncated to
        ``dimensions`` and L2-normalized as the model's config says."""
        pooled = self._sums.pop(request_id)
        if self.config.pooling_type is PoolingType.MEAN:
            pooled = pooled / num_tokens
        if dimensions is not None:
            pooled = pooled[:dimensions]
        if self.config.normalize or dimensions is not None:
            pooled = F.normalize(pooled, dim=0)
        return [float(v) for v in pooled.cpu().tolist()]

    def release(self, request_id: RequestId) -> None:
        self._sums.pop(request_id, None)
