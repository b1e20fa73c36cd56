"""The KServe v2 / Open Inference Protocol routes: every initializer is a model.

Errors here are the protocol's ``{"error": "<message>"}`` (see ``kserve.rest``), with the
status from jaxinit's one error table.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import JaxinitError
from jaxinit.protocol.wire import JAX_VERSION_HEADER, JSON, REQUEST_ID_HEADER
from jaxinit_server.core import TensorStream
from jaxinit_server.core.delivery import STREAM, Gathered
from jaxinit_server.disconnects import unless_disconnected
from jaxinit_server.kserve.mapping import (
    EXTENSIONS,
    OUTPUT,
    UNSUPPORTED,
    VERSION,
    datatype_of,
    known,
    model_config,
    model_metadata,
    model_statistics,
    params_from_v2,
)
from jaxinit_server.kserve.rest import (
    HEADER_LENGTH,
    V2_ERRORS,
    InferRequest,
    TensorResponse,
    V2Error,
    V2ModelReady,
    V2Ready,
    binary_body,
    error_response,
    json_answer,
    read_request,
)
from jaxinit_server.rest.deps import CallerDep, OffLoopJSONRoute, ServiceDep, TelemetryDep
from jaxinit_server.telemetry import Call

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)


@router.get("/v2", summary="KServe v2: server metadata (with the extensions it implements)")
async def server_metadata(service: ServiceDep) -> dict[str, Any]:
    return {"name": "jaxinit", "version": service.identity.jaxinit_version, "extensions": list(EXTENSIONS)}


@router.get("/v2/health/live", summary="KServe v2: liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready", summary="KServe v2: readiness", response_model=V2Ready, responses={503: {"model": V2Ready}}
)
async def ready(service: ServiceDep) -> JSONResponse:
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)


_STATS = "KServe v2 (Triton's statistics extension): requests for each initializer, every surface"


# Before /v2/models/{name}, which would take "stats" for a model's name.
@router.get("/v2/models/stats", summary=_STATS, responses=V2_ERRORS)
async def all_statistics(telemetry: TelemetryDep) -> Response:
    return _answer(lambda: model_statistics(telemetry.model_counters))


@router.get(
    "/v2/models/{name}", summary="KServe v2: model metadata (every initializer is a model)", responses=V2_ERRORS
)
async def metadata(name: str, service: ServiceDep) -> Response:
    return _metadata(name, "", service)


@router.get("/v2/models/{name}/versions/{version}", summary="KServe v2: model metadata", responses=V2_ERRORS)
async def metadata_of_version(name: str, version: str, service: ServiceDep) -> Response:
    return _metadata(name, version, service)


def _metadata(name: str, version: str, service: ServiceDep) -> Response:
    return _answer(lambda: model_metadata(name, service.identity.jax_version, version))


@router.get(
    "/v2/models/{name}/config", summary="KServe v2 (Triton's model configuration extension)", responses=V2_ERRORS
)
async def config(name: str, service: ServiceDep) -> Response:
    return _answer(lambda: model_config(name, service.identity.jax_version))


@router.get(
    "/v2/models/{name}/versions/{version}/config",
    summary="KServe v2 (Triton's model configuration extension)",
    responses=V2_ERRORS,
)
async def config_of_version(name: str, version: str, service: ServiceDep) -> Response:
    return _answer(lambda: model_config(name, service.identity.jax_version, version))


@router.get("/v2/models/{name}/stats", summary=_STATS, responses=V2_ERRORS)
async def statistics(name: str, telemetry: TelemetryDep) -> Response:
    return _answer(lambda: model_statistics(telemetry.model_counters, name))


@router.get("/v2/models/{name}/versions/{version}/stats", summary=_STATS, responses=V2_ERRORS)
async def statistics_of_version(name: str, version: str, telemetry: TelemetryDep) -> Response:
    return _answer(lambda: model_statistics(telemetry.model_counters, name, version))


def _answer(make: Callable[[], dict[str, Any]]) -> Response:
    try:
        return JSONResponse(make())
    except JaxinitError as exc:
        return error_response(exc)


@router.post("/v2/repository/index", summary="KServe v2 (Triton's repository extension): every model")
async def repository_index(service: ServiceDep) -> list[dict[str, str]]:
    state = "READY" if service.ready else "UNAVAILABLE"
    return [{"name": name, "version": VERSION, "state": state} for name in sorted(CATALOG)]


# Triton's extensions this server does not implement, on the paths Triton serves them:
# the protocol's error body with one sentence (501), not a bare 404.
_UNSUPPORTED_PATHS = {
    "/v2/systemsharedmemory/{rest:path}": "system_shared_memory",
    "/v2/cudasharedmemory/{rest:path}": "cuda_shared_memory",
    "/v2/repository/models/{rest:path}": "model_control",
    "/v2/repository/{repository}/models/{rest:path}": "model_control",
    "/v2/trace/setting": "trace",
    "/v2/models/{name}/trace/setting": "trace",
    "/v2/logging": "logging",
}


def _unsupported_route(path: str, extension: str) -> None:
    async def unsupported() -> JSONResponse:
        return JSONResponse({"error": UNSUPPORTED[extension]}, status_code=501)

    router.add_api_route(
        path,
        unsupported,
        methods=["GET", "POST"],
        summary=f"KServe v2: Triton's {extension} extension (not supported: 501)",
        responses={501: {"model": V2Error}},
        name=f"unsupported_{extension}_{len(router.routes)}",
        include_in_schema=False,  # not an operation of this API (docs/api.md lists them)
    )


for _path, _extension in _UNSUPPORTED_PATHS.items():
    _unsupported_route(_path, _extension)


_READY = {
    "response_model": V2ModelReady,
    "responses": {404: {"model": V2ModelReady}, 503: {"model": V2ModelReady}},
}


@router.get("/v2/models/{name}/ready", summary="KServe v2: model readiness", **_READY)  # type: ignore[arg-type]
async def model_ready(name: str, service: ServiceDep) -> JSONResponse:
    return _ready(name, "", service)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    summary="KServe v2: model readiness",
    **_READY,  # type: ignore[arg-type]
)
async def model_version_ready(name: str, version: str, service: ServiceDep) -> JSONResponse:
    return _ready(name, version, service)


def _ready(name: str, version: str, service: ServiceDep) -> JSONResponse:
    found = known(name, version)
    ok = service.ready and found
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else (503 if found else 404))


JSON_DELIVERY = Gathered(nested=False, instead="Ask for binary data (the binary_data output parameter).")
_INFER = "KServe v2: generate (inputs shape and seed or key_data; arguments as parameters)"


@router.post("/v2/models/{name}/infer", summary=_INFER, responses=V2_ERRORS)
async def infer(
    name: str, request: Request, service: ServiceDep, telemetry: TelemetryDep, caller: CallerDep
) -> Response:
    return await _infer(name, "", request, service, telemetry, caller)


@router.post("/v2/models/{name}/versions/{version}/infer", summary=_INFER, responses=V2_ERRORS)
async def infer_version(
    name: str, version: str, request: Request, service: ServiceDep, telemetry: TelemetryDep, caller: CallerDep
) -> Response:
    return await _infer(name, version, request, service, telemetry, caller)


async def _infer(
    name: str, version: str, request: Request, service: ServiceDep, telemetry: TelemetryDep, caller: CallerDep
) -> Response:
    call = telemetry.call("http", "v2_infer", request.headers.get(REQUEST_ID_HEADER))
    call.asked(name, None)
    tensor: TensorStream | None = None
    try:
        body = await request.body()
        v2 = await asyncio.to_thread(read_request, body, request.headers.get(HEADER_LENGTH))
        pin = request.headers.get(JAX_VERSION_HEADER)
        plan = service.prepare(params_from_v2(name, v2.inputs, v2.parameters, version, pin))
        call.describe(plan.resolved.spec.name, plan.resolved.shape, plan.resolved.out_dtype)
        datatype = datatype_of(plan.resolved.out_dtype)  # (refused before any work when v2 has none)
        delivery = STREAM if v2.binary_output else JSON_DELIVERY
        tensor = await unless_disconnected(request, service.generate(plan, delivery=delivery, caller=caller))
        call.timings = tensor.timings
        answered, tensor = tensor, None  # the answer gives it back
        return await _answer_v2(name, v2, answered, datatype, call, service.limits.chunk_bytes)
    except BaseException as exc:
        if tensor is not None:
            tensor.close()
        call.close(exc)
        if isinstance(exc, ClientDisconnect):  # nobody to answer (or the body limit answers)
            return Response(status_code=499)
        if isinstance(exc, Exception):
            return error_response(exc)
        raise


async def _answer_v2(
    name: str, v2: InferRequest, tensor: TensorStream, datatype: str, call: Call, chunk_bytes: int
) -> Response:
    """A v2 inference answer: binary (the JSON head, then the bytes streamed) or JSON."""
    output: dict[str, Any] = {"name": OUTPUT, "datatype": datatype, "shape": list(tensor.sent_shape)}
    head: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": [output]}
    if v2.id is not None:
        head["id"] = v2.id
    headers = {REQUEST_ID_HEADER: call.request_id}
    if v2.binary_output:
        output["parameters"] = {"binary_data_size": tensor.nbytes}
        text = json.dumps(head, separators=(",", ":")).encode()
        headers.update({HEADER_LENGTH: str(len(text)), "Content-Length": str(len(text) + tensor.nbytes)})
        return TensorResponse(binary_body(text, tensor, chunk_bytes, call), tensor, call, headers)
    array = await tensor.array()  # at most max_json_elements; gives the tensor back
    content = await asyncio.to_thread(json_answer, head, output, array)
    call.sent(array.nbytes)
    call.close()
    return Response(content, media_type=JSON, headers=headers)
