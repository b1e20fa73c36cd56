"""Test helpers: a real server process on loopback, and the local-JAX reference."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

READY = re.compile(r"jaxinit-server ready grpc=(\S+) http=(\S+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    output: list[str]

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_target}"

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def running_server(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Iterator[ServerProcess]:
    """Start ``jaxinit-server`` on free loopback ports; yield once it reports ready; stop it."""
    command = [sys.executable, "-m", "jaxinit_server.main", "--host", "127.0.0.1",
               "--grpc-port", "0", "--http-port", "0", "--log-level", "warning", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    found: list[re.Match[str]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = READY.search(line)
            if match and not found:
                found.append(match)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("server did not become ready:\n" + "".join(output))
    if not found:
        process.wait(5)
        raise RuntimeError("server exited before ready:\n" + "".join(output))
    server = ServerProcess(process, found[0].group(1), found[0].group(2), output)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


SIXTY_FOUR = {"float64", "complex128", "int64", "uint64"}


def local_jax(
    name: str,
    args: Mapping[str, Any],
    key: Any,
    shape: tuple[int, ...],
    dtype: str | None,
    *,
    partitionable: bool | None = None,
    x64: bool | None = None,
) -> np.ndarray | Exception:
    """What a local JAX process returns for this request (or the exception it raises).

    ``key`` is an int seed, ("data", words, impl), ("seed", seed, impl), or None.
    Settings left None take the server's documented defaults: JAX's own, and x64
    on for 64-bit dtypes.
    """
    import jax
    import jax.numpy as jnp  # noqa: F401
    from flax import nnx

    from jaxinit._codec import DTYPES

    asked = dtype or args.get("dtype")
    if x64 is None:
        x64 = asked in SIXTY_FOUR or bool(jax.config.jax_enable_x64)
    if partitionable is None:
        partitionable = bool(jax.config.jax_threefry_partitionable)
    kwargs = {}
    for k, v in args.items():
        if k == "dtype" and v is not None:
            v = DTYPES[v]
        elif isinstance(v, list) and k == "value":
            v = np.asarray(v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        with jax.threefry_partitionable(partitionable), jax.enable_x64(x64):
            if key is None:
                jkey = None
            elif isinstance(key, int):
                jkey = jax.random.key(key)
            elif key[0] == "seed":
                jkey = jax.random.key(key[1], impl=key[2])
            else:
                jkey = jax.random.wrap_key_data(np.asarray(key[1], np.uint32), impl=key[2])
            source = nnx.initializers if name.endswith("_init") else jax.nn.initializers
            builder = getattr(source, name)
            init = builder if name in ("zeros", "ones") else builder(**kwargs)
            out = init(jkey, shape) if dtype is None else init(jkey, shape, DTYPES[dtype])
            return np.asarray(out)
    except Exception as exc:  # the server must refuse the same requests
        return exc
