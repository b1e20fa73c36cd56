"""Requests pinned to a JAX version (and backend), on every surface, in process: a pin
this server matches answers the same bytes as local JAX; any other is refused with
412 / FAILED_PRECONDITION naming both versions, and no bytes. Also ``/v1/versions`` and
gRPC ListVersions, and ``like=`` (re-fetch by an earlier answer's provenance)."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest
from in_process import ready_service

import jaxinit
from jaxinit.protocol import wire
from jaxinit.protocol.errors import VersionMismatch
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit_server.core import Limits, Service
from jaxinit_server.grpc.server import create_grpc_server
from jaxinit_server.kserve import grpc_predict_v2_pb2 as v2
from jaxinit_server.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.flax_models import EXAMPLES, flax_params
from tests.in_process import grpc_call, rest_call, serve

OTHER = "0.0.1"  # a JAX version no server here runs
HERE = jax.__version__
MINOR = ".".join(HERE.split(".")[:2])  # "0.10": a prefix on a dot boundary matches 0.10.x
BACKEND = jax.default_backend()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with ready_service(Limits(max_tensor_bytes=2**26)) as service:
        yield service


def lecun(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(seed), shape))


def refused(message: str) -> bool:
    """A refusal names the version asked for and the one this server runs."""
    return OTHER in message and HERE in message and BACKEND in message


@pytest.mark.parametrize("pin", [HERE, MINOR, "local"])
def test_a_pin_this_server_matches_answers_jax_bytes_on_both_transports(service: Service, pin: str) -> None:
    want = lecun(3, (4, 5))

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> list[Any]:
        with jaxinit.Client(grpc_url, jax_version=pin, backend=BACKEND) as client:  # (ASGI is async only)
            got = [await asyncio.to_thread(client.generate, "lecun_normal", 3, (4, 5))]
        for url, kwargs in ((grpc_url, {}), ("http://in-process", {"transport": transport})):
            async with jaxinit.AsyncClient(url, **kwargs) as aclient:
                got.append(await aclient.generate("lecun_normal", 3, (4, 5), jax_version=pin))
        return got

    for tensor in serve(service, work):
        assert tensor.array.tobytes() == want.tobytes()
        assert tensor.provenance.jax_version == HERE


def test_a_pin_this_server_does_not_match_is_refused_by_the_client(service: Service) -> None:
    async def work(grpc_url: str, transport: httpx.ASGITransport) -> list[BaseException]:
        errors: list[BaseException] = []
        for url, kwargs in ((grpc_url, {}), ("http://in-process", {"transport": transport})):
            async with jaxinit.AsyncClient(url, jax_version=OTHER, **kwargs) as client:
                for call in (
                    client.generate("lecun_normal", 0, (2, 2)),
                    client.generate("lecun_normal", 0, (2, 2), backend="tpu", jax_version=HERE),
                    client.init_model(jaxinit.models.Dense(3, 2), 0),
                ):
                    try:
                        await call
                    except VersionMismatch as exc:
                        errors.append(exc)
        return errors

    errors = serve(service, work)
    assert len(errors) == 6
    assert refused(str(errors[0])) and refused(str(errors[2]))
    assert "backend tpu" in str(errors[1]) and BACKEND in str(errors[1])


def test_rest_post_get_header_and_model_init_refuse_with_412(service: Service) -> None:
    body = {"initializer": "lecun_normal", "shape": [2, 2], "key": {"seed": 0}}
    model = {"model": {"type": "Dense", "in_features": 3, "features": 2}, "key": {"seed": 0}}

    async def work(http: httpx.AsyncClient) -> dict[str, httpx.Response]:
        calls = {
            "post": http.post("/v1/generate", json={**body, "jax_version": OTHER}),
            "header": http.post("/v1/generate", json=body, headers={wire.JAX_VERSION_HEADER: OTHER}),
            "get": http.get("/v1/generate/lecun_normal", params={"shape": "2,2", "seed": 0, "jax_version": OTHER}),
            "get_header": http.get(
                "/v1/generate/lecun_normal",
                params={"shape": "2,2", "seed": 0},
                headers={wire.JAX_VERSION_HEADER: OTHER},
            ),
            "model": http.post("/v1/models/init", json={**model, "jax_version": OTHER}),
            "model_header": http.post("/v1/models/init", json=model, headers={wire.JAX_VERSION_HEADER: OTHER}),
            "both_differ": http.post(
                "/v1/generate", json={**body, "jax_version": HERE}, headers={wire.JAX_VERSION_HEADER: OTHER}
            ),
            "matching": http.post("/v1/generate", json={**body, "jax_version": MINOR}, headers={"Accept": wire.OCTET}),
            "bad_pin": http.post("/v1/generate", json={**body, "jax_version": "0.10; drop"}),
        }
        return dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))

    got = rest_call(service, work)
    for name in ("post", "header", "get", "get_header", "model", "model_header"):
        response = got[name]
        assert response.status_code == 412, (name, response.text)
        error = response.json()["error"]
        assert error["type"] == "VersionMismatch" and error["code"] == "FAILED_PRECONDITION", name
        assert refused(error["message"]), (name, error["message"])
    assert got["both_differ"].status_code == 400 and wire.JAX_VERSION_HEADER in got["both_differ"].text
    assert got["matching"].status_code == 200 and got["matching"].content == lecun(0, (2, 2)).tobytes()
    assert got["bad_pin"].status_code == 400


def test_kserve_rest_and_grpc_refuse_a_pin_they_do_not_match(service: Service) -> None:
    inputs = [
        {"name": "shape", "datatype": "INT64", "shape": [2], "data": [2, 2]},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
    ]

    async def rest(http: httpx.AsyncClient) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                http.post(
                    "/v2/models/lecun_normal/infer", json={"inputs": inputs, "parameters": {"jax_version": OTHER}}
                ),
                http.post(
                    "/v2/models/lecun_normal/infer", json={"inputs": inputs}, headers={wire.JAX_VERSION_HEADER: OTHER}
                ),
                http.post(
                    "/v2/models/lecun_normal/infer", json={"inputs": inputs, "parameters": {"jax_version": HERE}}
                ),
            )
        )

    pinned, header, matching = rest_call(service, rest)
    for response in (pinned, header):
        assert response.status_code == 412 and refused(response.json()["error"]), response.text
    assert matching.status_code == 200
    assert np.asarray(matching.json()["outputs"][0]["data"], np.float32).tobytes() == lecun(0, (2, 2)).tobytes()

    def infer(parameters: dict[str, str]) -> v2.ModelInferRequest:
        request = v2.ModelInferRequest(model_name="lecun_normal")
        request.inputs.add(name="shape", datatype="INT64", shape=[2]).contents.int64_contents.extend([2, 2])
        request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.append(0)
        for name, value in parameters.items():
            request.parameters[name].string_param = value
        return request

    async def over_grpc() -> list[grpc.aio.AioRpcError]:
        server, port, _ = create_grpc_server(service, "127.0.0.1", 0)
        await server.start()
        errors = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = v2_grpc.GRPCInferenceServiceStub(channel)
                for request, metadata in (
                    (infer({"jax_version": OTHER}), ()),
                    (infer({}), ((wire.JAX_VERSION_HEADER, OTHER),)),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.ModelInfer(request, metadata=metadata)
                    errors.append(caught.value)
                answer = await stub.ModelInfer(infer({"jax_version": MINOR}))
                assert answer.raw_output_contents[0] == lecun(0, (2, 2)).tobytes()
        finally:
            await server.stop(grace=None)
        return errors

    for error in asyncio.run(over_grpc()):
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and refused(error.details() or "")


def request(seed: int, **pins: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"r{seed}", initializer="lecun_normal", shape=[2, 3], key=pb.Key(seed=seed), **pins
    )


def test_grpc_generate_generate_many_and_init_model_refuse(service: Service) -> None:
    async def work(stub: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, call in (
            ("field", lambda: stub.Generate(request(0, jax_version=OTHER))),
            ("metadata", lambda: stub.Generate(request(0), metadata=((wire.JAX_VERSION_HEADER, OTHER),))),
            ("backend", lambda: stub.Generate(request(0, backend="tpu"))),
            (
                "model",
                lambda: stub.InitModel(
                    pb.InitModelRequest(
                        model_json='{"type": "Dense", "in_features": 3, "features": 2}',
                        key=pb.Key(seed=0),
                        jax_version=OTHER,
                    )
                ),
            ),
        ):
            try:
                out[name] = [chunk async for chunk in call()]
            except grpc.aio.AioRpcError as exc:
                out[name] = exc
        many = stub.GenerateMany(iter([request(1), request(2, jax_version=OTHER), request(3, jax_version=MINOR)]))
        out["many"] = [chunk async for chunk in many]
        return out

    got = grpc_call(service, work)
    for name in ("field", "metadata", "model"):
        error = got[name]
        assert isinstance(error, grpc.aio.AioRpcError), name
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and refused(error.details() or ""), name
        assert dict(error.trailing_metadata() or ())[wire.ERROR_TYPE_KEY] == "VersionMismatch"
    assert got["backend"].code() == grpc.StatusCode.FAILED_PRECONDITION and "backend tpu" in got["backend"].details()
    chunks = got["many"]
    errors = [c for c in chunks if c.WhichOneof("payload") == "error"]
    assert [c.request_id for c in errors] == ["r2"]
    assert errors[0].error.code == "FAILED_PRECONDITION" and errors[0].error.type == "VersionMismatch"
    assert refused(errors[0].error.message)
    for seed in (1, 3):  # the other items still arrive, whole
        data = b"".join(c.data.data for c in chunks if c.request_id == f"r{seed}" and c.WhichOneof("payload") == "data")
        assert data == lecun(seed, (2, 3)).tobytes()


def test_versions_lists_what_the_server_serves(service: Service) -> None:
    rest = rest_call(service, lambda http: http.get("/v1/versions"))
    listed = grpc_call(service, lambda stub: stub.ListVersions(pb.ListVersionsRequest()))
    assert rest.status_code == 200
    (entry,) = rest.json()["versions"]
    assert entry["jax_version"] == HERE and entry["backend"] == BACKEND and entry["default"] is True
    assert entry["jaxlib_version"] == importlib.metadata.version("jaxlib")
    assert "threefry2x32" in entry["key_impls"] and "bfloat16" in entry["dtypes"]
    assert entry["threefry_partitionable"] is bool(jax.config.jax_threefry_partitionable)
    (served,) = listed.versions
    assert served.jax_version == HERE and served.backend == BACKEND and served.default
    assert list(served.key_impls) == entry["key_impls"] and list(served.dtypes) == entry["dtypes"]


def test_like_refetches_exactly_what_produced_an_earlier_answer(service: Service) -> None:
    model, *_ = EXAMPLES["cnn"]
    want = flax_params("cnn", "linen", 3)

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> list[Any]:
        out = []
        for url, kwargs in ((grpc_url, {}), ("http://in-process", {"transport": transport})):
            async with jaxinit.AsyncClient(url, **kwargs) as client:
                first = await client.generate(
                    "normal", jaxinit.split(jaxinit.key(5), 4)[1], (3, 4), "bfloat16", args={"stddev": 0.5}, jit=True
                )
                again = await client.generate(
                    "normal", None, (3, 4), "bfloat16", args={"stddev": 0.5}, like=first.provenance
                )
                params = await client.init_model(model, 3, flat=True)
                model_again = await client.init_model(model, None, flat=True, like=params)
                try:
                    await client.generate("normal", 0, (3, 4), like=jaxinit.Provenance(jax_version=OTHER))
                except VersionMismatch as exc:
                    out.append(exc)
                out += [first, again, params, model_again]
        return out

    got = serve(service, work)
    for refusal, first, again, params, model_again in (got[:5], got[5:]):
        assert isinstance(refusal, VersionMismatch) and OTHER in str(refusal) and HERE in str(refusal)
        assert again.array.tobytes() == first.array.tobytes()
        assert again.provenance.request_digest == first.provenance.request_digest
        assert again.provenance.canonical_request == first.provenance.canonical_request
        for name, array in want.items():
            assert model_again[name].tobytes() == params[name].tobytes() == array.tobytes(), name


def test_generate_many_carries_the_clients_pin_and_get_varies_on_the_header(service: Service) -> None:
    async def work(grpc_url: str, transport: httpx.ASGITransport) -> list[Any]:
        out: list[Any] = []
        for url, kwargs in ((grpc_url, {}), ("http://in-process", {"transport": transport})):
            async with jaxinit.AsyncClient(url, **kwargs) as client:
                client.jax_version = OTHER  # set later: the stream's metadata follows
                requests = [client.request("lecun_normal", seed, (2, 2)) for seed in range(2)]
                out.append([item async for item in client.generate_many(requests)])
                client.jax_version = MINOR  # (a request keeps the pin it was made with)
                again = [client.request("lecun_normal", 0, (2, 2))]
                out.append([item async for item in client.generate_many(again)])
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            out.append(await http.get("/v1/generate/zeros", params={"shape": "2"}))
        return out

    *answers, get = serve(service, work)
    for refusals, (one,) in (answers[:2], answers[2:]):
        assert len(refusals) == 2 and all(isinstance(e, VersionMismatch) and refused(str(e)) for e in refusals)
        assert isinstance(one, jaxinit.Tensor) and one.array.tobytes() == lecun(0, (2, 2)).tobytes()
    assert get.status_code == 200 and wire.JAX_VERSION_HEADER in get.headers["vary"]


def test_the_client_lists_the_same_versions_over_both_transports(service: Service) -> None:
    async def work(grpc_url: str, transport: httpx.ASGITransport) -> list[dict[str, Any]]:
        listed = []
        for url, kwargs in ((grpc_url, {}), ("http://in-process", {"transport": transport})):
            async with jaxinit.AsyncClient(url, **kwargs) as client:
                listed.append(await client.list_versions())
        with jaxinit.Client(grpc_url) as sync:
            listed.append(await asyncio.to_thread(sync.list_versions))
        return listed

    over_grpc, over_http, sync = serve(service, work)
    assert over_grpc == over_http == sync == rest_call(service, lambda http: http.get("/v1/versions")).json()
