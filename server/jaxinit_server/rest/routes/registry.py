"""The registry: initializers, their arguments, dtypes, key implementations, the server;
and the JAX versions it serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from jaxinit_server.core.provenance import served_versions
from jaxinit_server.rest.deps import OffLoopJSONRoute, ServiceDep

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)


@router.get("/v1/initializers", summary="The registry: initializers, arguments, dtypes, server")
async def list_initializers(service: ServiceDep) -> dict[str, Any]:
    return service.describe()


@router.get("/v1/versions", summary="What the server serves: JAX and jaxlib versions, backend, key impls, dtypes")
async def list_versions(service: ServiceDep) -> dict[str, Any]:
    return served_versions(service.describe())
