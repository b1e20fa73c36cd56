"""Callers that go away mid-stream cost nothing lasting: after 100 abandoned 1 GiB streams
(half gRPC, half HTTP), the server's memory is back at its baseline, nothing is left in
flight, and it answers as before."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import psutil
import pytest
from in_process import InProcessServer, in_process_server
from prometheus_client.parser import text_string_to_metric_families

import jaxinit
from jaxinit._grpc import request_to_proto
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.testing import ServerProcess, running_server

GIB_OF_FLOAT32 = (2**28,)


@pytest.fixture(scope="module")
def server_proc() -> Iterator[ServerProcess]:
    """A process: its RSS is the server's alone (the release tier's mass abandonment)."""
    with running_server("--no-warm-up", "--no-request-log") as srv:
        yield srv


@pytest.fixture(scope="module")
def served() -> Iterator[InProcessServer]:
    with in_process_server("--no-request-log") as srv:
        yield srv


# The module's server: a process, or one in this process (its RSS is then this process's).
Server = ServerProcess | InProcessServer


def _rss(server: Server) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def _in_flight(server: Server) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "jaxinit_streams_in_flight"
    )


def _abandon_grpc(server: Server, channel: grpc.Channel, seed: int) -> None:
    request = request_to_proto(jaxinit.Client(server.grpc_url).request("normal", seed, GIB_OF_FLOAT32))
    for attempt in range(2):
        call = pb_grpc.InitializersStub(channel).Generate(request, timeout=120)
        try:
            for _, _message in zip(range(4), call, strict=False):  # the header and 3 MiB, then gone
                pass
        except grpc.RpcError as exc:
            # The channel is one caller: the streams it abandoned are its share until the
            # server has seen them go (asynchronously). Wait for that, then try again.
            if attempt or exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            _settle(server)
            continue
        call.cancel()
        return


def _abandon_http(server: Server, seed: int) -> None:
    body = {"initializer": "normal", "shape": list(GIB_OF_FLOAT32), "key": {"seed": seed}}
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{server.http_url}/v1/generate", json=body) as r:
        assert r.status_code == 200
        for _, _data in zip(range(3), r.iter_raw(1 << 20), strict=False):
            pass  # leaving the block closes the connection mid-body


def _settle(server: Server) -> None:
    deadline = time.monotonic() + 60
    while _in_flight(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)


@pytest.mark.release
def test_rss_returns_to_baseline_after_100_abandoned_1gib_streams(server_proc: ServerProcess) -> None:
    with grpc.insecure_channel(server_proc.grpc_target) as channel:
        for seed in range(3):  # compile and allocate what the first ones need: the baseline
            _abandon_grpc(server_proc, channel, seed)
            _abandon_http(server_proc, seed)
        _settle(server_proc)
        baseline = _rss(server_proc)
        peak = baseline
        for seed in range(50):
            _abandon_grpc(server_proc, channel, 100 + seed)
            _abandon_http(server_proc, 100 + seed)
            peak = max(peak, _rss(server_proc))
    _settle(server_proc)
    after = _rss(server_proc)
    mib = 2**20
    assert _in_flight(server_proc) == 0
    # 100 GiB were asked for; none of it may stay (nor, mid-way, ever be held).
    assert after - baseline < 64 * mib, f"baseline {baseline / mib:.0f} MiB, after {after / mib:.0f} MiB"
    assert peak - baseline < 256 * mib, f"baseline {baseline / mib:.0f} MiB, peak {peak / mib:.0f} MiB"
    with jaxinit.Client(server_proc.grpc_url) as client:
        assert client.zeros(None, (4,)).tobytes() == bytes(16)


def test_slow_readers_and_slow_senders_do_not_pin_the_server(served: InProcessServer) -> None:
    """A 1 GiB stream on each transport left unread (their TCP windows fill and stay full),
    and 50 connections that trickle half a request header: other callers are answered at
    once, and memory stays flat while the stalled streams hold their place."""
    baseline = _rss(served)
    host, port = served.http_url.removeprefix("http://").rsplit(":", 1)
    trickles = []
    for _ in range(50):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Ty")  # and nothing more
        trickles.append(s)
    body = json.dumps({"initializer": "normal", "shape": list(GIB_OF_FLOAT32), "key": {"seed": 1}})
    stalled_http = socket.create_connection((host, int(port)), timeout=10)
    head = f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    stalled_http.sendall(f"{head}\r\n\r\n{body}".encode())  # the answer is never read
    with grpc.insecure_channel(served.grpc_target) as channel:
        stalled = pb_grpc.InitializersStub(channel).Generate(
            request_to_proto(jaxinit.Client(served.grpc_url).request("normal", 2, GIB_OF_FLOAT32)), timeout=120
        )
        next(stalled)  # begun, then never read again
        try:
            time.sleep(2)  # let both stalled streams fill every buffer they can
            started = time.monotonic()
            for url in (served.grpc_url, served.http_url):
                with jaxinit.Client(url, retries=0, timeout=10) as client:
                    for seed in range(5):
                        client.lecun_normal()(seed, (64, 64))
            assert time.monotonic() - started < 10
            assert _rss(served) - baseline < 256 * 2**20
        finally:
            stalled.cancel()
            stalled_http.close()
            for s in trickles:
                s.close()
    _settle(served)
    assert _in_flight(served) == 0


def test_a_deadline_ends_the_call_and_its_work(served: InProcessServer) -> None:
    """A gRPC deadline that passes mid-stream: DEADLINE_EXCEEDED for the caller, and the
    server stops making the tensor (nothing left in flight, memory flat)."""
    baseline = _rss(served)
    request = request_to_proto(jaxinit.Client(served.grpc_url).request("normal", 9, GIB_OF_FLOAT32))
    with grpc.insecure_channel(served.grpc_target) as channel:
        call = pb_grpc.InitializersStub(channel).Generate(request, timeout=0.5)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call:
                time.sleep(0.05)  # a slow reader: the deadline passes long before 1 GiB
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _settle(served)
    assert _in_flight(served) == 0
    assert _rss(served) - baseline < 64 * 2**20
