"""The REST adapter in this process (httpx's ASGI transport, no socket): the routes, the
framing, the one error table and the KServe v2 routes, each answer compared with local JAX.

Process behaviour (signals, worker crashes, slow clients over real sockets, deployment)
stays in tests/integration with a server process."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import jax
import numpy as np
import pytest
from flax_models import EXAMPLES, flax_params

import jaxinit
from jaxinit.protocol import Provenance, codec, safetensors, wire
from jaxinit.protocol.digest import DIGEST_BYTES, new_hasher
from jaxinit_server.core import Limits, Service
from jaxinit_server.rest.app import create_app

T = TypeVar("T")


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    service = Service(Limits(max_tensor_bytes=2**26))
    service.ready = True  # warming up is the process's part (tests/integration); these test the adapter
    try:
        yield create_app(service)
    finally:
        service.close()


def call(app: Any, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as http:
            return await work(http)

    return asyncio.run(main())


def lecun(seed: int, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(seed), shape, dtype))


def test_get_and_post_forms_are_jax_bytes(app: Any) -> None:
    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        get = http.get("/v1/generate/lecun_normal?shape=3,5&seed=7", headers={"Accept": wire.OCTET})
        body = {"initializer": "lecun_normal", "shape": [3, 5], "key": {"seed": 7}, "dtype": "bfloat16"}
        post = http.post("/v1/generate", json=body, headers={"Accept": wire.DIGESTED})
        return list(await asyncio.gather(get, post))

    get, post = call(app, work)
    assert get.status_code == 200, get.text
    assert get.content == lecun(7, (3, 5)).tobytes()
    assert get.headers[wire.SHAPE_HEADER] == "3,5" and get.headers[wire.DTYPE_HEADER] == "float32"
    provenance = Provenance.from_mapping(json.loads(get.headers[wire.PROVENANCE_HEADER]))
    assert provenance.jax_version == jax.__version__ and provenance.key_impl == "threefry2x32"
    data, digest = post.content[:-DIGEST_BYTES], post.content[-DIGEST_BYTES:]
    assert data == lecun(7, (3, 5), jax.numpy.bfloat16).tobytes()
    hasher = new_hasher()
    hasher.update(data)
    assert hasher.digest() == digest


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "error_type", "message"),
    [
        ("GET", "/v1/generate/lecun_normall?shape=2&seed=0", None, 404, "UnknownInitializer", "lecun_normal"),
        ("GET", "/v1/generate/lecun_normal?shape=2,x&seed=0", None, 400, "InvalidArgument", "shape"),
        ("GET", "/v1/generate/lecun_normal?shape=4096,8192&seed=0", None, 413, "TooLarge", "limit"),
        ("POST", "/v1/generate", {"initializer": "normal", "shape": [2]}, 400, "InvalidArgument", "key"),
        ("POST", "/v1/generate", {"initializer": "orthogonal", "shape": [4], "key": {"seed": 0}}, 400, "JaxError", ""),
        ("POST", "/v1/models/init", {"model": {"type": "Dense"}, "key": {"seed": 0}}, 400, "InvalidArgument", "model"),
    ],
)
def test_errors_come_from_the_one_table(
    app: Any, method: str, url: str, body: Any, status: int, error_type: str, message: str
) -> None:
    response = call(app, lambda http: http.request(method, url, json=body))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type and message in error["message"], error


def test_content_negotiation(app: Any) -> None:
    url = "/v1/generate/ones?shape=2,2"

    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        accepts = ["application/x-npy", wire.JSON, "image/png"]
        return list(await asyncio.gather(*(http.get(url, headers={"Accept": a}) for a in accepts)))

    npy, as_json, png = call(app, work)
    assert npy.status_code == 200 and npy.content.startswith(b"\x93NUMPY")
    assert as_json.json()["data"] == [[1.0, 1.0], [1.0, 1.0]]
    assert png.status_code == 406 and png.json()["error"]["type"] == "NotAcceptable"


@pytest.mark.parametrize("dtype", sorted(codec.ML_DTYPES_NAMES))
def test_bits_types_in_npy_and_json_read_back(app: Any, dtype: str) -> None:
    """bfloat16 and every float8 type: the .npy loads in numpy (void of the type's size,
    its bits JAX's) and JSON holds the exact values as float32 (ml_dtypes' float8_e5m2
    says kind "f" and once wrote a "<f1" .npy that numpy cannot read)."""
    url = f"/v1/generate/normal?shape=2,3&seed=5&dtype={dtype}"

    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.get(url, headers={"Accept": accept}) for accept in ("application/x-npy", wire.JSON)]

    npy, as_json = call(app, work)
    assert npy.status_code == as_json.status_code == 200, npy.text
    want = np.asarray(jax.nn.initializers.normal()(jax.random.key(5), (2, 3), dtype))
    loaded = np.load(io.BytesIO(npy.content))
    assert loaded.dtype == np.dtype(f"V{want.itemsize}") and loaded.tobytes() == want.tobytes()
    values = np.array(as_json.json()["data"], dtype=np.float32)
    assert values.tobytes() == jaxinit.to_float32(want).tobytes()


def test_model_download_and_client_over_asgi(app: Any) -> None:
    model, *_ = EXAMPLES["cnn"]
    want = flax_params("cnn", "linen", 3)

    async def work(http: httpx.AsyncClient) -> tuple[httpx.Response, dict[str, np.ndarray]]:
        file = await http.post("/v1/models/init", json={"model": model, "key": {"seed": 3}})
        transport = httpx.ASGITransport(app=app)
        async with jaxinit.AsyncClient("http://in-process", transport=transport) as client:
            params = await client.init_model(model, 3, flat=True)
        return file, dict(params)

    file, params = call(app, work)
    assert file.status_code == 200 and file.headers["content-type"] == wire.SAFETENSORS
    arrays, metadata = safetensors.loads(file.content)
    assert metadata["jax_version"] == jax.__version__
    for name, array in want.items():
        assert arrays[name].tobytes() == array.tobytes() == params[name].tobytes(), name


def test_kserve_v2_infer_and_its_error_body(app: Any) -> None:
    inputs = [
        {"name": "shape", "datatype": "INT64", "shape": [2], "data": [2, 3]},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
    ]

    async def work(http: httpx.AsyncClient) -> list[httpx.Response]:
        good = http.post("/v2/models/lecun_normal/infer", json={"inputs": inputs, "id": "r1"})
        bad = http.post("/v2/models/lecun_normal/infer", json={"inputs": []})
        return list(await asyncio.gather(good, bad))

    good, bad = call(app, work)
    answer = good.json()
    assert answer["id"] == "r1" and answer["outputs"][0]["shape"] == [2, 3]
    assert np.asarray(answer["outputs"][0]["data"], np.float32).tobytes() == lecun(0, (2, 3)).tobytes()
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)


def test_kserve_v2_versions_and_the_protocols_error_body_everywhere(app: Any) -> None:
    """Model version "1" (the one advertised) answers on every versioned route; any other
    version, an unknown /v2 path, a wrong method and a malformed body answer the protocol's
    {"error": "<string>"}, which tritonclient prints, never jaxinit's own error object."""
    inputs = [
        {"name": "shape", "datatype": "INT64", "shape": [1], "data": [4]},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
    ]

    async def work(http: httpx.AsyncClient) -> dict[str, httpx.Response]:
        calls = {
            "meta": http.get("/v2/models/lecun_normal/versions/1"),
            "ready": http.get("/v2/models/lecun_normal/versions/1/ready"),
            "infer": http.post("/v2/models/normal/versions/1/infer", json={"inputs": inputs}),
            "meta2": http.get("/v2/models/lecun_normal/versions/2"),
            "ready2": http.get("/v2/models/lecun_normal/versions/2/ready"),
            "infer2": http.post("/v2/models/normal/versions/2/infer", json={"inputs": inputs}),
            "index": http.post("/v2/repository/index"),
            "nowhere": http.get("/v2/models/lecun_normal/statistics"),
            "method": http.delete("/v2/models/lecun_normal"),
            "bad_json": http.post(
                "/v2/models/normal/infer", content=b"{", headers={"Content-Type": "application/json"}
            ),
        }
        return dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))

    got = call(app, work)
    assert got["meta"].json()["versions"] == ["1"] and got["ready"].json()["ready"] is True
    want = np.asarray(jax.nn.initializers.normal()(jax.random.key(0), (4,)))
    assert np.asarray(got["infer"].json()["outputs"][0]["data"], np.float32).tobytes() == want.tobytes()
    assert got["infer"].json()["model_version"] == "1"
    assert got["ready2"].status_code == 404 and got["ready2"].json()["ready"] is False
    index = got["index"].json()
    assert {"name": "lecun_normal", "version": "1", "state": "READY"} in index and len(index) == len(jaxinit.CATALOG)
    for name, status in [("meta2", 404), ("infer2", 404), ("nowhere", 404), ("method", 405), ("bad_json", 400)]:
        response = got[name]
        assert response.status_code == status, (name, response.text)
        assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str), (name, response.text)
    assert "no version '2'" in got["infer2"].json()["error"]
    not_v2 = call(app, lambda http: http.get("/v1/nowhere"))
    assert not_v2.status_code == 404 and isinstance(not_v2.json()["error"], dict)  # jaxinit's own body


