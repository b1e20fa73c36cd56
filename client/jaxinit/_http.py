"""HTTP transport of the client (sync and async), over the REST gateway."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from jaxinit._shm import SharedMemory
from jaxinit._types import (
    Assembler,
    ModelRequest,
    Placement,
    Progress,
    Request,
    Tensor,
    enumerate_async,
    named,
    pins,
    total_up_front,
)
from jaxinit.protocol import frames, wire
from jaxinit.protocol.codec import num_bytes
from jaxinit.protocol.digest import DIGEST_BYTES
from jaxinit.protocol.errors import (
    IntegrityError,
    Interrupted,
    JaxinitError,
    NotAcceptable,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    ServerUnavailable,
    error_from_wire,
    retry_after_seconds,
)
from jaxinit.protocol.model import Output, model_prng
from jaxinit.protocol.provenance import Provenance
from jaxinit.protocol.wire import DIGESTED

__all__ = ["AsyncHttpTransport", "HttpTransport"]


def request_to_json(request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {
        "initializer": request.initializer,
        "shape": list(request.shape),
        "args": dict(request.args),
        "request_id": request.request_id,
    }
    if request.dtype is not None:
        body["dtype"] = request.dtype
    key = request.key
    if key is not None:
        body["key"] = key.to_json()
    prng = {
        name: value
        for name, value in (
            ("threefry_partitionable", request.threefry_partitionable),
            ("enable_x64", request.enable_x64),
            ("jit", request.jit or None),
        )
        if value is not None
    }
    if prng:
        body["prng"] = prng
    if request.offset is not None:
        body["offset"] = request.offset
    if request.count is not None:
        body["count"] = request.count
    body.update(pins(request))
    return body


def get_url(request: Request) -> str:
    """``request`` as the REST GET form, spelled canonically (parameters sorted, arguments as
    JSON): the same request is always the same URL, so an HTTP cache can answer it.

    >>> get_url(Request("lecun_normal", 0, (784, 256), "bfloat16"))
    '/v1/generate/lecun_normal?dtype=bfloat16&key_impl=threefry2x32&seed=0&shape=784%2C256'
    """
    params: dict[str, str] = {"shape": ",".join(str(d) for d in request.shape)}
    if request.dtype is not None:
        params["dtype"] = request.dtype
    key = request.key
    if key is not None:
        if key.seed is not None:
            params["seed"] = str(key.seed)
        else:
            params["key_data"] = ",".join(str(w) for w in key.data or ())
        params["key_impl"] = key.impl
        if key.fold_in:
            params["key_fold_in"] = ",".join(str(x) for x in key.fold_in)
        if key.derive:
            params["key_derive"] = key.derive_text()
    for name, flag in (
        ("threefry_partitionable", request.threefry_partitionable),
        ("enable_x64", request.enable_x64),
        ("jit", request.jit or None),
    ):
        if flag is not None:
            params[name] = "true" if flag else "false"
    if request.offset is not None:
        params["offset"] = str(request.offset)
    if request.count is not None:
        params["count"] = str(request.count)
    params.update(pins(request))
    for name, value in request.args.items():
        params[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return f"/v1/generate/{quote(request.initializer)}?{urlencode(sorted(params.items()))}"


def error_from_response(response: httpx.Response, body: bytes) -> JaxinitError:
    try:
        error = json.loads(body)["error"]
        out = error_from_wire(error["message"], type_name=error.get("type"), http_status=response.status_code)
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
        out = error_from_wire(f"HTTP {response.status_code}: {text}", http_status=response.status_code)
    if isinstance(out, Overloaded):
        out.retry_after = retry_after_seconds(response.headers.get("retry-after"))
    return out


def assembler_for(response: httpx.Response, request_id: str, on_progress: Progress | None = None) -> Assembler:
    headers = response.headers
    try:
        shape_text = headers[wire.SHAPE_HEADER]
        shape = [int(d) for d in shape_text.split(",")] if shape_text else []
        provenance = Provenance.from_mapping(json.loads(headers[wire.PROVENANCE_HEADER]))
        dtype = headers[wire.DTYPE_HEADER]
        # No range headers: the whole tensor. Sized from them, not Content-Length,
        # which a proxy may change.
        offset = int(headers.get(wire.OFFSET_HEADER, 0))
        count = int(headers[wire.COUNT_HEADER]) if wire.COUNT_HEADER in headers else None
        total = num_bytes(shape, dtype) if count is None else num_bytes((count,), dtype)
        algorithm = headers.get(wire.DIGEST_ALGORITHM_HEADER, "")
        cache = headers.get(wire.CACHE_HEADER, "")
        return Assembler(shape, dtype, total, provenance, request_id, offset, count, on_progress, algorithm, cache)
    except (KeyError, ValueError) as exc:
        raise ProtocolError(f"response lacks valid jaxinit headers: {exc}") from exc


def _verify(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """https:// trusts ``ca_bundle`` (a PEM file), or the default roots without one."""
    return True if ca_bundle is None else ssl.create_default_context(cafile=ca_bundle)


