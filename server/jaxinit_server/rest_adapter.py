"""The REST adapter (FastAPI): translates HTTP to core calls and back. No rules here."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import zipfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxinit import _safetensors as safetensors
from jaxinit._catalog import args_from_text
from jaxinit._codec import DTYPES
from jaxinit._digest import DIGEST_BYTES
from jaxinit._errors import (
    InternalError,
    InvalidArgument,
    JaxinitError,
    NotAcceptable,
    TooLarge,
    error_from_wire,
    mapping_for,
)
from jaxinit._keys import Key
from jaxinit_server import jsonio
from jaxinit_server.auth import OPEN_HTTP_PATHS, KeyRing, bearer
from jaxinit_server.auth import http_caller as caller_of
from jaxinit_server.core import GenerateParams, ModelParams, Resolved, ResolvedModel, Service, Tensor
from jaxinit_server.core.admission import Ticket
from jaxinit_server.core.errors import as_domain_error
from jaxinit_server.disconnects import unless_disconnected
from jaxinit_server.kserve import rest as kserve_rest
from jaxinit_server.telemetry import CONTENT_TYPE as METRICS_CONTENT_TYPE
from jaxinit_server.telemetry import REPLICA_HEADER, Call, Telemetry

__all__ = ["create_app"]

log = logging.getLogger("jaxinit_server.rest")
OCTET, NPY, JSON = "application/octet-stream", "application/x-npy", "application/json"
SAFETENSORS, NPZ = "application/safetensors", "application/x-npz"
# The raw bytes followed by their digest (16 bytes of xxh3-128): what the jaxinit client
# asks for, so every answer is checked; X-Jaxinit-Digest-Algorithm names the digest.
DIGESTED = "application/vnd.jaxinit.tensor"
MEDIA_TYPES = (OCTET, NPY, JSON, DIGESTED)
MODEL_MEDIA_TYPES = (SAFETENSORS, NPZ, JSON)
IMMUTABLE = "public, max-age=31536000, immutable"
# With auth on, a shared cache (the load balancer's) must not hand one caller's answer to another.
IMMUTABLE_PRIVATE = "private, max-age=31536000, immutable"
# Query parameters of the GET form that are not initializer arguments.
RESERVED = {
    "shape", "dtype", "seed", "key_data", "key_impl", "key_fold_in", "threefry_partitionable", "enable_x64",
    "offset", "count",
}


class KeyBody(BaseModel):
    """Exactly one of seed or data; impl defaults to threefry2x32."""

    model_config = ConfigDict(extra="forbid")
    seed: StrictInt | None = Field(None, description="jax.random.key(seed, impl=impl) on the server")
    data: list[StrictInt] | None = Field(None, description="raw key data: uint32 words")
    impl: str | None = Field(
        None, description="threefry2x32 (default), rbg, unsafe_rbg, threefry4x32, philox2x32, philox4x32"
    )
    fold_in: list[StrictInt] | None = Field(
        None, description="then jax.random.fold_in(key, x) for each uint32 x, in order"
    )


class PrngBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threefry_partitionable: StrictBool | None = None
    enable_x64: StrictBool | None = Field(None, description="unset: true for 64-bit dtypes")


class GenerateBody(BaseModel):
    """The same fields as the gRPC GenerateRequest."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"initializer": "lecun_normal", "shape": [784, 256], "key": {"seed": 42}}]
        },
    )
    initializer: str
    shape: list[StrictInt]
    args: dict[str, Any] = Field(default_factory=dict, description="factory arguments by name")
    dtype: str | None = None
    key: KeyBody | None = None
    prng: PrngBody | None = None
    request_id: str = ""
    offset: StrictInt | None = Field(None, description="first flat element of a range (default 0)")
    count: StrictInt | None = Field(None, description="flat elements in the range (default: to the end)")


