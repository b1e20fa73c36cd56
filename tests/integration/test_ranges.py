"""Range requests (flat offset/count) and parallel fetches, over both transports."""

from __future__ import annotations

from typing import Any

import httpx
import jax
import numpy as np
import pytest

import jaxinit

SHAPE = (11, 100, 1000)  # 1_100_000 elements: a full 2**20-element chunk and a partial one


def _whole(name: str = "lecun_normal", dtype: Any = None, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    init = getattr(jax.nn.initializers, name)()
    key = jax.random.key(5)
    return np.asarray(init(key, shape, dtype) if dtype else init(key, shape)).ravel()


@pytest.mark.parametrize(("offset", "count"), [(0, 1), (2**20 - 5, 12), (1_099_990, 10), (0, 1_100_000), (7, 0)])
def test_ranges_equal_slices(url: str, offset: int, count: int) -> None:
    with jaxinit.Client(url) as client:
        tensor = client.generate("lecun_normal", 5, SHAPE, offset=offset, count=count)
    expected = _whole()[offset : offset + count]
    whole = (offset, count) == (0, 1_100_000)
    assert tensor.array.shape == (SHAPE if whole else (count,))
    assert tensor.array.ravel().tobytes() == expected.tobytes()
    assert (tensor.offset, tensor.tensor_shape) == (offset, SHAPE)


def test_ranges_of_what_runs_whole(url: str) -> None:
    """orthogonal needs the whole matrix; a range of it is still that slice of JAX's."""
    with jaxinit.Client(url) as client:
        got = client.generate("orthogonal", 5, (64, 64), "float32", offset=100, count=50).array
        tail = client.generate("normal", 5, (9, 9), "complex64", offset=70).array
    assert got.tobytes() == _whole("orthogonal", jax.numpy.float32, (64, 64))[100:150].tobytes()
    assert tail.tobytes() == _whole("normal", jax.numpy.complex64, (9, 9))[70:].tobytes()


@pytest.mark.parametrize("parallel", [2, 3])
def test_parallel_fetch_is_the_same_tensor(url: str, parallel: int) -> None:
    with jaxinit.Client(url) as client:
        single = client.generate("lecun_normal", 5, SHAPE)
        split = client.generate("lecun_normal", 5, SHAPE, parallel=parallel)
    assert split.array.shape == SHAPE
    assert split.array.tobytes() == single.array.tobytes() == _whole().tobytes()
    assert split.provenance == single.provenance  # the whole tensor's canonical request and digest


def test_parallel_default_on_the_client_and_async(server: Any) -> None:
    import asyncio

    async def main() -> np.ndarray:
        async with jaxinit.AsyncClient(server.grpc_url, parallel=4) as client:
            return await client.lecun_normal()(5, (2100, 2000))  # over 2**22 elements: split

    assert asyncio.run(main()).tobytes() == _whole(shape=(2100, 2000)).tobytes()


@pytest.mark.parametrize(
    ("offset", "count", "text"),
    [
        (1_100_001, None, "past the end"),
        (1_000_000, 100_001, "past the end"),
        (-1, None, "non-negative"),
    ],
)
def test_bad_ranges_are_refused(server: Any, offset: int, count: int | None, text: str) -> None:
    body = {"initializer": "lecun_normal", "shape": list(SHAPE), "key": {"seed": 5}, "offset": offset}
    if count is not None:
        body["count"] = count
    response = httpx.post(f"{server.http_url}/v1/generate", json=body)
    assert response.status_code == 400 and text in response.json()["error"]["message"]
    if offset >= 0:
        with jaxinit.Client(server.grpc_url) as client, pytest.raises(jaxinit.InvalidArgument, match=text):
            client.generate("lecun_normal", 5, SHAPE, offset=offset, count=count)


def test_get_form_range_has_its_own_etag_and_json(server: Any) -> None:
    base = f"{server.http_url}/v1/generate/lecun_normal"
    whole = httpx.get(base, params={"shape": "11,100,1000", "seed": "5"})
    part = httpx.get(
        base,
        params={"shape": "11,100,1000", "seed": "5", "offset": "10", "count": "4"},
        headers={"Accept": "application/json"},
    )
    assert part.headers["etag"] != whole.headers["etag"]
    body = part.json()
    assert (body["shape"], body["offset"], body["count"]) == ([11, 100, 1000], 10, 4)
    assert np.asarray(body["data"], np.float32).tobytes() == _whole()[10:14].tobytes()
    assert whole.content == _whole().tobytes()
