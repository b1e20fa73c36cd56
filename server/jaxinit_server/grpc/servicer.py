"""The jaxinit.v1.Initializers servicer: translates its messages to core calls and back. No rules here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from jaxinit.protocol.errors import InvalidArgument, JaxinitError, Overloaded, mapping_for
from jaxinit.protocol.keys import DEFAULT_IMPL, Key
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server import jsonio
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import GenerateParams, InitModelParams, Service, TensorStream
from jaxinit_server.core.provenance import served_versions
from jaxinit_server.core.regions import Regions
from jaxinit_server.core.request import jit_option, pinned
from jaxinit_server.grpc.interceptors import Malformed
from jaxinit_server.grpc.status import abort, caller_of, domain_error, echo_request_id, pin_of
from jaxinit_server.telemetry import Call, Telemetry

__all__ = ["SERVICE_NAME", "InitializersServicer", "params_from_proto"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Initializers"].full_name
# How many requests of one GenerateMany stream are produced ahead of the one being sent.
MANY_WINDOW = 4


def _failed(error: BaseException) -> asyncio.Future[TensorStream]:
    future: asyncio.Future[TensorStream] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def key_from_proto(message: pb.Key) -> Key | None:
    form = message.WhichOneof("form")
    impl = message.impl or DEFAULT_IMPL
    folds = tuple(message.fold_in)
    derive = tuple(_step_from_proto(step) for step in message.derive)
    if form == "seed":
        return Key(seed=message.seed, impl=impl, fold_in=folds, derive=derive)
    if form == "data":
        return Key(data=tuple(message.data.words), impl=impl, fold_in=folds, derive=derive)
    return None


def _step_from_proto(step: pb.KeyStep) -> tuple[Any, ...]:
    kind = step.WhichOneof("step")
    if kind == "fold_in":
        return ("fold_in", step.fold_in)
    if kind == "split":
        return ("split", step.split.num, step.split.index)
    if kind == "stack":
        return ("stack", step.stack)
    raise InvalidArgument("a KeyStep needs fold_in, split or stack")


def params_from_proto(request: pb.GenerateRequest, pin: str | None = None) -> GenerateParams:
    """The core's view of a wire request; ``pin``: the call's x-jaxinit-jax-version metadata."""
    prng = request.prng
    jit = jit_option(request.jit if request.HasField("jit") else None, prng.jit or None)
    return GenerateParams(
        initializer=request.initializer,
        shape=list(request.shape),
        args={name: value_from_proto(v) for name, v in request.args.items()},
        dtype=request.dtype or None,
        key=key_from_proto(request.key) if request.HasField("key") else None,
        threefry_partitionable=(prng.threefry_partitionable if prng.HasField("threefry_partitionable") else None),
        enable_x64=prng.enable_x64 if prng.HasField("enable_x64") else None,
        jit=bool(jit),
        request_id=request.request_id,
        offset=request.offset if request.HasField("offset") else None,
        count=request.count if request.HasField("count") else None,
        jax_version=pinned(request.jax_version, pin),
        backend=request.backend or None,
    )


def model_params_from_proto(request: pb.InitModelRequest, pin: str | None = None) -> InitModelParams:
    try:
        model = jsonio.loads(request.model_json)
    except ValueError as exc:
        raise InvalidArgument(f"model_json is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("model_json is nested too deeply to read") from None
    prng = request.prng
    jit = jit_option(request.jit if request.HasField("jit") else None, prng.jit or None)
    return InitModelParams(
        model=model,
        key=key_from_proto(request.key) if request.HasField("key") else None,
        mode=request.mode or "linen",
        layout=request.layout or "flax",
        fix_rng_separator=request.fix_rng_separator,
        param_dtype=request.param_dtype or "float32",
        threefry_partitionable=prng.threefry_partitionable if prng.HasField("threefry_partitionable") else None,
        enable_x64=prng.enable_x64 if prng.HasField("enable_x64") else None,
        jit=bool(jit),
        jax_version=pinned(request.jax_version, pin),
        backend=request.backend or None,
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


def header_to_proto(tensor: TensorStream, chunk_bytes: int, model_bytes: int = 0, region: str = "") -> pb.TensorHeader:
    return pb.TensorHeader(
        shape=tensor.shape,
        dtype=tensor.dtype,
        byte_order="little",
        total_bytes=tensor.nbytes,
        chunk_bytes=chunk_bytes,
        provenance=pb.Provenance(**tensor.provenance.as_dict()),
        offset=tensor.resolved.start,
        count=tensor.resolved.stop - tensor.resolved.start,
        digest_algorithm=tensor.digest_algorithm,
        model_bytes=model_bytes,
        cache=tensor.cache,
        region=region,
    )


async def frames(
    tensor: TensorStream,
    request_id: str,
    chunk_bytes: int,
    call: Call,
    model_bytes: int = 0,
    regions: Regions | None = None,
) -> AsyncIterator[pb.TensorChunk]:
    """The messages that carry one tensor: its header, its bytes, then their digest.
    ``model_bytes``: a model's whole size, on each of its tensors' headers. With
    ``regions`` (a same-host caller's shared memory), the bytes go into a region the
    header names, and only the digest follows it (in the stream after all when shared
    memory has no room)."""
    call.timings = tensor.timings
    region = None
    if regions is not None and tensor.nbytes:
        region = await tensor.to_region(regions)
    if region is not None:
        yield pb.TensorChunk(
            request_id=request_id, header=header_to_proto(tensor, chunk_bytes, model_bytes, region=region)
        )
        call.sent(tensor.nbytes)
        yield pb.TensorChunk(
            request_id=request_id, digest=pb.TensorDigest(algorithm=tensor.digest_algorithm, digest=tensor.digest())
        )
        return
    yield pb.TensorChunk(request_id=request_id, header=header_to_proto(tensor, chunk_bytes, model_bytes))
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


class InitializersServicer(pb_grpc.InitializersServicer):  # type: ignore[misc]
    def __init__(self, service: Service, telemetry: Telemetry, keyring: KeyRing | None = None) -> None:
        self._service = service
        self._telemetry = telemetry
        self._keyring = keyring
        self._chunk = service.limits.chunk_bytes

    def _regions(self, token: str) -> Regions | None:
        """The shared memory a request with ``token`` is answered in (None: the stream)."""
        return self._service.shared_memory(token) if token else None

    async def _open(self, context: grpc.aio.ServicerContext, method: str) -> Call:
        """A telemetry record for the call, its request id echoed in the initial metadata."""
        return self._telemetry.call("grpc", method, await echo_request_id(context, self._telemetry.replica))

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        call = await self._open(context, "Generate")
        call.asked(request.initializer, list(request.shape), request.dtype or None)
        error: BaseException | None = None
        try:
            regions = self._regions(request.shared_memory)
            resolved = self._service.prepare(params_from_proto(request, pin_of(context)))
            call.describe(resolved.spec.name, resolved.shape, resolved.out_dtype)
            tensor = await self._service.generate(resolved, caller=caller_of(context, self._keyring))
            async for message in frames(tensor, request.request_id, self._chunk, call, regions=regions):
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
        pending: asyncio.Queue[tuple[str, asyncio.Future[TensorStream], Call, Regions | None] | None] = asyncio.Queue(
            MANY_WINDOW
        )
        # Each item is a request of its own: "<stream id>/<item id>".
        stream_id = await echo_request_id(context, self._telemetry.replica)
        who = caller_of(context, self._keyring)
        pin = pin_of(context)  # the stream's: every item is pinned to it
        unsent = 0  # items started and not yet sent (or failed)
        all_sent = asyncio.Event()
        all_sent.set()

        async def read() -> None:
            nonlocal unsent
            try:
                async for request in request_iterator:
                    regions = None
                    if isinstance(request, Malformed):  # its error in the stream; the others go on
                        call = self._telemetry.call("grpc", "GenerateMany", f"{stream_id}/?")
                        future = _failed(request.error)
                        request_id = ""
                    else:
                        call = self._telemetry.call("grpc", "GenerateMany", f"{stream_id}/{request.request_id}")
                        call.asked(request.initializer, list(request.shape), request.dtype or None)
                        try:
                            regions = self._regions(request.shared_memory)
                        except JaxinitError as exc:
                            future = _failed(exc)
                        else:
                            future = await self._start_one(request, call, who, all_sent, pin)
                        request_id = request.request_id
                    unsent += 1
                    all_sent.clear()
                    await pending.put((request_id, future, call, regions))
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
                request_id, future, call, regions = item
                try:
                    tensor = await future
                except Exception as exc:
                    call.close(error := domain_error(exc))
                    sent()
                    yield error_to_proto(error, request_id)
                    continue
                if regions is not None:  # written whole before its header: its errors are the item's
                    try:
                        messages = [m async for m in frames(tensor, request_id, self._chunk, call, regions=regions)]
                    except JaxinitError as exc:
                        call.close(exc)
                        sent()
                        yield error_to_proto(exc, request_id)
                        continue
                    except BaseException as exc:
                        call.close(exc)
                        raise
                    for message in messages:
                        yield message
                    call.close()
                    sent()
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
        self, request: pb.GenerateRequest, call: Call, who: str, all_sent: asyncio.Event, pin: str | None
    ) -> asyncio.Future[TensorStream]:
        """One GenerateMany item's generation, started; its errors come out of the future."""
        try:
            resolved = self._service.prepare(params_from_proto(request, pin))
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
        call.asked("model", None)
        error: BaseException | None = None
        try:
            regions = self._regions(request.shared_memory)
            params = await asyncio.to_thread(model_params_from_proto, request, pin_of(context))  # a big JSON text
            who = caller_of(context, self._keyring)
            model = await self._service.prepare_model(params, caller=who)
            call.describe("model", (len(model.outputs),), "")
            await self._service.check_model(model)
            ticket = self._service.admit_model(model, caller=who)
            async for name, tensor in self._service.generate_model(model, ticket=ticket):
                if isinstance(tensor, JaxinitError):
                    yield error_to_proto(tensor, name)
                    continue
                async for message in frames(tensor, name, self._chunk, call, model.nbytes, regions=regions):
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
                    name=i["name"],
                    kind=i["kind"],
                    source=i["source"],
                    summary=i["summary"],
                    uses_key=i["uses_key"],
                    arguments=[pb.ArgumentSpec(**a) for a in i["arguments"]],
                )
                for i in described["initializers"]
            ],
            dtypes=described["dtypes"],
            key_impls=described["key_impls"],
            server=pb.Provenance(**described["server"]),
            shared_memory_directory=(described["shared_memory"] or {}).get("directory", ""),
        )

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVersionsResponse:
        served = served_versions(self._service.describe())
        return pb.ListVersionsResponse(versions=[pb.ServedVersion(**v) for v in served["versions"]])
