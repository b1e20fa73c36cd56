"""The jaxinit-server process: ports, environment settings, graceful stop, huge tensors."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

import jaxinit
from helpers import running_server
from jaxinit._grpc import request_to_proto
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc


def test_env_settings_and_sigterm_exits_cleanly() -> None:
    env = {"JAXINIT_MAX_TENSOR_BYTES": "1000", "JAXINIT_WARM_UP": "false"}
    with running_server(env=env) as srv:
        with jaxinit.Client(srv.http_url) as client:
            assert client.zeros(0, (250,)).shape == (250,)
            with pytest.raises(jaxinit.TooLarge, match="limit is 1000 bytes"):
                client.zeros(0, (251,))
        assert srv.stop() == 0


@pytest.mark.release  # (the default tier's test_ready_fast.py restarts on the cache too)
def test_compilation_cache_survives_a_restart(tmp_path: Path) -> None:
    """With a cache directory, compiled programs are written there and read back after a
    restart, by the whole-tensor workers too: the restarted worker compiles nothing it had."""
    cache = tmp_path / "jax-cache"
    hits, writes = [], []
    for _ in range(2):
        args = ("--no-warm-up", "--compilation-cache-dir", str(cache), "--log-level", "debug")
        with running_server(*args) as srv:
            with jaxinit.Client(srv.grpc_url) as client:
                client.orthogonal()(0, (37, 41))
            assert srv.stop() == 0
        assert any(cache.iterdir()), "nothing was written to the compilation cache"
        worker = [line.lower() for line in srv.output if " worker jax." in line]
        hits.append(sum("cache hit" in line for line in worker))
        writes.append(sum("to persistent compilation cache" in line for line in worker))
    assert writes[0] > 0 and writes[1] == 0 and hits[1] > 0, (writes, hits)


def test_in_flight_streams_drain_and_new_calls_are_refused_on_sigterm() -> None:
    """SIGTERM while a REST body and a gRPC stream are open (one server for both): each gets
    every byte (gRPC its digest too); a new call, even on the open gRPC connection, is
    refused as UNAVAILABLE (so clients and balancers go elsewhere); then the process exits 0."""
    with running_server() as srv, grpc.insecure_channel(srv.grpc_target) as channel:
        stub = pb_grpc.InitializersStub(channel)
        request = request_to_proto(jaxinit.Client(srv.grpc_url).request("ones", None, (64, 2**20), "int8"))
        call = stub.Generate(request, timeout=120)
        assert next(call).WhichOneof("payload") == "header"
        body = {"initializer": "ones", "shape": [64, 2**20], "dtype": "int8"}
        with httpx.stream("POST", f"{srv.http_url}/v1/generate", json=body) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()
            received = len(next(chunks))
            srv.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the server is stopping while both streams are still open
            with pytest.raises(grpc.RpcError) as refused:
                new = request_to_proto(jaxinit.Client(srv.grpc_url).request("zeros", None, (4,)))
                list(stub.Generate(new, timeout=10))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            received += sum(len(c) for c in chunks)
        assert received == 64 * 2**20
        rest = list(call)
        assert sum(len(m.data.data) for m in rest) == 64 * 2**20 and rest[-1].WhichOneof("payload") == "digest"
        assert srv.process.wait(60) == 0


@pytest.mark.release
@pytest.mark.skipif(os.environ.get("JAXINIT_SKIP_HUGE") == "1", reason="JAXINIT_SKIP_HUGE=1")
@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_beyond_two_gib(scheme: str) -> None:
    """A tensor over 2 GiB arrives whole, into one buffer, over either transport."""
    size = 2**31 + 4096
    with running_server("--no-warm-up") as srv:
        url = srv.grpc_url if scheme == "grpc" else srv.http_url
        with jaxinit.Client(url, timeout=600) as client:
            array = client.ones(0, (size,), "int8")
            assert array.shape == (size,) and array.dtype == np.int8
            assert int(array.sum(dtype=np.int64)) == size
            del array
