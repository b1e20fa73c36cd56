"""gRPC transport of the client (sync and async). Imported only when a grpc:// URL is used."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import __version__ as _protobuf_version
from google.protobuf.json_format import MessageToDict

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
from jaxinit.protocol.errors import (
    Interrupted,
    JaxinitError,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    ServerUnavailable,
    error_from_wire,
    retry_after_seconds,
)
from jaxinit.protocol.keys import Key
from jaxinit.protocol.provenance import Provenance
from jaxinit.protocol.wire import ERROR_TYPE_KEY, JAX_VERSION_HEADER, RETRY_AFTER_KEY

__all__ = ["AsyncGrpcTransport", "GrpcTransport", "check_versions"]

# The oldest runtimes the transport is proved on (tests/integration/test_thin_client.py
# installs exactly these beside the newest): the messages load through the descriptor
# pool, and calls go through the channel with explicit (de)serializers, so neither
# binds to the protoc or grpcio-tools that generated the stubs.
MIN_PROTOBUF = (4, 21)
MIN_GRPCIO = (1, 59)


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        parts.append(int(digits or 0))
    return tuple(parts)


def check_versions(protobuf_version: str, grpcio_version: str) -> None:
    """Raise ImportError, in one sentence naming what is installed and what is needed,
    when protobuf or grpcio is older than this transport supports."""
    old = [
        f"{name} {have} (needs >= {'.'.join(map(str, need))})"
        for name, have, need in (("protobuf", protobuf_version, MIN_PROTOBUF), ("grpcio", grpcio_version, MIN_GRPCIO))
        if _release(have) < need
    ]
    if old:
        raise ImportError(
            f"jaxinit's gRPC transport cannot use {' and '.join(old)}: upgrade with "
            "pip install -U 'grpcio>=1.59' 'protobuf>=4.21', or use an http:// URL",
            name=__name__,
        )


check_versions(_protobuf_version, grpc.__version__)

from jaxinit.v1 import jaxinit_pb2 as pb  # noqa: E402  (after the check: it says what is wrong)

_PATH = "/jaxinit.v1.Initializers/"


class _Stub:
    """The Initializers service's calls, made on the channel with explicit (de)serializers
    (what a generated stub does, without binding to the grpcio-tools that made it)."""

    def __init__(self, channel: Any) -> None:
        chunk = pb.TensorChunk.FromString
        self.Generate = channel.unary_stream(
            _PATH + "Generate", request_serializer=pb.GenerateRequest.SerializeToString, response_deserializer=chunk
        )
        self.GenerateMany = channel.stream_stream(
            _PATH + "GenerateMany", request_serializer=pb.GenerateRequest.SerializeToString, response_deserializer=chunk
        )
        self.InitModel = channel.unary_stream(
            _PATH + "InitModel", request_serializer=pb.InitModelRequest.SerializeToString, response_deserializer=chunk
        )
        self.ListInitializers = channel.unary_unary(
            _PATH + "ListInitializers",
            request_serializer=pb.ListInitializersRequest.SerializeToString,
            response_deserializer=pb.ListInitializersResponse.FromString,
        )
        self.ListVersions = channel.unary_unary(
            _PATH + "ListVersions",
            request_serializer=pb.ListVersionsRequest.SerializeToString,
            response_deserializer=pb.ListVersionsResponse.FromString,
        )


# Trailing metadata of a failed call: the domain error's type, and for Overloaded the
# seconds to wait (the server imports these names: one place defines them).
# Room for a chunk of the largest size a server may choose (3 MiB) plus framing.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 2**20),
    # A name with several addresses (a Kubernetes headless Service): spread calls over all.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]


def _key_to_proto(message: pb.Key, key: Key) -> None:
    if key.seed is not None:
        message.seed = key.seed
    else:
        message.data.words.extend(key.data or ())
    message.impl = key.impl
    message.fold_in.extend(key.fold_in)
    for step in key.derive:
        if step[0] == "fold_in":
            message.derive.add(fold_in=step[1])
        elif step[0] == "stack":
            message.derive.add(stack=step[1])
        else:
            message.derive.add(split=pb.Split(num=step[1], index=step[2]))


def _prng_to_proto(message: pb.PrngSettings, threefry_partitionable: bool | None, enable_x64: bool | None) -> None:
    if threefry_partitionable is not None:
        message.threefry_partitionable = threefry_partitionable
    if enable_x64 is not None:
        message.enable_x64 = enable_x64


def request_to_proto(request: Request, index: int = 0, shared_memory: str | None = None) -> pb.GenerateRequest:
    message = pb.GenerateRequest(
        shared_memory=shared_memory or "",
        request_id=request.request_id or str(index),
        initializer=request.initializer,
        shape=request.shape,
        dtype=request.dtype or "",
        args={name: value_to_proto(v) for name, v in request.args.items()},
    )
    if request.key is not None:
        _key_to_proto(message.key, request.key)
    _prng_to_proto(message.prng, request.threefry_partitionable, request.enable_x64)
    message.prng.jit = request.jit
    if request.offset is not None:
        message.offset = request.offset
    if request.count is not None:
        message.count = request.count
    for name, value in pins(request).items():
        setattr(message, name, value)
    return message


def model_request_to_proto(request: ModelRequest, shared_memory: str | None = None) -> pb.InitModelRequest:
    message = pb.InitModelRequest(
        shared_memory=shared_memory or "",
        model_json=json.dumps(request.model, separators=(",", ":")),
        mode=request.mode,
        layout=request.layout,
        fix_rng_separator=request.fix_rng_separator,
        param_dtype=request.param_dtype,
    )
    _key_to_proto(message.key, request.key)
    _prng_to_proto(message.prng, request.threefry_partitionable, request.enable_x64)
    message.prng.jit = bool(request.jit)
    for name, value in pins(request).items():
        setattr(message, name, value)
    return message


def value_to_proto(value: Any) -> pb.Value:
    if value is None:
        return pb.Value(null_value=True)
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(float_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return pb.Value(int_list=pb.IntList(values=value))
    return pb.Value(list_value=pb.NestedList(items=[value_to_proto(v) for v in value]))


def provenance_from_proto(message: pb.Provenance) -> Provenance:
    return Provenance(
        jaxinit_version=message.jaxinit_version,
        jax_version=message.jax_version,
        jaxlib_version=message.jaxlib_version,
        backend=message.backend,
        device_kind=message.device_kind,
        key_impl=message.key_impl,
        key_data=tuple(message.key_data),
        threefry_partitionable=message.threefry_partitionable,
        enable_x64=message.enable_x64,
        canonical_request=message.canonical_request,
        request_digest=message.request_digest,
    )


class _Collector:
    """Turns a stream of TensorChunks into Tensors (or errors), one request at a time."""

    def __init__(
        self, on_progress: Progress | None = None, shared: SharedMemory | None = None, place: Placement | None = None
    ) -> None:
        self.current: Assembler | None = None
        self._place = place  # where each tensor's bytes go (None: a buffer of its own)
        self._on_progress = on_progress
        self._shared = shared
        self._whole_known = False  # an InitModel header said the model's size
        self._mapped: Any = None  # a region claimed ahead (by an asyncio transport, off its loop)

    async def claim_ahead(self, chunk: pb.TensorChunk) -> None:
        """For an asyncio transport: claim the region a header names on a thread, so that
        the claim (which waits on the server) never blocks the event loop."""
        if chunk.WhichOneof("payload") == "header" and chunk.header.region and self._shared is not None:
            self._mapped = await asyncio.to_thread(self._shared.map, chunk.header.region, chunk.header.total_bytes)

    def feed(self, chunk: pb.TensorChunk) -> Tensor | JaxinitError | None:
        kind = chunk.WhichOneof("payload")
        if kind == "error":
            if self.current is not None:
                raise ProtocolError("error chunk in the middle of a tensor")
            return error_from_wire(chunk.error.message, type_name=chunk.error.type, grpc_code=chunk.error.code)
        if kind == "header":
            if self.current is not None:
                raise ProtocolError("a new header before the last tensor was complete")
            header = chunk.header
            if header.model_bytes and not self._whole_known:
                self._on_progress = total_up_front(self._on_progress, header.model_bytes)
                self._whole_known = True
            provenance = provenance_from_proto(header.provenance)
            shape = tuple(header.shape)
            place = self._place
            self.current = Assembler(
                shape,
                header.dtype,
                header.total_bytes,
                provenance,
                chunk.request_id,
                header.offset,
                header.count if header.HasField("count") else None,
                self._on_progress,
                header.digest_algorithm,
                header.cache,
                None if place is None else place(chunk.request_id, shape, header.dtype, header.total_bytes, provenance),
            )
            if header.region:  # the bytes are in shared memory; only the digest follows
                if self._shared is None:
                    raise ProtocolError("the server answered in shared memory, which this client did not ask for")
                mapped, self._mapped = self._mapped, None
                self.current.use_region(
                    mapped if mapped is not None else self._shared.map(header.region, header.total_bytes)
                )
        elif kind == "data":
            if self.current is None:
                raise ProtocolError("data chunk before any header")
            self.current.add(chunk.data.offset, chunk.data.data)
        elif kind == "digest":
            if self.current is None:
                raise ProtocolError("digest chunk before any header")
            self.current.check_digest(chunk.digest.algorithm, chunk.digest.digest)
        else:
            raise ProtocolError(f"unexpected chunk {kind!r}")
        if self.current.complete:
            tensor, self.current = self.current.finish(), None
            return tensor
        return None

    def close(self) -> None:
        if self.current is not None:
            raise ProtocolError(f"stream ended after {self.current.received} of {self.current.total} bytes")


def _credentials(ca_bundle: str | None) -> grpc.ChannelCredentials:
    """TLS that trusts ``ca_bundle`` (a PEM file), or the system's roots without one."""
    if ca_bundle is None:
        return grpc.ssl_channel_credentials()
    with open(ca_bundle, "rb") as pem:
        return grpc.ssl_channel_credentials(root_certificates=pem.read())


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def translate(exc: grpc.RpcError, target: str) -> JaxinitError:
    """A gRPC failure as a jaxinit error."""
    code = exc.code()
    details = exc.details() or ""
    metadata = dict(exc.trailing_metadata() or ())
    type_name = metadata.get(ERROR_TYPE_KEY)
    if type_name is None and code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(f"cannot reach the jaxinit server at {target}: {details}")
    if type_name is None and code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
        # The server names the type of every error it raises, and this client cancels nothing:
        # an INTERNAL or CANCELLED without a type is the transport's (a stream reset when a
        # replica died behind a proxy, or a call caught by a replica's shutdown).
        return ServerUnavailable(f"the call to {target} broke: {code.name}: {details}")
    error = error_from_wire(details, type_name=type_name, grpc_code=code.name)
    if isinstance(error, Overloaded):
        error.retry_after = retry_after_seconds(metadata.get(RETRY_AFTER_KEY))
    return error