class ModelBody(BaseModel):
    """A whole model's initial parameters, as Flax's ``init`` makes them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": {"type": "Sequential", "layers": [
                        {"type": "Dense", "in_features": 784, "features": 256},
                        {"type": "Function", "fn": "relu"},
                        {"type": "Dense", "in_features": 256, "features": 10},
                    ]},
                    "key": {"seed": 0},
                    "mode": "linen",
                    "layout": "torch",
                }
            ]
        },
    )
    model: dict[str, Any] = Field(description="a module description, or the raw form {'params': [...]}")
    key: KeyBody = Field(description="the root key, as passed to model.init / nnx.Rngs")
    mode: str = Field("linen", description="key derivation: linen (path hashing) or nnx (counter order)")
    layout: str = Field("flax", description="flax (Flax's tree and shapes) or torch (state_dict names, layouts)")
    fix_rng_separator: StrictBool = Field(False, description="linen: as flax_fix_rng_separator")
    param_dtype: str = Field("float32", description="default param_dtype of every module")
    prng: PrngBody | None = None


class ErrorBody(BaseModel):
    code: str
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def _key(body: KeyBody | None) -> Key | None:
    if body is None:
        return None
    data = None if body.data is None else tuple(body.data)
    return Key(  # Key checks the combination
        seed=body.seed, data=data, impl=body.impl or "threefry2x32", fold_in=tuple(body.fold_in or ())
    )


def error_response(error: JaxinitError, headers: dict[str, str] | None = None) -> JSONResponse:
    mapping = mapping_for(error)
    body = {"error": {"code": mapping.grpc_code, "type": type(error).__name__, "message": error.message}}
    if (retry_after := getattr(error, "retry_after", None)) is not None:
        headers = {**(headers or {}), "Retry-After": str(max(1, math.ceil(retry_after)))}  # whole seconds
    return JSONResponse(body, status_code=mapping.http_status, headers=headers)


def negotiate(accept: str | None, offered: tuple[str, ...] = MEDIA_TYPES) -> str:
    """The media type to answer with, from an Accept header (q-values honoured); the
    first one offered when the client has no preference."""
    if not accept:
        return offered[0]
    best, best_q = None, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        candidates = offered if media in ("*/*", "application/*") else (media,)
        for candidate in candidates:
            if candidate in offered and (q > best_q or (q == best_q and best is None)):
                best, best_q = candidate, q
    if best is None:
        raise NotAcceptable(f"cannot answer with {accept!r}; this endpoint produces {', '.join(offered)}")
    return best


def create_app(
    service: Service, *, title: str = "jaxinit", telemetry: Telemetry | None = None, keyring: KeyRing | None = None,
    max_body_bytes: int = 16 * 2**20,
) -> FastAPI:
    """The REST gateway over ``service``; ``telemetry`` records requests (``/metrics``);
    ``keyring``, when it has keys, requires a bearer token on all but health."""
    telemetry = telemetry or Telemetry()
    app = FastAPI(
        title=title,
        version=service.identity.jaxinit_version,
        description="JAX initializers, bit-identical to the server's JAX. Tensors are raw "
        "little-endian bytes (application/octet-stream), .npy files or JSON.",
        responses={code: {"model": ErrorResponse} for code in (400, 401, 404, 406, 413, 429, 500, 503)},
    )
    app.router.route_class = _OffLoopJSONRoute  # before any route is added
    app.state.service = service
    app.state.keyring = keyring
    cache_control = IMMUTABLE_PRIVATE if keyring is not None and keyring.enabled else IMMUTABLE
    if keyring is not None and keyring.enabled:
        app.add_middleware(_BearerAuth, keyring=keyring)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    if telemetry.replica:  # outermost: every response names its replica, a 401 too
        app.add_middleware(_ReplicaHeader, replica=telemetry.replica)

    @app.exception_handler(JaxinitError)
    async def _domain_error(request: Request, exc: JaxinitError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
            problems += "; send the body as JSON, with the header Content-Type: application/json"
        return error_response(InvalidArgument(f"invalid request: {problems}"))

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Refusals the framework makes before a handler (a body that is not JSON, an unknown
        # path, a wrong method) in jaxinit's error body, with their own status.
        error = error_from_wire(str(exc.detail), http_status=exc.status_code)
        body = {"error": {"code": mapping_for(error).grpc_code, "type": type(error).__name__, "message": error.message}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if (error := as_domain_error(exc)) is not None:  # e.g. a body nested past the stack
            return error_response(error)
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return error_response(InternalError("internal server error"))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 503 until warmed up, and while stopping")
    async def readyz() -> JSONResponse:
        ready = service.ready
        body = {"status": "ready" if ready else "not ready", **service.state()}
        return JSONResponse(body, status_code=200 if ready else 503)

    kserve_rest.add_routes(app, service, telemetry)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}})
    async def metrics() -> Response:
        return Response(telemetry.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/initializers", summary="The registry: initializers, arguments, dtypes, server")
    async def list_initializers() -> dict[str, Any]:
        return service.describe()

    @app.post(
        "/v1/generate",
        summary="Generate a tensor",
        response_class=Response,
        responses={200: {"content": {OCTET: {}, NPY: {}, JSON: {}, DIGESTED: {}}}},
    )
    async def generate(
        request: Request,
        body: GenerateBody,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        # Accept is content negotiation (the responses' media types say what it can be), read
        # as a header rather than declared as a free-form parameter.
        accept = request.headers.get("accept")
        call = telemetry.call("http", "generate", x_request_id)
        return await _observed(call, _generate(body, accept, call, caller_of(request)), request)

    async def _generate(body: GenerateBody, accept: str | None, call: Call, who: str) -> Response:
        media = negotiate(accept)
        prng = body.prng or PrngBody()
        params = GenerateParams(
            initializer=body.initializer,
            shape=body.shape,
            args=body.args,
            dtype=body.dtype,
            key=_key(body.key),
            threefry_partitionable=prng.threefry_partitionable,
            enable_x64=prng.enable_x64,
            request_id=body.request_id,
            offset=body.offset,
            count=body.count,
        )
        resolved = service.prepare(params)
        return await _respond(service, resolved, media, {}, call, who)

    @app.get(
        "/v1/generate/{initializer}",
        summary="Generate a tensor (GET form: cacheable, ETag, 304)",
        response_class=Response,
        responses={
            200: {"content": {OCTET: {}, NPY: {}, JSON: {}, DIGESTED: {}}}, 304: {"description": "not modified"}
        },
    )
    async def generate_get(
        request: Request,
        initializer: str,
        shape: Annotated[str, Query(description="comma-separated dims, e.g. 784,256; empty for a scalar")],
        dtype: str | None = None,
        seed: int | None = None,
        key_data: Annotated[str | None, Query(description="comma-separated uint32 words")] = None,
        key_impl: str | None = None,
        key_fold_in: Annotated[str | None, Query(description="comma-separated uint32s folded into the key")] = None,
        threefry_partitionable: bool | None = None,
        enable_x64: bool | None = None,
        offset: Annotated[int | None, Query(description="first flat element of a range")] = None,
        count: Annotated[int | None, Query(description="flat elements in the range")] = None,
        if_none_match: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        call = telemetry.call("http", "generate_get", x_request_id)

        async def answer() -> Response:
            media = negotiate(request.headers.get("accept"))
            key = None
            if seed is not None or key_data is not None:
                words = _int_list("key_data", key_data) if key_data is not None else None
                folds = tuple(_int_list("key_fold_in", key_fold_in)) if key_fold_in else ()
                key = Key(
                    seed=seed, data=None if words is None else tuple(words), impl=key_impl or "threefry2x32",
                    fold_in=folds,
                )
            text_args = {k: v for k, v in request.query_params.items() if k not in RESERVED}
            resolved = service.prepare(
                GenerateParams(
                    initializer=initializer,
                    shape=_int_list("shape", shape),
                    args=args_from_text(text_args),
                    dtype=dtype,
                    key=key,
                    threefry_partitionable=threefry_partitionable,
                    enable_x64=enable_x64,
                    offset=offset,
                    count=count,
                )
            )
            etag = service.etag(resolved)
            headers = {"ETag": etag, "Cache-Control": cache_control, "Vary": "Accept"}
            if if_none_match and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
                call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
                return Response(status_code=304, headers=headers)
            return await _respond(service, resolved, media, headers, call, caller_of(request))

        return await _observed(call, answer(), request)

    @app.post(
        "/v1/models/init",
        summary="A whole model's initial parameters: .safetensors, .npz, or the plan as JSON",
        response_class=Response,
        responses={200: {"content": {SAFETENSORS: {}, NPZ: {}, JSON: {}}}},
    )
    async def init_model(
        request: Request,
        body: ModelBody,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        accept = request.headers.get("accept")
        call = telemetry.call("http", "init_model", x_request_id)
        return await _observed(call, _init_model(body, accept, call, caller_of(request)), request)

    async def _init_model(body: ModelBody, accept: str | None, call: Call, who: str) -> Response:
        media = negotiate(accept, MODEL_MEDIA_TYPES)
        prng = body.prng or PrngBody()
        model = await service.prepare_model(
            ModelParams(
                model=body.model,
                key=_key(body.key),
                mode=body.mode,
                layout=body.layout,
                fix_rng_separator=body.fix_rng_separator,
                param_dtype=body.param_dtype,
                threefry_partitionable=prng.threefry_partitionable,
                enable_x64=prng.enable_x64,
            ),
            caller=who,
        )
        call.describe("model", (len(model.outputs),), "")
        metadata = service.model_metadata(model)
        headers = {"X-Jaxinit-Model-Digest": model.digest}
        if media == JSON:
            plan = await asyncio.to_thread(lambda: _json_bytes({"tensors": model.plan(), "metadata": metadata}))
            return Response(plan, media_type=JSON, headers=headers)
        await service.check_model(model)
        ticket = service.admit_model(model, caller=who)  # before the status line: a 429 can still be said
        if media == NPZ:
            try:
                _npz_storable(model)
            except JaxinitError:
                ticket.release()
                raise
            return StreamingResponse(_npz(service, model, ticket), media_type=NPZ, headers={
                **headers, "Content-Disposition": 'attachment; filename="params.npz"'})
        head = safetensors.header([(o.name, o.dtype, o.shape) for o in model.outputs], metadata)
        headers["Content-Length"] = str(len(head) + model.nbytes)
        headers["Content-Disposition"] = 'attachment; filename="params.safetensors"'
        return StreamingResponse(_model_bytes(service, model, head, ticket), media_type=SAFETENSORS, headers=headers)

    return app


async def _model_bytes(
    service: Service, model: ResolvedModel, head: bytes, ticket: Ticket
) -> AsyncIterator[bytes | memoryview]:
    yield head
    async for name, tensor in service.generate_model(model, ticket=ticket):
        if isinstance(tensor, JaxinitError):  # the status is sent: only a cut body can say it
            raise RuntimeError(f"{name}: {tensor.message}") from tensor
        async for _, data in tensor.chunks(service.limits.chunk_bytes):
            yield data


def _npz_storable(model: ResolvedModel) -> None:
    for out in model.outputs:
        if DTYPES[out.dtype].kind == "V":
            raise InvalidArgument(
                f"{out.name}: .npy/.npz cannot store {out.dtype} (numpy reads it back as raw void "
                "bytes); ask for application/safetensors"
            )


class _Sink(io.RawIOBase):
    """A write-only stream whose bytes are taken out as they come (zipfile writes into it)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


