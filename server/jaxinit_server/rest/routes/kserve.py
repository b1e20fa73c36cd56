"""The KServe v2 / Open Inference Protocol routes: every initializer is a model.

Errors here are the protocol's ``{"error": "<message>"}`` (see ``kserve.rest``), with the
status from jaxinit's one error table.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import JaxinitError
from jaxinit.protocol.wire import JSON, REQUEST_ID_HEADER
from jaxinit_server.core import TensorStream
from jaxinit_server.disconnects import unless_disconnected
from jaxinit_server.kserve.mapping import OUTPUT, VERSION, datatype_of, known, model_metadata, params_from_v2
from jaxinit_server.kserve.rest import (
    HEADER_LENGTH,
    V2_ERRORS,
    TensorResponse,
    V2ModelReady,
    V2Ready,
    binary_body,
    error_response,
    json_answer,
    read_request,
)
from jaxinit_server.rest.deps import CallerDep, OffLoopJSONRoute, ServiceDep, TelemetryDep
from jaxinit_server.rest.framing import check_json_size

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)


@router.get("/v2", summary="KServe v2: server metadata")
async def server_metadata(service: ServiceDep) -> dict[str, Any]:
    return {"name": "jaxinit", "version": service.identity.jaxinit_version, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live", summary="KServe v2: liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready", summary="KServe v2: readiness", response_model=V2Ready, responses={503: {"model": V2Ready}}
)
async def ready(service: ServiceDep) -> JSONResponse:
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)


@router.get(
    "/v2/models/{name}", summary="KServe v2: model metadata (every initializer is a model)", responses=V2_ERRORS
)
async def metadata(name: str, service: ServiceDep) -> Response:
    return _metadata(name, "", service)


@router.get("/v2/models/{name}/versions/{version}", summary="KServe v2: model metadata", responses=V2_ERRORS)
async def metadata_of_version(name: str, version: str, service: ServiceDep) -> Response:
    return _metadata(name, version, service)


def _metadata(name: str, version: str, service: ServiceDep) -> Response:
    try:
        return JSONResponse(model_metadata(name, service.identity.jax_version, version))
    except JaxinitError as exc:
        return error_response(exc)


@router.post("/v2/repository/index", summary="KServe v2 (Triton's repository extension): every model")
async def repository_index(service: ServiceDep) -> list[dict[str, str]]:
    state = "READY" if service.ready else "UNAVAILABLE"
    return [{"name": name, "version": VERSION, "state": state} for name in sorted(CATALOG)]


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
        resolved = service.prepare(params_from_v2(name, v2.inputs, v2.parameters, version))
        call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
        datatype = datatype_of(resolved.out_dtype)
        if not v2.binary_output:
            check_json_size(
                service.limits,
                resolved,
                nested=False,
                instead="Ask for binary data (the binary_data output parameter).",
            )
        tensor = await unless_disconnected(
            request, service.generate(resolved, gathered=not v2.binary_output, caller=caller)
        )
        call.timings = tensor.timings
        output: dict[str, Any] = {"name": OUTPUT, "datatype": datatype, "shape": list(tensor.sent_shape)}
        head: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": [output]}
        if v2.id is not None:
            head["id"] = v2.id
        headers = {REQUEST_ID_HEADER: call.request_id}
        if v2.binary_output:
            output["parameters"] = {"binary_data_size": tensor.nbytes}
            text = json.dumps(head, separators=(",", ":")).encode()
            headers.update({HEADER_LENGTH: str(len(text)), "Content-Length": str(len(text) + tensor.nbytes)})
            body_stream = binary_body(text, tensor, service.limits.chunk_bytes, call)
            response = TensorResponse(body_stream, tensor, call, headers)
            tensor = None  # the response gives it back
            return response
        array = await tensor.array()  # at most max_json_elements; gives the tensor back
        tensor = None
        content = await asyncio.to_thread(json_answer, head, output, array)
        call.sent(array.nbytes)
        call.close()
        return Response(content, media_type=JSON, headers=headers)
    except BaseException as exc:
        if tensor is not None:
            tensor.close()
        call.close(exc)
        if isinstance(exc, ClientDisconnect):  # nobody to answer (or the body limit answers)
            return Response(status_code=499)
        if isinstance(exc, Exception):
            return error_response(exc)
        raise