def take(assembler: Assembler, trailer: bytearray, data: bytes) -> None:
    """Body bytes into the tensor, and what follows its last byte into ``trailer``."""
    room = assembler.total - assembler.received
    if room:
        assembler.add(assembler.received, data[:room])
    trailer += data[room:]
    if len(trailer) > DIGEST_BYTES:
        raise ProtocolError(f"the body runs {len(trailer)} bytes past the tensor")


def tensor_call(request: Request, cacheable: bool, shared_memory: str | None = None) -> dict[str, Any]:
    """The HTTP call that fetches ``request``: the GET form (cacheable) or the POST form,
    asking for the bytes followed by their digest (or, with a ``shared_memory`` token, for
    them in a shared-memory region)."""
    headers = {"Accept": DIGESTED, **pin_headers(request)}
    if shared_memory:
        headers[wire.SHARED_MEMORY_HEADER] = shared_memory
    if cacheable:
        return {"method": "GET", "url": get_url(request), "headers": headers}
    return {"method": "POST", "url": "/v1/generate", "json": request_to_json(request), "headers": headers}


def from_region(response: httpx.Response, assembler: Assembler, shared: SharedMemory) -> bytearray:
    """An answer in shared memory: the region mapped into ``assembler``; returns the digest
    the headers carry, as a body's trailer would (empty: not such an answer)."""
    region, digest = _region(response)
    if region is not None:
        assembler.use_region(shared.map(region, assembler.total))
    return digest


async def from_region_async(response: httpx.Response, assembler: Assembler, shared: SharedMemory) -> bytearray:
    """:func:`from_region`, claiming the region on a thread (never blocking the event loop)."""
    region, digest = _region(response)
    if region is not None:
        assembler.use_region(await asyncio.to_thread(shared.map, region, assembler.total))
    return digest


def _region(response: httpx.Response) -> tuple[str | None, bytearray]:
    region = response.headers.get(wire.REGION_HEADER)
    if region is None:
        return None, bytearray()
    try:
        return region, bytearray(bytes.fromhex(response.headers.get(wire.DIGEST_HEADER, "")))
    except ValueError:
        raise ProtocolError("a shared-memory answer without a valid digest header") from None


def finished(assembler: Assembler, trailer: bytearray, target: str) -> Tensor:
    """The tensor, once the body has ended: every byte there and the digest right."""
    if not assembler.done:  # the body ended early without a transport error (a proxy, say)
        raise Interrupted(
            f"the response from {target} ended after {assembler.received} of {assembler.total} bytes",
            assembler.partial(),
        )
    if assembler.digest_algorithm:
        if len(trailer) != DIGEST_BYTES:
            raise IntegrityError(f"the body ended {DIGEST_BYTES - len(trailer)} bytes short of its digest")
        assembler.check_digest(assembler.digest_algorithm, bytes(trailer))
    elif trailer:
        raise ProtocolError(f"the body runs {len(trailer)} bytes past the tensor")
    return assembler.finish()


def _check_framed(response: httpx.Response) -> None:
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if media != wire.TENSORS:
        raise ProtocolError(f"the server answered a model with {media or 'no media type'!r}, not {wire.TENSORS}")


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _unavailable(exc: httpx.TransportError, url: str) -> ServerUnavailable:
    return ServerUnavailable(f"cannot reach the jaxinit server at {url}: {exc}")


