"""Same-host shared memory, in this process: a grpc.aio server on a loopback port and the
REST app through httpx's ASGI transport over one Service with ``--shared-memory``.

Probes it as an attacker would: a caller handed a region tries every way to write it
(its own mapping, the descriptor, a reopen through /proc, a shared writable mapping,
truncation); afterwards every answer (stream, region, cache hit, with the cache on and
off) still equals local JAX byte for byte. Wrong and stale tokens, unclaimed regions,
a full budget and a dead server's directory are handled without an error reaching a
caller who could have had the stream.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from in_process import serve

import jaxinit
from helpers import local_jax
from jaxinit._shm import SOCKET_FILE, TOKEN_FILE, SharedMemory
from jaxinit.protocol import wire
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.errors import ProtocolError
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.core import Limits, Service
from jaxinit_server.core.regions import Regions

T = TypeVar("T")
# One family per producer (chunked, fill, whole, keyless, a truncated and a variance one):
# every family is compared at the core (tests/unit/core/test_results.py).
KINDS = ("lecun_normal", "constant", "orthogonal", "zeros", "truncated_normal", "variance_scaling", "uniform")
ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": -1.5},
    "variance_scaling": {"scale": 0.5, "mode": "fan_out", "distribution": "uniform"},
}
BIG = (512, 1024)  # 2 MiB of float32: stored sealed, handed to every caller as one file


def _make(root: pathlib.Path, **kwargs: Any) -> Service:
    kwargs.setdefault("cache_bytes", 64 * 2**20)
    service = Service(Limits(max_tensor_bytes=2**27), shared_memory_dir=str(root), **kwargs)
    service.ready = True
    return service


@pytest.fixture(scope="module", params=["cache", "no-cache"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("shm")
    service = _make(root, cache_bytes=64 * 2**20 if request.param == "cache" else 0)
    try:
        yield service
    finally:
        service.close()
    assert list(root.iterdir()) == []  # its directory goes with it


def call(service: Service, work: Callable[[str, httpx.ASGITransport], Awaitable[T]]) -> T:
    return serve(service, work)


def clients(grpc_url: str, transport: httpx.ASGITransport, **kwargs: Any) -> list[jaxinit.AsyncClient]:
    """An async client per transport, each asking for shared memory."""
    kwargs.setdefault("shared_memory", True)
    return [
        jaxinit.AsyncClient(grpc_url, **kwargs),
        jaxinit.AsyncClient("http://in-process", transport=transport, **kwargs),
    ]


def expected(name: str, seed: int | None, shape: tuple[int, ...], dtype: str | None = None) -> bytes:
    return np.ascontiguousarray(local_jax(name, ARGS.get(name, {}), seed, shape, dtype)).tobytes()


def test_each_producer_kind_through_shared_memory_is_exact(service: Service) -> None:
    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for client in clients(grpc_url, transport):
            async with client:
                for name in KINDS:
                    key = 17 if CATALOG[name].uses_key else None
                    tensor = await client.generate(name, key, (4, 5, 6), args=ARGS.get(name, {}))
                    assert tensor.shared_memory, name
                    assert tensor.array.tobytes() == expected(name, key, (4, 5, 6)), name
                    tensor.array[...] = 0  # a private copy-on-write mapping: writable, and nobody else's

    call(service, work)
    assert service.regions is not None and service.regions.state()["unclaimed"] == 0


def _raw_region(grpc_url: str, token: str, seed: int) -> tuple[str, int]:
    """A region of normal(BIG, seed) asked for over the raw stub: (name, bytes)."""
    with grpc.insecure_channel(grpc_url.removeprefix("grpc://")) as channel:
        request = pb.GenerateRequest(initializer="normal", shape=list(BIG), key=pb.Key(seed=seed), shared_memory=token)
        messages = list(pb_grpc.InitializersStub(channel).Generate(request, timeout=60))
    header = messages[0].header
    assert header.region
    return header.region, header.total_bytes


def _attack(fd: int, nbytes: int) -> None:
    """Every way a same-user caller holding a region's descriptor could try to change it."""
    for attempt in (
        lambda: os.pwrite(fd, b"\0" * 4096, 0),
        lambda: os.ftruncate(fd, 1),
        lambda: os.ftruncate(fd, nbytes * 2),
        lambda: mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE),
    ):
        with pytest.raises(PermissionError):
            attempt()
    reopened = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        with pytest.raises(OSError) as refused:
            os.write(reopened, b"\0" * 4096)
        assert refused.value.errno == errno.EPERM
    finally:
        os.close(reopened)


