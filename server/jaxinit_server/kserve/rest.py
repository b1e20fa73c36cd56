"""The KServe v2 HTTP/REST routes, with the binary tensor data extension: translation only.

Errors are the protocol's ``{"error": "<message>"}`` with the status from jaxinit's one
error table.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from jaxinit._catalog import CATALOG
from jaxinit._codec import to_wire_bytes
from jaxinit._errors import InternalError, InvalidArgument, JaxinitError, TooLarge, mapping_for
from jaxinit_server.core import Service
from jaxinit_server.kserve.mapping import (
    OUTPUT,
    Input,
    datatype_of,
    input_from_bytes,
    input_from_values,
    model_metadata,
    params_from_v2,
)
from jaxinit_server.telemetry import Telemetry

__all__ = ["HEADER_LENGTH", "add_routes"]

HEADER_LENGTH = "Inference-Header-Content-Length"
log = logging.getLogger("jaxinit_server.kserve")


def _error(exc: BaseException) -> JSONResponse:
    if not isinstance(exc, JaxinitError):
        log.error("internal error in a v2 request", exc_info=exc)
    error = exc if isinstance(exc, JaxinitError) else InternalError("internal server error")
    return JSONResponse({"error": error.message}, status_code=mapping_for(error).http_status)


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON part of a request and the binary data after it."""
    try:
        size = len(body) if header_length is None else int(header_length)
        if not 0 <= size <= len(body):
            raise ValueError(f"{HEADER_LENGTH} {size} is outside a body of {len(body)} bytes")
        document = json.loads(body[:size] or b"{}")
    except ValueError as exc:
        raise InvalidArgument(f"invalid inference request: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("an inference request is a JSON object")
    return document, memoryview(body)[size:]


def _inputs(document: dict[str, Any], binary: memoryview) -> list[Input]:
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("an inference request needs an 'inputs' list")
    out, offset = [], 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"each input is an object with a name, got {item!r}")
        name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
        if not isinstance(datatype, str) or not isinstance(shape, list) or not all(
            isinstance(d, int) and d >= 0 for d in shape
        ):
            raise InvalidArgument(f"input {name!r} needs a datatype and a shape of non-negative ints")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or offset + size > len(binary):
                raise InvalidArgument(f"input {name!r}: binary_data_size {size!r} is past the end of the body")
            out.append(input_from_bytes(name, datatype, shape, binary[offset : offset + size]))
            offset += size
        else:
            out.append(input_from_values(name, datatype, shape, item.get("data") or []))
    return out


def _wants_binary(document: dict[str, Any]) -> bool:
    if (document.get("parameters") or {}).get("binary_data_output"):
        return True
    return any(
        (o.get("parameters") or {}).get("binary_data") for o in document.get("outputs") or [] if isinstance(o, dict)
    )


class V2Error(BaseModel):
    """The protocol's error body."""

    error: str


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


# Documented per route: the protocol's error shape replaces jaxinit's on /v2.
V2_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2Error} for code in (400, 401, 404, 406, 413, 429, 500, 503)
}


def add_routes(app: FastAPI, service: Service, telemetry: Telemetry) -> None:
    """The v2 routes: health, metadata, and infer for every initializer (a model each)."""

    @app.get("/v2", summary="KServe v2: server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "jaxinit", "version": service.identity.jaxinit_version,
                "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="KServe v2: liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="KServe v2: readiness", response_model=V2Ready,
             responses={503: {"model": V2Ready}})
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{name}", summary="KServe v2: model metadata (every initializer is a model)",
             responses=V2_ERRORS)
    async def metadata(name: str) -> Response:
        try:
            return JSONResponse(model_metadata(name, service.identity.jax_version))
        except JaxinitError as exc:
            return _error(exc)

    @app.get("/v2/models/{name}/ready", summary="KServe v2: model readiness", response_model=V2ModelReady,
             responses={404: {"model": V2ModelReady}, 503: {"model": V2ModelReady}})
    async def model_ready(name: str) -> JSONResponse:
        ok = service.ready and name in CATALOG
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else (503 if name in CATALOG else 404))

    @app.post(
        "/v2/models/{name}/infer",
        summary="KServe v2: generate (inputs shape and seed or key_data; arguments as parameters)",
        responses=V2_ERRORS,
    )
    async def infer(name: str, request: Request) -> Response:
        document_id = None
        call = telemetry.call("http", "v2_infer", request.headers.get("x-request-id"))
        try:
            document, binary = _split(await request.body(), request.headers.get(HEADER_LENGTH.lower()))
            document_id = document.get("id")
            parameters = document.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidArgument("'parameters' must be an object")
            resolved = service.prepare(params_from_v2(name, _inputs(document, binary), parameters))
            call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
            datatype = datatype_of(resolved.out_dtype)
            binary_out = _wants_binary(document)
            elements = resolved.stop - resolved.start
            if not binary_out and elements > service.limits.max_json_elements:
                raise TooLarge(
                    f"JSON outputs are capped at {service.limits.max_json_elements} elements; this one has "
                    f"{elements}. Ask for binary data (the binary_data output parameter)."
                )
            tensor = await service.generate(resolved)
            array = await tensor.array()
            call.timings = tensor.timings
            output: dict[str, Any] = {"name": OUTPUT, "datatype": datatype, "shape": list(tensor.sent_shape)}
            head: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": [output]}
            if document_id is not None:
                head["id"] = document_id
            if binary_out:
                data = to_wire_bytes(array)
                output["parameters"] = {"binary_data_size": len(data)}
                text = json.dumps(head, separators=(",", ":")).encode()
                call.sent(len(data))
                call.close()
                return Response(
                    b"".join((text, data)), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text)), "X-Request-Id": call.request_id},
                )
            flat = array.reshape(-1)
            if flat.dtype.kind == "V":  # bfloat16: exact as float32
                flat = flat.astype(np.float32)
            output["data"] = flat.tolist() if math.prod(flat.shape) else []
            call.sent(array.nbytes)
            call.close()
            return JSONResponse(head, headers={"X-Request-Id": call.request_id})
        except Exception as exc:
            call.close(exc)
            return _error(exc)
