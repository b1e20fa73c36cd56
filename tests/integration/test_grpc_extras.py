"""gRPC extras: standard health checking, reflection, the registry RPC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jax
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import jaxinit
from jaxinit._grpc import request_to_proto
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc


def test_health_reports_serving(server: Any) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jaxinit.v1.Initializers"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server: Any) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    names = {s.name for s in response.list_services_response.service}
    assert {"jaxinit.v1.Initializers", "grpc.health.v1.Health"} <= names


def test_list_initializers_matches_over_both_transports(server: Any) -> None:
    with jaxinit.Client(server.grpc_url) as g, jaxinit.Client(server.http_url) as h:
        over_grpc, over_http = g.list_initializers(), h.list_initializers()
    assert over_grpc["initializers"] == over_http["initializers"]
    assert over_grpc["dtypes"] == over_http["dtypes"]
    assert over_grpc["server"]["jax_version"] == over_http["server"]["jax_version"] == jax.__version__


def test_abandoned_generate_many_leaves_the_server_healthy(server: Any) -> None:
    """A caller that walks away mid-stream: the server drops its work and serves the next call."""
    from jaxinit.v1 import jaxinit_pb2 as pb
    from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

    requests = [
        pb.GenerateRequest(request_id=str(i), initializer="normal", shape=[1024, 1024], key=pb.Key(seed=i))
        for i in range(32)
    ]
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = pb_grpc.InitializersStub(channel).GenerateMany(iter(requests), timeout=60)
        first = next(call)
        assert first.WhichOneof("payload") == "header"
        call.cancel()
    with jaxinit.Client(server.grpc_url) as client:
        assert client.normal()(0, (3,)).shape == (3,)


def test_client_waits_for_the_call_status(server: Any) -> None:
    """The client reads a call to its status, not just to its last byte: a call left open at the
    last byte is cancelled, and the server records a successful fetch as CANCELLED (seen in CI as a
    flaky metrics count). A server that replays real messages and ends the call late tells."""
    request = jaxinit.Client(server.grpc_url).request("lecun_normal", 0, (64, 64))
    message = request_to_proto(request)
    with grpc.insecure_channel(server.grpc_target) as channel:
        replay = list(pb_grpc.InitializersStub(channel).Generate(message, timeout=30))
    seen: dict[str, bool] = {}

    class LateStatus(pb_grpc.InitializersServicer):
        def Generate(self, request: Any, context: grpc.ServicerContext) -> Iterator[pb.TensorChunk]:
            yield from replay
            time.sleep(0.5)
            seen["active_at_end"] = context.is_active()

    late = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_InitializersServicer_to_server(LateStatus(), late)
    port = late.add_insecure_port("127.0.0.1:0")
    late.start()
    try:
        with jaxinit.Client(f"grpc://127.0.0.1:{port}") as client:
            got = client.lecun_normal()(0, (64, 64))
    finally:
        late.stop(None)
    expected = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(0), (64, 64)))
    assert got.tobytes() == expected.tobytes()
    assert seen == {"active_at_end": True}
