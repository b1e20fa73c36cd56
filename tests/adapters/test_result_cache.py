"""The result cache over both transports, in this process: each answer says how it was
made (``X-Jaxinit-Cache``, ``TensorHeader.cache``, ``Tensor.cache``), models share and hit
too, concurrent callers share one generation, ``/metrics`` counts it all; every answer is
local JAX's bytes. The cache's own behaviour is tested at the core (tests/unit/core)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from in_process import serve

import jaxinit
from helpers import local_jax
from jaxinit.protocol.catalog import CATALOG
from jaxinit_server.core import Limits, Service

# One family per producer (chunked, fill, whole, keyless, a truncated and a variance one):
# every family is compared at the core (tests/unit/core/test_results.py).
KINDS = ("lecun_normal", "constant", "orthogonal", "zeros", "truncated_normal", "variance_scaling", "uniform")
ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    service = Service(Limits(max_tensor_bytes=2**27), cache_bytes=64 * 2**20)
    service.ready = True
    try:
        yield service
    finally:
        service.close()


def _clients(grpc_url: str, transport: httpx.ASGITransport) -> list[jaxinit.AsyncClient]:
    return [jaxinit.AsyncClient(grpc_url), jaxinit.AsyncClient("http://in-process", transport=transport)]


async def _settled(service: Service) -> None:
    while service.results._flights:
        await asyncio.sleep(0.005)


def test_each_producer_kind_fresh_then_cached_over_both_transports(service: Service) -> None:
    shape = (3, 4, 6)

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for index, client in enumerate(_clients(grpc_url, transport)):
            async with client:
                for name in KINDS:
                    key = 40 + index if CATALOG[name].uses_key else None
                    want = np.ascontiguousarray(local_jax(name, ARGS.get(name, {}), key, shape, None)).tobytes()
                    first = await client.generate(name, key, shape, args=ARGS.get(name, {}))
                    await _settled(service)
                    again = await client.generate(name, key, shape, args=ARGS.get(name, {}))
                    assert first.array.tobytes() == again.array.tobytes() == want, name
                    if CATALOG[name].uses_key:  # (a keyless one may be cached by the other transport already)
                        assert (first.cache, again.cache) == ("miss", "hit"), name

    serve(service, work)


def test_concurrent_callers_share_one_generation_over_both_transports(service: Service) -> None:
    shape = (1024, 1024)
    want = np.asarray(local_jax("lecun_normal", {}, 21, shape, None)).tobytes()

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> list[jaxinit.Tensor]:
        clients = [_clients(grpc_url, transport)[i % 2] for i in range(6)]
        try:
            return list(await asyncio.gather(*(c.generate("lecun_normal", 21, shape) for c in clients)))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    tensors = serve(service, work)
    assert all(t.array.tobytes() == want for t in tensors)
    hows = sorted(t.cache for t in tensors)
    assert hows.count("miss") == 1 and set(hows) <= {"miss", "shared", "hit"}, hows


def test_models_share_and_hit_and_metrics_count_them(service: Service) -> None:
    m = jaxinit.models
    model = m.Sequential(m.Dense(6, 24), m.Dense(24, 5))

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> tuple[Any, Any, Any, str, str]:
        grpc_client, http_client = _clients(grpc_url, transport)
        async with grpc_client, http_client:
            first = await grpc_client.init_model(model, 77, flat=True)
            await _settled(service)
            second = await http_client.init_model(model, 77, flat=True)
            torch = await grpc_client.init_model(model, 77, flat=True, layout="torch")
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            metrics = (await http.get("/metrics")).text
            header = (await http.post("/v1/generate", json={"initializer": "zeros", "shape": [3]})).headers
        return first, second, torch, metrics, header.get("x-jaxinit-cache", "")

    first, second, torch, metrics, cache_header = serve(service, work)
    for name in first:
        assert first[name].tobytes() == second[name].tobytes(), name
    kernels = sorted(k for k in first if k.endswith("kernel"))
    weights = sorted(k for k in torch if k.endswith("weight"))
    for kernel, weight in zip(kernels, weights, strict=True):
        assert np.array_equal(torch[weight], first[kernel].T), (kernel, weight)
    counted = dict(re.findall(r'^jaxinit_result_cache_answers_total\{result="(\w+)"\} (\S+)$', metrics, re.M))
    assert float(counted["hit"]) >= 2 * len(first) and float(counted["miss"]) >= len(first)
    assert "jaxinit_result_cache_integrity_failures_total 0.0" in metrics
    assert cache_header in ("miss", "hit")
