"""The KServe v2 gRPC service (``inference.GRPCInferenceService``): translation only.

``ModelInfer`` is unary: its response holds the whole tensor, made in memory. So it is
capped at :data:`MAX_UNARY_BYTES`; larger tensors stream from jaxinit's own
``Generate`` RPC or the v2 REST route with binary data, or come as ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import grpc
from google.protobuf import json_format

from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import InvalidArgument
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Limits, Service, TensorStream
from jaxinit_server.core.delivery import Gathered
from jaxinit_server.grpc.status import abort, caller_of, domain_error, pin_of
from jaxinit_server.kserve import grpc_predict_v2_pb2 as pb
from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as pb_grpc
from jaxinit_server.kserve import model_config_pb2
from jaxinit_server.kserve.mapping import (
    EXTENSIONS,
    OUTPUT,
    UNSUPPORTED,
    VERSION,
    Input,
    datatype_of,
    input_from_bytes,
    input_from_values,
    known,
    model_config,
    model_metadata,
    model_statistics,
    params_from_v2,
    quote,
)
from jaxinit_server.telemetry import Telemetry

__all__ = ["MAX_UNARY_BYTES", "SERVICE_NAME", "InferenceServicer", "Unsupported", "add_to_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# The most tensor bytes one ModelInfer response holds: it is made whole in memory (and
# copied again by protobuf), so a larger one is refused before any work (by the core:
# Limits.max_unary_bytes, of which this is the default).
MAX_UNARY_BYTES = Limits().max_unary_bytes
UNARY = Gathered(
    unary="ModelInfer",
    instead="Stream it with jaxinit's gRPC Generate RPC (jaxinit.v1.Initializers) or the v2 REST route with "
    "binary data, or ask for ranges (offset/count parameters)",
)


def _parameter(value: pb.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)  # kind is one of the oneof's field names


def _inputs(request: pb.ModelInferRequest) -> list[Input]:
    raw = list(request.raw_input_contents)
    out = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data = raw[i] if i < len(raw) else b""
            out.append(input_from_bytes(tensor.name, tensor.datatype, tuple(tensor.shape), data))
        else:
            c = tensor.contents
            values = [*c.int64_contents, *c.int_contents, *c.uint_contents, *c.uint64_contents]
            out.append(input_from_values(tensor.name, tensor.datatype, tuple(tensor.shape), values))
    return out


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, service: Service, telemetry: Telemetry, keyring: KeyRing | None = None) -> None:
        self._service = service
        self._telemetry = telemetry
        self._keyring = keyring

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self._service.ready and known(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="jaxinit", version=self._service.identity.jaxinit_version, extensions=EXTENSIONS
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            config = model_config(request.name, self._service.identity.jax_version, request.version)
        except Exception as exc:
            await abort(context, domain_error(exc))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            stats = model_statistics(self._telemetry.model_counters, request.name, request.version)
        except Exception as exc:
            await abort(context, domain_error(exc))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.repository_name:
            await abort(
                context,
                InvalidArgument(f"jaxinit has one model repository, unnamed; got {quote(request.repository_name)}"),
            )
        state = "READY" if self._service.ready else "UNAVAILABLE"
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=name, version=VERSION, state=state)
                for name in sorted(CATALOG)
            ]
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = model_metadata(request.name, self._service.identity.jax_version, request.version)
        except Exception as exc:
            await abort(context, domain_error(exc))
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        call = self._telemetry.call("grpc", "ModelInfer", request.id or None)
        call.asked(request.model_name, None)
        error: BaseException | None = None
        try:
            parameters = {k: _parameter(v) for k, v in request.parameters.items()}
            params = params_from_v2(
                request.model_name, _inputs(request), parameters, request.model_version, pin_of(context)
            )
            plan = self._service.prepare(params)
            call.describe(plan.resolved.spec.name, plan.resolved.shape, plan.resolved.out_dtype)
            datatype = datatype_of(plan.resolved.out_dtype)
            who = caller_of(context, self._keyring)
            tensor = await self._service.generate(plan, delivery=UNARY, caller=who)
            call.timings = tensor.timings
            data = await _gathered(tensor, self._service.limits.chunk_bytes)
            output = pb.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype=datatype, shape=tensor.sent_shape)

            def response() -> pb.ModelInferResponse:  # protobuf copies the bytes: off the loop
                blob = bytes(data)
                data.clear()  # one copy held at a time
                return pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=VERSION,
                    id=request.id,
                    outputs=[output],
                    raw_output_contents=[blob],
                )

            answer = await asyncio.to_thread(response)
            call.sent(tensor.nbytes)
            return answer
        except Exception as exc:
            error = domain_error(exc)
            await abort(context, error)
        finally:
            call.close(error)


async def _gathered(tensor: TensorStream, chunk_bytes: int) -> bytearray:
    """The tensor's bytes, gathered piece by piece as they are made (no piece larger than
    ``chunk_bytes`` is copied on the loop); the tensor is given back however this ends."""
    data = bytearray(tensor.nbytes)
    view = memoryview(data)
    try:
        async with contextlib.aclosing(_generator(tensor.chunks(chunk_bytes))) as chunks:
            async for offset, piece in chunks:
                view[offset : offset + len(piece)] = piece
    finally:
        view.release()
        tensor.close()
    return data


# Triton's methods this server does not declare, by the extension each belongs to.
_UNSUPPORTED_METHODS = {
    "ModelStreamInfer": "sequence",
    "RepositoryModelLoad": "model_control",
    "RepositoryModelUnload": "model_control",
    "SystemSharedMemoryStatus": "system_shared_memory",
    "SystemSharedMemoryRegister": "system_shared_memory",
    "SystemSharedMemoryUnregister": "system_shared_memory",
    "CudaSharedMemoryStatus": "cuda_shared_memory",
    "CudaSharedMemoryRegister": "cuda_shared_memory",
    "CudaSharedMemoryUnregister": "cuda_shared_memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


class Unsupported(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every other method of the v2 service (Triton's shared memory, model control, trace,
    logging, streaming): UNIMPLEMENTED with one sentence saying so, not "Method not found!"."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        prefix, _, method = handler_call_details.method.rpartition("/")
        if prefix != f"/{SERVICE_NAME}":
            return None
        extension = _UNSUPPORTED_METHODS.get(method)
        sentence = UNSUPPORTED[extension] if extension else f"jaxinit does not implement the v2 method {quote(method)}"

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, sentence)
            yield b""  # never reached: an async generator, as a streaming handler must be

        # Streaming both ways: it answers a unary call as well (the wire is the same), unread.
        return grpc.stream_stream_rpc_method_handler(refuse)


def add_to_server(
    server: grpc.aio.Server, service: Service, telemetry: Telemetry, keyring: KeyRing | None = None
) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service, telemetry, keyring), server)
    server.add_generic_rpc_handlers((Unsupported(),))


def _generator(chunks: AsyncIterator[tuple[int, memoryview]]) -> AsyncGenerator[tuple[int, memoryview], None]:
    """``TensorStream.chunks`` as the async generator it is, for ``contextlib.aclosing``."""
    return cast("AsyncGenerator[tuple[int, memoryview], None]", chunks)