def interrupted(error: JaxinitError, collector: _Collector) -> JaxinitError:
    """``error`` as :class:`Interrupted` when it broke a tensor that had begun, with what arrived."""
    if isinstance(error, ServerUnavailable) and collector.current is not None:
        return Interrupted(f"{error.message} (after {collector.current.received} bytes)", collector.current.partial())
    return error


def _as_dict(message: pb.ListInitializersResponse | pb.ListVersionsResponse) -> dict[str, Any]:
    """The same plain data the REST endpoint returns."""
    try:
        as_dict = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26 names the same option otherwise
        as_dict = MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)
    if isinstance(message, pb.ListVersionsResponse):
        # A pool that did not answer has only these set; REST lists it so too.
        as_dict["versions"] = [
            v if v["reachable"] else {k: v[k] for k in ("jax_version", "reachable", "default")}
            for v in as_dict["versions"]
        ]
    return cast("dict[str, Any]", as_dict)


class _OneTensor:
    """The one tensor a Generate call answers, read to the end of the call: its status is
    part of the answer, and a call left open is a cancelled call on the server."""

    def __init__(self, on_progress: Progress | None, shared: SharedMemory | None = None) -> None:
        self.collector = _Collector(on_progress, shared)
        self.tensor: Tensor | None = None

    def feed(self, chunk: pb.TensorChunk) -> None:
        if self.tensor is not None:
            raise ProtocolError("the server sent more after the tensor was complete")
        result = self.collector.feed(chunk)
        if isinstance(result, JaxinitError):
            raise result
        self.tensor = result

    def failed(self, exc: grpc.RpcError, target: str) -> JaxinitError:
        return interrupted(translate(exc, target), self.collector)

    def result(self) -> Tensor:
        if self.tensor is not None:
            return self.tensor
        self.collector.close()
        raise ProtocolError("stream ended without a tensor")


