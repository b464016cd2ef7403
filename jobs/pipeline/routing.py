"""Which shard queue a batch goes to: one queue per served base model.

    KVBATCH_SHARD_QUEUE = "kvbatch.shards"          housekeeping (expiry sweep, webhooks)
    model "smollm2-135m-instruct"  ──► "kvbatch.shards.smollm2-135m-instruct"
    model "qwen3-tiny"             ──► "kvbatch.shards.qwen3-tiny"

A worker consumes the housekeeping queue and the queue of the one model it holds, so a
batch for model B never runs on a worker holding model A. Every producer (intake, the fair
queue's pump, the watchdog's resend) names the queue through :class:`ModelRouter`, so
they cannot disagree.

A batch for a model no live worker serves is accepted and waits in its queue; its Batch
object says so (:func:`note_unserved`).

A requested model name maps to a base model and, for a LoRA adapter
(``KVBATCH_LORA_ADAPTERS``, jobs/adapters.py), the adapter on it (:meth:`ModelRouter.route`):
an adapter's batches go to its base model's queue, where a worker holding that base model
runs them under the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from jobs.wire.objects import BatchErrorItem, BatchErrors, BatchObject


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A requested model name resolved: the base model a worker must hold, and the adapter
    on top of it (``None``: the base model itself)."""

    base_model: str
    adapter: str | None = None


def model_shard_queue(shard_queue: str, model: str) -> str:
    """The broker queue of ``model``'s shards, under the deployment's ``shard_queue``."""
    if not model or any(c.isspace() or c == "," for c in model):
        # Celery's --queues splits on commas; a served name is one token.
        raise ValueError(f"a served model name is one word without commas, got {model!r}")
    return f"{shard_queue}.{model}"


@dataclass(frozen=True, slots=True)
class ModelRouter:
    """Requested model name -> base model -> shard queue, for one deployment."""

    shard_queue: str
    # Adapter name -> the base model it belongs to (from KVBATCH_LORA_ADAPTERS).
    adapters: Mapping[str, str] = field(default_factory=dict)

    def route(self, model: str) -> ModelRoute:
        """``model`` as a worker must serve it: a registered adapter's base, or itself."""
        base = self.adapters.get(model)
        if base is None:
            return ModelRoute(model)
        return ModelRoute(base, adapter=model)

    def queue_of(self, model: str) -> str:
        """The shard queue a batch for ``model`` is sent to."""
        return model_shard_queue(self.shard_queue, self.route(model).base_model)

    def worker_queues(self, served_model: str) -> list[str]:
        """What a worker holding ``served_model`` consumes: housekeeping, then its shards."""
        return [self.shard_queue, model_shard_queue(self.shard_queue, served_model)]


NOT_SERVED = "model_not_served"


def note_unserved(
    batch: BatchObject, router: ModelRouter, workers: Mapping[str, int]
) -> BatchObject:
    """``batch`` as a client sees it: an ``in_progress`` batch whose model no live worker
    serves (``workers``: live workers per served model) carries a ``model_not_served`` item
    in ``errors.data``. It is not a failure: the batch waits for a worker (one may come
    online) until its window ends, and the note goes once a worker serves the model."""
    if batch.status != "in_progress" or not batch.model:
        return batch
    base = router.route(batch.model).base_model
    if workers.get(base, 0) > 0:
        return batch
    note = BatchErrorItem(
        code=NOT_SERVED,
        message=f"no worker serves model {base!r} now; the batch waits for one until it expires",
        param="model",
    )
    errors = BatchErrors(data=[*(batch.errors.data if batch.errors else []), note])
    return batch.model_copy(update={"errors": errors})
