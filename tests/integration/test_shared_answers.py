"""Answers made once for many callers: single-flight generation and the result caches.

Each test has its own server (the caches are state). Every answer, however it was made
(made alone, made and shared, joined, from memory, from disk), is compared byte for
byte with local JAX, and the answer says which way it was made.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import jaxinit
from helpers import local_jax
from jaxinit.protocol.catalog import CATALOG
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.testing import ServerProcess, running_server

# Arguments for entries that need some, and a shape every family accepts.
ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}
SHAPE = (3, 4, 5)


def _metrics(srv: ServerProcess) -> dict[str, float]:
    text = httpx.get(srv.http_url + "/metrics", timeout=30).text
    out = {}
    for match in re.finditer(r'^jaxinit_result_cache_answers_total\{result="(\w+)"\} (\S+)$', text, re.M):
        out[match.group(1)] = float(match.group(2))
    return out


def _state(srv: ServerProcess) -> dict[str, Any]:
    return httpx.get(srv.http_url + "/readyz", timeout=30).json()  # type: ignore[no-any-return]


def _idle(srv: ServerProcess, timeout: float = 120) -> None:
    """Wait until nothing is admitted and no generation is in flight (both end asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        state = _state(srv)
        if state["admission"]["streams"] == 0 and state["results"]["flights"] == 0:
            return
        assert time.monotonic() < deadline, state
        time.sleep(0.02)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with running_server("--no-warm-up") as server:
        yield server
        assert server.stop() == 0, "".join(server.output)


def _expected(name: str, key: Any, shape: tuple[int, ...], dtype: str | None = None, args: Any = None) -> np.ndarray:
    return np.ascontiguousarray(local_jax(name, args or ARGS.get(name, {}), key, shape, dtype))


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_every_family_cached_equals_fresh_equals_local_jax(srv: ServerProcess, transport: str) -> None:
    """Each initializer made (miss), then served from memory (hit): the same bytes as JAX's."""
    url = srv.grpc_url if transport == "grpc" else srv.http_url
    # tensors of their own (keyless ones by their shape): the first call makes them
    seed, shape = (11, SHAPE) if transport == "grpc" else (12, (3, 5, 6))
    with jaxinit.Client(url) as client:
        for name in sorted(CATALOG):
            key = seed if CATALOG[name].uses_key else None
            expected = _expected(name, key, shape)
            first = client.generate(name, key, shape, args=ARGS.get(name, {}))
            again = client.generate(name, key, shape, args=ARGS.get(name, {}))
            assert (first.cache, again.cache) == ("miss", "hit"), name
            for tensor in (first, again):
                assert tensor.array.dtype == expected.dtype and tensor.array.shape == expected.shape, name
                assert tensor.array.tobytes() == expected.tobytes(), name
            assert again.provenance == first.provenance, name
            # a range of a cached tensor is a slice of it
            piece = client.generate(name, key, shape, args=ARGS.get(name, {}), offset=7, count=30)
            assert piece.cache == "hit" and piece.array.tobytes() == expected.reshape(-1)[7:37].tobytes(), name


def test_concurrent_identical_requests_share_one_generation(srv: ServerProcess) -> None:
    """Eight callers of one 16 MiB tensor at once, over both transports, two of them for
    ranges: one generation (one miss), every caller its own full stream, all exact."""
    shape = (2048, 2048)
    expected = _expected("lecun_normal", 21, shape)
    before = _metrics(srv)

    async def run() -> list[jaxinit.Tensor]:
        clients = [jaxinit.AsyncClient(srv.grpc_url if i % 2 else srv.http_url) for i in range(8)]
        try:
            wholes = [asyncio.ensure_future(c.generate("lecun_normal", 21, shape)) for c in clients[:6]]
            # Ranges join a generation under way (or take the cached tensor); one that came
            # first would be made alone, as a range of a tensor nobody is making is.
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as http:
                while not any(w.done() for w in wholes):
                    results = (await http.get("/readyz")).json()["results"]
                    if results["flights"] or results["cached_tensors"]:
                        break
                    await asyncio.sleep(0.005)
            ranges = [c.generate("lecun_normal", 21, shape, offset=1000, count=2**20) for c in clients[6:]]
            return list(await asyncio.gather(*wholes, *ranges))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    results = asyncio.run(run())
    for tensor in results[:6]:
        assert tensor.array.tobytes() == expected.tobytes()
    for tensor in results[6:]:
        assert tensor.array.tobytes() == expected.reshape(-1)[1000 : 1000 + 2**20].tobytes()
    hows = sorted(t.cache for t in results)
    assert hows.count("miss") == 1 and set(hows) <= {"miss", "shared", "hit"}, hows
    after = _metrics(srv)
    assert after["miss"] - before.get("miss", 0) == 1
    _idle(srv)


def test_a_caller_that_leaves_does_not_stop_the_others(srv: ServerProcess) -> None:
    """The caller whose request started a shared generation goes away after its header; the
    one that joined it still gets every byte, and the tensor is cached for the next."""
    shape = [4096, 2048]  # 32 MiB
    expected = _expected("normal", 33, tuple(shape))
    request = pb.GenerateRequest(initializer="normal", shape=shape, key=pb.Key(seed=33))
    with grpc.insecure_channel(srv.grpc_target) as leader, grpc.insecure_channel(srv.grpc_target) as joiner:
        first = pb_grpc.InitializersStub(leader).Generate(request, timeout=120)
        header = next(first)
        assert header.header.cache == "miss"
        second = pb_grpc.InitializersStub(joiner).Generate(request, timeout=120)
        joined = next(second)  # its header: it holds the generation too
        first.cancel()
        messages = [joined, *second]
    assert messages[0].header.cache in ("shared", "hit")
    data = b"".join(m.data.data for m in messages if m.WhichOneof("payload") == "data")
    assert data == expected.tobytes()
    with jaxinit.Client(srv.http_url) as client:
        again = client.generate("normal", 33, tuple(shape))
    assert again.cache == "hit" and again.array.tobytes() == expected.tobytes()
    _idle(srv)
    assert srv.process.poll() is None


def test_a_generation_whose_callers_all_leave_frees_everything(srv: ServerProcess) -> None:
    """Its only caller goes after the header: making the tensor stops (or has ended), its
    reservation and admission are given back, and the next identical request is exact."""
    request = pb.GenerateRequest(initializer="uniform", shape=[8192, 4096], key=pb.Key(seed=44))
    with grpc.insecure_channel(srv.grpc_target) as channel:
        call = pb_grpc.InitializersStub(channel).Generate(request, timeout=120)
        assert next(call).header.cache == "miss"
        call.cancel()
    _idle(srv)
    assert _state(srv)["results"]["reserved_bytes"] == 0
    with jaxinit.Client(srv.grpc_url) as client:
        again = client.generate("uniform", 44, (8192, 4096))
    assert again.cache in ("miss", "hit")  # cached only if it was made whole before the caller left
    assert again.array.tobytes() == _expected("uniform", 44, (8192, 4096)).tobytes()
    _idle(srv)


def test_models_share_and_hit_too(srv: ServerProcess) -> None:
    """A model fetched over InitModel, then through the REST plan, then in the PyTorch layout:
    the later ones from the cache, all the same bytes."""
    m = jaxinit.models
    model = m.Sequential(m.Dense(6, 24), m.Dense(24, 5))
    before = _metrics(srv)
    with jaxinit.Client(srv.grpc_url) as grpc_client, jaxinit.Client(srv.http_url) as http_client:
        first = grpc_client.init_model(model, 77, flat=True)
        after_first = _metrics(srv)
        second = http_client.init_model(model, 77, flat=True)
        torch = grpc_client.init_model(model, 77, flat=True, layout="torch")
    after = _metrics(srv)
    tensors = len(first)
    assert after_first["miss"] - before.get("miss", 0) == tensors
    assert after["hit"] - after_first.get("hit", 0) == 2 * tensors
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].tobytes() == second[name].tobytes(), name
    kernels = sorted(k for k in first if k.endswith("kernel"))
    weights = sorted(k for k in torch if k.endswith("weight"))
    for kernel, weight in zip(kernels, weights, strict=True):
        assert np.array_equal(torch[weight], first[kernel].T), (kernel, weight)


