"""The registry: initializers, their arguments, dtypes, key implementations, the server;
the JAX versions it serves, and the JSON Schemas of model descriptions and plans."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from jaxinit.protocol import schemas
from jaxinit_server.pools import Deployment
from jaxinit_server.rest.deps import OffLoopJSONRoute, ServiceDep

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)


@router.get("/v1/initializers", summary="The registry: initializers, arguments, dtypes, server")
async def list_initializers(service: ServiceDep) -> dict[str, Any]:
    return service.describe()


@router.get("/v1/versions", summary="What the server serves: JAX and jaxlib versions, backend, key impls, dtypes")
async def list_versions(
    service: ServiceDep,
    request: Request,
    scope: Annotated[
        Literal["deployment", "server"],
        Query(description="deployment: every pool of the deployment; server: this server only"),
    ] = "deployment",
) -> dict[str, Any]:
    deployment: Deployment = request.app.state.deployment
    return await deployment.versions(service.describe(), scope)


@router.get(
    "/v1/schemas/{name}",
    summary="A JSON Schema: model-description.schema.json or plan.schema.json",
    response_class=Response,
    responses={200: {"content": {schemas.MEDIA_TYPE: {}}}},
)
async def get_schema(name: str) -> Response:
    """The JSON Schema (draft-07) of model descriptions or of plans, as this server's
    version ships it (docs/models.md)."""
    try:
        body = schemas.text(name)
    except KeyError as exc:
        raise HTTPException(404, str(exc.args[0])) from None
    return Response(body, media_type=schemas.MEDIA_TYPE)
