"""The gRPC adapter in this process: a grpc.aio server on a free loopback port over a
Service made here, the client and raw stubs talking to it. Status codes, trailing
metadata and in-stream errors come from the one table; every tensor is local JAX's bytes.

Process behaviour (signals, crashes, the server's own start-up) stays in tests/integration."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import grpc.aio
import jax
import numpy as np
import pytest
from flax_models import EXAMPLES, flax_params

import jaxinit
from jaxinit._types import Request
from jaxinit.protocol.wire import ERROR_TYPE_KEY
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server

T = TypeVar("T")


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    service = Service(Limits(max_tensor_bytes=2**26))
    service.ready = True  # warming up is the process's part (tests/integration); these test the adapter
    try:
        yield service
    finally:
        service.close()


def call(service: Service, work: Callable[[str], Awaitable[T]]) -> T:
    """``work(target)`` against a gRPC server of ``service`` started for it on port 0."""

    async def main() -> T:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0)
        await server.start()
        try:
            return await work(f"127.0.0.1:{port}")
        finally:
            await server.stop(grace=None)

    return asyncio.run(main())


def lecun(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(seed), shape))


def test_generate_is_jax_bytes_with_provenance(service: Service) -> None:
    async def work(target: str) -> jaxinit.Tensor:
        async with jaxinit.AsyncClient(f"grpc://{target}") as client:
            return await client.generate("lecun_normal", 5, (300, 70))

    tensor = call(service, work)
    assert tensor.array.tobytes() == lecun(5, (300, 70)).tobytes()
    assert tensor.provenance.jax_version == jax.__version__ and len(tensor.provenance.request_digest) == 64


def test_one_bad_item_in_a_stream_gets_its_error_there(service: Service) -> None:
    requests = [
        Request("lecun_normal", 1, (4, 3), request_id="a"),
        Request("orthogonal", 1, (4,), request_id="b"),  # JAX refuses a 1-D orthogonal
        Request("lecun_normal", 2, (4, 3), request_id="c"),
    ]

    async def work(target: str) -> list[Any]:
        async with jaxinit.AsyncClient(f"grpc://{target}") as client:
            return [item async for item in client.generate_many(requests)]

    a, b, c = call(service, work)
    assert a.array.tobytes() == lecun(1, (4, 3)).tobytes() and c.array.tobytes() == lecun(2, (4, 3)).tobytes()
    assert isinstance(b, jaxinit.JaxError)


@pytest.mark.parametrize("mode", ["linen", "nnx"])
def test_init_model_equals_flax(service: Service, mode: str) -> None:
    model, *_ = EXAMPLES["block"]

    async def work(target: str) -> dict[str, np.ndarray]:
        async with jaxinit.AsyncClient(f"grpc://{target}") as client:
            return dict(await client.init_model(model, 9, mode=mode, flat=True))

    got, want = call(service, work), flax_params("block", mode, 9)
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].tobytes() == array.tobytes(), name


@pytest.mark.parametrize(
    ("message", "code", "error_type"),
    [
        (
            pb.GenerateRequest(initializer="lecun_normall", shape=[2], key=pb.Key(seed=0)),
            "NOT_FOUND",
            "UnknownInitializer",
        ),
        (pb.GenerateRequest(initializer="normal", shape=[2]), "INVALID_ARGUMENT", "InvalidArgument"),
        (pb.GenerateRequest(initializer="ones", shape=[2**16, 2**16]), "RESOURCE_EXHAUSTED", "TooLarge"),
        (pb.GenerateRequest(initializer="ones", shape=[2], dtype="float5"), "INVALID_ARGUMENT", "UnknownDtype"),
    ],
)
def test_status_and_trailers_come_from_the_one_table(
    service: Service, message: pb.GenerateRequest, code: str, error_type: str
) -> None:
    async def work(target: str) -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InitializersStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(message):
                    pass
            return info.value

    error = call(service, work)
    assert error.code().name == code, error.details()
    assert dict(error.trailing_metadata() or ())[ERROR_TYPE_KEY] == error_type


def test_a_bad_model_is_refused_before_any_byte(service: Service) -> None:
    async def work(target: str) -> tuple[int, grpc.aio.AioRpcError]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InitializersStub(channel)
            received = 0
            with pytest.raises(grpc.aio.AioRpcError) as info:
                request = pb.InitModelRequest(
                    model_json='{"type": "Module", "children": [{"type": "Dense", "in_features": 4, "features": 2,'
                    ' "bias_init": "orthogonal"}]}',
                    key=pb.Key(seed=0),
                )
                async for _ in stub.InitModel(request):
                    received += 1
            return received, info.value

    received, error = call(service, work)
    assert received == 0 and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Dense_0.bias" in (error.details() or "")


def test_kserve_v2_versions_over_grpc(service: Service) -> None:
    from jaxinit_server.kserve import grpc_predict_v2_pb2 as v2
    from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as v2_grpc

    def infer(version: str) -> v2.ModelInferRequest:
        request = v2.ModelInferRequest(model_name="lecun_normal", model_version=version)
        request.inputs.add(name="shape", datatype="INT64", shape=[2]).contents.int64_contents.extend([3, 2])
        request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.extend([4])
        return request

    async def work(target: str) -> tuple[Any, ...]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            ready = await stub.ModelReady(v2.ModelReadyRequest(name="lecun_normal", version="1"))
            not_ready = await stub.ModelReady(v2.ModelReadyRequest(name="lecun_normal", version="2"))
            answer = await stub.ModelInfer(infer("1"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(infer("2"))
            with pytest.raises(grpc.aio.AioRpcError) as meta:
                await stub.ModelMetadata(v2.ModelMetadataRequest(name="lecun_normal", version="7"))
            return ready.ready, not_ready.ready, answer, info.value, meta.value

    ready, not_ready, answer, error, meta_error = call(service, work)
    assert ready and not not_ready
    assert answer.model_version == "1" and answer.raw_output_contents[0] == lecun(4, (3, 2)).tobytes()
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no version '2'" in (error.details() or "")
    assert meta_error.code() == grpc.StatusCode.NOT_FOUND
