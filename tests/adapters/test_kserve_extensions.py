"""Triton's extensions on the KServe v2 surfaces, in process: the model configuration and
the statistics (from the server's own counters) on REST and gRPC, the extensions listed in
the server metadata, and every unsupported extension refused with one sentence (REST 501 in
the protocol's error body; gRPC UNIMPLEMENTED), never a bare 404 / "Method not found!"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from in_process import ready_service

import jaxinit
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server
from jaxinit_server.kserve import grpc_predict_v2_pb2 as v2
from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from jaxinit_server.kserve.mapping import EXTENSIONS
from jaxinit_server.rest.app import create_app
from jaxinit_server.telemetry import Telemetry

T = TypeVar("T")


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with ready_service(Limits(max_tensor_bytes=2**26)) as service:
        yield service


def rest(app: Any, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as http:
            return await work(http)

    return asyncio.run(main())


def over_grpc(service: Service, telemetry: Telemetry, work: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0, telemetry=telemetry)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await work(channel)
        finally:
            await server.stop(grace=None)

    return asyncio.run(main())


def _infer_body(seed: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [2], "data": [3, 2]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [seed]},
        ]
    }


def test_rest_config_stats_and_metadata(service: Service) -> None:
    telemetry = Telemetry()
    app = create_app(service, telemetry=telemetry)

    async def work(http: httpx.AsyncClient) -> dict[str, httpx.Response]:
        out = {"before": await http.get("/v2/models/he_normal/stats")}
        for seed in range(3):
            assert (await http.post("/v2/models/he_normal/infer", json=_infer_body(seed))).status_code == 200
        assert (await http.get("/v1/generate/he_normal", params={"shape": "4,3", "seed": 1})).status_code == 200
        bad = await http.get("/v1/generate/he_normal", params={"shape": "4,3", "seed": 1, "mode": "nope"})
        assert bad.status_code == 400
        for name, path in (
            ("server", "/v2"),
            ("config", "/v2/models/variance_scaling/config"),
            ("config_v1", "/v2/models/variance_scaling/versions/1/config"),
            ("config_v2", "/v2/models/variance_scaling/versions/2/config"),
            ("config_typo", "/v2/models/lecun_normall/config"),
            ("stats", "/v2/models/he_normal/stats"),
            ("stats_v1", "/v2/models/he_normal/versions/1/stats"),
            ("all_stats", "/v2/models/stats"),
            ("stats_typo", "/v2/models/he_normall/stats"),
        ):
            out[name] = await http.get(path)
        return out

    got = rest(app, work)
    assert got["server"].json()["extensions"] == list(EXTENSIONS)
    config = got["config"].json()
    assert config["name"] == "variance_scaling" and config["max_batch_size"] == 0
    assert [i["name"] for i in config["input"]] == ["shape", "seed", "key_data", "fold_in"]
    assert config["input"][0]["data_type"] == "TYPE_INT64" and config["output"][0]["name"] == "output"
    assert "distribution" in config["parameters"]["arguments"]["string_value"]
    assert got["config_v1"].json() == config
    assert got["config_v2"].status_code == 404 and "no version '2'" in got["config_v2"].json()["error"]
    assert got["config_typo"].status_code == 404 and "unknown model" in got["config_typo"].json()["error"]

    before = got["before"].json()["model_stats"][0]
    assert before["inference_count"] == 0 and before["last_inference"] == 0
    stats = got["stats"].json()["model_stats"]
    assert len(stats) == 1 and stats[0]["name"] == "he_normal" and stats[0]["version"] == "1"
    inference = stats[0]["inference_stats"]
    assert stats[0]["inference_count"] == 4 and inference["success"]["count"] == 4  # v2 and v1 alike
    assert inference["fail"]["count"] == 1 and inference["success"]["ns"] > 0 and stats[0]["last_inference"] > 0
    assert inference["compute_infer"]["count"] == 4 and inference["queue"]["count"] == 4
    assert got["stats_v1"].json()["model_stats"] == stats
    every = got["all_stats"].json()["model_stats"]
    assert len(every) == len(jaxinit.CATALOG) and next(s for s in every if s["name"] == "he_normal") == stats[0]
    assert got["stats_typo"].status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "says"),
    [
        ("GET", "/v2/systemsharedmemory/status", "system shared memory"),
        ("POST", "/v2/systemsharedmemory/region/r0/register", "system shared memory"),
        ("POST", "/v2/systemsharedmemory/unregister", "system shared memory"),
        ("GET", "/v2/cudasharedmemory/region/r0/status", "CUDA shared memory"),
        ("POST", "/v2/cudasharedmemory/register", "CUDA shared memory"),
        ("POST", "/v2/repository/models/lecun_normal/load", "loading or unloading"),
        ("POST", "/v2/repository/models/lecun_normal/unload", "loading or unloading"),
        ("GET", "/v2/trace/setting", "trace"),
        ("POST", "/v2/models/lecun_normal/trace/setting", "trace"),
        ("GET", "/v2/logging", "log settings"),
    ],
)
def test_rest_unsupported_extensions_say_so(service: Service, method: str, path: str, says: str) -> None:
    app = create_app(service)
    response = rest(app, lambda http: http.request(method, path, json={}))
    assert response.status_code == 501, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and "jaxinit does not support" in message and says in message


def test_grpc_config_stats_index_and_metadata(service: Service) -> None:
    telemetry = Telemetry()

    async def work(channel: Any) -> dict[str, Any]:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = v2.ModelInferRequest(model_name="lecun_normal")
        request.inputs.add(name="shape", datatype="INT64", shape=[2]).contents.int64_contents.extend([5, 2])
        request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.append(0)
        await stub.ModelInfer(request)
        out: dict[str, Any] = {
            "server": await stub.ServerMetadata(v2.ServerMetadataRequest()),
            "config": await stub.ModelConfig(v2.ModelConfigRequest(name="lecun_normal")),
            "stats": await stub.ModelStatistics(v2.ModelStatisticsRequest(name="lecun_normal")),
            "all": await stub.ModelStatistics(v2.ModelStatisticsRequest()),
            "index": await stub.RepositoryIndex(v2.RepositoryIndexRequest()),
        }
        with pytest.raises(grpc.aio.AioRpcError) as typo:
            await stub.ModelConfig(v2.ModelConfigRequest(name="lecun_normall"))
        out["typo"] = typo.value
        return out

    got = over_grpc(service, telemetry, work)
    assert list(got["server"].extensions) == list(EXTENSIONS)
    config = got["config"].config
    assert config.name == "lecun_normal" and config.max_batch_size == 0 and config.backend == "jaxinit"
    assert [i.name for i in config.input] == ["shape", "seed", "key_data", "fold_in"]
    assert config.input[0].data_type == 9 and config.output[0].data_type == 11  # TYPE_INT64, TYPE_FP32
    stats = got["stats"].model_stats
    assert len(stats) == 1 and stats[0].inference_count == 1 and stats[0].inference_stats.success.count == 1
    assert len(got["all"].model_stats) == len(jaxinit.CATALOG)
    assert len(got["index"].models) == len(jaxinit.CATALOG) and got["index"].models[0].state == "READY"
    assert got["typo"].code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "says"),
    [
        ("SystemSharedMemoryStatus", "system shared memory"),
        ("SystemSharedMemoryRegister", "system shared memory"),
        ("CudaSharedMemoryStatus", "CUDA shared memory"),
        ("RepositoryModelLoad", "loading or unloading"),
        ("RepositoryModelUnload", "loading or unloading"),
        ("TraceSetting", "trace"),
        ("LogSettings", "log settings"),
        ("ModelStreamInfer", "streaming inference"),
        ("SomethingNew", "does not implement"),
    ],
)
def test_grpc_unsupported_methods_say_so(service: Service, method: str, says: str) -> None:
    async def work(channel: Any) -> grpc.aio.AioRpcError:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"")
        return info.value

    error = over_grpc(service, Telemetry(), work)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert says in (error.details() or "") and "Method not found" not in (error.details() or "")