def _interrupted(exc: httpx.TransportError, url: str, assembler: Assembler) -> Interrupted:
    return Interrupted(
        f"the response from {url} broke after {assembler.received} of {assembler.total} bytes: {exc}",
        assembler.partial(),
    )


def _json_answer(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise error_from_response(response, response.content)
    try:
        return response.json()
    except ValueError as exc:
        raise ProtocolError(f"the server's answer is not JSON: {exc}") from None


def model_plan_call(request: ModelRequest) -> dict[str, Any]:
    """The HTTP call that asks the server for a model's plan: every tensor, how it is made."""
    headers = {"Accept": wire.JSON, **pin_headers(request)}
    return {"method": "POST", "url": "/v1/models/init", "json": request.to_json(), "headers": headers}


def pin_headers(request: Request | ModelRequest) -> dict[str, str]:
    """The version pin as a header too, for a load balancer to route on."""
    return {wire.JAX_VERSION_HEADER: request.jax_version} if request.jax_version else {}


def planned(plan: Any, request: ModelRequest) -> list[tuple[Output, Request, str]]:
    """The server's plan of a model as (tensor, its request, the server's digest of that
    request): the client fetches the tensors the server's expansion names, nothing of its own."""
    try:
        entries = plan["tensors"]
        digests = [str(e["request_digest"]) for e in entries]
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"the server's model plan lacks {exc}") from None
    outs = [Output.from_description(entry) for entry in entries]
    prng = model_prng(outs, request.threefry_partitionable, request.enable_x64)
    out = []
    for o, digest in zip(outs, digests, strict=True):
        partitionable, x64 = prng(o)
        tensor = Request(
            o.param.initializer,
            o.key(request.key),
            o.param.init_shape,
            o.dtype,
            o.param.args,
            threefry_partitionable=partitionable,
            enable_x64=x64,
            request_id=o.name,
            jit=o.param.jit,
            jax_version=request.jax_version,
            backend=request.backend,
        )
        out.append((o, tensor, digest))
    return out


def finish_planned(out: Output, digest: str, item: Tensor | JaxinitError) -> Tensor | JaxinitError:
    """A fetched tensor of a plan as the model holds it (its layout applied), once its
    request is proved to be the one the server planned."""
    if isinstance(item, JaxinitError):
        return named(out.name, item)
    if item.provenance.request_digest != digest:
        raise ProtocolError(
            f"{out.name}: the server answered request {item.provenance.request_digest}, its plan named {digest} "
            "(replicas on different versions behind one address?)"
        )
    return dataclasses.replace(item, array=out.finish(item.array), tensor_shape=out.shape)


def model_stream_call(request: ModelRequest, shared_memory: str | None = None) -> dict[str, Any]:
    """The one HTTP call that fetches a whole model: its tensors framed in one response
    (with a ``shared_memory`` token, their bytes in shared-memory regions)."""
    headers = {"Accept": wire.TENSORS, **pin_headers(request)}
    if shared_memory:
        headers[wire.SHARED_MEMORY_HEADER] = shared_memory
    return {"method": "POST", "url": "/v1/models/init", "json": request.to_json(), "headers": headers}