def test_no_write_by_a_caller_reaches_another_answer(service: Service) -> None:
    """Issue 23's critical finding, both transports, cache on and off: a caller writes its
    array and attacks its region's descriptor every way it can; every later answer
    (the stream, shared memory, a cache hit) is still local JAX's bytes, digest included."""
    want = expected("normal", 11, BIG)

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for client in clients(grpc_url, transport):
            async with client:
                first = await client.generate("normal", 11, BIG)
                assert first.shared_memory and first.array.tobytes() == want
                first.array[:1024] = 0  # the caller's own copy-on-write pages
        assert service.regions is not None
        shared = SharedMemory(True, "127.0.0.1")
        shared.discover(service.describe())
        assert shared.token is not None
        name, nbytes = await asyncio.to_thread(_raw_region, grpc_url, shared.token, 11)
        fd = await asyncio.to_thread(shared._claim, name)
        try:
            _attack(fd, nbytes)
            seen = np.frombuffer(mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ), np.uint8)
            assert seen.tobytes() == want
        finally:
            os.close(fd)
            shared.close()
        for client in [*clients(grpc_url, transport), *clients(grpc_url, transport, shared_memory=False)]:
            async with client:
                again = await client.generate("normal", 11, BIG)
                part = await client.generate("normal", 11, BIG, offset=1000, count=300_000)
            assert again.array.tobytes() == want
            assert part.array.tobytes() == want[4000 : 4000 + 1_200_000]
            if service.results.capacity:
                assert again.cache == "hit"
        assert service.results.counts["integrity_failures"] == 0

    call(service, work)


def test_ranges_many_and_models_through_shared_memory(service: Service) -> None:
    shape = (300, 200)
    want = expected("he_uniform", 5, shape, "bfloat16")
    m = jaxinit.models
    model = m.Sequential(m.Dense(7, 9), m.LayerNorm(9), m.Dense(9, 3))

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        async with jaxinit.AsyncClient(grpc_url, shared_memory=False) as plain:
            reference = await plain.init_model(model, 3, flat=True, layout="torch")
        for client in clients(grpc_url, transport):
            async with client:
                whole = await client.generate("he_uniform", 5, shape, "bfloat16")
                part = await client.generate("he_uniform", 5, shape, "bfloat16", offset=99, count=1234)
                assert whole.shared_memory and part.shared_memory
                assert whole.array.view(np.uint8).tobytes() == want
                assert part.array.view(np.uint8).tobytes() == want[198 : 198 + 2468]
                many = [
                    t
                    async for t in client.generate_many(
                        [
                            client.request("zeros", None, (0,)),
                            client.request("he_uniform", 5, shape, "bfloat16", offset=0, count=10),
                        ]
                    )
                ]
                assert many[0].array.size == 0 and not many[0].shared_memory  # nothing to map: the stream
                assert many[1].shared_memory and many[1].array.view(np.uint8).tobytes() == want[:20]
                got = await client.init_model(model, 3, flat=True, layout="torch")
                assert got.keys() == reference.keys()
                for key in reference:
                    assert got[key].tobytes() == reference[key].tobytes(), key

    call(service, work)