async def _npz(service: Service, model: ResolvedModel, ticket: Ticket) -> AsyncIterator[bytes]:
    """A .npz of the model, streamed: an uncompressed zip whose sizes follow each member
    (data descriptors), so no tensor is held whole; numpy's ``np.load`` reads it."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
    async for name, tensor in service.generate_model(model, ticket=ticket):
        if isinstance(tensor, JaxinitError):  # the status is sent: only a cut body can say it
            raise RuntimeError(f"{name}: {tensor.message}") from tensor
        with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
            member.write(_npy_header(tensor))
            async for _, data in tensor.chunks(service.limits.chunk_bytes):
                member.write(data)
                yield sink.drain()
        yield sink.drain()
    archive.close()
    yield sink.drain()


class _BearerAuth:
    """ASGI middleware: every path but health needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: Any, keyring: KeyRing) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_HTTP_PATHS:
            headers = dict(scope.get("headers") or ())
            token = bearer(headers.get(b"authorization", b"").decode("latin-1"))
            try:
                self.keyring.check(token)
            except JaxinitError as exc:
                response = error_response(exc, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413, by its
    Content-Length before it is read, or as soon as a streamed body passes the cap."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> TooLarge:
        return TooLarge(f"the request body is over {self.max_bytes} bytes, the server's limit (--max-body-bytes)")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(self._error(), headers={"Connection": "close"})(scope, receive, send)
            return
        seen, over = 0, False

        async def counted() -> Any:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # the app sees the caller gone; the 413 is ours
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def unless_over(message: Any) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over:
            await error_response(self._error(), headers={"Connection": "close"})(scope, receive, send)


class _ReplicaHeader:
    """ASGI middleware: ``x-jaxinit-replica`` on every response (which replica answered)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode("latin-1", "replace"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def _int_list(name: str, text: str) -> list[int]:
    if not text.strip():
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidArgument(f"{name} must be comma-separated integers, got {text!r}") from None


def _etags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",")]


async def _observed(call: Call, work: Awaitable[Response], request: Request) -> Response:
    """``work``'s response with the request id, recorded when its last byte is sent; the
    work is cancelled if the client goes away before the response starts."""
    try:
        response = await unless_disconnected(request, work)
    except BaseException as exc:
        call.close(exc)
        raise
    response.headers["X-Request-Id"] = call.request_id
    if isinstance(response, StreamingResponse):
        response.body_iterator = _counted(response.body_iterator, call)
    else:
        call.sent(len(response.body))
        call.close()
    return response


async def _counted(body: AsyncIterable[Any], call: Call) -> AsyncIterator[Any]:
    try:
        async for data in body:
            yield data
            call.sent(len(data))
    except BaseException as exc:  # the client went away, or generation failed mid-stream
        call.close(exc)
        raise
    call.close()


async def _respond(
    service: Service, resolved: Resolved, media: str, headers: dict[str, str], call: Call, who: str
) -> Response:
    call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
    elements = resolved.stop - resolved.start
    if not resolved.is_range:  # nested lists: a 0-size (2**40, 0) is 2**40 empty lists
        elements = max(elements, sum(math.prod(resolved.shape[:axis]) for axis in range(len(resolved.shape))))
    if media == JSON and elements > service.limits.max_json_elements:
        raise TooLarge(
            f"JSON answers are capped at {service.limits.max_json_elements} elements and lists; this answer has "
            f"{elements}. Ask for application/octet-stream or application/x-npy, or a range."
        )
    tensor = await service.generate(resolved, gathered=media == JSON, caller=who)
    call.timings = tensor.timings
    headers = {**headers, **_tensor_headers(tensor)}
    if media == JSON:
        array = await tensor.array()
        body = await asyncio.to_thread(lambda: _json_bytes(_json_body(tensor, array)))
        return Response(body, media_type=JSON, headers=headers)
    chunk = service.limits.chunk_bytes
    if media == NPY:
        prefix = _npy_header(tensor)
        headers["Content-Length"] = str(len(prefix) + tensor.nbytes)
        return StreamingResponse(_with_prefix(prefix, tensor, chunk), media_type=NPY, headers=headers)
    if media == DIGESTED:
        headers["Content-Length"] = str(tensor.nbytes + DIGEST_BYTES)
        headers["X-Jaxinit-Digest-Algorithm"] = tensor.digest_algorithm
        return StreamingResponse(_with_digest(tensor, chunk), media_type=DIGESTED, headers=headers)
    headers["Content-Length"] = str(tensor.nbytes)
    return StreamingResponse(_with_prefix(b"", tensor, chunk), media_type=OCTET, headers=headers)


async def _with_digest(tensor: Tensor, chunk_bytes: int) -> AsyncIterator[bytes | memoryview]:
    async for _, data in tensor.chunks(chunk_bytes):
        yield data
    yield tensor.digest()


def _tensor_headers(tensor: Tensor) -> dict[str, str]:
    return {
        "X-Jaxinit-Shape": ",".join(str(d) for d in tensor.shape),
        "X-Jaxinit-Dtype": tensor.dtype,
        "X-Jaxinit-Byte-Order": "little",
        "X-Jaxinit-Offset": str(tensor.resolved.start),
        "X-Jaxinit-Count": str(tensor.resolved.stop - tensor.resolved.start),
        "X-Jaxinit-Request-Digest": tensor.provenance["request_digest"],
        "X-Jaxinit-Provenance": json.dumps(tensor.provenance, separators=(",", ":")),
    }


async def _with_prefix(prefix: bytes, tensor: Tensor, chunk_bytes: int) -> AsyncIterator[bytes | memoryview]:
    if prefix:
        yield prefix
    async for _, data in tensor.chunks(chunk_bytes):
        yield data


def _npy_header(tensor: Tensor) -> bytes:
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(DTYPES[tensor.dtype].newbyteorder("<"))
    header = {"descr": descr, "fortran_order": False, "shape": tensor.sent_shape}
    np.lib.format.write_array_header_1_0(buffer, header)  # type: ignore[no-untyped-call]
    return buffer.getvalue()


def _json_body(tensor: Tensor, array: np.ndarray) -> dict[str, Any]:
    """Nested lists; complex numbers as [real, imag]; non-finite floats as "nan"/"inf"/"-inf"."""
    if array.dtype.kind == "V":  # bfloat16 and float8 types (ml_dtypes): exact in float32
        array = array.astype(np.float32)
    if array.dtype.kind == "c":
        array = np.stack([array.real, array.imag], axis=-1)
    data: Any = array.tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        data = _map_nested(data, lambda x: x if np.isfinite(x) else repr(x))
    resolved = tensor.resolved
    return {"shape": list(tensor.shape), "dtype": tensor.dtype, "offset": resolved.start,
            "count": resolved.stop - resolved.start, "data": data, "provenance": tensor.provenance}


def _json_bytes(content: Any) -> bytes:
    """``content`` as compact JSON (CPU-heavy for big answers: call from a worker thread,
    where :func:`jsonio.dumps` gives the event loop its turns)."""
    return jsonio.dumps(content)


class _OffLoopJSONRequest(Request):
    """A request whose JSON body, when large, is parsed on a worker thread by a parser
    that gives the event loop its turns (FastAPI parses bodies with this ``json()``)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            small = len(body) <= jsonio.SMALL
            self._json = jsonio.loads(body) if small else await asyncio.to_thread(jsonio.loads, body)
        return self._json


class _OffLoopJSONRoute(APIRoute):
    """Every route of the app reads JSON bodies through :class:`_OffLoopJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_off_loop_json(request: Request) -> Response:
            return await handler(_OffLoopJSONRequest(request.scope, request.receive))

        return with_off_loop_json


def _map_nested(data: Any, fn: Any) -> Any:
    if isinstance(data, list):
        return [_map_nested(d, fn) for d in data]
    return fn(data)