class ModelFrames:
    """Turns a framed model body (:mod:`jaxinit.protocol.frames`) into Tensors (or the
    errors in their place), one tensor at a time, as the gRPC transport's collector does."""

    def __init__(self, target: str, on_progress: Progress | None = None, place: Placement | None = None) -> None:
        self.target = target
        self.current: Assembler | None = None
        self._reader = frames.FrameReader()
        self._on_progress = on_progress
        self._whole_known = False
        self._place = place
        self.ended = False

    def frames(self, data: bytes) -> Iterator[tuple[str, bytes | memoryview, dict[str, Any] | None]]:
        """(kind, payload, the payload's JSON object for a header or an error) of what
        ``data`` completes."""
        for kind, payload in self._reader.feed(data):
            if self.ended:
                raise ProtocolError("the model stream runs on past its end frame")
            fields = (
                frames.json_payload(kind, bytes(payload))
                if kind != frames.DATA and payload and kind != frames.DIGEST
                else None
            )
            yield kind, payload, fields

    @staticmethod
    def region(kind: str, fields: dict[str, Any] | None) -> tuple[str, int] | None:
        """The shared-memory region (name, bytes) a header names, to be claimed before :meth:`feed`."""
        if kind != frames.HEADER or fields is None or not fields.get("region"):
            return None
        try:
            return str(fields["region"]), int(fields["total_bytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a tensor header without a valid {exc}") from None

    def feed(
        self, kind: str, payload: bytes | memoryview, fields: dict[str, Any] | None, mapped: Any = None
    ) -> Tensor | JaxinitError | None:
        """A frame; returns the tensor it completes, or the error in a tensor's place.
        ``mapped``: the region a header names, claimed. Raises the error that ended the stream."""
        if kind == frames.DATA:
            if self.current is None:
                raise ProtocolError("tensor bytes before any header")
            self.current.add(self.current.received, payload)
            return None
        if kind == frames.END:
            self.ended = True
            if fields is not None:
                raise _stream_error(fields, self.current)
            if self.current is not None:
                raise ProtocolError(
                    f"the model stream ended after {self.current.received} of {self.current.total} bytes"
                )
            return None
        if kind == frames.ERROR:
            if self.current is not None:
                raise ProtocolError("an error frame in the middle of a tensor")
            error = _stream_error(fields or {}, None)
            return named(str((fields or {}).get("name", "")), error)
        if kind == frames.HEADER:
            if self.current is not None:
                raise ProtocolError("a new header before the last tensor was complete")
            self.current = self._assembler(fields or {})
            if mapped is not None:
                self.current.use_region(mapped)
            return None
        # frames.DIGEST
        if self.current is None:
            raise ProtocolError("a digest before any header")
        self.current.check_digest(self.current.digest_algorithm, bytes(payload))
        tensor, self.current = self.current.finish(), None
        return tensor

    def _assembler(self, fields: dict[str, Any]) -> Assembler:
        try:
            name = str(fields["name"])
            shape = tuple(int(d) for d in fields["shape"])
            dtype = str(fields["dtype"])
            total = int(fields["total_bytes"])
            provenance = Provenance.from_mapping(fields["provenance"])
            model_bytes = int(fields.get("model_bytes", 0))
            offset = int(fields.get("offset", 0))
            count = int(fields["count"]) if fields.get("count") is not None else None
            algorithm, cache = str(fields.get("digest_algorithm", "")), str(fields.get("cache", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a tensor header without a valid {exc}") from None
        if not algorithm:
            raise ProtocolError(f"{name}: a tensor header that announces no digest")
        if model_bytes and not self._whole_known:
            self._on_progress = total_up_front(self._on_progress, model_bytes)
            self._whole_known = True
        place = self._place
        buffer = None if place is None else place(name, shape, dtype, total, provenance)
        return Assembler(
            shape, dtype, total, provenance, name, offset, count, self._on_progress, algorithm, cache, buffer
        )

    def close(self) -> None:
        """The body has ended: it must have ended with its end frame."""
        if not self.ended:
            raise ServerUnavailable(
                f"the model stream from {self.target} was cut off"
                + (f" after {self.current.received} of {self.current.total} bytes of a tensor" if self.current else "")
            )


def _stream_error(fields: dict[str, Any], current: Assembler | None) -> JaxinitError:
    """The error an ``e`` or ``z`` frame carries."""
    message = str(fields.get("message", "the server ended the model stream"))
    type_name = fields.get("type") if isinstance(fields.get("type"), str) else None
    code = fields.get("code") if isinstance(fields.get("code"), str) else None
    error = error_from_wire(message, type_name=type_name, grpc_code=code)
    if isinstance(error, ServerUnavailable) and current is not None:
        return Interrupted(f"{error.message} (after {current.received} bytes)", current.partial())
    return error


class _Transport:
    """What the blocking and the asyncio transports share."""

    _client_class: Any = httpx.Client
    on_progress: Progress | None

    @contextlib.contextmanager
    def _model_progress(self, plan: list[tuple[Output, Request, str]]) -> Iterator[None]:
        """While a planned model is fetched: its whole size announced once, up front."""
        outer = self.on_progress
        self.on_progress = total_up_front(outer, sum(num_bytes(out.shape, out.dtype) for out, _, _ in plan))
        try:
            yield
        finally:
            self.on_progress = outer

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None,
        transport: Any = None,
        token: str | None = None,
        cacheable: bool = False,
        ca_bundle: str | None = None,
        shared_memory: bool | None = None,
    ) -> None:
        self.target = base_url
        self.cacheable = cacheable
        self.shared = SharedMemory(shared_memory, urlsplit(base_url).hostname or "")
        self.on_progress: Progress | None = None  # set by the client while a call shows progress
        self._http = self._client_class(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers=_auth_headers(token),
            verify=_verify(ca_bundle),
        )


class HttpTransport(_Transport):
    """Blocking HTTP transport (httpx)."""

    def generate(self, request: Request) -> Tensor:
        token = self.shared.known(self.list_initializers)
        return self.shared.attempt(token, lambda token: self._generate(request, token))

    def _generate(self, request: Request, token: str | None) -> Tensor:
        try:
            with self._http.stream(**tensor_call(request, self.cacheable, token)) as response:
                if response.status_code != 200:
                    raise error_from_response(response, response.read())
                assembler = assembler_for(response, request.request_id, self.on_progress)
                trailer = from_region(response, assembler, self.shared)
                try:
                    for data in response.iter_bytes():
                        take(assembler, trailer, data)
                except httpx.TransportError as exc:
                    raise _interrupted(exc, self.target, assembler) from exc
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.target) from exc
        return finished(assembler, trailer, self.target)

    def generate_many(self, requests: Iterable[Request]) -> Iterator[Tensor | JaxinitError]:
        for request in requests:
            try:
                yield self.generate(request)
            except ServerUnavailable:
                raise
            except JaxinitError as exc:
                yield exc

    def init_model(self, request: ModelRequest, place: Placement | None = None) -> Iterator[Tensor | JaxinitError]:
        """The model's tensors in order, in one response (framed as the gRPC stream frames
        them; through shared memory when it can); ``place``: where each one's bytes go. A
        server that has no framed answer: its plan, then the tensors one request each."""
        token = self.shared.known(self.list_initializers)
        started = [False]
        try:
            yield from self._framed_model(request, token, place, started)
        except (PermissionDenied, NotAcceptable) as exc:
            if started[0]:
                raise
            if isinstance(exc, PermissionDenied):
                if token is None:
                    raise
                self.shared.refused()  # another replica, or a restarted one: the stream
                yield from self._framed_model(request, None, place, started)
                return
            yield from self._planned_model(request)

    def _framed_model(
        self, request: ModelRequest, token: str | None, place: Placement | None, started: list[bool]
    ) -> Iterator[Tensor | JaxinitError]:
        try:
            with self._http.stream(**model_stream_call(request, token)) as response:
                if response.status_code != 200:
                    raise error_from_response(response, response.read())
                _check_framed(response)
                model = ModelFrames(self.target, self.on_progress, place)
                try:
                    for data in response.iter_bytes():
                        for kind, payload, fields in model.frames(data):
                            region = model.region(kind, fields)
                            mapped = self.shared.map(*region) if region is not None else None
                            if (item := model.feed(kind, payload, fields, mapped)) is not None:
                                started[0] = True
                                yield item
                except httpx.TransportError as exc:
                    raise ServerUnavailable(f"the model stream from {self.target} broke: {exc}") from exc
                model.close()
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.target) from exc

    def _planned_model(self, request: ModelRequest) -> Iterator[Tensor | JaxinitError]:
        """The server's plan, fetched tensor by tensor (each with its own provenance and
        digest), laid out as the plan says (servers before the framed answer)."""
        plan = planned(self._call(model_plan_call(request)), request)
        with self._model_progress(plan):
            for (out, _, digest), item in zip(plan, self.generate_many(r for _, r, _ in plan), strict=True):
                yield finish_planned(out, digest, item)

    def _call(self, call: dict[str, Any]) -> Any:
        try:
            return _json_answer(self._http.request(**call))
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.target) from exc

    def list_initializers(self) -> dict[str, Any]:
        return self._call({"method": "GET", "url": "/v1/initializers"})  # type: ignore[no-any-return]

    def list_versions(self) -> dict[str, Any]:
        return self._call({"method": "GET", "url": "/v1/versions"})  # type: ignore[no-any-return]

    def close(self) -> None:
        self._http.close()


