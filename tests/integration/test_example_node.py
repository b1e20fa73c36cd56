"""The Node.js example client (examples/node): installed with ``npm ci`` from its lockfile,
run against a real server over gRPC; the bytes it writes are local JAX's, it reports a
refusal with the server's message, and it refuses an answer whose digest does not match."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xxhash

from helpers import ROOT
from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

# The release tier: npm ci and Node.js.
pytestmark = pytest.mark.release

EXAMPLE = ROOT / "examples" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

REQUIRED = os.environ.get("JAXINIT_REQUIRE_SYSTEM_TOOLS") == "1"  # CI: a missing node fails


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """fetch.mjs in a copy of examples/node (beside a copy of proto/, which it loads at
    ../../proto), its dependencies installed there by ``npm ci`` from the committed lockfile:
    the working tree is left as it is."""
    if NODE is None or NPM is None:
        if REQUIRED:
            pytest.fail("node and npm are needed for the Node.js example (apt-get install nodejs npm)")
        pytest.skip("node or npm is not on PATH: the Node.js example is not run")
    root = tmp_path_factory.mktemp("node-example")
    example = root / "examples" / "node"
    example.mkdir(parents=True)
    for name in ("package.json", "package-lock.json", "fetch.mjs"):
        shutil.copy2(EXAMPLE / name, example / name)
    shutil.copytree(ROOT / "proto", root / "proto")
    assert NPM is not None
    installed = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund"], cwd=example, capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return example / "fetch.mjs"


def _fetch(script: pathlib.Path, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(script), target, *args], cwd=script.parent, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("name", "seed", "shape", "dtype"),
    [("lecun_normal", 42, (64, 32), "float32"), ("normal", 0, (3, 5), "bfloat16")],
)
def test_the_node_example_writes_local_jax_bytes(
    script: pathlib.Path, server: Any, tmp_path: pathlib.Path, name: str, seed: int, shape: tuple[int, ...], dtype: str
) -> None:
    out = tmp_path / "tensor.bin"
    done = _fetch(script, server.grpc_url, name, str(seed), ",".join(map(str, shape)), dtype, str(out))
    assert done.returncode == 0, done.stderr
    init = getattr(jax.nn.initializers, name)()
    expected = np.asarray(init(jax.random.key(seed), shape, jnp.dtype(dtype))).tobytes()
    assert out.read_bytes() == expected
    summary = json.loads(done.stdout)
    assert summary["shape"] == list(shape) and summary["dtype"] == dtype and summary["bytes"] == len(expected)
    assert summary["digest"] == xxhash.xxh3_128(expected).hexdigest()
    assert len(summary["request_digest"]) == 64 and int(summary["request_digest"], 16) >= 0


def test_the_node_example_reports_a_refusal_and_the_server_carries_on(
    script: pathlib.Path, server: Any, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "tensor.bin"
    refused = _fetch(script, server.grpc_url, "no_such_initializer", "0", "3,5", str(out))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "NOT_FOUND" in refused.stderr and "unknown initializer 'no_such_initializer'" in refused.stderr
    assert refused.stdout == "" and not out.exists()
    usage = _fetch(script, server.grpc_url, "normal", "not-a-seed", "3,5", str(out))
    assert usage.returncode == 2 and "seed must be an integer" in usage.stderr and not out.exists()
    # The server still answers; here given as host:port (no scheme) and no dtype (float32).
    after = _fetch(script, server.grpc_target, "normal", "0", "3,5", str(out))
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["dtype"] == "float32"
    assert out.read_bytes() == np.asarray(jax.nn.initializers.normal()(jax.random.key(0), (3, 5))).tobytes()


class _Flipping(pb_grpc.InitializersServicer):
    """Forwards Generate to the real server, flipping one bit of the first data chunk."""

    def __init__(self, upstream: grpc.Channel) -> None:
        self.stub = pb_grpc.InitializersStub(upstream)

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802 (the RPC's name)
        flipped = False
        for message in self.stub.Generate(request, timeout=60):
            if message.WhichOneof("payload") == "data" and message.data.data and not flipped:
                data = bytearray(message.data.data)
                data[len(data) // 2] ^= 0x01
                message.data.data = bytes(data)
                flipped = True
            yield message


@pytest.fixture
def flipping_target(server: Any) -> Iterator[str]:
    """host:port of a gRPC server in this process that relays the real server's answers,
    one bit flipped."""
    with grpc.insecure_channel(server.grpc_target) as upstream:
        relay = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_InitializersServicer_to_server(_Flipping(upstream), relay)
        port = relay.add_insecure_port("127.0.0.1:0")
        relay.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            relay.stop(grace=None).wait(30)


def test_the_node_example_refuses_a_flipped_bit(
    script: pathlib.Path, flipping_target: str, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "tensor.bin"
    done = _fetch(script, flipping_target, "lecun_normal", "42", "64,32", "float32", str(out))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "digest mismatch" in done.stderr and done.stdout == "" and not out.exists()
