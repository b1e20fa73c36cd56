"""The KServe v2 HTTP/REST protocol, with the binary tensor data extension: reading a
request, writing an answer (the routes: ``jaxinit_server.rest.routes.kserve``).

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
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from jaxinit.protocol.errors import HTTP_STATUSES, InternalError, InvalidArgument, JaxinitError
from jaxinit.protocol.values import check_flag
from jaxinit.protocol.wire import OCTET
from jaxinit_server import jsonio
from jaxinit_server.core import TensorStream
from jaxinit_server.kserve.mapping import (
    MAX_JSON_DEPTH,
    OUTPUT,
    Input,
    input_from_bytes,
    input_from_values,
    json_depth,
    quote,
)
from jaxinit_server.rest import errors as rest_errors
from jaxinit_server.telemetry import Call

__all__ = [
    "HEADER_LENGTH",
    "V2_ERRORS",
    "InferRequest",
    "TensorResponse",
    "V2Error",
    "V2ModelReady",
    "V2Ready",
    "binary_body",
    "error_response",
    "json_answer",
    "read_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
log = logging.getLogger("jaxinit_server.kserve")
_JSON_BLOCK = 8192  # elements of a JSON answer encoded at a time
NON_FINITE = (
    "the output holds {count} non-finite value(s) (NaN or infinity), which JSON cannot carry; "
    'ask for binary data: "parameters": {{"binary_data": true}} on the output, or '
    '"parameters": {{"binary_data_output": true}} on the request'
)


def error_response(exc: BaseException) -> JSONResponse:
    """The protocol's error body, ``{\"error\": \"<message>\"}``, with the status from the one table."""
    if not isinstance(exc, JaxinitError):
        log.error("internal error in a v2 request", exc_info=exc)
    error = exc if isinstance(exc, JaxinitError) else InternalError("internal server error")
    return rest_errors.error_response(error, path="/v2")


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
    return None if value is None else check_flag(value, what)


def _read(document: Any, binary: memoryview) -> InferRequest:
    if not isinstance(document, dict):
        raise InvalidArgument(f"an inference request is a JSON object, got {quote(document)}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument(f"'id' must be a string, got {quote(request_id)}")
    parameters = _object(document.get("parameters"), "the request's 'parameters'")
    return InferRequest(
        request_id,
        parameters,
        _inputs(document.get("inputs"), binary),
        _binary_output(document.get("outputs"), parameters),
    )


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
    flat = jsonio.json_numbers(array.reshape(-1))
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


class TensorResponse(StreamingResponse):
    """A streamed answer that gives its tensor back however it ends: sent, failed, the
    client gone, or never started."""

    def __init__(
        self, body: AsyncIterator[bytes | memoryview], tensor: TensorStream, call: Call, headers: Mapping[str, str]
    ) -> None:
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


async def binary_body(
    head: bytes, tensor: TensorStream, chunk_bytes: int, call: Call
) -> AsyncIterator[bytes | memoryview]:
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
V2_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": V2Error} for code in HTTP_STATUSES}


def _generator(chunks: AsyncIterator[tuple[int, memoryview]]) -> AsyncGenerator[tuple[int, memoryview], None]:
    """``TensorStream.chunks`` as the async generator it is, for ``contextlib.aclosing``."""
    return cast("AsyncGenerator[tuple[int, memoryview], None]", chunks)
