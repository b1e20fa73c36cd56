"""One tensor: ``POST /v1/generate`` (the gRPC GenerateRequest as JSON) and the cacheable
``GET /v1/generate/{initializer}`` (ETag, 304)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from jaxinit.protocol.catalog import args_from_text
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.keys import DEFAULT_IMPL, Key, derive_from_text
from jaxinit.protocol.wire import DIGESTED, JAX_VERSION_HEADER, JSON, NPY, OCTET, SHARED_MEMORY_HEADER
from jaxinit_server.core import GenerateParams, Service
from jaxinit_server.core.delivery import Gathered, delivery_for
from jaxinit_server.core.plan import Plan
from jaxinit_server.core.request import pinned
from jaxinit_server.rest.deps import CallerDep, OffLoopJSONRoute, ServiceDep, TelemetryDep, observe
from jaxinit_server.rest.framing import negotiate, tensor_response
from jaxinit_server.rest.schemas import GenerateBody
from jaxinit_server.telemetry import Call

__all__ = ["router"]

router = APIRouter(route_class=OffLoopJSONRoute)
TENSOR_MEDIA: dict[int | str, dict[str, Any]] = {200: {"content": {OCTET: {}, NPY: {}, JSON: {}, DIGESTED: {}}}}
IMMUTABLE = "public, max-age=31536000, immutable"
# With auth on, a shared cache (the load balancer's) must not hand one caller's answer to another.
IMMUTABLE_PRIVATE = "private, max-age=31536000, immutable"


@router.post("/v1/generate", summary="Generate a tensor", response_class=Response, responses=TENSOR_MEDIA)
async def generate(
    request: Request,
    body: GenerateBody,
    service: ServiceDep,
    telemetry: TelemetryDep,
    caller: CallerDep,
    x_request_id: Annotated[str | None, Header()] = None,
) -> Response:
    # Accept is content negotiation (the responses' media types say what it can be), read
    # as a header rather than declared as a free-form parameter.
    call = telemetry.call("http", "generate", x_request_id)
    call.asked(body.initializer, body.shape, body.dtype)

    async def answer() -> Response:
        media = negotiate(request.headers.get("accept"))
        token = request.headers.get(SHARED_MEMORY_HEADER)
        plan = service.prepare(body.params(request.headers.get(JAX_VERSION_HEADER)))
        return await _respond(service, plan, media, {}, call, caller, token)

    return await observe(call, answer(), request)


@dataclass
class GenerateQuery:
    """The GET form's query parameters besides the initializer's arguments (all the others)."""

    shape: Annotated[str, Query(description="comma-separated dims, e.g. 784,256; empty for a scalar")]
    dtype: str | None = None
    seed: int | None = None
    key_data: Annotated[str | None, Query(description="comma-separated uint32 words")] = None
    key_impl: str | None = None
    key_fold_in: Annotated[str | None, Query(description="comma-separated uint32s folded into the key")] = None
    key_derive: Annotated[
        str | None, Query(description="then these steps: fold_in:X, split:NUM:INDEX and stack:NUM, comma-separated")
    ] = None
    threefry_partitionable: bool | None = None
    enable_x64: bool | None = None
    jit: Annotated[bool, Query(description="the values jax.jit(init) gives (as inside nn.scan)")] = False
    offset: Annotated[int | None, Query(description="first flat element of a range")] = None
    count: Annotated[int | None, Query(description="flat elements in the range")] = None
    jax_version: Annotated[
        str | None, Query(description="answered only by this JAX version (0.10 takes 0.10.x), else 412")
    ] = None
    backend: Annotated[str | None, Query(description="answered only on this JAX backend, else 412")] = None

    def params(self, initializer: str, text_args: dict[str, str], pin: str | None = None) -> GenerateParams:
        """The core's view of the request (``text_args``: the initializer's arguments as text;
        ``pin``: the x-jaxinit-jax-version header, if sent)."""
        key = None
        if self.seed is not None or self.key_data is not None:
            words = _int_list("key_data", self.key_data) if self.key_data is not None else None
            key = Key(
                seed=self.seed,
                data=None if words is None else tuple(words),
                impl=self.key_impl or DEFAULT_IMPL,
                fold_in=tuple(_int_list("key_fold_in", self.key_fold_in)) if self.key_fold_in else (),
                derive=derive_from_text(self.key_derive) if self.key_derive else (),
            )
        return GenerateParams(
            initializer=initializer,
            shape=_int_list("shape", self.shape),
            args=args_from_text(text_args),
            dtype=self.dtype,
            key=key,
            threefry_partitionable=self.threefry_partitionable,
            enable_x64=self.enable_x64,
            jit=self.jit,
            offset=self.offset,
            count=self.count,
            jax_version=pinned(self.jax_version, pin),
            backend=self.backend,
        )


# Query parameters of the GET form that are not initializer arguments: the key's and the
# request options (the names KServe's parameters share).
RESERVED = {f.name for f in fields(GenerateQuery)}


@router.get(
    "/v1/generate/{initializer}",
    summary="Generate a tensor (GET form: cacheable, ETag, 304)",
    response_class=Response,
    responses={**TENSOR_MEDIA, 304: {"description": "not modified"}},
)
async def generate_get(
    request: Request,
    service: ServiceDep,
    telemetry: TelemetryDep,
    caller: CallerDep,
    initializer: str,
    query: Annotated[GenerateQuery, Depends()],
    if_none_match: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
) -> Response:
    call = telemetry.call("http", "generate_get", x_request_id)
    call.asked(initializer, query.shape, query.dtype)

    async def answer() -> Response:
        media = negotiate(request.headers.get("accept"))
        token = request.headers.get(SHARED_MEMORY_HEADER)
        text_args = {k: v for k, v in request.query_params.items() if k not in RESERVED}
        plan = service.prepare(query.params(initializer, text_args, request.headers.get(JAX_VERSION_HEADER)))
        etag = service.etag(plan)
        private = request.app.state.keyring is not None and request.app.state.keyring.enabled
        # A version pin may come as a header alone: a shared cache must not answer it from an unpinned entry.
        headers = {
            "ETag": etag,
            "Cache-Control": IMMUTABLE_PRIVATE if private else IMMUTABLE,
            "Vary": f"Accept, {JAX_VERSION_HEADER}",
        }
        if if_none_match and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
            call.describe(plan.resolved.spec.name, plan.resolved.shape, plan.resolved.out_dtype)
            return Response(status_code=304, headers=headers)
        if token is not None:  # a region is for this caller once: never cached on the way
            headers = {"Cache-Control": "no-store"}
        return await _respond(service, plan, media, headers, call, caller, token)

    return await observe(call, answer(), request)


JSON_INSTEAD = "Ask for application/octet-stream or application/x-npy, or a range."


async def _respond(
    service: Service,
    plan: Plan,
    media: str,
    headers: dict[str, str],
    call: Call,
    caller: str,
    token: str | None = None,
) -> Response:
    call.describe(plan.resolved.spec.name, plan.resolved.shape, plan.resolved.out_dtype)
    gathered = Gathered(nested=True, instead=JSON_INSTEAD) if media == JSON else None
    delivery = delivery_for(region_token=token, gathered=gathered)
    tensor = await service.generate(plan, delivery=delivery, caller=caller)
    call.timings = tensor.timings
    return await tensor_response(tensor, media, headers, service.limits.chunk_bytes)


def _int_list(name: str, text: str) -> list[int]:
    if not text.strip():
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidArgument(f"{name} must be comma-separated integers, got {text!r}") from None


def _etags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",")]
