"""Medium and low findings of issue 23, each a regression test on the surfaces it was found on.

- ``constant`` with a value 33-64 levels deep (or a shape of more than 32 dimensions) was a
  500 on every route (numpy's ``broadcast_shapes`` takes 32 dimensions at most);
- model outputs with one name twice (sibling torch names, a stacked layer's index beside a
  module named ``0``) or named ``__metadata__`` made a safetensors file no reader loads;
  ``torch: ["bias", "conv"]`` on a 1-D shape and a ``stack_at`` past the path were a 500;
- ``X-Jaxinit-Provenance`` echoed the canonical request whatever its size (a 5 MB
  ``constant`` body gave a 4 MB response header);
- a parameter name over 256 characters was refused as "request_id is at most 256 characters";
- gRPC ``InitModel`` summed every tensor's bytes once per tensor (quadratic in the model);
- ``/readyz``, open to anyone, showed the server's directories;
- a 400 answered by the catch-all handler was re-raised to the server ("Exception in ASGI
  application" and a traceback in its log)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import httpx
import jax
import numpy as np
import pytest
from in_process import grpc_call, rest_call

import jaxinit
from jaxinit.protocol import Provenance, safetensors, wire
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.core import Limits, Service
from jaxinit_server.core.model_init import InitModelParams, resolve_model
from jaxinit_server.core.request import PrngDefaults
from jaxinit_server.grpc.servicer import value_from_proto
from jaxinit_server.rest.app import create_app
from jaxinit_server.rest.framing import MAX_HEADER_CANONICAL

T = TypeVar("T")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bounds-cache")


@pytest.fixture(scope="module")
def service(cache_dir: Path) -> Iterator[Service]:
    svc = Service(Limits(max_tensor_bytes=2**26), cache_dir=str(cache_dir))
    svc.ready = True
    try:
        yield svc
    finally:
        svc.close()


def rest(service: Service, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    return rest_call(service, work)


def init_model(
    body: dict[str, Any], headers: dict[str, str] | None = None
) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    async def work(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/v1/models/init", json=body, headers=headers)

    return work


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def to_proto(value: Any) -> pb.Value:
    if isinstance(value, list):
        return pb.Value(list_value=pb.NestedList(items=[to_proto(v) for v in value]))
    return pb.Value(float_value=value)


def jax_constant(value: Any, shape: tuple[int, ...]) -> bytes:
    init = jax.nn.initializers.constant(np.asarray(value, np.float32))
    return np.asarray(init(None, shape)).tobytes()  # type: ignore[arg-type]  # constant takes no key


# --- constant: deep values and high ranks --------------------------------------------------


@pytest.mark.parametrize("depth", [32, 33, 48, 64])
def test_a_deep_constant_is_jax_bytes_or_a_400(service: Service, depth: int) -> None:
    value = nested(0.5, depth)
    cases = [((1,) * depth, 200), ((2,), 400), ((3,) + (1,) * (depth - 1), 200)]

    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        out = []
        for shape, _ in cases:
            body = {"initializer": "constant", "shape": list(shape), "args": {"value": value}}
            out.append(await http.post("/v1/generate", json=body, headers={"Accept": wire.OCTET}))
        return out

    for (shape, status), response in zip(cases, rest(service, work), strict=True):
        assert response.status_code == status, response.text
        if status == 200:
            assert response.content == jax_constant(value, shape)
        else:
            assert response.json()["error"]["type"] == "JaxError"

    if depth > 48:
        return  # protobuf itself nests messages at most 100 deep (a list level is two): no such gRPC request

    async def over_grpc(stub: pb_grpc.InitializersStub) -> bytes:
        request = pb.GenerateRequest(initializer="constant", shape=[1] * depth, args={"value": to_proto(value)})
        data = b""
        async for message in stub.Generate(request):
            if message.HasField("data"):
                data += message.data.data
        return data

    assert value_from_proto(to_proto(value)) == value
    assert grpc_call(service, over_grpc) == jax_constant(value, (1,) * depth)


def test_a_vector_constant_fills_a_shape_of_more_than_32_dimensions(service: Service) -> None:
    shape = (1,) * 40 + (2,)
    body = {"initializer": "constant", "shape": list(shape), "args": {"value": [1.5, -2.0]}}
    response = rest(service, lambda http: http.post("/v1/generate", json=body, headers={"Accept": wire.OCTET}))
    assert response.status_code == 200 and response.content == jax_constant([1.5, -2.0], shape)


def test_a_value_deeper_than_any_array_is_a_400(service: Service) -> None:
    body = {"initializer": "constant", "shape": [1], "args": {"value": nested(0.5, 65)}}
    response = rest(service, lambda http: http.post("/v1/generate", json=body))
    assert response.status_code == 400 and "nested more than 64" in response.text


# --- model outputs: one name each, a shape that fits the conversion ---------------------------


def raw(*params: dict[str, Any]) -> dict[str, Any]:
    return {"params": list(params)}


COLLISIONS = [
    (  # sibling torch names
        raw(
            {"path": "a.kernel", "shape": [2, 3], "initializer": "normal", "torch": ["weight", "t"]},
            {"path": "a.w", "shape": [3, 2], "initializer": "normal", "torch": ["weight", ""]},
        ),
        "torch",
        ["'a.kernel'", "'a.w'", "'a.weight'"],
    ),
    (  # a stacked layer's index beside a module named 0
        raw(
            {
                "path": "layers.kernel",
                "shape": [2, 3],
                "initializer": "normal",
                "key": [{"stack": 2}, {"fold_in": 1}],
                "stack_at": 1,
            },
            {"path": "layers.0.kernel", "shape": [3], "initializer": "normal", "key": [{"fold_in": 2}]},
        ),
        "torch",
        ["layer 0 of 'layers.kernel'", "'layers.0.kernel'"],
    ),
    (  # safetensors' own name
        raw({"path": "__metadata__", "shape": [2], "initializer": "zeros"}),
        "flax",
        ["'__metadata__'", "reserves"],
    ),
    (
        raw({"path": "b", "shape": [2], "initializer": "zeros", "torch": ["__metadata__", ""]}),
        "torch",
        ["'b'", "reserves"],
    ),
]


@pytest.mark.parametrize(("model", "layout", "named"), COLLISIONS)
def test_model_outputs_with_one_name_twice_are_a_400(
    service: Service, model: dict[str, Any], layout: str, named: list[str]
) -> None:
    body = {"model": model, "key": {"seed": 0}, "layout": layout}
    response = rest(service, lambda http: http.post("/v1/models/init", json=body))
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert all(name in message for name in named), message

    async def over_grpc(stub: pb_grpc.InitializersStub) -> grpc.aio.AioRpcError:
        request = pb.InitModelRequest(model_json=json.dumps(model), key=pb.Key(seed=0), layout=layout)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.InitModel(request):
                pass
        return info.value

    error = grpc_call(service, over_grpc)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and named[0] in (error.details() or "")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"path": "m.bias", "shape": [4], "initializer": "zeros", "torch": ["bias", "conv"]}, "fewer than 2"),
        ({"path": "m.kernel", "shape": [2, 3], "initializer": "zeros", "stack_at": 2}, "'stack_at' 2"),
    ],
)
def test_conversions_and_stack_at_that_do_not_fit_are_a_400(
    service: Service, entry: dict[str, Any], words: str
) -> None:
    for layout in ("flax", "torch"):
        response = rest(service, init_model({"model": raw(entry), "key": {"seed": 0}, "layout": layout}))
        if layout == "flax" and "conv" in json.dumps(entry):
            assert response.status_code == 200  # the conversion is the torch layout's
            continue
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]["message"]


def test_a_model_file_always_loads(service: Service) -> None:
    """A model with distinct names in both layouts: its safetensors file reads back."""
    model = raw(
        {"path": "enc.kernel", "shape": [3, 2], "initializer": "lecun_normal", "torch": ["weight", "t"]},
        {"path": "enc.bias", "shape": [2], "initializer": "zeros", "torch": ["bias", ""]},
    )
    for layout in ("flax", "torch"):
        body = {"model": model, "key": {"seed": 1}, "layout": layout}
        response = rest(service, init_model(body, {"Accept": wire.SAFETENSORS}))
        assert response.status_code == 200, response.text
        tensors, _ = safetensors.loads(response.content)
        assert len(tensors) == 2


# --- names, the provenance header, readiness, logging ----------------------------------------


def test_a_long_parameter_name_is_served(service: Service) -> None:
    name = ".".join(["p" * 200] * 3)  # each part within the 256 characters a name may have
    model = raw({"path": name, "shape": [2, 2], "initializer": "ones"})
    body = {"model": model, "key": {"seed": 0}}
    response = rest(service, lambda http: http.post("/v1/models/init", json=body, headers={"Accept": wire.SAFETENSORS}))
    assert response.status_code == 200, response.text
    tensors, _ = safetensors.loads(response.content)
    assert list(tensors) == [name]


def test_a_large_request_is_not_echoed_in_a_header(service: Service) -> None:
    value = [float(i) for i in range(20_000)]  # a canonical request of ~150 KB
    body = {"initializer": "constant", "shape": [2, 20_000], "args": {"value": value}}

    async def work(http: httpx.AsyncClient) -> tuple[httpx.Response, np.ndarray, Provenance]:
        response = await http.post("/v1/generate", json=body, headers={"Accept": wire.OCTET})
        client = jaxinit.AsyncClient("http://in-process", transport=httpx.ASGITransport(app=create_app(service)))
        try:
            tensor = await client.generate("constant", None, (2, 20_000), args={"value": value})
        finally:
            await client.close()
        return response, tensor.array, tensor.provenance

    response, array, provenance = rest(service, work)
    assert response.status_code == 200
    header = response.headers[wire.PROVENANCE_HEADER]
    assert len(header) < MAX_HEADER_CANONICAL + 1024
    fields = json.loads(header)
    assert fields["canonical_request"] == "" and fields["canonical_request_omitted"] > MAX_HEADER_CANONICAL
    assert len(fields["request_digest"]) == 64
    assert response.content == jax_constant(value, (2, 20_000))
    assert array.tobytes() == response.content and provenance.request_digest == fields["request_digest"]
    # a small request is echoed whole, and its digest is the canonical request's sha256
    small = rest(service, lambda http: http.get("/v1/generate/zeros?shape=2"))
    fields = json.loads(small.headers[wire.PROVENANCE_HEADER])
    assert hashlib.sha256(fields["canonical_request"].encode()).hexdigest() == fields["request_digest"]


def test_readiness_names_no_directory(service: Service, cache_dir: Path) -> None:
    response = rest(service, lambda http: http.get("/readyz"))
    assert response.status_code == 200 and "results" in response.json()
    assert str(cache_dir) not in response.text and '"directory"' not in response.text


@pytest.mark.parametrize(
    "url",
    [
        "/v1/generate/constant?shape=2&value=" + "[" * 3000 + "1" + "]" * 3000,
        "/v2/models/constant",  # a v2 path, answered in the protocol's error body
    ],
)
def test_a_refusal_is_never_re_raised_to_the_server(service: Service, url: str, caplog: Any) -> None:
    if url.startswith("/v2"):
        body = json.dumps(
            {
                "inputs": [{"name": "shape", "datatype": "INT64", "shape": [1], "data": [2]}],
                "parameters": {"value": "[" * 3000 + "1" + "]" * 3000},
            }
        )
        response = rest(service, lambda http: http.post(url + "/infer", content=body))
    else:
        response = rest(service, lambda http: http.get(url))  # raises here if the app re-raised
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.text or "nests deeper than 64" in response.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_model_sums_its_bytes_once() -> None:
    """Each tensor's header carries the model's size: it is computed once, not per tensor."""
    model = {"params": [{"path": f"m{i}.w", "shape": [2, 2], "initializer": "normal"} for i in range(500)]}
    params = InitModelParams(model=model, key=jaxinit.key(0))
    resolved = resolve_model(params, Limits(), PrngDefaults(True, False))

    class Counted(list[Any]):
        iterations = 0

        def __iter__(self) -> Any:
            Counted.iterations += 1
            return super().__iter__()

    counted = dataclasses.replace(resolved, requests=Counted(resolved.requests))
    assert all(counted.nbytes == 500 * 16 for _ in range(len(counted.outputs)))
    assert Counted.iterations == 1


def test_init_model_over_grpc_with_many_tensors_is_jax(service: Service) -> None:
    model = {"params": [{"path": f"m{i}.w", "shape": [2, 2], "initializer": "normal"} for i in range(300)]}

    async def work(stub: pb_grpc.InitializersStub) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        async for message in stub.InitModel(pb.InitModelRequest(model_json=json.dumps(model), key=pb.Key(seed=4))):
            if message.HasField("header"):
                assert message.header.total_bytes == 16
            if message.HasField("data"):
                out[message.request_id] = out.get(message.request_id, b"") + message.data.data
        return out

    got = grpc_call(service, work)
    assert len(got) == 300
    resolved = resolve_model(InitModelParams(model=model, key=jaxinit.key(4)), Limits(), service.identity.defaults)
    for out, request in list(zip(resolved.outputs, resolved.requests, strict=True))[::60]:
        assert request.key is not None and request.key.fold_in
        key = jax.random.key(4)
        for x in request.key.fold_in:
            key = jax.random.fold_in(key, np.uint32(x))
        want = jax.nn.initializers.normal()(key, (2, 2), np.float32)
        assert got[out.name] == np.asarray(want).tobytes()