def test_model_params_flat_to_torch_and_compact_reprs(app: Any) -> None:
    torch = pytest.importorskip("torch")
    from jaxinit import models as m

    desc = m.Module(m.Dense(3, 4, param_dtype="bfloat16"), m.Dense(4, 2))

    async def work(http: httpx.AsyncClient) -> tuple[Any, Any, Any]:
        transport = httpx.ASGITransport(app=app)
        async with jaxinit.AsyncClient("http://in-process", transport=transport) as client:
            nested = await client.init_model(desc, 1, layout="torch")
            flat = await client.init_model(desc, 1, layout="torch", flat=True)
            tensor = await client.generate("lecun_normal", 0, (300, 200))
        return nested, flat, tensor

    nested, flat, tensor = call(app, work)
    assert nested.flat().keys() == flat.flat().keys() == dict(flat).keys()
    state = nested.to_torch()
    assert state["Dense_0.weight"].dtype == torch.bfloat16 and state["Dense_1.weight"].dtype == torch.float32
    for name, array in flat.items():
        assert state[name].contiguous().view(torch.uint8).numpy().tobytes() == array.tobytes(), name
    layers = torch.nn.Sequential()
    layers.add_module("Dense_0", torch.nn.Linear(3, 4, dtype=torch.bfloat16))
    layers.add_module("Dense_1", torch.nn.Linear(4, 2))
    layers.load_state_dict(state, strict=True)
    text = repr(nested)
    assert text.startswith("<ModelParams 4 tensors,") and nested.metadata["model_digest"][:12] in text
    assert len(repr(tensor)) < 200 and "float32[300, 200]" in repr(tensor) and jax.__version__ in repr(tensor)
