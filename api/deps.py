"""Dependencies routes declare with ``Annotated`` aliases: settings, resources, the tenant.

They are ``async def`` on purpose: none of them waits on I/O, and FastAPI runs every plain
``def`` dependency on the threadpool, a thread hop each, which cost a polled request more
time than its Redis lookup.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import APIError
from api.resources import Resources
from jobs.settings import Settings
from jobs.state.ids import TenantId
from jobs.state.store import JobStore
from jobs.storage import Storage

_bearer = HTTPBearer(auto_error=False, description="An API key; each key is one tenant.")


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_app_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_store(resources: ResourcesDep) -> JobStore:
    return resources.store


async def get_storage(resources: ResourcesDep) -> Storage:
    return resources.storage


StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def get_tenant(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TenantId:
    """The tenant owning the bearer key; every key is compared in constant time."""
    if credentials is None or not credentials.credentials:
        raise APIError(
            401,
            "You didn't provide an API key: send 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
            headers=_CHALLENGE,
        )
    offered = credentials.credentials.encode()
    tenant: str | None = None
    for key, owner in settings.api.api_keys.items():
        if hmac.compare_digest(offered, key.encode()):
            tenant = owner
    if tenant is None:
        raise APIError(
            401, "Incorrect API key provided.", code="invalid_api_key", headers=_CHALLENGE
        )
    return TenantId(tenant)


TenantDep = Annotated[TenantId, Depends(get_tenant)]
