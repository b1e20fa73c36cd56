"""Probe: derived keys, rbg stacks and jit compiles, tried as an attacker would, on REST and gRPC.

Issue 23: ``stack:4096,split:32768:1`` derived 134 M keys on a JAX thread (6.6 s, +2.5 GiB),
an rbg ``stack:4096`` ran 4,096 eager calls on the whole-tensor pool (15-17 s) priced as a
32 KiB answer, jit compiles of new shapes were unpriced, and a caller that left had its
admission released while the work went on. Each is now refused up front naming
``--max-whole-flops``, heavy work runs one fewer at a time than the whole-tensor workers
(and at most ``--max-heavy-requests`` are admitted) so a cheap request of another caller
is served beside it, and afterwards every answer is still local JAX's and the service is
idle and healthy."""

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
from in_process import grpc_call, rest_call

from jaxinit.protocol import wire
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.core import Limits, Service

T = TypeVar("T")


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    # heavy from 10**9 FLOP-equivalent: small stacks are heavy, so the tests stay quick
    svc = Service(Limits(max_tensor_bytes=2**26, heavy_flops=10**9), whole_workers=2, cache_bytes=0)
    svc.ready = True
    try:
        yield svc
    finally:
        svc.close()


def rest(service: Service, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    return rest_call(service, work, timeout=120)


# (query, the same as a gRPC key, what the refusal names)
ATTACKS: list[tuple[str, pb.Key, str]] = [
    (
        "normal?shape=4096,2&seed=1&key_derive=stack:4096,split:32768:1",
        pb.Key(seed=1, derive=[pb.KeyStep(stack=4096), pb.KeyStep(split=pb.Split(num=32768, index=1))]),
        "deriving 134221824 keys",
    ),
    (
        "lecun_normal?shape=4096,8,8&seed=1&key_impl=rbg&key_derive=stack:4096",
        pb.Key(seed=1, impl="rbg", derive=[pb.KeyStep(stack=4096)]),
        "4096 slices made one call at a time",
    ),
    (
        "normal?shape=64,64,8&seed=1&key_impl=unsafe_rbg&key_derive=stack:64,stack:64",
        pb.Key(seed=1, impl="unsafe_rbg", derive=[pb.KeyStep(stack=64), pb.KeyStep(stack=64)]),
        "4096 slices made one call at a time",
    ),
]


def _shape(query: str) -> list[int]:
    return [int(d) for d in query.split("shape=")[1].split("&")[0].split(",")]


@pytest.mark.parametrize(("query", "key", "why"), ATTACKS)
def test_unpriced_work_is_refused_on_both_transports(service: Service, query: str, key: pb.Key, why: str) -> None:
    response = rest(service, lambda http: http.get(f"/v1/generate/{query}"))
    assert response.status_code == 413, response.text
    assert "--max-whole-flops" in response.text and why in response.text

    async def work(stub: pb_grpc.InitializersStub) -> grpc.aio.AioRpcError:
        name = query.split("?")[0]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(pb.GenerateRequest(initializer=name, shape=_shape(query), key=key)):
                pass
        return info.value

    error = grpc_call(service, work)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and why in (error.details() or "")


def test_heavy_work_is_bounded_and_a_cheap_request_is_served(service: Service) -> None:
    """Four heavy requests at once (rbg stacks of 8 slices: ~4 GFLOP-equivalent each, over
    this server's --heavy-flops) and one cheap whole-tensor request: the heavy ones run one
    at a time (or get a 429 naming --max-heavy-requests), the cheap one is answered, and
    every answer is local JAX's."""
    heavy_query = "/v1/generate/lecun_normal?shape=8,4,4&seed=3&key_impl=rbg&key_derive=stack:8"
    cheap_query = "/v1/generate/orthogonal?shape=8,8&seed=4"

    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        accept = {"Accept": wire.OCTET}
        heavy = [http.get(heavy_query, headers=accept) for _ in range(4)]
        return list(await asyncio.gather(*heavy, http.get(cheap_query, headers=accept)))

    *heavy, cheap = rest(service, work)
    assert cheap.status_code == 200
    assert cheap.content == np.asarray(jax.nn.initializers.orthogonal()(jax.random.key(4), (8, 8))).tobytes()
    keys = jax.random.split(jax.random.key(3, impl="rbg"), 8)
    want = np.stack([np.asarray(jax.nn.initializers.lecun_normal()(k, (4, 4))) for k in keys]).tobytes()
    assert {r.status_code for r in heavy} <= {200, 429} and any(r.status_code == 200 for r in heavy)
    for response in heavy:
        if response.status_code == 200:
            assert response.content == want
        else:
            assert "--max-heavy-requests" in response.text and response.headers["Retry-After"] == "1"
    assert service.admission.heavy == 0


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_abandoned_derivations_stay_admitted_until_they_end(service: Service) -> None:
    """gRPC callers that leave in the middle of a heavy, admitted derivation (16.8 M keys),
    two in a row, each followed at once by another: the work of a caller that left still
    holds its admission and its heavy slot (the next heavy one waits for it, or is refused,
    never runs beside it), everything is given back when it ends, and the process has not
    grown by the derivations' memory. (Two in a row: a second round shows that the first
    gave everything back; more only cost CPU.)"""
    key = pb.Key(seed=6, derive=[pb.KeyStep(stack=4096), pb.KeyStep(split=pb.Split(num=4096, index=1))])
    request = pb.GenerateRequest(initializer="normal", shape=[4096, 2], key=key)
    before = _rss()

    async def work(stub: pb_grpc.InitializersStub) -> list[str]:
        outcomes = []
        for _ in range(2):
            call = stub.Generate(request)
            reader = asyncio.ensure_future(call.read())
            while service.admission.heavy == 0 and not reader.done():
                await asyncio.sleep(0.01)
            call.cancel()  # the caller goes
            with pytest.raises(asyncio.CancelledError):
                await reader
            follower = stub.Generate(request)  # at once, another heavy one
            try:
                async for _ in follower:
                    pass
                outcomes.append("served")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                assert "--max-heavy-requests" in (error.details() or "")
                outcomes.append("refused")
            assert service.admission.heavy <= 1 and service.heavy_waiting == 0
            while service.admission.streams:  # the abandoned one ends, and gives its share back
                await asyncio.sleep(0.01)
        return outcomes

    outcomes = grpc_call(service, work)
    assert set(outcomes) <= {"served", "refused"}
    assert (service.admission.streams, service.admission.heavy, service.admission.bytes) == (0, 0, 0)
    assert _rss() - before < 2**30


def test_after_the_attacks_answers_are_jax_and_the_service_is_healthy(service: Service) -> None:
    async def work(http: httpx.AsyncClient) -> list[Any]:
        accept = {"Accept": wire.OCTET}
        stacked = await http.get("/v1/generate/normal?shape=4,3&seed=8&key_derive=stack:4,split:8:5", headers=accept)
        plain = await http.get("/v1/generate/lecun_normal?shape=16,8&seed=8", headers=accept)
        return [stacked, plain, await http.get("/readyz")]

    stacked, plain, ready = rest(service, work)
    keys = jax.random.split(jax.random.key(8), 4)
    want = np.stack([np.asarray(jax.nn.initializers.normal()(jax.random.split(k, 8)[5], (3,))) for k in keys])
    assert stacked.status_code == 200 and stacked.content == want.tobytes()
    lecun = jax.nn.initializers.lecun_normal()(jax.random.key(8), (16, 8))
    assert plain.content == np.asarray(lecun).tobytes()
    state = ready.json()
    assert ready.status_code == 200 and state["admission"]["streams"] == state["admission"]["heavy"] == 0
