"""The KServe v2 HTTP/REST routes, with the binary tensor data extension: translation only.

Errors are the protocol's ``{"error": "<message>"}`` with the status from jaxinit's one
error table; every malformed document is a 400 that quotes little of it. A binary
answer streams (the JSON header, then the tensor's bytes as they are made); a JSON
answer (capped at ``max_json_elements``) is built off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from jaxinit._catalog import CATALOG
from jaxinit._errors import InternalError, InvalidArgument, JaxinitError, TooLarge, mapping_for
from jaxinit_server import jsonio
from jaxinit_server.auth import http_caller
from jaxinit_server.core import Service, Tensor
from jaxinit_server.disconnects import unless_disconnected
from jaxinit_server.kserve.mapping import (
    MAX_JSON_DEPTH,
    OUTPUT,
    Input,
    datatype_of,
    input_from_bytes,
    input_from_values,
    json_depth,
    model_metadata,
    params_from_v2,
    quote,
)
from jaxinit_server.telemetry import Call, Telemetry

__all__ = ["HEADER_LENGTH", "InferRequest", "add_routes", "json_answer", "read_request"]

HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET = "application/octet-stream"
log = logging.getLogger("jaxinit_server.kserve")
_JSON_BLOCK = 8192  # elements of a JSON answer encoded at a time
NON_FINITE = (
    "the output holds {count} non-finite value(s) (NaN or infinity), which JSON cannot carry; "
    'ask for binary data: "parameters": {{"binary_data": true}} on the output, or '
    '"parameters": {{"binary_data_output": true}} on the request'
)


def _error(exc: BaseException) -> JSONResponse:
    if not isinstance(exc, JaxinitError):
        log.error("internal error in a v2 request", exc_info=exc)
    error = exc if isinstance(exc, JaxinitError) else InternalError("internal server error")
    return JSONResponse({"error": error.message}, status_code=mapping_for(error).http_status)


@dataclass(frozen=True)
class InferRequest:
    """A v2 inference request as read from HTTP, every field checked for its type."""

    id: str | None
    parameters: dict[str, Any]
    inputs: list[Input]
    binary_output: bool


def read_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """The request in an HTTP body (JSON, then binary input data when ``header_length``,
    the ``Inference-Header-Content-Length`` header, is given). Blocking: run it off the loop.

    Raises:
        InvalidArgument: for every document that is not a v2 inference request.
    """
    document, binary = _split(body, header_length)
    return _read(document, binary)


def _split(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON part of a request, parsed, and the binary data after it."""
    size = len(body)
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 20):
            raise InvalidArgument(f"{HEADER_LENGTH} must be a byte count, got {quote(header_length)}")
        size = int(text)
        if size > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} {size} is past the end of a body of {len(body)} bytes")
    head = body[:size]
    if json_depth(head) > MAX_JSON_DEPTH:
        raise InvalidArgument(f"invalid inference request: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        document = jsonio.loads(head or b"{}", parse_constant=_not_json)
    except RecursionError:  # json_depth counts what a valid document nests; this is a backstop
        raise InvalidArgument(f"invalid inference request: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers of too many digits
        raise InvalidArgument(f"invalid inference request: {str(exc)[:200]}") from None
    return document, memoryview(body)[size:]


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (its numbers are finite)")


def _object(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object; {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be an object, got {quote(value)}")
    return value


def _bool(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidArgument(f"{what} must be true or false, got {quote(value)}")


def _read(document: Any, binary: memoryview) -> InferRequest:
    if not isinstance(document, dict):
        raise InvalidArgument(f"an inference request is a JSON object, got {quote(document)}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument(f"'id' must be a string, got {quote(request_id)}")
    parameters = _object(document.get("parameters"), "the request's 'parameters'")
    return InferRequest(request_id, parameters, _inputs(document.get("inputs"), binary),
                        _binary_output(document.get("outputs"), parameters))


def _inputs(inputs: Any, binary: memoryview) -> list[Input]:
    if not isinstance(inputs, list):
        raise InvalidArgument(f"an inference request needs an 'inputs' list, got {quote(inputs)}")
    out, offset = [], 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"inputs[{i}] must be an object with a string 'name', got {quote(item)}")
        name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"input {quote(name)} needs a 'datatype' string, got {quote(datatype)}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidArgument(f"input {quote(name)} needs a 'shape' of non-negative integers, got {quote(shape)}")
        size = _object(item.get("parameters"), f"input {quote(name)}: 'parameters'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(f"input {quote(name)}: binary_data_size must be a byte count, got {quote(size)}")
            if offset + size > len(binary):
                raise InvalidArgument(f"input {quote(name)}: binary_data_size {size} is past the end of the body")
            out.append(input_from_bytes(name, datatype, shape, binary[offset : offset + size]))
            offset += size
        else:
            data = item.get("data")
            if data is None:
                data = []
            if not isinstance(data, list):
                raise InvalidArgument(f"input {quote(name)}: 'data' must be a list, got {quote(data)}")
            out.append(input_from_values(name, datatype, shape, data))
    return out


def _binary_output(outputs: Any, parameters: Mapping[str, Any]) -> bool:
    """Whether the one output is asked as binary data: ``binary_data_output`` on the request,
    which the output's own ``binary_data`` overrides."""
    binary = bool(_bool(parameters.get("binary_data_output"), "parameter binary_data_output"))
    if outputs is None:
        return binary
    if not isinstance(outputs, list):
        raise InvalidArgument(f"'outputs' must be a list of objects, got {quote(outputs)}")
    for i, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"outputs[{i}] must be an object with a string 'name', got {quote(item)}")
        if item["name"] != OUTPUT:
            raise InvalidArgument(f"unknown output {quote(item['name'])}; the one output is {OUTPUT!r}")
        chosen = _bool(
            _object(item.get("parameters"), f"output {OUTPUT!r}: 'parameters'").get("binary_data"),
            "output parameter binary_data",
        )
        if chosen is not None:
            binary = chosen
    return binary


def json_answer(head: dict[str, Any], output: dict[str, Any], array: np.ndarray) -> bytes:
    """The JSON answer ``head`` with ``array`` as ``output``'s data. Blocking: run it off the loop.

    The data is encoded a block at a time, so that the thread lets go of the GIL (and the
    event loop runs) between blocks.

    Raises:
        InvalidArgument: the array holds NaN or infinity, which JSON cannot carry.
    """
    flat = array.reshape(-1)
    if flat.dtype.kind == "V":  # bfloat16: exact as float32
        flat = flat.astype(np.float32)
    if flat.dtype.kind in "fc":
        finite = np.isfinite(flat)
        if not finite.all():
            raise InvalidArgument(NON_FINITE.format(count=int(flat.size - np.count_nonzero(finite))))
    mark = f"jaxinit-data-{uuid.uuid4().hex}"  # where the data goes: nothing else can hold it
    output["data"] = mark
    try:
        text = json.dumps(head, separators=(",", ":"), allow_nan=False)
        blocks = (
            json.dumps(flat[i : i + _JSON_BLOCK].tolist(), separators=(",", ":"), allow_nan=False)[1:-1]
            for i in range(0, flat.size, _JSON_BLOCK)
        )
        before, after = text.split(json.dumps(mark), 1)
        return "".join((before, "[", ",".join(blocks), "]", after)).encode()
    except ValueError:  # a backstop: the check above finds them first
        raise InvalidArgument(NON_FINITE.format(count="some")) from None
    finally:
        del output["data"]


class _TensorStream(StreamingResponse):
    """A streamed answer that gives its tensor back however it ends: sent, failed, the
    client gone, or never started."""

    def __init__(self, body: AsyncIterator[bytes | memoryview], tensor: Tensor, call: Call,
                 headers: Mapping[str, str]) -> None:
        super().__init__(body, media_type=OCTET, headers=headers)
        self._body, self._tensor, self._call = body, tensor, call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._body.aclose()  # type: ignore[attr-defined]
            self._tensor.close()
            self._call.close(asyncio.CancelledError())  # a no-op when the body recorded its end


async def _binary_body(head: bytes, tensor: Tensor, chunk_bytes: int, call: Call) -> AsyncIterator[bytes | memoryview]:
    try:
        yield head
        async with contextlib.aclosing(_generator(tensor.chunks(chunk_bytes))) as chunks:
            async for _, data in chunks:
                yield data
                call.sent(len(data))
    except BaseException as exc:  # the client went away, or generation failed mid-stream
        call.close(exc)
        raise
    finally:
        tensor.close()
    call.close()


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
        call = telemetry.call("http", "v2_infer", request.headers.get("x-request-id"))
        tensor: Tensor | None = None
        try:
            body = await request.body()
            v2 = await asyncio.to_thread(read_request, body, request.headers.get(HEADER_LENGTH))
            resolved = service.prepare(params_from_v2(name, v2.inputs, v2.parameters))
            call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
            datatype = datatype_of(resolved.out_dtype)
            elements = resolved.stop - resolved.start
            if not v2.binary_output and elements > service.limits.max_json_elements:
                raise TooLarge(
                    f"JSON outputs are capped at {service.limits.max_json_elements} elements; this one has "
                    f"{elements}. Ask for binary data (the binary_data output parameter)."
                )
            tensor = await unless_disconnected(request, service.generate(
                resolved, gathered=not v2.binary_output, caller=http_caller(request)
            ))
            call.timings = tensor.timings
            output: dict[str, Any] = {"name": OUTPUT, "datatype": datatype, "shape": list(tensor.sent_shape)}
            head: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": [output]}
            if v2.id is not None:
                head["id"] = v2.id
            headers = {"X-Request-Id": call.request_id}
            if v2.binary_output:
                output["parameters"] = {"binary_data_size": tensor.nbytes}
                text = json.dumps(head, separators=(",", ":")).encode()
                headers.update({HEADER_LENGTH: str(len(text)), "Content-Length": str(len(text) + tensor.nbytes)})
                body_stream = _binary_body(text, tensor, service.limits.chunk_bytes, call)
                response = _TensorStream(body_stream, tensor, call, headers)
                tensor = None  # the response gives it back
                return response
            array = await tensor.array()  # at most max_json_elements; gives the tensor back
            tensor = None
            content = await asyncio.to_thread(json_answer, head, output, array)
            call.sent(array.nbytes)
            call.close()
            return Response(content, media_type="application/json", headers=headers)
        except BaseException as exc:
            if tensor is not None:
                tensor.close()
            call.close(exc)
            if isinstance(exc, ClientDisconnect):  # nobody to answer (or the body limit answers)
                return Response(status_code=499)
            if isinstance(exc, Exception):
                return _error(exc)
            raise


def _generator(chunks: AsyncIterator[tuple[int, memoryview]]) -> AsyncGenerator[tuple[int, memoryview], None]:
    """``Tensor.chunks`` as the async generator it is, for ``contextlib.aclosing``."""
    return cast("AsyncGenerator[tuple[int, memoryview], None]", chunks)
