"""One caller identity: auth and the per-caller share read the same, single Authorization.

Issue 23: auth read the last of two ``Authorization`` headers (the valid key), the
per-caller identity the first (junk, different on every call), so with
``--max-caller-streams 1`` six concurrent streams of one key were all admitted. Now two or
more values are refused (400 / INVALID_ARGUMENT) on REST, KServe and gRPC, before any work;
this module tries the variants an attacker would and then checks that answers are still
local JAX's bytes and the service is idle and healthy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import grpc.aio
import httpx
import jax
import numpy as np
import pytest

from jaxinit.protocol import wire
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.auth import KeyRing
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server
from jaxinit_server.rest.app import create_app

T = TypeVar("T")
KEY = "key-for-the-bounds-tests"
GOOD = f"Bearer {KEY}"


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    svc = Service(Limits(max_tensor_bytes=2**26, max_caller_streams=1))
    svc.ready = True
    try:
        yield svc
    finally:
        svc.close()


def rest(service: Service, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    app = create_app(service, keyring=KeyRing([KEY]))

    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            return await work(http)

    return asyncio.run(main())


def grpc_call(service: Service, work: Callable[[pb_grpc.InitializersStub], Awaitable[T]]) -> T:
    async def main() -> T:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0, keyring=KeyRing([KEY]))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await work(pb_grpc.InitializersStub(channel))
        finally:
            await server.stop(grace=None)

    return asyncio.run(main())


def lecun(seed: int, shape: tuple[int, ...]) -> bytes:
    return np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(seed), shape, np.float32)).tobytes()


DUPLICATES = [
    [("authorization", "Bearer junk"), ("authorization", GOOD)],  # the bypass: junk first, the key last
    [("authorization", GOOD), ("authorization", "Bearer junk")],
    [("authorization", GOOD), ("authorization", GOOD)],  # the same key twice
    [("Authorization", GOOD), ("authorization", GOOD)],  # spelled two ways
    [("authorization", GOOD)] * 5,
]


@pytest.mark.parametrize("headers", DUPLICATES)
@pytest.mark.parametrize("path", ["/v1/generate/lecun_normal?shape=4,4&seed=1", "/v2/models/lecun_normal"])
def test_rest_refuses_two_authorization_headers(service: Service, headers: list[tuple[str, str]], path: str) -> None:
    response = rest(service, lambda http: http.get(path, headers=httpx.Headers(headers)))
    assert response.status_code == 400, response.text
    assert "one Authorization header" in response.text
    assert KEY not in response.text and "junk" not in response.text


def test_rest_one_header_still_works_and_bad_ones_are_401(service: Service) -> None:
    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        url = "/v1/generate/lecun_normal?shape=4,4&seed=1"
        return [
            await http.get(url, headers={"Authorization": GOOD, "Accept": wire.OCTET}),
            await http.get(url, headers={"Authorization": "Bearer junk"}),
            await http.get(url),
            await http.get("/healthz", headers=httpx.Headers(DUPLICATES[0])),  # health stays open
        ]

    good, junk, missing, health = rest(service, work)
    assert good.status_code == 200 and good.content == lecun(1, (4, 4))
    assert junk.status_code == missing.status_code == 401
    assert junk.headers["WWW-Authenticate"] == "Bearer"
    assert health.status_code == 200


def test_rest_concurrent_duplicate_header_streams_get_no_share_of_their_own(service: Service) -> None:
    """The issue's scenario: six concurrent calls of one key, each with a junk header first,
    on a one-stream-per-caller server: none is admitted as a caller of its own."""

    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        calls = [
            http.get(
                "/v1/generate/normal?shape=1024,1024&seed=2",
                headers=httpx.Headers([("authorization", f"Bearer junk{i}"), ("authorization", GOOD)]),
            )
            for i in range(6)
        ]
        return list(await asyncio.gather(*calls))

    responses = rest(service, work)
    assert [r.status_code for r in responses] == [400] * 6
    assert service.admission.streams == 0


@pytest.mark.parametrize("metadata", DUPLICATES[:3] + DUPLICATES[4:])
def test_grpc_refuses_two_authorization_entries(service: Service, metadata: list[tuple[str, str]]) -> None:
    async def work(stub: pb_grpc.InitializersStub) -> grpc.aio.AioRpcError:
        request = pb.GenerateRequest(initializer="lecun_normal", shape=[4, 4], key=pb.Key(seed=1))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(request, metadata=tuple(metadata)):
                pass
        return info.value

    error = grpc_call(service, work)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one Authorization header" in (error.details() or "")


def test_after_the_attacks_answers_are_jax_and_the_service_is_idle(service: Service) -> None:
    async def over_grpc(stub: pb_grpc.InitializersStub) -> bytes:
        request = pb.GenerateRequest(initializer="lecun_normal", shape=[8, 8], key=pb.Key(seed=5))
        data = b""
        async for message in stub.Generate(request, metadata=(("authorization", GOOD),)):
            if message.HasField("data"):
                data += message.data.data
        return data

    async def over_rest(http: httpx.AsyncClient) -> list[Any]:
        got = await http.get("/v1/generate/lecun_normal?shape=8,8&seed=5", headers={"Authorization": GOOD})
        ready = await http.get("/readyz")
        return [got, ready]

    assert grpc_call(service, over_grpc) == lecun(5, (8, 8))
    got, ready = rest(service, over_rest)
    assert got.content == lecun(5, (8, 8))
    assert ready.status_code == 200 and ready.json()["admission"]["streams"] == 0
    assert service.admission.streams == 0 and service.admission.callers == {}
