"""The gRPC adapter: translates jaxinit.v1 messages to core calls and back. No rules here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jaxinit._errors import InternalError, InvalidArgument, JaxinitError, Overloaded, mapping_for
from jaxinit._grpc import ERROR_TYPE_KEY, RETRY_AFTER_KEY
from jaxinit._keys import Key
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server import jsonio
from jaxinit_server.auth import OPEN_GRPC_PREFIXES, KeyRing, bearer, caller
from jaxinit_server.core import GenerateParams, ModelParams, Service, Tensor
from jaxinit_server.core.errors import as_domain_error
from jaxinit_server.telemetry import REPLICA_HEADER, REQUEST_ID_HEADER, Call, Telemetry, request_id_from

__all__ = ["SERVICE_NAME", "create_grpc_server"]

log = logging.getLogger("jaxinit_server.grpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Initializers"].full_name
# How many requests of one GenerateMany stream are produced ahead of the one being sent.
MANY_WINDOW = 4


def _failed(error: BaseException) -> asyncio.Future[Tensor]:
    future: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def key_from_proto(message: pb.Key) -> Key | None:
    form = message.WhichOneof("form")
    impl = message.impl or "threefry2x32"
    folds = tuple(message.fold_in)
    if form == "seed":
        return Key(seed=message.seed, impl=impl, fold_in=folds)
    if form == "data":
        return Key(data=tuple(message.data.words), impl=impl, fold_in=folds)
    return None


def params_from_proto(request: pb.GenerateRequest) -> GenerateParams:
    """The core's view of a wire request."""
    prng = request.prng
    return GenerateParams(
        initializer=request.initializer,
        shape=list(request.shape),
        args={name: value_from_proto(v) for name, v in request.args.items()},
        dtype=request.dtype or None,
        key=key_from_proto(request.key) if request.HasField("key") else None,
        threefry_partitionable=(
            prng.threefry_partitionable if prng.HasField("threefry_partitionable") else None
        ),
        enable_x64=prng.enable_x64 if prng.HasField("enable_x64") else None,
        request_id=request.request_id,
        offset=request.offset if request.HasField("offset") else None,
        count=request.count if request.HasField("count") else None,
    )


