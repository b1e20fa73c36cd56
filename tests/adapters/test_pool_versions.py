"""``GET /v1/versions`` and gRPC ``ListVersions`` of a server in a pooled deployment, in
process: its own entry and each other pool's (an in-process fake pool), a pool that does
not answer listed as unreachable, ``scope=server`` for the server alone, and
``Client.list_versions()`` giving the same list over both transports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jax
import pytest
from in_process import ready_service

import jaxinit
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server
from jaxinit_server.pools import Deployment, parse_pools
from jaxinit_server.rest.app import create_app
from tests.unit.server.test_pools import old_pool, refusing

HERE = jax.__version__


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with ready_service(Limits(max_tensor_bytes=2**20)) as service:
        yield service


def deployment(asked: list[Any]) -> Deployment:
    """This server's pool (the default), a 0.4.38 pool that answers, a 0.8.3 pool that does not."""
    pools = parse_pools(f"{HERE}=http://lb:8000,0.4.38=http://old:8000,0.8.3=http://gone:8000")
    mounts = {"http://old:8000": old_pool(asked), "http://gone:8000": httpx.MockTransport(refusing)}
    return Deployment(HERE, pools, default_pool=HERE, mounts=mounts)


def run(service: Service, pools: Deployment, work: Any) -> Any:
    """``work(grpc_url, asgi_transport)`` against both adapters of ``service`` in ``pools``."""

    async def main() -> Any:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0, deployment=pools)
        await server.start()
        try:
            app = create_app(service, deployment=pools)
            return await work(f"127.0.0.1:{port}", httpx.ASGITransport(app=app))
        finally:
            await server.stop(grace=None)

    return asyncio.run(main())


def test_both_transports_list_every_pool_and_the_client_sees_the_same(service: Service) -> None:
    asked: list[Any] = []

    async def work(address: str, transport: httpx.ASGITransport) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            out["rest"] = (await http.get("/v1/versions")).json()
            out["rest_server"] = (await http.get("/v1/versions", params={"scope": "server"})).json()
            out["rest_bad"] = await http.get("/v1/versions", params={"scope": "everything"})
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.InitializersStub(channel)
            out["grpc"] = await stub.ListVersions(pb.ListVersionsRequest())
            out["grpc_server"] = await stub.ListVersions(pb.ListVersionsRequest(scope="server"))
            try:
                await stub.ListVersions(pb.ListVersionsRequest(scope="everything"))
            except grpc.aio.AioRpcError as exc:
                out["grpc_bad"] = exc
        async with jaxinit.AsyncClient(f"grpc://{address}") as client:
            out["client_grpc"] = await client.list_versions()
        async with jaxinit.AsyncClient("http://in-process", transport=transport) as client:
            out["client_http"] = await client.list_versions()
        with jaxinit.Client(f"grpc://{address}") as sync:
            out["client_sync"] = await asyncio.to_thread(sync.list_versions)
        return out

    out = run(service, deployment(asked), work)
    mine, old, gone = out["rest"]["versions"]
    assert (mine["jax_version"], mine["default"], mine["reachable"]) == (HERE, True, True)
    assert mine["backend"] == jax.default_backend() and "float32" in mine["dtypes"]
    assert (old["jax_version"], old["default"], old["reachable"]) == ("0.4.38", False, True)
    assert gone == {"jax_version": "0.8.3", "reachable": False, "default": False}
    assert out["rest_server"]["versions"] == [mine]
    assert out["rest_bad"].status_code == 400 and "scope" in out["rest_bad"].text
    # gRPC: the same entries; the unreachable one has only its version set.
    assert [(v.jax_version, v.default, v.reachable) for v in out["grpc"].versions] == [
        (HERE, True, True),
        ("0.4.38", False, True),
        ("0.8.3", False, False),
    ]
    assert list(out["grpc"].versions[1].key_impls) == old["key_impls"]
    assert [v.jax_version for v in out["grpc_server"].versions] == [HERE]
    assert out["grpc_bad"].code() == grpc.StatusCode.INVALID_ARGUMENT and "scope" in out["grpc_bad"].details()
    # The client: one list, whichever transport.
    assert out["client_grpc"] == out["client_http"] == out["client_sync"] == out["rest"]
    # Each ask of the old pool was for that server alone, pinned to its version; answers kept.
    assert asked and all(r.query_params["scope"] == "server" for r in asked)
    assert all(r.headers["x-jaxinit-jax-version"] == "0.4.38" for r in asked)
    assert len(asked) == 1


def test_a_server_without_pools_lists_itself(service: Service) -> None:
    async def work(address: str, transport: httpx.ASGITransport) -> list[dict[str, Any]]:
        async with jaxinit.AsyncClient("http://in-process", transport=transport) as client:
            over_http = await client.list_versions()
        async with jaxinit.AsyncClient(f"grpc://{address}") as client:
            return [over_http, await client.list_versions()]

    over_http, over_grpc = run(service, Deployment(HERE), work)
    assert over_http == over_grpc
    (entry,) = over_http["versions"]
    assert entry["jax_version"] == HERE and entry["default"] is True and entry["reachable"] is True
