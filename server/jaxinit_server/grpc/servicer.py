"""The jaxinit.v1.Initializers servicer: translates its messages to core calls and back. No rules here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from jaxinit.protocol.errors import InvalidArgument, JaxinitError
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Service, TensorStream
from jaxinit_server.core.delivery import delivery_for
from jaxinit_server.core.window import Window
from jaxinit_server.grpc.interceptors import Malformed
from jaxinit_server.grpc.messages import (
    error_to_proto,
    header_to_proto,
    model_params_from_proto,
    params_from_proto,
    value_from_proto,
)
from jaxinit_server.grpc.status import abort, caller_of, domain_error, echo_request_id, observed, pin_of
from jaxinit_server.pools import Deployment
from jaxinit_server.telemetry import Call, Telemetry

__all__ = ["SERVICE_NAME", "InitializersServicer", "frames", "params_from_proto", "value_from_proto"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Initializers"].full_name
_Item = tuple[str, "asyncio.Future[TensorStream]", Call]


async def frames(
    tensor: TensorStream, request_id: str, chunk_bytes: int, call: Call, model_bytes: int = 0
) -> AsyncIterator[pb.TensorChunk]:
    """The messages that carry one tensor: its header, its bytes, then their digest.
    ``model_bytes``: a model's whole size, on each of its tensors' headers. Delivered into a
    shared-memory region (the request's, when it has room), the bytes are written before
    the header, which names the region, and only the digest follows it."""
    call.timings = tensor.timings
    region = await tensor.region()
    header = header_to_proto(tensor, chunk_bytes, model_bytes, region=region or "")
    yield pb.TensorChunk(request_id=request_id, header=header)
    if region is None:
        async for offset, data in tensor.chunks(chunk_bytes):
            yield pb.TensorChunk(request_id=request_id, data=pb.DataChunk(offset=offset, data=bytes(data)))
            call.sent(len(data))
    else:
        call.sent(tensor.nbytes)
    digest = pb.TensorDigest(algorithm=tensor.digest_algorithm, digest=tensor.digest())
    yield pb.TensorChunk(request_id=request_id, digest=digest)


class InitializersServicer(pb_grpc.InitializersServicer):  # type: ignore[misc]
    def __init__(
        self,
        service: Service,
        telemetry: Telemetry,
        keyring: KeyRing | None = None,
        *,
        deployment: Deployment | None = None,
    ) -> None:
        self._service = service
        self._deployment = deployment or Deployment(service.identity.jax_version)
        self._telemetry = telemetry
        self._keyring = keyring
        self._chunk = service.limits.chunk_bytes

    async def _open(self, context: grpc.aio.ServicerContext, method: str) -> Call:
        """A telemetry record for the call, its request id echoed in the initial metadata."""
        return self._telemetry.call("grpc", method, await echo_request_id(context, self._telemetry.replica))

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        call = await self._open(context, "Generate")
        call.asked(request.initializer, list(request.shape), request.dtype or None)
        async with observed(context, call):
            plan = self._service.prepare(params_from_proto(request, pin_of(context)))
            call.describe(plan.resolved.spec.name, plan.resolved.shape, plan.resolved.out_dtype)
            delivery = delivery_for(region_token=request.shared_memory or None)
            tensor = await self._service.generate(plan, delivery=delivery, caller=caller_of(context, self._keyring))
            async for message in frames(tensor, request.request_id, self._chunk, call):
                yield message

    async def GenerateMany(
        self, request_iterator: AsyncIterator[pb.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        # Each request is started as it arrives (the core's Window: its read-ahead and retry
        # rule); the answers go out in request order, one tensor at a time.
        stream_id = await echo_request_id(context, self._telemetry.replica)
        window = Window(self._service, caller_of(context, self._keyring))
        pin = pin_of(context)  # the stream's: every item is pinned to it
        pending: asyncio.Queue[_Item | None] = asyncio.Queue(window.size)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(await self._start(window, request, stream_id, pin))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await pending.get()) is not None:
                async for message in self._send(window, *item):
                    yield message
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

    async def _start(
        self, window: Window, request: pb.GenerateRequest | Malformed, stream_id: str, pin: str | None
    ) -> _Item:
        """One GenerateMany item, started (its errors come out of its future)."""
        if isinstance(request, Malformed):  # its error in the stream; the others go on
            return "", window.failed(request.error), self._telemetry.call("grpc", "GenerateMany", f"{stream_id}/?")
        call = self._telemetry.call("grpc", "GenerateMany", f"{stream_id}/{request.request_id}")
        call.asked(request.initializer, list(request.shape), request.dtype or None)
        try:
            plan = self._service.prepare(params_from_proto(request, pin))
        except Exception as exc:
            return request.request_id, window.failed(exc), call
        call.describe(plan.resolved.spec.name, plan.resolved.shape, plan.resolved.out_dtype)
        delivery = delivery_for(region_token=request.shared_memory or None)
        return request.request_id, await window.start(plan, delivery), call

    async def _send(
        self, window: Window, request_id: str, future: asyncio.Future[TensorStream], call: Call
    ) -> AsyncIterator[pb.TensorChunk]:
        """One GenerateMany item's messages; an error before its header is the item's own."""
        started = False
        try:
            tensor = await future
            async for message in frames(tensor, request_id, self._chunk, call):
                started = True
                yield message
        except Exception as exc:
            if started:
                call.close(exc)
                raise
            call.close(error := domain_error(exc))
            window.sent()
            yield error_to_proto(error, request_id)
            return
        except BaseException as exc:
            call.close(exc)
            raise
        call.close()
        window.sent()

    async def InitModel(
        self, request: pb.InitModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TensorChunk]:
        call = await self._open(context, "InitModel")
        call.asked("model", None)
        async with observed(context, call):
            delivery = delivery_for(region_token=request.shared_memory or None)
            self._service.regions_for(delivery)  # a token refused before the model is expanded
            params = await asyncio.to_thread(model_params_from_proto, request, pin_of(context))  # a big JSON text
            who = caller_of(context, self._keyring)
            model = await self._service.prepare_model(params, caller=who)
            call.describe("model", (len(model.outputs),), "")
            planned = await self._service.check_model(model)
            ticket = self._service.admit_model(planned, caller=who)
            async for name, tensor in self._service.generate_model(planned, ticket=ticket, delivery=delivery):
                if isinstance(tensor, JaxinitError):
                    yield error_to_proto(tensor, name)
                    continue
                async for message in frames(tensor, name, self._chunk, call, model.nbytes):
                    yield message

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
        try:
            served = await self._deployment.versions(self._service.describe(), request.scope)
        except InvalidArgument as exc:
            await abort(context, exc)
            raise  # (abort raised already)
        return pb.ListVersionsResponse(versions=[pb.ServedVersion(**v) for v in served["versions"]])