def test_callers_without_the_token_are_refused(service: Service) -> None:
    """A wrong token: 403 / PERMISSION_DENIED naming what to do, on the claim socket too;
    the directory holds only the lock, the token and the socket, all private."""
    assert service.regions is not None
    directory = service.regions.directory

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            response = await http.post(
                "/v1/generate",
                json={"initializer": "normal", "shape": [64], "key": {"seed": 1}},
                headers={wire.SHARED_MEMORY_HEADER: "0" * 64},
            )
        assert response.status_code == 403 and response.json()["error"]["type"] == "PermissionDenied"
        assert TOKEN_FILE in response.json()["error"]["message"]
        async with grpc.aio.insecure_channel(grpc_url.removeprefix("grpc://")) as channel:
            stub = pb_grpc.InitializersStub(channel)
            bad = pb.GenerateRequest(initializer="normal", shape=[64], key=pb.Key(seed=1), shared_memory="guess")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                _ = [m async for m in stub.Generate(bad, timeout=30)]
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            good = pb.GenerateRequest(request_id="b", initializer="zeros", shape=[2])
            many = [m async for m in stub.GenerateMany(iter([bad, good]), timeout=30)]
            assert many[0].error.type == "PermissionDenied" and many[1].header.shape == [2]
        thief = SharedMemory(True, "127.0.0.1")
        thief.directory, thief.token = str(directory), "f" * 64
        with pytest.raises(ProtocolError, match="not this server's"):
            await asyncio.to_thread(thief._claim, "r-" + "0" * 24)

    call(service, work)
    assert sorted(p.name for p in directory.iterdir()) == sorted(["lock", TOKEN_FILE, SOCKET_FILE])
    assert (directory / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert (directory / SOCKET_FILE).stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_stale_token_and_a_server_without_shared_memory_fall_back_to_the_stream(service: Service) -> None:
    plain = Service(Limits(max_tensor_bytes=2**26))
    plain.ready = True

    async def stale(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for client in clients(grpc_url, transport):
            async with client:
                shared = client._transport.shared
                await shared.known_async(client._transport.list_initializers)
                shared.token = "stale"
                tensor = await client.generate("glorot_normal", 2, (16, 4))
                assert not tensor.shared_memory and shared.token is None
                assert tensor.array.tobytes() == expected("glorot_normal", 2, (16, 4))

    async def without(grpc_url: str, transport: httpx.ASGITransport) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            response = await http.post(
                "/v1/generate", json={"initializer": "zeros", "shape": [2]}, headers={wire.SHARED_MEMORY_HEADER: "x"}
            )
        assert response.status_code == 403 and "--shared-memory" in response.json()["error"]["message"]
        for client in clients(grpc_url, transport):
            async with client:
                tensor = await client.generate("lecun_normal", 1, (8, 8))
            assert not tensor.shared_memory and tensor.array.tobytes() == expected("lecun_normal", 1, (8, 8))

    try:
        call(service, stale)
        call(plain, without)
    finally:
        plain.close()


def test_unclaimed_regions_expire_and_a_full_budget_sends_the_stream(tmp_path: pathlib.Path) -> None:
    """A caller that asks and never claims: its region is closed after the lease. While
    unclaimed regions hold --shared-memory-bytes, answers (a cache hit too) come in the
    stream, exact, never an error."""
    # A lease no run outlasts: the regions expire when the test says (a sweep a lease later),
    # not when a loaded machine happens to be slow.
    service = _make(tmp_path, shared_memory_lease=600.0, shared_memory_bytes=5 * 2**20)
    assert service.regions is not None
    regions = service.regions
    token = regions.token

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        first = await asyncio.to_thread(_raw_region, grpc_url, token, 4)
        second = await asyncio.to_thread(_raw_region, grpc_url, token, 4)  # a hit: the same sealed file
        assert first[0] != second[0] and regions.state()["unclaimed"] == 2
        for client in clients(grpc_url, transport):
            async with client:
                hit = await client.generate("normal", 4, BIG)
                other = await client.generate("normal", 5, BIG)
            assert not hit.shared_memory and hit.cache == "hit" and hit.array.tobytes() == expected("normal", 4, BIG)
            assert not other.shared_memory and other.array.tobytes() == expected("normal", 5, BIG)
        regions.sweep(now=time.monotonic() + regions.lease_seconds + 1)  # the lease has run out
        assert regions.state()["unclaimed"] == 0 and regions.state()["expired"] == 2
        async with clients(grpc_url, transport)[0] as client:
            again = await client.generate("normal", 5, BIG)
        assert again.shared_memory and again.array.tobytes() == expected("normal", 5, BIG)

    try:
        call(service, work)
    finally:
        service.close()


def test_when_no_region_can_be_had_the_tensor_comes_in_the_stream(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory for a region refused (a full memory cgroup, say): the stream, exact, no error."""
    from jaxinit_server.core import regions as regions_module

    def full(self: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(regions_module.Region, "reserve", full)
    service = _make(tmp_path, cache_bytes=0)

    async def work(grpc_url: str, transport: httpx.ASGITransport) -> None:
        for client in clients(grpc_url, transport):
            async with client:
                big = await client.generate("normal", 31, BIG)
                many = [t async for t in client.generate_many([client.request("normal", 32, BIG)])]
            assert not big.shared_memory and big.array.tobytes() == expected("normal", 31, BIG)
            assert not many[0].shared_memory and many[0].array.tobytes() == expected("normal", 32, BIG)

    try:
        call(service, work)
    finally:
        service.close()


def test_only_loopback_servers_are_asked_by_default() -> None:
    assert SharedMemory(None, "127.0.0.1").wanted and SharedMemory(None, "[::1]").wanted
    assert SharedMemory(None, "localhost").wanted
    assert not SharedMemory(None, "10.1.2.3").wanted and not SharedMemory(None, "jaxinit.internal").wanted
    assert SharedMemory(True, "jaxinit.internal").wanted and not SharedMemory(False, "127.0.0.1").wanted
    unreadable = SharedMemory(True, "elsewhere")
    unreadable.discover({"shared_memory": {"directory": "/nonexistent/jaxinit-1-x"}})
    assert unreadable.token is None  # another host's (or user's) directory: the stream


def test_the_client_trusts_only_a_private_jaxinit_directory(tmp_path: pathlib.Path) -> None:
    """The directory is the server's word: the client reads a token only from a directory that
    is a jaxinit one (its name), its user's, mode 0700, holding a 0600 64-hex token; it never
    reads (let alone sends) any other file."""
    good = tmp_path / "jaxinit-123-abc_9"
    good.mkdir(mode=0o700)
    token = good / TOKEN_FILE
    token.write_text("ab" * 32)
    token.chmod(0o600)

    def offered(directory: pathlib.Path) -> str | None:
        shared = SharedMemory(True, "elsewhere")
        shared.discover({"shared_memory": {"directory": str(directory)}})
        return shared.token

    assert offered(good) == "ab" * 32
    token.chmod(0o644)
    assert offered(good) is None  # a token others can read is not a jaxinit one
    token.chmod(0o600)
    good.chmod(0o755)
    assert offered(good) is None
    good.chmod(0o700)
    secrets_like = tmp_path / "serviceaccount"  # e.g. /var/run/secrets/kubernetes.io/serviceaccount
    secrets_like.mkdir(mode=0o700)
    (secrets_like / TOKEN_FILE).write_text("ab" * 32)
    (secrets_like / TOKEN_FILE).chmod(0o600)
    assert offered(secrets_like) is None
    link = tmp_path / "jaxinit-124-link"
    link.symlink_to(secrets_like)
    assert offered(link) is None
    token.write_text("not a token")
    assert offered(good) is None


def test_a_dead_servers_directory_is_removed_and_a_live_ones_kept(tmp_path: pathlib.Path) -> None:
    """Servers in other PID namespaces sharing one /dev/shm: a directory is an orphan only
    when nobody holds its lock, whatever its process id says."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"jaxinit-{dead.pid}-abcdef"
    orphan.mkdir()
    (orphan / "r-0123456789abcdef01234567").write_bytes(b"x" * 100)
    live = Regions(str(tmp_path))
    try:
        assert not orphan.exists()
        again = Regions(str(tmp_path))  # another server beside it: the first's directory stays
        try:
            assert live.directory.exists() and again.directory.exists()
        finally:
            again.close()
    finally:
        live.close()
    assert list(tmp_path.iterdir()) == []
