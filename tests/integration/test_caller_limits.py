"""Per-caller limits, against real servers: one caller (a gRPC channel or HTTP connection;
with auth on, an API key) holds at most ``--max-caller-streams`` requests and its share of
the priced memory (``--max-caller-bytes``), so that a few callers cannot hold the whole
server. Over its share a caller gets 429 / RESOURCE_EXHAUSTED naming the limit, while
other callers are still served, byte for byte; its share comes back when its calls end.

Every server here is the test's own (the counts are state); waits are on conditions
(``/readyz``), never on time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from in_process import InProcessServer, in_process_server

from helpers import local_jax
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

BIG = [4096, 4096]  # 64 MiB of float32: a stream that stays open while its reader waits
MiB = 2**20


def _admission(server: InProcessServer) -> dict[str, int]:
    return httpx.get(f"{server.http_url}/readyz", timeout=30).json()["admission"]


def _until(server: InProcessServer, streams: int, timeout: float = 120) -> None:
    """Wait until the server holds exactly ``streams`` streams (released asynchronously)."""
    deadline = time.monotonic() + timeout
    while (held := _admission(server))["streams"] != streams:
        assert time.monotonic() < deadline, held
        time.sleep(0.02)


def _channel(srv: InProcessServer) -> grpc.Channel:
    """A channel on a TCP connection of its own (grpcio shares one between channels of a process
    to the same target, and a connection is one caller)."""
    return grpc.insecure_channel(srv.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])


def _held_grpc(channel: grpc.Channel, seed: int = 1, cache: str | None = None) -> grpc.Call:
    """A Generate stream of BIG whose header has arrived and whose data nobody reads."""
    call = pb_grpc.InitializersStub(channel).Generate(
        pb.GenerateRequest(initializer="normal", shape=BIG, key=pb.Key(seed=seed)), timeout=120
    )
    first = next(call)
    assert first.WhichOneof("payload") == "header"
    if cache is not None:
        assert first.header.cache == cache
    return call


def _small_grpc(channel: grpc.Channel) -> bytes:
    call = pb_grpc.InitializersStub(channel).Generate(
        pb.GenerateRequest(initializer="lecun_normal", shape=[16, 8], key=pb.Key(seed=7)), timeout=60
    )
    return b"".join(m.data.data for m in call if m.WhichOneof("payload") == "data")


def _expected() -> bytes:
    return np.ascontiguousarray(local_jax("lecun_normal", {}, 7, (16, 8), None)).tobytes()


@pytest.fixture
def two_per_caller() -> Iterator[InProcessServer]:
    with in_process_server("--max-caller-streams", "2") as srv:
        yield srv


def test_one_grpc_channel_holds_at_most_its_streams(two_per_caller: InProcessServer) -> None:
    srv = two_per_caller
    with _channel(srv) as greedy, _channel(srv) as other:
        held = [_held_grpc(greedy), _held_grpc(greedy)]
        assert _admission(srv)["callers"] == 1
        with pytest.raises(grpc.RpcError) as refused:
            _small_grpc(greedy)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-caller-streams" in refused.value.details(), refused.value.details()
        assert _small_grpc(other) == _expected()  # another channel is still served
        for call in held:
            call.cancel()
        _until(srv, 0)
        assert _admission(srv)["callers"] == 0
        assert _small_grpc(greedy) == _expected()  # its share came back
    assert srv.process.poll() is None


def test_grpc_many_stream_counts_as_its_channel(two_per_caller: InProcessServer) -> None:
    """A GenerateMany stream is one caller: with two of its channel's streams held, its items
    are refused inside the stream, each with its own error, and the stream goes on."""
    srv = two_per_caller
    with _channel(srv) as channel:
        held = [_held_grpc(channel), _held_grpc(channel)]
        requests = [pb.GenerateRequest(initializer="zeros", shape=[3], request_id=str(i)) for i in range(3)]
        answers = list(pb_grpc.InitializersStub(channel).GenerateMany(iter(requests), timeout=60))
        errors = [m for m in answers if m.WhichOneof("payload") == "error"]
        assert [m.request_id for m in errors] == ["0", "1", "2"]
        assert all("--max-caller-streams" in m.error.message for m in errors)
        for call in held:
            call.cancel()
        _until(srv, 0)
        answers = list(pb_grpc.InitializersStub(channel).GenerateMany(iter(requests), timeout=60))
        assert not [m for m in answers if m.WhichOneof("payload") == "error"]
        data = b"".join(m.data.data for m in answers if m.WhichOneof("payload") == "data")
        assert data == bytes(3 * 3 * 4)


@contextlib.contextmanager
def _held_http(srv: InProcessServer, key: str) -> Iterator[None]:
    """An HTTP stream of BIG on a connection of its own, its headers read, its body not."""
    with (
        httpx.Client(base_url=srv.http_url, timeout=120) as client,
        client.stream(
            "GET",
            "/v1/generate/normal?shape=4096,4096&seed=1",
            headers={"authorization": f"Bearer {key}", "accept": "application/octet-stream"},
        ) as response,
    ):
        assert response.status_code == 200
        yield


def test_with_auth_the_key_is_the_caller() -> None:
    """Two requests held with one key, each on its own connection: a third with that key, on a
    new connection, is a 429 naming the key by digest (never the key); another key is served."""
    with in_process_server("--max-caller-streams", "2", "--api-keys", "alpha-key,beta-key") as srv:
        small = "/v1/generate/lecun_normal?shape=16,8&seed=7"
        octet = {"accept": "application/octet-stream"}
        with _held_http(srv, "alpha-key"), _held_http(srv, "alpha-key"):
            assert _admission(srv)["callers"] == 1
            refused = httpx.get(
                srv.http_url + small, headers={**octet, "authorization": "Bearer alpha-key"}, timeout=60
            )
            assert refused.status_code == 429 and "retry-after" in refused.headers
            message = refused.json()["error"]["message"]
            assert "--max-caller-streams" in message and "API key sha256:" in message
            assert "alpha-key" not in message
            # KServe's route charges the same caller.
            v2 = httpx.post(
                srv.http_url + "/v2/models/zeros/infer",
                headers={"authorization": "Bearer alpha-key"},
                json={"inputs": [{"name": "shape", "datatype": "INT64", "shape": [1], "data": [3]}]},
                timeout=60,
            )
            assert v2.status_code == 429, v2.text
            other = httpx.get(srv.http_url + small, headers={**octet, "authorization": "Bearer beta-key"}, timeout=60)
            assert other.status_code == 200 and other.content == _expected()
        _until(srv, 0)
        again = httpx.get(srv.http_url + small, headers={**octet, "authorization": "Bearer alpha-key"}, timeout=60)
        assert again.status_code == 200 and again.content == _expected()
        assert srv.process.poll() is None


def test_a_caller_holds_at_most_its_share_of_memory() -> None:
    """--max-inflight-bytes 200 MiB: a caller's share is 50 MiB. A chunked float32 stream is
    priced ~28 MiB, so a channel holds one, and a second is refused; another channel is not.
    The same tensor again costs only its sending: it shares the generation under way."""
    with in_process_server("--max-inflight-bytes", str(200 * MiB)) as srv:
        with _channel(srv) as greedy, _channel(srv) as other:
            held = _held_grpc(greedy, cache="miss")
            with pytest.raises(grpc.RpcError) as refused:
                _held_grpc(greedy, seed=2)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-caller-bytes" in refused.value.details(), refused.value.details()
            same = _held_grpc(greedy, cache="shared")
            second = _held_grpc(other, seed=3)
            assert _admission(srv)["streams"] == 3 and _admission(srv)["callers"] == 2
            held.cancel()
            same.cancel()
            second.cancel()
            _until(srv, 0)
        assert srv.process.poll() is None
