"""Test helpers: a real server process on loopback, and the local-JAX reference."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxinit_server.testing import ServerProcess, running_server

__all__ = ["ROOT", "ServerProcess", "cached_venv", "local_jax", "running_server", "tracked_copy"]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tracked_copy(dest: pathlib.Path) -> pathlib.Path:
    """The repository's tracked files (as they are in the working tree) copied to ``dest``:
    what a fresh clone has, without .venv, caches or build output (pip copies a local tree
    whole, and setuptools reads stale build directories)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((ROOT / name).read_bytes())
    return dest


def cached_venv(name: str, *installs: list[str], python: str = sys.executable) -> pathlib.Path:
    """``.cache/<name>``, a virtual environment of ``python`` made by ``pip install`` of each
    of ``installs`` in turn, once: made again when they or the client's pyproject.toml
    change (the marker holds their hash). Returns the environment's python."""
    venv = ROOT / ".cache" / name
    venv_python = venv / "bin" / "python"
    marker = venv / ".installed"
    recipe = repr((python, installs)).encode() + (ROOT / "pyproject.toml").read_bytes()
    stamp = hashlib.sha256(recipe).hexdigest()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be making it (pytest-xdist)
        if not marker.exists() or marker.read_text() != stamp:
            env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
            for install in installs:
                command = [str(venv_python), "-m", "pip", "install", "--quiet", *install]
                subprocess.run(command, check=True, timeout=900, env=env)
            marker.write_text(stamp)
    return venv_python


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

    from jaxinit.protocol.codec import DTYPES

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


# What a model file the client writes carries besides the server's own metadata: its request
# and the digest of each tensor (the entry named for its algorithm), for ``jaxinit verify``.
REFETCH_KEYS = ("model_request", "digests.xxh3-128")


def assert_same_model_file(client_file: bytes, server_file: bytes) -> None:
    """A client-written model file holds the server-written one's tensors (same names, order,
    dtypes and bytes) and metadata, plus what verify needs, nothing else."""
    from jaxinit.protocol import safetensors

    got, got_meta = safetensors.loads(client_file)
    want, want_meta = safetensors.loads(server_file)
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name
    assert {k: v for k, v in got_meta.items() if k not in REFETCH_KEYS} == want_meta
    assert set(got_meta) - set(want_meta) == set(REFETCH_KEYS)


def run_cli(capsys: Any, *argv: str) -> tuple[int, str]:
    """``jaxinit ARGV`` in this process: its exit status, and what it wrote to stdout and
    stderr (``capsys``: pytest's fixture)."""
    from jaxinit import cli

    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err
