"""Prometheus /metrics after real traffic on both transports, and one structured log line per
request, with the caller's request id echoed back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jax
import pytest
from in_process import InProcessServer, in_process_server
from prometheus_client.parser import text_string_to_metric_families

import jaxinit
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def logged_server() -> Iterator[InProcessServer]:
    with in_process_server("--log-level", "info", "--no-warm-up") as srv:
        yield srv


def _samples(server: InProcessServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{server.http_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _settled(server: InProcessServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics once every call has been recorded: a call is recorded when the server's
    handler ends, which can be just after the client has its last byte."""
    deadline = time.monotonic() + 10
    while True:
        samples = _samples(server)
        busy = sum(v for (name, _), v in samples.items() if name == "jaxinit_streams_in_flight")
        if busy == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_traffic(logged_server: InProcessServer) -> None:
    # The server is in this process, where earlier tests compiled the same programs: start
    # from empty in-memory caches, so its first requests compile or load from the disk cache.
    jax.clear_caches()
    before = _samples(logged_server)
    with jaxinit.Client(logged_server.grpc_url) as grpc_client, jaxinit.Client(logged_server.http_url) as http_client:
        for _ in range(3):
            grpc_client.lecun_normal()(0, (64, 64))
        http_client.he_normal()(1, (32, 32))
        with pytest.raises(jaxinit.JaxError):
            http_client.he_normal()(1, (5,))  # a 1-D fan: JAX refuses it
        requests = [grpc_client.request("zeros", None, (4,)), grpc_client.request("normal", 0, (8,))]
        list(grpc_client.generate_many(requests))
    after = _settled(logged_server)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = {"code": "OK"}
    assert delta("jaxinit_requests_total", transport="grpc", method="Generate", initializer="lecun_normal", **ok) == 3
    assert delta("jaxinit_requests_total", transport="http", method="generate", initializer="he_normal", **ok) == 1
    assert (
        delta(
            "jaxinit_requests_total",
            transport="http",
            method="generate",
            initializer="he_normal",
            code="INVALID_ARGUMENT",
        )
        == 1
    )
    assert delta("jaxinit_errors_total", transport="http", code="INVALID_ARGUMENT") == 1
    assert delta("jaxinit_requests_total", transport="grpc", method="GenerateMany", initializer="normal", **ok) == 1
    assert delta("jaxinit_bytes_sent_total", transport="grpc", initializer="lecun_normal") == 3 * 64 * 64 * 4
    for phase in ("queue", "generate", "send"):
        assert (
            delta("jaxinit_request_phase_seconds_count", transport="grpc", initializer="lecun_normal", phase=phase) == 3
        )
    assert _value(after, "jaxinit_streams_in_flight", transport="grpc") == 0
    # No warm-up: the first requests compiled their programs, or (the tests share a
    # persistent compilation cache) loaded them from it.
    hits = _value(after, "jaxinit_compilation_cache_total", result="hit")
    assert _value(after, "jaxinit_xla_compiles_total") + hits > 0
    assert ("jaxinit_compilation_cache_total", (("result", "hit"),)) in after


def test_request_id_echoed_and_logged(logged_server: InProcessServer) -> None:
    response = httpx.get(
        f"{logged_server.http_url}/v1/generate/normal",
        params={"shape": "3", "seed": 0},
        headers={"X-Request-Id": "trace-abc-1"},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-abc-1"
    generated = httpx.get(
        f"{logged_server.http_url}/v1/generate/normal", params={"shape": "3", "seed": 0}, timeout=30
    ).headers["x-request-id"]
    assert len(generated) == 32  # one was made up when none was given

    with grpc.insecure_channel(logged_server.grpc_target) as channel:
        stub = pb_grpc.InitializersStub(channel)
        request = pb.GenerateRequest(initializer="ones", shape=[2])
        call = stub.Generate(request, metadata=(("x-request-id", "trace-g-2"),))
        list(call)
        assert dict(call.initial_metadata())["x-request-id"] == "trace-g-2"

    deadline = time.monotonic() + 10
    lines: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and not {"trace-abc-1", "trace-g-2"} <= set(lines):
        for text in list(logged_server.output):
            start = text.find("{")
            if start >= 0 and '"request_id"' in text:
                record = json.loads(text[start:])
                lines[record["request_id"]] = record
        time.sleep(0.1)
    http_line, grpc_line = lines["trace-abc-1"], lines["trace-g-2"]
    assert http_line["initializer"] == "normal" and http_line["shape"] == [3] and http_line["status"] == "OK"
    assert http_line["bytes"] == 12 and http_line["transport"] == "http" and http_line["duration_ms"] > 0
    assert grpc_line["initializer"] == "ones" and grpc_line["transport"] == "grpc" and grpc_line["dtype"] == "float32"
