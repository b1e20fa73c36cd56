"""Same-host shared memory: tensors written into regions the client maps, no socket between.

Real servers started with --shared-memory (each test's own directory under tmp_path, so
leftovers are seen), real clients; every answer compared byte for byte with local JAX;
callers without the token refused; regions cleaned when a caller vanishes mid-transfer,
when nobody claims them, and when the server stops.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import jaxinit
from helpers import local_jax
from jaxinit._shm import SharedMemory
from jaxinit.protocol.catalog import CATALOG
from jaxinit.v1 import jaxinit_pb2 as pb
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc
from jaxinit_server.testing import ServerProcess, running_server

ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": -1.5},
    "variance_scaling": {"scale": 0.5, "mode": "fan_out", "distribution": "uniform"},
}


def _directory(srv: ServerProcess) -> pathlib.Path:
    return pathlib.Path(httpx.get(srv.http_url + "/v1/initializers", timeout=30).json()["shared_memory"]["directory"])


def _regions(directory: pathlib.Path) -> list[str]:
    """The regions written for callers (m-* files are cached tensors' buffers, the token the token)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("r-")) if directory.exists() else []


def _until(what: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def shm_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("shm")


@pytest.fixture(scope="module")
def srv(shm_root: pathlib.Path) -> Iterator[ServerProcess]:
    with running_server("--no-warm-up", "--shared-memory", "--shared-memory-dir", str(shm_root)) as server:
        yield server
        assert server.stop() == 0, "".join(server.output)
    assert list(shm_root.iterdir()) == []  # its directory goes with it


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_every_family_through_shared_memory_is_exact(srv: ServerProcess, transport: str) -> None:
    url = srv.grpc_url if transport == "grpc" else srv.http_url
    shape = (4, 5, 6)
    with jaxinit.Client(url) as client:
        for name in sorted(CATALOG):
            key = 17 if CATALOG[name].uses_key else None
            expected = np.ascontiguousarray(local_jax(name, ARGS.get(name, {}), key, shape, None))
            tensor = client.generate(name, key, shape, args=ARGS.get(name, {}))
            assert tensor.shared_memory, name
            assert tensor.array.dtype == expected.dtype and tensor.array.shape == expected.shape, name
            assert tensor.array.tobytes() == expected.tobytes(), name
            tensor.array[...] = 0  # a private copy-on-write mapping: writable, and nobody else's
    assert _regions(_directory(srv)) == []  # each claimed (its name deleted) as it was mapped


def test_ranges_many_async_and_models_through_shared_memory(srv: ServerProcess) -> None:
    shape = (300, 200)
    expected = np.asarray(local_jax("he_uniform", {}, 5, shape, "bfloat16"))

    async def run(url: str) -> None:
        async with jaxinit.AsyncClient(url) as client:
            whole = await client.generate("he_uniform", 5, shape, "bfloat16")
            part = await client.generate("he_uniform", 5, shape, "bfloat16", offset=99, count=1234)
            assert whole.shared_memory and part.shared_memory
            assert whole.array.tobytes() == expected.tobytes()
            assert part.array.tobytes() == expected.reshape(-1)[99:1333].tobytes()
            many = [t async for t in client.generate_many([client.request("zeros", None, (0,)), part_request(client)])]
            assert many[0].array.size == 0 and not many[0].shared_memory  # nothing to map: in the stream
            assert many[1].shared_memory and many[1].array.tobytes() == expected.reshape(-1)[:10].tobytes()

    def part_request(client: Any) -> Any:
        return client.request("he_uniform", 5, shape, "bfloat16", offset=0, count=10)

    for url in (srv.grpc_url, srv.http_url):
        asyncio.run(run(url))
    m = jaxinit.models
    model = m.Sequential(m.Dense(7, 9), m.LayerNorm(9), m.Dense(9, 3))
    with jaxinit.Client(srv.grpc_url, shared_memory=False) as plain:
        want = plain.init_model(model, 3, flat=True, layout="torch")
    for url in (srv.grpc_url, srv.http_url):
        with jaxinit.Client(url) as client:
            got = client.init_model(model, 3, flat=True, layout="torch")
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), name
    assert _regions(_directory(srv)) == []


def test_callers_without_the_token_are_refused(srv: ServerProcess) -> None:
    """A wrong token: 403 / PERMISSION_DENIED naming what to do, and nothing written."""
    directory = _directory(srv)
    response = httpx.post(
        srv.http_url + "/v1/generate",
        json={"initializer": "normal", "shape": [64], "key": {"seed": 1}},
        headers={"x-jaxinit-shared-memory": "0" * 64},
        timeout=30,
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "PermissionDenied"
    assert "token" in response.json()["error"]["message"]
    with grpc.insecure_channel(srv.grpc_target) as channel:
        request = pb.GenerateRequest(initializer="normal", shape=[64], key=pb.Key(seed=1), shared_memory="guess")
        with pytest.raises(grpc.RpcError) as refused:
            list(pb_grpc.InitializersStub(channel).Generate(request, timeout=30))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # in a GenerateMany stream: that item's error, the others served
        good = pb.GenerateRequest(request_id="b", initializer="zeros", shape=[2])
        many = list(pb_grpc.InitializersStub(channel).GenerateMany(iter([request, good]), timeout=30))
        assert many[0].error.type == "PermissionDenied" and many[1].header.shape == [2]
    assert _regions(directory) == []
    token = (directory / "token").stat()
    assert token.st_mode & 0o777 == 0o600 and directory.stat().st_mode & 0o777 == 0o700
    assert srv.process.poll() is None


def test_a_server_without_shared_memory_refuses_tokens_and_clients_fall_back() -> None:
    with running_server("--no-warm-up") as plain:
        response = httpx.post(
            plain.http_url + "/v1/generate",
            json={"initializer": "zeros", "shape": [2]},
            headers={"x-jaxinit-shared-memory": "x"},
            timeout=30,
        )
        assert response.status_code == 403 and "--shared-memory" in response.json()["error"]["message"]
        for url in (plain.grpc_url, plain.http_url):
            with jaxinit.Client(url, shared_memory=True) as client:
                tensor = client.generate("lecun_normal", 1, (8, 8))
            assert not tensor.shared_memory
            assert tensor.array.tobytes() == np.asarray(local_jax("lecun_normal", {}, 1, (8, 8), None)).tobytes()


def test_a_token_that_went_stale_falls_back_to_the_stream(srv: ServerProcess) -> None:
    """The client read a token the server no longer has (a replica restarted, or another one
    answered): it is refused once, and the tensor comes in the stream."""
    for url in (srv.grpc_url, srv.http_url):
        with jaxinit.Client(url) as client:
            transport = client._transport
            transport.shared.discover(transport.list_initializers())
            transport.shared.token = "stale"
            tensor = client.generate("glorot_normal", 2, (16, 4))
            assert not tensor.shared_memory and transport.shared.token is None
            assert tensor.array.tobytes() == np.asarray(local_jax("glorot_normal", {}, 2, (16, 4), None)).tobytes()


def test_only_loopback_servers_are_asked_by_default() -> None:
    assert SharedMemory(None, "127.0.0.1").wanted and SharedMemory(None, "[::1]").wanted
    assert SharedMemory(None, "localhost").wanted
    assert not SharedMemory(None, "10.1.2.3").wanted and not SharedMemory(None, "jaxinit.internal").wanted
    assert SharedMemory(True, "jaxinit.internal").wanted and not SharedMemory(False, "127.0.0.1").wanted
    unreadable = SharedMemory(True, "elsewhere")
    unreadable.discover({"shared_memory": {"directory": "/nonexistent/jaxinit-1-x"}})
    assert unreadable.token is None  # another host's (or user's) directory: the stream


@pytest.fixture
def shm_dir() -> Iterator[pathlib.Path]:
    """A directory in memory (/dev/shm where there is one), removed after the test."""
    path = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


CLIENT = textwrap.dedent(
    """
    import sys, jaxinit
    with jaxinit.Client(sys.argv[1]) as client:
        client.generate("normal", 8, (16384, 16384))
    """
)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_client_killed_mid_transfer_leaves_no_region(shm_dir: pathlib.Path, transport: str) -> None:
    """A client process asks for 1 GiB through shared memory and is killed (SIGKILL) while the
    server writes its region: the region is deleted (the call's end, or at the latest its
    lease), the server lives on and serves the next caller."""
    with running_server(
        "--no-warm-up",
        "--shared-memory",
        "--shared-memory-dir",
        str(shm_dir),
        "--shared-memory-lease",
        "5",
        "--max-tensor-bytes",
        str(2**30),
    ) as srv:
        directory = _directory(srv)
        url = srv.grpc_url if transport == "grpc" else srv.http_url
        client = subprocess.Popen([sys.executable, "-c", CLIENT, url])
        try:
            _until(lambda: _regions(directory) or client.poll() is not None)
            assert client.poll() is None, "the client finished before it could be killed"
            os.kill(client.pid, signal.SIGKILL)
        finally:
            client.kill()
            client.wait()
        _until(lambda: _regions(directory) == [])
        state = httpx.get(srv.http_url + "/readyz", timeout=30).json()
        assert state["shared_memory"]["unclaimed"] == 0
        with jaxinit.Client(url) as again:
            tensor = again.generate("normal", 8, (64, 64))
        assert tensor.shared_memory and srv.process.poll() is None
        _until(lambda: httpx.get(srv.http_url + "/readyz", timeout=30).json()["admission"]["streams"] == 0)


def test_unclaimed_regions_expire_and_are_bounded(tmp_path: pathlib.Path) -> None:
    """A caller that asks and never maps: its region is deleted after the lease. While
    unclaimed regions hold --shared-memory-bytes, more are refused with a retry-after."""
    with running_server(
        "--no-warm-up",
        "--shared-memory",
        "--shared-memory-dir",
        str(tmp_path),
        "--shared-memory-lease",
        "2",
        "--shared-memory-bytes",
        str(3 * 2**20),
    ) as srv:
        directory = _directory(srv)
        token = (directory / "token").read_text()
        headers = {"x-jaxinit-shared-memory": token}
        body = {"initializer": "uniform", "shape": [300, 1000], "key": {"seed": 4}}  # 1.2 MB
        first = httpx.post(srv.http_url + "/v1/generate", json=body, headers=headers, timeout=30)
        assert first.status_code == 200 and first.content == b""
        assert _regions(directory) == [first.headers["x-jaxinit-region"]]
        # The same tensor again: a link to the one buffer (no copy, no more memory), same bytes.
        same = httpx.post(srv.http_url + "/v1/generate", json=body, headers=headers, timeout=30)
        assert same.status_code == 200 and same.headers["x-jaxinit-cache"] == "hit"
        regions = [directory / first.headers["x-jaxinit-region"], directory / same.headers["x-jaxinit-region"]]
        assert regions[0].stat().st_ino == regions[1].stat().st_ino
        expected = np.asarray(local_jax("uniform", {}, 4, (300, 1000), None)).tobytes()
        assert regions[0].read_bytes() == regions[1].read_bytes() == expected
        assert same.headers["x-jaxinit-digest"] == first.headers["x-jaxinit-digest"]
        other = {**body, "key": {"seed": 5}}  # another tensor: 1.2 MB more, over the 3 MiB
        refused = httpx.post(srv.http_url + "/v1/generate", json=other, headers=headers, timeout=30)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        _until(lambda: _regions(directory) == [])  # the lease ran out
        assert httpx.get(srv.http_url + "/readyz", timeout=30).json()["shared_memory"]["expired"] == 2
        again = httpx.post(srv.http_url + "/v1/generate", json=other, headers=headers, timeout=30)
        assert again.status_code == 200


def test_a_dead_servers_directory_is_removed_at_start(tmp_path: pathlib.Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"jaxinit-{dead.pid}-abcdef"
    orphan.mkdir()
    (orphan / "r-0123456789abcdef01234567").write_bytes(b"x" * 100)
    with running_server("--no-warm-up", "--shared-memory", "--shared-memory-dir", str(tmp_path)) as srv:
        assert not orphan.exists()
        assert _directory(srv).exists()


def test_the_client_trusts_only_a_private_jaxinit_directory(tmp_path: pathlib.Path) -> None:
    """The directory is the server's word: the client reads a token only from a directory that
    is a jaxinit one (its name), its user's, mode 0700, holding a 0600 64-hex token; it never
    reads (let alone sends) any other file named 'token'."""
    good = tmp_path / "jaxinit-123-abc_9"
    good.mkdir(mode=0o700)
    token = good / "token"
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
    (secrets_like / "token").write_text("ab" * 32)
    (secrets_like / "token").chmod(0o600)
    assert offered(secrets_like) is None
    link = tmp_path / "jaxinit-124-link"
    link.symlink_to(secrets_like)
    assert offered(link) is None
    token.write_text("not a token")
    assert offered(good) is None


def test_a_directory_whose_server_lives_is_kept_at_start(tmp_path: pathlib.Path) -> None:
    """Servers in other PID namespaces sharing one /dev/shm: a directory is an orphan only
    when nobody holds its lock, whatever its process id says."""
    import fcntl

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = tmp_path / f"jaxinit-{dead.pid}-held"
    alive.mkdir()
    lock = os.open(alive / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with running_server("--no-warm-up", "--shared-memory", "--shared-memory-dir", str(tmp_path)):
            assert alive.exists()
    finally:
        os.close(lock)


def test_when_shared_memory_is_full_the_tensor_comes_in_the_stream(tmp_path: pathlib.Path) -> None:
    """The server may write no file over 1 MiB (RLIMIT_FSIZE on the running process, as a
    full /dev/shm refuses its memory): a 2 MiB tensor comes in the stream, exact, with no
    region left behind and no error; a small one still comes through shared memory."""
    import psutil

    with running_server("--no-warm-up", "--shared-memory", "--shared-memory-dir", str(tmp_path)) as srv:
        psutil.Process(srv.process.pid).rlimit(psutil.RLIMIT_FSIZE, (2**20, 2**20))
        directory = _directory(srv)
        for url in (srv.grpc_url, srv.http_url):
            with jaxinit.Client(url) as client:
                big = client.generate("normal", 31, (512, 1024))
                small = client.generate("normal", 31, (64, 64))
                many = list(client.generate_many([client.request("normal", 32, (512, 1024))]))
            assert not big.shared_memory and small.shared_memory
            expected = np.asarray(local_jax("normal", {}, 31, (512, 1024), None)).tobytes()
            assert big.array.tobytes() == expected
            assert small.array.tobytes() == np.asarray(local_jax("normal", {}, 31, (64, 64), None)).tobytes()
            assert not many[0].shared_memory
            assert many[0].array.tobytes() == np.asarray(local_jax("normal", {}, 32, (512, 1024), None)).tobytes()
        assert _regions(directory) == [] and srv.process.poll() is None