class _Transport:
    """What the blocking and the asyncio transports share: the channel, the stub, the call options."""

    _secure_channel: Any = staticmethod(grpc.secure_channel)
    _insecure_channel: Any = staticmethod(grpc.insecure_channel)

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        channel: Any = None,
        token: str | None = None,
        tls: bool = False,
        ca_bundle: str | None = None,
        shared_memory: bool | None = None,
    ) -> None:
        self.target = target
        self.shared = SharedMemory(shared_memory, target.rsplit(":", 1)[0])
        self.on_progress: Progress | None = None  # set by the client while a call shows progress
        self._options: dict[str, Any] = {"timeout": timeout, "metadata": _auth_metadata(token)}
        if channel is None and tls:
            channel = self._secure_channel(target, _credentials(ca_bundle), options=CHANNEL_OPTIONS)
        self._channel = channel or self._insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = _Stub(self._channel)
        self.pin: str | None = None  # the client's version pin: a GenerateMany stream's metadata

    def _for(self, pin: str | None) -> dict[str, Any]:
        """The call options, with the version pin as metadata (what a load balancer routes on)."""
        if not pin:
            return self._options
        return {**self._options, "metadata": (*self._options["metadata"], (JAX_VERSION_HEADER, pin))}


class GrpcTransport(_Transport):
    """Blocking gRPC transport."""

    def _token(self) -> str | None:
        return self.shared.known(self.list_initializers)

    def generate(self, request: Request) -> Tensor:
        return self.shared.attempt(self._token(), lambda token: self._generate(request, token))

    def _generate(self, request: Request, token: str | None) -> Tensor:
        one = _OneTensor(self.on_progress, self.shared)
        try:
            for chunk in self._stub.Generate(
                request_to_proto(request, shared_memory=token), **self._for(request.jax_version)
            ):
                one.feed(chunk)
        except grpc.RpcError as exc:
            raise one.failed(exc, self.target) from exc
        return one.result()

    def _tensors(self, call: Any, place: Placement | None = None) -> Iterator[tuple[str, Tensor | JaxinitError]]:
        collector = _Collector(self.on_progress, self.shared, place)
        try:
            for chunk in call:
                if (result := collector.feed(chunk)) is not None:
                    yield chunk.request_id, result
        except grpc.RpcError as exc:
            raise translate(exc, self.target) from exc
        collector.close()

    def generate_many(self, requests: Iterable[Request]) -> Iterator[Tensor | JaxinitError]:
        token = self._token()
        sent: dict[str, list[Request]] = {}

        def messages() -> Iterator[pb.GenerateRequest]:
            for i, r in enumerate(requests):
                message = request_to_proto(r, i, token)
                sent.setdefault(message.request_id, []).append(r)
                yield message

        for request_id, item in self._tensors(self._stub.GenerateMany(messages(), **self._for(self.pin))):
            request = sent[request_id].pop(0) if sent.get(request_id) else None
            if isinstance(item, PermissionDenied) and token is not None and request is not None:
                self.shared.refused()  # the token is not this replica's: this one in the stream
                item = self._generate(request, None)
            yield item

    def init_model(self, request: ModelRequest, place: Placement | None = None) -> Iterator[Tensor | JaxinitError]:
        """The model's tensors in order, as the server expands it (``InitModel``); ``place``:
        where each one's bytes go."""
        token = self._token()
        started = False
        try:
            call = self._stub.InitModel(model_request_to_proto(request, token), **self._for(request.jax_version))
            for name, item in self._tensors(call, place):
                started = True
                yield named(name, item)
        except PermissionDenied:
            if token is None or started:
                raise
            self.shared.refused()
            call = self._stub.InitModel(model_request_to_proto(request), **self._for(request.jax_version))
            for name, item in self._tensors(call, place):
                yield named(name, item)

    def list_initializers(self) -> dict[str, Any]:
        try:
            return _as_dict(self._stub.ListInitializers(pb.ListInitializersRequest(), **self._options))
        except grpc.RpcError as exc:
            raise translate(exc, self.target) from exc

    def list_versions(self) -> dict[str, Any]:
        try:
            return _as_dict(self._stub.ListVersions(pb.ListVersionsRequest(), **self._options))
        except grpc.RpcError as exc:
            raise translate(exc, self.target) from exc

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport(_Transport):
    """asyncio gRPC transport."""

    _secure_channel = staticmethod(grpc.aio.secure_channel)
    _insecure_channel = staticmethod(grpc.aio.insecure_channel)

    async def _token(self) -> str | None:
        return await self.shared.known_async(self.list_initializers)

    async def generate(self, request: Request) -> Tensor:
        return await self.shared.attempt_async(await self._token(), lambda token: self._generate(request, token))

    async def _generate(self, request: Request, token: str | None) -> Tensor:
        one = _OneTensor(self.on_progress, self.shared)
        try:
            async for chunk in self._stub.Generate(
                request_to_proto(request, shared_memory=token), **self._for(request.jax_version)
            ):
                await one.collector.claim_ahead(chunk)
                one.feed(chunk)
        except grpc.RpcError as exc:
            raise one.failed(exc, self.target) from exc
        return one.result()

    async def _tensors(
        self, call: Any, place: Placement | None = None
    ) -> AsyncIterator[tuple[str, Tensor | JaxinitError]]:
        collector = _Collector(self.on_progress, self.shared, place)
        try:
            async for chunk in call:
                await collector.claim_ahead(chunk)
                if (result := collector.feed(chunk)) is not None:
                    yield chunk.request_id, result
        except grpc.RpcError as exc:
            raise translate(exc, self.target) from exc
        collector.close()

    async def generate_many(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> AsyncIterator[Tensor | JaxinitError]:
        token = await self._token()
        sent: dict[str, list[Request]] = {}

        async def messages() -> AsyncIterator[pb.GenerateRequest]:
            async for i, r in enumerate_async(requests):
                message = request_to_proto(r, i, token)
                sent.setdefault(message.request_id, []).append(r)
                yield message

        async for request_id, item in self._tensors(self._stub.GenerateMany(messages(), **self._for(self.pin))):
            request = sent[request_id].pop(0) if sent.get(request_id) else None
            if isinstance(item, PermissionDenied) and token is not None and request is not None:
                self.shared.refused()
                item = await self._generate(request, None)
            yield item

    async def init_model(
        self, request: ModelRequest, place: Placement | None = None
    ) -> AsyncIterator[Tensor | JaxinitError]:
        """See :meth:`GrpcTransport.init_model`."""
        token = await self._token()
        started = False
        try:
            call = self._stub.InitModel(model_request_to_proto(request, token), **self._for(request.jax_version))
            async for name, item in self._tensors(call, place):
                started = True
                yield named(name, item)
        except PermissionDenied:
            if token is None or started:
                raise
            self.shared.refused()
            call = self._stub.InitModel(model_request_to_proto(request), **self._for(request.jax_version))
            async for name, item in self._tensors(call, place):
                yield named(name, item)

    async def list_initializers(self) -> dict[str, Any]:
        try:
            return _as_dict(await self._stub.ListInitializers(pb.ListInitializersRequest(), **self._options))
        except grpc.RpcError as exc:
            raise translate(exc, self.target) from exc

    async def list_versions(self) -> dict[str, Any]:
        try:
            return _as_dict(await self._stub.ListVersions(pb.ListVersionsRequest(), **self._options))
        except grpc.RpcError as exc:
            raise translate(exc, self.target) from exc

    async def close(self) -> None:
        await self._channel.close()