def model_params_from_proto(request: pb.InitModelRequest) -> ModelParams:
    try:
        model = jsonio.loads(request.model_json)
    except ValueError as exc:
        raise InvalidArgument(f"model_json is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("model_json is nested too deeply to read") from None
    prng = request.prng
    return ModelParams(
        model=model,
        key=key_from_proto(request.key) if request.HasField("key") else None,
        mode=request.mode or "linen",
        layout=request.layout or "flax",
        fix_rng_separator=request.fix_rng_separator,
        param_dtype=request.param_dtype or "float32",
        threefry_partitionable=prng.threefry_partitionable if prng.HasField("threefry_partitionable") else None,
        enable_x64=prng.enable_x64 if prng.HasField("enable_x64") else None,
    )


def value_from_proto(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "int_list":
        return list(value.int_list.values)
    if kind == "list_value":
        return [value_from_proto(v) for v in value.list_value.items]
    return getattr(value, kind)  # kind is one of the oneof's own field names


def header_to_proto(tensor: Tensor, chunk_bytes: int) -> pb.TensorHeader:
    return pb.TensorHeader(
        shape=tensor.shape,
        dtype=tensor.dtype,
        byte_order="little",
        total_bytes=tensor.nbytes,
        chunk_bytes=chunk_bytes,
        provenance=pb.Provenance(**tensor.provenance),
        offset=tensor.resolved.start,
        count=tensor.resolved.stop - tensor.resolved.start,
        digest_algorithm=tensor.digest_algorithm,
    )


async def frames(tensor: Tensor, request_id: str, chunk_bytes: int, call: Call) -> AsyncIterator[pb.TensorChunk]:
    """The messages that carry one tensor: its header, its bytes, then their digest."""
    call.timings = tensor.timings
    yield pb.TensorChunk(request_id=request_id, header=header_to_proto(tensor, chunk_bytes))
    async for offset, data in tensor.chunks(chunk_bytes):
        yield pb.TensorChunk(request_id=request_id, data=pb.DataChunk(offset=offset, data=bytes(data)))
        call.sent(len(data))
    digest = pb.TensorDigest(algorithm=tensor.digest_algorithm, digest=tensor.digest())
    yield pb.TensorChunk(request_id=request_id, digest=digest)


def error_to_proto(error: JaxinitError, request_id: str) -> pb.TensorChunk:
    return pb.TensorChunk(
        request_id=request_id,
        error=pb.Error(code=mapping_for(error).grpc_code, type=type(error).__name__, message=error.message),
    )


def caller_of(context: grpc.aio.ServicerContext, keyring: KeyRing | None) -> str:
    """Whom admission charges this call to: its API key with auth on, else its channel."""
    return caller(keyring, dict(context.invocation_metadata() or ()).get("authorization"), context.peer())


class InitializersServicer(pb_grpc.InitializersServicer):
    def __init__(self, service: Service, telemetry: Telemetry, keyring: KeyRing | None = None) -> None:
        self._service = service
        self._telemetry = telemetry
        self._keyring = keyring
        self._chunk = service.limits.chunk_bytes

    async def _open(self, context: grpc.aio.ServicerContext, method: str) -> Call:
        """A telemetry record for the call, its request id echoed in the initial metadata."""
        return self._telemetry.call("grpc", method, await _request_id(context, self._telemetry.replica))

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        call = await self._open(context, "Generate")
        error: BaseException | None = None
        try:
            resolved = self._service.prepare(params_from_proto(request))
            call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
            tensor = await self._service.generate(resolved, caller=caller_of(context, self._keyring))
            async for message in frames(tensor, request.request_id, self._chunk, call):
                yield message
        except Exception as exc:
            error = domain_error(exc)
            await abort(context, error)
        except BaseException as exc:  # the caller went away (or stopped reading)
            error = exc
            raise
        finally:
            call.close(error)

    async def GenerateMany(
        self, request_iterator: AsyncIterator[pb.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        # A reader starts each request's generation as it arrives (at most MANY_WINDOW
        # ahead); the answers go out in request order, one tensor at a time. Read-ahead is
        # opportunistic: a request refused for capacity while others are ahead of it waits
        # until they are sent, and is then judged alone (its caller's own read-ahead never
        # makes it a 429).
        pending: asyncio.Queue[tuple[str, asyncio.Future[Tensor], Call] | None] = asyncio.Queue(MANY_WINDOW)
        # Each item is a request of its own: "<stream id>/<item id>".
        stream_id = await _request_id(context, self._telemetry.replica)
        who = caller_of(context, self._keyring)
        unsent = 0  # items started and not yet sent (or failed)
        all_sent = asyncio.Event()
        all_sent.set()

        async def read() -> None:
            nonlocal unsent
            try:
                async for request in request_iterator:
                    if isinstance(request, Malformed):  # its error in the stream; the others go on
                        call = self._telemetry.call("grpc", "GenerateMany", f"{stream_id}/?")
                        future = _failed(request.error)
                        request_id = ""
                    else:
                        call = self._telemetry.call("grpc", "GenerateMany", f"{stream_id}/{request.request_id}")
                        future = await self._start_one(request, call, who, all_sent)
                        request_id = request.request_id
                    unsent += 1
                    all_sent.clear()
                    await pending.put((request_id, future, call))
            finally:
                await pending.put(None)

        def sent() -> None:
            nonlocal unsent
            unsent -= 1
            if not unsent:
                all_sent.set()

        reader = asyncio.ensure_future(read())
        try:
            while (item := await pending.get()) is not None:
                request_id, future, call = item
                try:
                    tensor = await future
                except Exception as exc:
                    call.close(error := domain_error(exc))
                    sent()
                    yield error_to_proto(error, request_id)
                    continue
                try:
                    async for message in frames(tensor, request_id, self._chunk, call):
                        yield message
                except BaseException as exc:
                    call.close(exc)
                    raise
                call.close()
                sent()
            await reader  # surfaces a broken request stream
        finally:
            # The caller may have gone: stop reading, and drop what was produced ahead.
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            while not pending.empty():
                if (left := pending.get_nowait()) is not None:
                    left[1].cancel()
                    left[2].close(asyncio.CancelledError())

    async def _start_one(
        self, request: pb.GenerateRequest, call: Call, who: str, all_sent: asyncio.Event
    ) -> asyncio.Future[Tensor]:
        """One GenerateMany item's generation, started; its errors come out of the future."""
        try:
            resolved = self._service.prepare(params_from_proto(request))
            call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
            try:
                ticket = self._service.admit(resolved, caller=who)
            except Overloaded:
                if all_sent.is_set():
                    raise
                await all_sent.wait()  # the items ahead hold capacity: once they are sent, try alone
                ticket = self._service.admit(resolved, caller=who)
        except Exception as exc:
            return _failed(exc)
        return asyncio.ensure_future(self._service.generate(resolved, ticket=ticket, release_with_tensor=True))

    async def InitModel(
        self, request: pb.InitModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        call = await self._open(context, "InitModel")
        error: BaseException | None = None
        try:
            params = await asyncio.to_thread(model_params_from_proto, request)  # a big JSON text
            who = caller_of(context, self._keyring)
            model = await self._service.prepare_model(params, caller=who)
            call.describe("model", (len(model.outputs),), "")
            await self._service.check_model(model)
            ticket = self._service.admit_model(model, caller=who)
            async for name, tensor in self._service.generate_model(model, ticket=ticket):
                if isinstance(tensor, JaxinitError):
                    yield error_to_proto(tensor, name)
                    continue
                async for message in frames(tensor, name, self._chunk, call):
                    yield message
        except Exception as exc:
            error = domain_error(exc)
            await abort(context, error)
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.close(error)

    async def ListInitializers(
        self, request: pb.ListInitializersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInitializersResponse:
        described = self._service.describe()
        return pb.ListInitializersResponse(
            initializers=[
                pb.InitializerSpec(
                    name=i["name"], kind=i["kind"], source=i["source"], summary=i["summary"],
                    uses_key=i["uses_key"], arguments=[pb.ArgumentSpec(**a) for a in i["arguments"]],
                )
                for i in described["initializers"]
            ],
            dtypes=described["dtypes"],
            key_impls=described["key_impls"],
            server=pb.Provenance(**described["server"]),
        )


async def _request_id(context: grpc.aio.ServicerContext, replica: str) -> str:
    """The caller's x-request-id (or a new one), echoed back in the initial metadata with the
    name of the replica that answers."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER)
    request_id = request_id_from(given if isinstance(given, str) else None)
    metadata = ((REQUEST_ID_HEADER, request_id),) + (((REPLICA_HEADER, replica),) if replica else ())
    await context.send_initial_metadata(metadata)
    return request_id


def domain_error(exc: BaseException) -> JaxinitError:
    """``exc`` as a domain error; anything unexpected is logged and becomes InternalError."""
    if (error := as_domain_error(exc)) is not None:
        return error
    log.error("internal error", exc_info=exc)
    return InternalError("internal server error")


async def abort(context: grpc.aio.ServicerContext, error: JaxinitError) -> None:
    """End the call with ``error``'s status (from the one error table) and its type."""
    metadata = [(ERROR_TYPE_KEY, type(error).__name__)]
    if (retry_after := getattr(error, "retry_after", None)) is not None:
        metadata.append((RETRY_AFTER_KEY, f"{retry_after:g}"))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(grpc.StatusCode[mapping_for(error).grpc_code], error.message)


class Malformed:
    """What a request message that does not parse becomes: the handler, not gRPC's
    machinery, answers it (INVALID_ARGUMENT; gRPC's own answer is UNKNOWN, with the
    parser's exception in it, and an error logged)."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


class _DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request messages of jaxinit's services are parsed by a deserializer that cannot raise:
    a malformed one reaches a unary handler as a refusal, and a streaming handler as a
    :class:`Malformed` item it answers in the stream."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes) or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def safe(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # DecodeError, or anything a parser raises on bytes
                return Malformed(InvalidArgument(f"the request message does not parse as {details.method}'s "
                                                 f"request type ({type(exc).__name__})"))

        codecs = {"request_deserializer": safe, "response_serializer": handler.response_serializer}
        if handler.request_streaming:
            kind = grpc.stream_stream_rpc_method_handler if handler.response_streaming else \
                grpc.stream_unary_rpc_method_handler
            return kind(handler.stream_stream or handler.stream_unary, **codecs)
        behavior = handler.unary_stream or handler.unary_unary

        if handler.response_streaming:
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, Malformed):
                    await abort(context, request.error)
                async for message in behavior(request, context):
                    yield message

            return grpc.unary_stream_rpc_method_handler(stream, **codecs)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await abort(context, request.error)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **codecs)


class _AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every RPC but health needs ``authorization: Bearer <key>`` (see :mod:`auth`)."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_GRPC_PREFIXES):
            return handler
        token = bearer(dict(details.invocation_metadata or ()).get("authorization"))
        try:
            self._keyring.check(token)
        except JaxinitError as exc:
            return _refusal(handler, exc)
        return handler


def _refusal(handler: Any, error: JaxinitError) -> Any:
    """A handler of the same kind as ``handler`` that only fails with ``error``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context, error)
        yield  # pragma: no cover - makes this an async generator

    codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(stream, **codecs)


def create_grpc_server(
    service: Service, host: str, port: int, *, telemetry: Telemetry | None = None, keyring: KeyRing | None = None,
    tls: tuple[bytes, bytes] | None = None, max_message_bytes: int = 16 * 2**20,
) -> tuple[grpc.aio.Server, int, Any]:
    """A gRPC server with the jaxinit service, health and reflection, bound to ``host:port``;
    with ``tls`` (PEM certificate chain, PEM private key), over TLS only.

    Returns:
        (server, bound port, health servicer). Port 0 binds a free port. Not started.
    """
    from jaxinit_server.kserve.grpc_service import SERVICE_NAME as KSERVE_SERVICE

    interceptors: list[Any] = [_DecodeGuard((SERVICE_NAME, KSERVE_SERVICE))]
    if keyring is not None and keyring.enabled:
        interceptors.insert(0, _AuthInterceptor(keyring))
    # A larger request message is refused by gRPC itself with RESOURCE_EXHAUSTED.
    server = grpc.aio.server(
        interceptors=interceptors, options=[("grpc.max_receive_message_length", max_message_bytes)]
    )
    from jaxinit_server.kserve import grpc_service as kserve  # it imports this module's helpers

    telemetry = telemetry or Telemetry()
    pb_grpc.add_InitializersServicer_to_server(InitializersServicer(service, telemetry, keyring), server)
    kserve.add_to_server(server, service, telemetry, keyring)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, kserve.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        chain, key = tls
        bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(key, chain)]))
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound, health_servicer


async def set_serving(health_servicer: Any, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
