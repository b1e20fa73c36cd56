"""Admission control and body caps, against real servers: over a cap the answer is at
once 429 / RESOURCE_EXHAUSTED with a retry-after (or 413 for a body), capacity comes back
when a stream ends or its caller goes away, and the client waits and retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import jax
import numpy as np
import pytest
from in_process import InProcessServer, in_process_server

import jaxinit
from jaxinit._grpc import request_to_proto
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

BIG = (4096, 4096)  # 64 MiB of float32: a stream that stays open while its reader waits


@pytest.fixture(scope="module")
def one_stream() -> Iterator[InProcessServer]:
    with in_process_server("--max-streams", "1", "--max-body-bytes", "4096") as srv:
        yield srv


@pytest.fixture(scope="module")
def few_bytes() -> Iterator[InProcessServer]:
    # A chunked stream is priced at what it holds (a few 1 Mi-element chunks: ~28 MiB for
    # float32), whatever its size: 40 MiB admits one, not two.
    with in_process_server("--max-inflight-bytes", str(40 * 2**20)) as srv:
        yield srv


def _streams(server: InProcessServer) -> int:
    return int(httpx.get(f"{server.http_url}/readyz", timeout=30).json()["admission"]["streams"])


def _drained(server: InProcessServer, timeout: float = 120) -> None:
    """Wait until the server has released every stream (it does so asynchronously, when it
    learns that a caller went away): a condition, not a sleep."""
    deadline = time.monotonic() + timeout
    while _streams(server):
        assert time.monotonic() < deadline, "the server did not release its streams"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _each_test_starts_drained(request: pytest.FixtureRequest) -> None:
    """Servers here are shared by a module's tests: each test starts with nothing held."""
    for name in ("one_stream", "few_bytes"):
        if name in request.fixturenames:
            _drained(request.getfixturevalue(name))


def _hold(server: InProcessServer, shape: tuple[int, ...] = BIG) -> tuple[grpc.Channel, grpc.Future]:
    """A gRPC stream that has begun (header received) and is left unread."""
    channel = grpc.insecure_channel(server.grpc_target)
    request = request_to_proto(jaxinit.Client(server.grpc_url).request("normal", 0, shape))
    call = pb_grpc.InitializersStub(channel).Generate(request, timeout=120)
    assert next(call).WhichOneof("payload") == "header"
    return channel, call


def _overloaded_over_grpc(server: InProcessServer) -> grpc.RpcError:
    request = request_to_proto(jaxinit.Client(server.grpc_url).request("zeros", None, (4,)))
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        list(pb_grpc.InitializersStub(channel).Generate(request, timeout=30))
    return caught.value


def test_over_the_stream_cap_is_429_with_retry_after_on_both_transports(one_stream: InProcessServer) -> None:
    channel, call = _hold(one_stream)
    try:
        started = time.monotonic()
        response = httpx.post(
            f"{one_stream.http_url}/v1/generate", json={"initializer": "zeros", "shape": [4]}, timeout=30
        )
        assert time.monotonic() - started < 5  # refused at once, not queued
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "Overloaded"
        error = _overloaded_over_grpc(one_stream)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        metadata = dict(error.trailing_metadata())
        assert metadata["jaxinit-error-type"] == "Overloaded" and metadata["retry-after"] == "1"
        with jaxinit.Client(one_stream.http_url, retries=0) as client, pytest.raises(jaxinit.Overloaded) as raised:
            client.zeros(None, (4,))
        assert raised.value.retry_after == 1.0
        # Health is never refused: an overloaded server is alive and ready.
        assert httpx.get(f"{one_stream.http_url}/readyz", timeout=10).status_code == 200
    finally:
        call.cancel()
        channel.close()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_capacity_comes_back_when_a_caller_goes_away(one_stream: InProcessServer, transport: str) -> None:
    """Ten streams abandoned mid-way, one at a time, each would block the next if its
    capacity leaked: the server holds one stream at most."""
    for _ in range(10):
        channel, call = _hold(one_stream)
        assert _streams(one_stream) == 1
        call.cancel()
        channel.close()
        _drained(one_stream)  # the release is asynchronous: wait for it, not for a time
        url = one_stream.grpc_url if transport == "grpc" else one_stream.http_url
        with jaxinit.Client(url, retries=0) as client:
            assert client.zeros(None, (4,)).tobytes() == bytes(16)


def test_the_client_waits_out_an_overloaded_server(one_stream: InProcessServer) -> None:
    channel, call = _hold(one_stream)
    threading.Timer(1.5, lambda: (call.cancel(), channel.close())).start()
    started = time.monotonic()
    with jaxinit.Client(one_stream.grpc_url, retries=60) as client:  # ~1 s each: ample on a busy machine
        got = client.lecun_normal()(2, (8, 8))
    assert time.monotonic() - started >= 1.0  # it honoured Retry-After, then succeeded
    expected = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(2), (8, 8)))
    assert got.tobytes() == expected.tobytes()


def test_over_the_byte_cap_is_refused_but_small_requests_pass(few_bytes: InProcessServer) -> None:
    channel, call = _hold(few_bytes, (4096, 4096))  # a stream of 64 MiB holds ~28 MiB of the 40
    try:
        body = {"initializer": "normal", "shape": [2048, 2048], "key": {"seed": 1}}  # ~28 MiB more: over
        response = httpx.post(f"{few_bytes.http_url}/v1/generate", json=body, timeout=30)
        assert response.status_code == 429 and "bytes in flight" in response.json()["error"]["message"]
        with jaxinit.Client(few_bytes.grpc_url) as client:  # a 1 KiB fill fits beside it
            assert client.zeros(None, (256,)).tobytes() == bytes(1024)
    finally:
        call.cancel()
        channel.close()


def test_a_body_over_the_cap_is_413_by_length_and_when_streamed(one_stream: InProcessServer) -> None:
    body = json.dumps({"initializer": "zeros", "shape": [4], "request_id": "x" * 5000}).encode()
    url = f"{one_stream.http_url}/v1/generate"
    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["type"] == "TooLarge"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and "--max-body-bytes" in response.json()["error"]["message"]
    # gRPC: a message over the cap is refused by gRPC itself.
    with grpc.insecure_channel(one_stream.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        message = pb.InitModelRequest(model_json=json.dumps({"layers": ["x" * 8000]}))
        list(pb_grpc.InitializersStub(channel).InitModel(message, timeout=30))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Under the cap, all is as usual.
    assert httpx.post(url, json={"initializer": "zeros", "shape": [4]}, timeout=30).status_code == 200
