"""``/v1/models``: the model names this deployment serves (from settings)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import SettingsDep, TenantDep
from jobs.errors import NotFound

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "kvbatch"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


@router.get("", response_model=ModelList)
def list_models(_: TenantDep, settings: SettingsDep) -> ModelList:
    return ModelList(data=[ModelObject(id=name) for name in sorted(settings.models)])


@router.get("/{model}", response_model=ModelObject)
def retrieve_model(model: str, _: TenantDep, settings: SettingsDep) -> ModelObject:
    if model not in settings.models:
        raise NotFound(f"The model {model!r} does not exist", param="model", code="model_not_found")
    return ModelObject(id=model)
