"""Model routing: requested name -> base model -> shard queue, and the unserved-model note."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.pipeline.routing import (
    NOT_SERVED,
    ModelRoute,
    ModelRouter,
    model_shard_queue,
    note_unserved,
)
from jobs.settings import Settings
from jobs.wire.objects import BatchErrorItem, BatchErrors, BatchObject, BatchUsage, RequestCounts


def batch(status: str, model: str | None = "a", errors: BatchErrors | None = None) -> BatchObject:
    return BatchObject(
        id="batch_1",
        endpoint="/v1/chat/completions",
        model=model,
        input_file_id="file_1",
        completion_window="24h",
        status=status,
        created_at=0,
        request_counts=RequestCounts(),
        usage=BatchUsage(),
        errors=errors,
    )


def test_each_model_has_its_own_queue_and_workers_consume_housekeeping_too() -> None:
    router = ModelRouter("kv.shards")
    assert router.route("a") == ModelRoute("a")
    assert router.queue_of("a") == "kv.shards.a" != router.queue_of("b")
    assert router.worker_queues("a") == ["kv.shards", "kv.shards.a"]


def test_an_adapter_routes_to_its_base_models_queue() -> None:
    router = ModelRouter("kv.shards", adapters={"a-sql": "a"})
    assert router.route("a-sql") == ModelRoute("a", adapter="a-sql")
    assert router.queue_of("a-sql") == router.queue_of("a")


@pytest.mark.parametrize("name", ["", "two words", "a,b"])
def test_a_served_name_that_cannot_be_a_queue_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="one word"):
        model_shard_queue("kv.shards", name)


def test_only_an_in_progress_batch_without_workers_carries_the_note() -> None:
    router = ModelRouter("kv.shards", adapters={"a-sql": "a"})
    noted = note_unserved(batch("in_progress"), router, {"b": 2})
    assert noted.errors is not None
    assert [(e.code, e.param) for e in noted.errors.data] == [("model_not_served", "model")]
    assert note_unserved(batch("in_progress"), router, {"a": 1}).errors is None
    assert note_unserved(batch("in_progress", "a-sql"), router, {"a": 1}).errors is None
    assert note_unserved(batch("validating", None), router, {}).errors is None
    assert note_unserved(batch("expired"), router, {}).errors is None
    earlier = BatchErrors(data=[BatchErrorItem(code="x", message="y")])
    kept = note_unserved(batch("in_progress", errors=earlier), router, {})
    assert kept.errors is not None and [e.code for e in kept.errors.data] == ["x", NOT_SERVED]


def test_kvbatch_models_refuses_a_name_that_cannot_be_a_queue() -> None:
    parsed = Settings.from_flat({"models": "a=/x,b=/y"})
    assert parsed.serving.models == {"a": "/x", "b": "/y"}
    with pytest.raises(ValidationError, match="one word"):
        Settings.from_flat({"models": {"two words": "/x"}})