def test_cache_off_makes_every_answer_alone() -> None:
    with running_server("--no-warm-up", "--cache-bytes", "0") as srv, jaxinit.Client(srv.grpc_url) as client:
        answers = [client.generate("he_normal", 3, (64, 64)) for _ in range(2)]
        assert [a.cache for a in answers] == ["none", "none"]
        assert answers[0].array.tobytes() == answers[1].array.tobytes() == _expected("he_normal", 3, (64, 64)).tobytes()
        assert _state(srv)["results"]["cached_tensors"] == 0


def test_the_memory_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    """--cache-bytes 9 MiB holds two 4 MiB tensors: a third evicts the least recently used."""
    with running_server("--no-warm-up", "--cache-bytes", str(9 * 2**20)) as srv, jaxinit.Client(srv.http_url) as c:
        shape = (1024, 1024)
        for seed in (1, 2):
            assert c.generate("normal", seed, shape).cache == "miss"
        assert c.generate("normal", 1, shape).cache == "hit"  # 1 is now the most recently used
        assert c.generate("normal", 3, shape).cache == "miss"  # evicts 2
        assert c.generate("normal", 1, shape).cache == "hit"
        evicted = c.generate("normal", 2, shape)
        assert evicted.cache == "miss" and evicted.array.tobytes() == _expected("normal", 2, shape).tobytes()
        state = _state(srv)["results"]
        assert state["cached_bytes"] <= 9 * 2**20 and state["evicted_total"] >= 2
        # larger than the whole cache: made alone, never cached
        assert c.generate("normal", 4, (2048, 2048)).cache == "none"


def test_the_disk_cache_survives_a_restart_and_never_serves_a_corrupted_entry(tmp_path: pathlib.Path) -> None:
    shape = (512, 256)
    expected = _expected("glorot_uniform", 9, shape)
    args = ("--no-warm-up", "--cache-dir", str(tmp_path))
    with running_server(*args) as srv, jaxinit.Client(srv.grpc_url) as client:
        assert client.generate("glorot_uniform", 9, shape).cache == "miss"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*.json")):  # written on a thread once made
            assert time.monotonic() < deadline
            time.sleep(0.02)
    with running_server(*args) as srv, jaxinit.Client(srv.http_url) as client:
        from_disk = client.generate("glorot_uniform", 9, shape)
        assert from_disk.cache == "disk" and from_disk.array.tobytes() == expected.tobytes()
        assert client.generate("glorot_uniform", 9, shape, offset=3, count=5).cache == "hit"
    # One flipped byte: the entry is deleted unread, and the tensor made again.
    (data,) = tmp_path.glob("*.bin")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with running_server(*args) as srv, jaxinit.Client(srv.grpc_url) as client:
        remade = client.generate("glorot_uniform", 9, shape)
        assert remade.cache == "miss" and remade.array.tobytes() == expected.tobytes()
        assert _state(srv)["results"]["disk_rejected_total"] == 1
        text = httpx.get(srv.http_url + "/metrics", timeout=30).text
        assert "jaxinit_result_cache_disk_rejected_total 1.0" in text
