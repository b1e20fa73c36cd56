"""The REST gateway's forms: raw bytes, .npy, JSON, the cacheable GET, health, OpenAPI."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import jax
import ml_dtypes
import numpy as np
import pytest

import jaxinit
from helpers import local_jax

BODY = {"initializer": "lecun_normal", "shape": [5, 7], "key": {"seed": 3}}


def _expected(dtype: Any = None) -> np.ndarray:
    init = jax.nn.initializers.lecun_normal()
    return np.asarray(init(jax.random.key(3), (5, 7), dtype) if dtype else init(jax.random.key(3), (5, 7)))


def test_octet_stream_with_headers(server: Any) -> None:
    response = httpx.post(f"{server.http_url}/v1/generate", json=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-jaxinit-shape"] == "5,7"
    assert response.headers["x-jaxinit-dtype"] == "float32"
    assert response.headers["x-jaxinit-byte-order"] == "little"
    provenance = json.loads(response.headers["x-jaxinit-provenance"])
    assert provenance["jax_version"] == jax.__version__
    assert response.content == _expected().tobytes()


def test_npy_is_a_valid_file(server: Any) -> None:
    response = httpx.post(f"{server.http_url}/v1/generate", json=BODY, headers={"Accept": "application/x-npy"})
    assert response.headers["content-type"] == "application/x-npy"
    loaded = np.load(io.BytesIO(response.content))
    expected = _expected()
    assert loaded.dtype == expected.dtype and loaded.tobytes() == expected.tobytes()


def test_npy_bfloat16_travels_as_two_byte_void(server: Any) -> None:
    body = {**BODY, "dtype": "bfloat16"}
    response = httpx.post(f"{server.http_url}/v1/generate", json=body, headers={"Accept": "application/x-npy"})
    loaded = np.load(io.BytesIO(response.content))
    assert loaded.dtype.itemsize == 2
    assert loaded.view(ml_dtypes.bfloat16).tobytes() == _expected(jax.numpy.bfloat16).tobytes()


def test_json_values_are_exact(server: Any) -> None:
    response = httpx.post(f"{server.http_url}/v1/generate", json=BODY, headers={"Accept": "application/json"})
    body = response.json()
    assert body["shape"] == [5, 7] and body["dtype"] == "float32"
    assert np.asarray(body["data"], np.float32).tobytes() == _expected().tobytes()
    assert body["provenance"]["key_data"] == [0, 3]


def test_json_complex_and_nonfinite(server: Any) -> None:
    body = {"initializer": "normal", "shape": [3], "dtype": "complex64", "key": {"seed": 1}}
    data = httpx.post(f"{server.http_url}/v1/generate", json=body, headers={"Accept": "application/json"}).json()
    expected = np.asarray(jax.nn.initializers.normal()(jax.random.key(1), (3,), jax.numpy.complex64))
    got = np.asarray(data["data"], np.float32)
    assert got[:, 0].tobytes() == expected.real.tobytes() and got[:, 1].tobytes() == expected.imag.tobytes()
    body = {"initializer": "constant", "args": {"value": 1e39}, "shape": [2]}  # overflows float32
    response = httpx.post(f"{server.http_url}/v1/generate", json=body, headers={"Accept": "application/json"})
    assert response.json()["data"] == ["inf", "inf"]


def test_accept_negotiation_honours_q(server: Any) -> None:
    accept = "application/json;q=0.5, application/x-npy;q=0.9, */*;q=0.1"
    response = httpx.post(f"{server.http_url}/v1/generate", json=BODY, headers={"Accept": accept})
    assert response.headers["content-type"] == "application/x-npy"


def test_get_form_is_cacheable_with_etag_and_304(server: Any) -> None:
    url = f"{server.http_url}/v1/generate/variance_scaling"
    params = {
        "shape": "5,7",
        "seed": "3",
        "scale": "1.0",
        "mode": "fan_in",
        "distribution": "truncated_normal",
        "batch_axis": "[]",
    }
    first = httpx.get(url, params=params)
    assert first.status_code == 200
    assert first.content == _expected().tobytes()  # lecun_normal is exactly this variance_scaling
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    again = httpx.get(url, params=params, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = httpx.get(url, params={**params, "seed": "4"}, headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    legacy = httpx.get(url, params={**params, "threefry_partitionable": "false"})
    assert legacy.headers["etag"] != etag


def test_get_form_key_data_and_impl(server: Any) -> None:
    response = httpx.get(
        f"{server.http_url}/v1/generate/normal",
        params={"shape": "4", "key_data": "1,2,3,4", "key_impl": "rbg", "stddev": "2"},
    )
    key = jax.random.wrap_key_data(np.array([1, 2, 3, 4], np.uint32), impl="rbg")
    assert response.content == np.asarray(jax.nn.initializers.normal(2)(key, (4,))).tobytes()


def test_scalar_shape_in_get_form(server: Any) -> None:
    response = httpx.get(f"{server.http_url}/v1/generate/normal", params={"shape": "", "seed": "0"})
    assert response.headers["x-jaxinit-shape"] == ""
    assert response.content == np.asarray(jax.nn.initializers.normal()(jax.random.key(0), ())).tobytes()


def test_health_ready_docs_and_registry(server: Any) -> None:
    assert httpx.get(f"{server.http_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.http_url}/readyz").status_code == 200
    assert httpx.get(f"{server.http_url}/docs").status_code == 200
    spec = httpx.get(f"{server.http_url}/openapi.json").json()
    assert {"/v1/generate", "/v1/generate/{initializer}", "/v1/initializers"} <= set(spec["paths"])
    registry = httpx.get(f"{server.http_url}/v1/initializers").json()
    names = {i["name"] for i in registry["initializers"]}
    assert {"lecun_normal", "variance_scaling", "zeros_init"} <= names
    vs = next(i for i in registry["initializers"] if i["name"] == "variance_scaling")
    mode = next(a for a in vs["arguments"] if a["name"] == "mode")
    assert mode["required"] and "fan_geo_avg" in mode["choices"]
    assert registry["server"]["jax_version"] == jax.__version__


@pytest.mark.parametrize(
    ("name", "args", "key", "shape", "dtype", "flags"),
    [
        (
            "variance_scaling",
            {"scale": 2.0, "mode": "fan_geo_avg", "distribution": "uniform", "batch_axis": [0]},
            3,
            (2, 8, 4),
            "bfloat16",
            {},
        ),
        ("constant", {"value": -0.5}, None, (3, 2), "float16", {}),
        ("normal", {"stddev": 0.02}, jaxinit.wrap_key_data([1, 2]), (5, 7), "float64", {}),
        ("truncated_normal", {"lower": -1.5, "upper": 2}, 9, (33,), None, {"threefry_partitionable": False}),
        ("orthogonal", {"column_axis": 0}, 4, (6, 6), "float32", {}),
    ],
)
def test_the_clients_get_mode_is_exact(
    server: Any,
    name: str,
    args: dict[str, Any],
    key: Any,
    shape: tuple[int, ...],
    dtype: str | None,
    flags: dict[str, bool],
) -> None:
    """``Client(cacheable=True)`` spells every request as a canonical GET URL: same bytes as
    the POST form and as local JAX, for every kind of argument, key and flag."""
    with (
        jaxinit.Client(server.http_url, cacheable=True, **flags) as get,
        jaxinit.Client(server.http_url, **flags) as post,
    ):
        via_get = get.generate(name, key, shape, dtype, args=args)
        via_post = post.generate(name, key, shape, dtype, args=args)
    local_key = key if not isinstance(key, jaxinit.Key) else ("data", list(key.data or ()), key.impl)
    expected = local_jax(name, args, local_key, shape, dtype, partitionable=flags.get("threefry_partitionable"))
    assert isinstance(expected, np.ndarray)
    assert via_get.array.tobytes() == via_post.array.tobytes() == expected.tobytes()
    assert via_get.array.dtype == expected.dtype
