"""Liveness, readiness (with the pools' state) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from jaxinit_server.rest.deps import OffLoopJSONRoute, ServiceDep, TelemetryDep
from jaxinit_server.telemetry import CONTENT_TYPE as METRICS_CONTENT_TYPE

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Readiness is open to anyone, keys or not: where the server keeps files on its host is
# not shown here (ListInitializers / GET /v1/initializers, behind auth, name the
# shared-memory directory callers need).
_HIDDEN = frozenset({"directory"})


def _without_paths(state: Any) -> Any:
    """``state`` with every directory path left out (nested dicts)."""
    if isinstance(state, dict):
        return {k: _without_paths(v) for k, v in state.items() if k not in _HIDDEN}
    return state


@router.get("/readyz", summary="Readiness: 503 until warmed up, and while stopping")
async def readyz(service: ServiceDep) -> JSONResponse:
    ready = service.ready
    body = {"status": "ready" if ready else "not ready", **_without_paths(service.state())}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
)
async def metrics(telemetry: TelemetryDep) -> Response:
    return Response(telemetry.exposition(), media_type=METRICS_CONTENT_TYPE)