class AsyncHttpTransport(_Transport):
    """asyncio HTTP transport (httpx)."""

    _client_class = httpx.AsyncClient

    async def generate(self, request: Request) -> Tensor:
        token = await self.shared.known_async(self.list_initializers)
        return await self.shared.attempt_async(token, lambda token: self._generate(request, token))

    async def _generate(self, request: Request, token: str | None) -> Tensor:
        try:
            async with self._http.stream(**tensor_call(request, self.cacheable, token)) as response:
                if response.status_code != 200:
                    raise error_from_response(response, await response.aread())
                assembler = assembler_for(response, request.request_id, self.on_progress)
                trailer = await from_region_async(response, assembler, self.shared)
                try:
                    async for data in response.aiter_bytes():
                        take(assembler, trailer, data)
                except httpx.TransportError as exc:
                    raise _interrupted(exc, self.target, assembler) from exc
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.target) from exc
        return finished(assembler, trailer, self.target)

    async def generate_many(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> AsyncIterator[Tensor | JaxinitError]:
        async for _, request in enumerate_async(requests):
            try:
                yield await self.generate(request)
            except ServerUnavailable:
                raise
            except JaxinitError as exc:
                yield exc

    async def init_model(
        self, request: ModelRequest, place: Placement | None = None
    ) -> AsyncIterator[Tensor | JaxinitError]:
        """See :meth:`HttpTransport.init_model`."""
        token = await self.shared.known_async(self.list_initializers)
        started = [False]
        try:
            async for item in self._framed_model(request, token, place, started):
                yield item
        except (PermissionDenied, NotAcceptable) as exc:
            if started[0]:
                raise
            if isinstance(exc, PermissionDenied):
                if token is None:
                    raise
                self.shared.refused()
                async for item in self._framed_model(request, None, place, started):
                    yield item
                return
            async for item in self._planned_model(request):
                yield item

    async def _framed_model(
        self, request: ModelRequest, token: str | None, place: Placement | None, started: list[bool]
    ) -> AsyncIterator[Tensor | JaxinitError]:
        try:
            async with self._http.stream(**model_stream_call(request, token)) as response:
                if response.status_code != 200:
                    raise error_from_response(response, await response.aread())
                _check_framed(response)
                model = ModelFrames(self.target, self.on_progress, place)
                try:
                    async for data in response.aiter_bytes():
                        for kind, payload, fields in model.frames(data):
                            region = model.region(kind, fields)
                            mapped = await asyncio.to_thread(self.shared.map, *region) if region is not None else None
                            if (item := model.feed(kind, payload, fields, mapped)) is not None:
                                started[0] = True
                                yield item
                except httpx.TransportError as exc:
                    raise ServerUnavailable(f"the model stream from {self.target} broke: {exc}") from exc
                model.close()
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.target) from exc

    async def _planned_model(self, request: ModelRequest) -> AsyncIterator[Tensor | JaxinitError]:
        """See :meth:`HttpTransport._planned_model`."""
        plan = planned(await self._call(model_plan_call(request)), request)
        with self._model_progress(plan):
            items = self.generate_many(r for _, r, _ in plan)
            async for (out, _, digest), item in _zip_async(plan, items):
                yield finish_planned(out, digest, item)

    async def _call(self, call: dict[str, Any]) -> Any:
        try:
            return _json_answer(await self._http.request(**call))
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.target) from exc

    async def list_initializers(self) -> dict[str, Any]:
        return await self._call({"method": "GET", "url": "/v1/initializers"})  # type: ignore[no-any-return]

    async def list_versions(self) -> dict[str, Any]:
        return await self._call({"method": "GET", "url": "/v1/versions"})  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._http.aclose()


async def _zip_async(
    plan: list[tuple[Output, Request, str]], items: AsyncIterator[Tensor | JaxinitError]
) -> AsyncIterator[tuple[tuple[Output, Request, str], Tensor | JaxinitError]]:
    for entry in plan:
        yield entry, await anext(items)
