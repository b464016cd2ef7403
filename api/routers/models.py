"""``/v1/models``: the model names this deployment serves (from settings), each with its
live workers.

OpenAI's Model object plus one field, ``workers``: how many live workers (heartbeats in
Redis, jobs/state/worker_registry.py) serve the model now. A model with none still takes
batches; they wait for a worker (their Batch object says so). A LoRA adapter
(``KVBATCH_LORA_ADAPTERS``) is listed too, with ``parent`` naming its base model (as vLLM
does) and the base model's workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ResourcesDep, TenantDep
from jobs.errors import NotFound
from jobs.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "kvbatch"
    workers: int = 0  # extension: live workers serving it now
    parent: str | None = None  # extension: an adapter's base model


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _model(name: str, settings: Settings, workers: Mapping[str, int]) -> ModelObject:
    route = settings.model_router().route(name)
    parent = route.base_model if route.adapter is not None else None
    return ModelObject(id=name, workers=workers.get(route.base_model, 0), parent=parent)


@router.get("", response_model=ModelList)
def list_models(_: TenantDep, resources: ResourcesDep) -> ModelList:
    workers = resources.registry.workers_by_model()
    settings = resources.settings
    return ModelList(
        data=[_model(name, settings, workers) for name in sorted(settings.served_names())]
    )


@router.get("/{model}", response_model=ModelObject)
def retrieve_model(model: str, _: TenantDep, resources: ResourcesDep) -> ModelObject:
    if model not in resources.settings.served_names():
        raise NotFound(f"The model {model!r} does not exist", param="model", code="model_not_found")
    return _model(model, resources.settings, resources.registry.workers_by_model())
