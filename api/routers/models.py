"""``/v1/models``: the model names this deployment serves (from settings), each with its
live workers.

OpenAI's Model object plus one field, ``workers``: how many live workers (heartbeats in
Redis, jobs/state/worker_registry.py) serve the model now. A model with none still takes
batches; they wait for a worker (their Batch object says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ResourcesDep, TenantDep
from api.settings import Settings
from jobs.errors import NotFound

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "kvbatch"
    workers: int = 0  # extension: live workers serving it now


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _model(name: str, settings: Settings, workers: Mapping[str, int]) -> ModelObject:
    base = settings.model_router().route(name).base_model
    return ModelObject(id=name, workers=workers.get(base, 0))


@router.get("", response_model=ModelList)
def list_models(_: TenantDep, resources: ResourcesDep) -> ModelList:
    workers = resources.registry.workers_by_model()
    settings = resources.settings
    return ModelList(data=[_model(name, settings, workers) for name in sorted(settings.models)])


@router.get("/{model}", response_model=ModelObject)
def retrieve_model(model: str, _: TenantDep, resources: ResourcesDep) -> ModelObject:
    if model not in resources.settings.models:
        raise NotFound(f"The model {model!r} does not exist", param="model", code="model_not_found")
    return _model(model, resources.settings, resources.registry.workers_by_model())
