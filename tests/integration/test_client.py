"""The thin client over real servers: both transports, sync and async, injected transports."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import jax
import numpy as np
import pytest

import jaxinit
from jaxinit_server.core import Limits, Service
from jaxinit_server.rest.app import create_app


def _expected(shape: tuple[int, ...] = (16, 8)) -> np.ndarray:
    return np.asarray(jax.nn.initializers.glorot_uniform()(jax.random.key(11), shape))


def test_readme_example(url: str) -> None:
    client = jaxinit.Client(url)
    init = client.lecun_normal()
    w = init(42, (784, 256))
    b = client.zeros(0, (256,))
    assert w.dtype == np.float32 and w.shape == (784, 256)
    assert w.tobytes() == np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(42), (784, 256))).tobytes()
    assert not b.any() and b.shape == (256,)
    legacy = jaxinit.Client(url, threefry_partitionable=False)
    with jax.threefry_partitionable(False):
        old = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(42), (784, 256)))
    assert legacy.lecun_normal()(42, (784, 256)).tobytes() == old.tobytes()
    assert old.tobytes() != w.tobytes()  # the flag matters, so the test can tell
    client.close()
    legacy.close()


def test_bfloat16_arrives_as_ml_dtypes(url: str) -> None:
    import ml_dtypes

    with jaxinit.Client(url) as client:
        w = client.he_uniform()(1, (4, 4), "bfloat16")
    assert w.dtype == ml_dtypes.bfloat16


def test_initializer_by_name_and_factory_dtype(url: str) -> None:
    with jaxinit.Client(url) as client:
        init = client.initializer("normal", stddev=0.5, dtype="float16")
        got = init(3, (5,))
        zeros = client.initializer("zeros")
        assert not zeros(0, (2,)).any()
    expected = np.asarray(jax.nn.initializers.normal(0.5, dtype=jax.numpy.float16)(jax.random.key(3), (5,)))
    assert got.dtype == np.float16 and got.tobytes() == expected.tobytes()


def test_generate_many_in_order_with_errors_in_place(url: str) -> None:
    with jaxinit.Client(url) as client:
        requests = [
            client.request("glorot_uniform", 11, (16, 8)),
            client.request("lecun_normal", 0, (3,)),  # 1-D fans: JAX refuses
            client.request("zeros", None, (2, 2), "int8"),
        ]
        results = list(client.generate_many(requests))
    assert results[0].array.tobytes() == _expected().tobytes()
    assert isinstance(results[1], jaxinit.JaxError)
    assert results[2].array.dtype == np.int8


def test_async_client(url: str) -> None:
    async def main() -> None:
        async with jaxinit.AsyncClient(url) as client:
            init = client.glorot_uniform()
            got = await asyncio.gather(*(init(11, (16, 8)) for _ in range(8)))
            for array in got:
                assert array.tobytes() == _expected().tobytes()
            results = [
                r
                async for r in client.generate_many(
                    [client.request("normal", 1, (2,)), client.request("lecun_normal", 1, (2,))]
                )
            ]
            assert isinstance(results[0], jaxinit.Tensor)
            assert isinstance(results[1], jaxinit.JaxError)
            registry = await client.list_initializers()
            assert "orthogonal" in {i["name"] for i in registry["initializers"]}
            with pytest.raises(jaxinit.UnknownInitializer):
                await client.generate("nope", 0, (1,))

    asyncio.run(main())


def test_large_tensor_beyond_the_grpc_message_limit(url: str) -> None:
    shape = (2048, 1024)  # 8 MiB float32: several chunks, twice the 4 MiB message limit
    with jaxinit.Client(url) as client:
        got = client.glorot_uniform()(11, shape)
    assert got.tobytes() == _expected(shape).tobytes()


def test_injected_grpc_channel(server: Any) -> None:
    channel = grpc.insecure_channel(server.grpc_target)
    with jaxinit.Client("grpc://ignored:1", channel=channel) as client:
        assert client.glorot_uniform()(11, (16, 8)).tobytes() == _expected().tobytes()


def test_injected_httpx_transport_reaches_an_in_process_app() -> None:
    """The client wired to the FastAPI app in this process, no socket at all."""
    service = Service(Limits())

    async def main() -> np.ndarray:
        transport = httpx.ASGITransport(app=create_app(service))
        async with jaxinit.AsyncClient("http://in-process", transport=transport) as client:
            return await client.glorot_uniform()(11, (16, 8))

    try:
        assert asyncio.run(main()).tobytes() == _expected().tobytes()
    finally:
        service.close()


def test_wrong_injection_is_refused() -> None:
    with pytest.raises(jaxinit.InvalidArgument, match="channel="):
        jaxinit.Client("http://127.0.0.1:1", channel=object())
    with pytest.raises(jaxinit.InvalidArgument, match=r"grpc\(s\)://"):
        jaxinit.Client("ftp://127.0.0.1:1")


class _Bars:
    """tqdm stand-in that records each bar's total when drawn and the bytes it was told."""

    made: list[_Bars] = []

    def __init__(self, total: int, **_: Any) -> None:
        self.total, self.first_total, self.n = total, total, 0
        _Bars.made.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_progress_bars_only_above_a_size_and_a_models_total_from_its_start(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tqdm.auto

    import jaxinit._client

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bars)
    monkeypatch.setattr(jaxinit._client, "PROGRESS_MIN_BYTES", 64 * 1024)
    _Bars.made = []
    with jaxinit.Client(url, progress=True) as client:
        client.normal()(0, (8, 8))  # 256 bytes: no bar
        assert _Bars.made == []
        model = jaxinit.models.Sequential(jaxinit.models.Dense(128, 128), jaxinit.models.Dense(128, 64))
        params = client.init_model(model, 0, flat=True)
    total = sum(a.nbytes for a in params.values())  # 65536 + 512 + 32768 + 256 bytes
    assert len(_Bars.made) == 1, "one bar for the model"
    bar = _Bars.made[0]
    assert bar.first_total == bar.total == total  # the whole size when first drawn, never grown
    assert bar.n == total
