"""Bounded caches: thousands of distinct shapes do not make a replica grow without bound.

JAX caches per shape (traced and compiled programs, for every eager op a request runs).
A server that answers many distinct shapes must not keep them all: whole-tensor work
runs in worker processes that clear JAX's caches above a soft RSS and are replaced
above ``--worker-rss-bytes``; chunked work compiles one program per chunk size; fills
and empty tensors compile nothing per shape. This test sends 1,000 distinct small
shapes for each kind of request (and 0-size ones, which the server process checks by
tracing them), and measures the server process and its whole tree
(server + workers) before and after each family, and every few requests in between.

Run with ``pytest -s`` to see the figures. No wall-clock assertions. Each new shape of a
whole-tensor family compiles its own programs (0.3-0.5 s a request on two idle cores, more
on busy ones): the suite runs 60 shapes per family (a few minutes); ``make bench-memory``
runs 1,000 per family (JAXINIT_MEMORY_SHAPES=1000, 30-60 minutes) and writes
bench/memory.txt, whose figures the README quotes.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from helpers import local_jax
from jaxinit.protocol.codec import DTYPES
from jaxinit_server.testing import ServerProcess, running_server

# The release tier: thousands of shapes per family, RSS sampled.
pytestmark = pytest.mark.release

MiB = 2**20
# The bounds the README quotes. The server process's own RSS (the event loop, the chunked
# and fill producers, the in-process checks) grows by at most SERVER_GROWTH_BOUND over
# the 7,000 distinct shapes of FAMILIES; the whole tree (server + whole-tensor workers, with
# the default --worker-rss-bytes of 1 GiB and --whole-workers 1) stays under TREE_BOUND
# throughout. (Observed on two cores, JAX on CPU: server +1 to +8 MiB; tree peak ~1 GiB.)
SERVER_GROWTH_BOUND = 200 * MiB
TREE_BOUND = 3 * 2**30
SHAPES_PER_FAMILY = int(os.environ.get("JAXINIT_MEMORY_SHAPES", "60"))  # distinct shapes per family
MAX_ELEMENTS = 4096  # small shapes: the per-shape caches are what is measured, not the tensors
CHECK_EVERY = 50  # answers checked byte for byte against local JAX (plus the first and last)
SAMPLE_EVERY = 25  # RSS samples within a family


def _matrices(seed: int) -> list[tuple[int, ...]]:
    """SHAPES_PER_FAMILY distinct (n, m), n * m <= MAX_ELEMENTS, in a fixed random order."""
    shapes = [(n, m) for n in range(1, MAX_ELEMENTS + 1) for m in range(1, MAX_ELEMENTS // n + 1)]
    return random.Random(seed).sample(shapes, SHAPES_PER_FAMILY)


def _conv_kernels(seed: int) -> list[tuple[int, ...]]:
    """Distinct (k1, k2, n, m) with n <= m, as jax.nn.initializers.delta_orthogonal takes them."""
    shapes = [
        (k1, k2, n, m)
        for k1 in (1, 2, 3)
        for k2 in (1, 2, 3)
        for n in range(1, MAX_ELEMENTS + 1)
        for m in range(n, MAX_ELEMENTS // (k1 * k2 * n) + 1)
    ]
    return random.Random(seed).sample(shapes, SHAPES_PER_FAMILY)


def _empty(seed: int) -> list[tuple[int, ...]]:
    """Distinct 0-size (n, 0, m): answered without XLA, but checked by tracing in the server process."""
    shapes = [(n, 0, m) for n in range(1, 64) for m in range(1, 64)]
    return random.Random(seed).sample(shapes, SHAPES_PER_FAMILY)


@dataclass(frozen=True)
class Family:
    label: str
    initializer: str
    shapes: Callable[[int], list[tuple[int, ...]]]
    query: dict[str, str] = field(default_factory=dict)
    dtype: str | None = None
    key_impl: str = "threefry2x32"
    partitionable: bool | None = None

    def local(self, shape: tuple[int, ...], seed: int) -> np.ndarray:
        key = seed if self.key_impl == "threefry2x32" else ("seed", seed, self.key_impl)
        expected = local_jax(self.initializer, {}, key, shape, self.dtype, partitionable=self.partitionable)
        assert not isinstance(expected, Exception), (self.label, shape, expected)
        return expected


FAMILIES = [
    Family("orthogonal", "orthogonal", _matrices),
    Family("delta_orthogonal", "delta_orthogonal", _conv_kernels),
    Family("normal complex64", "normal", _matrices, {"dtype": "complex64"}, dtype="complex64"),
    Family("normal rbg key", "normal", _matrices, {"key_impl": "rbg"}, key_impl="rbg"),
    Family("lecun_normal legacy", "lecun_normal", _matrices, {"threefry_partitionable": "false"}, partitionable=False),
    Family("zeros", "zeros", _matrices),
    # Not a cache the workers hold: JAX's trace caches in the server process itself.
    Family("orthogonal 0-size", "orthogonal", _empty),
]


@dataclass
class Rss:
    server: int
    workers: list[int]

    @property
    def tree(self) -> int:
        return self.server + sum(self.workers)

    def __str__(self) -> str:
        workers = "+".join(f"{w / MiB:.0f}" for w in self.workers) or "-"
        return f"server {self.server / MiB:6.0f} MiB  workers {workers:>9} MiB  tree {self.tree / MiB:6.0f} MiB"


def _rss(process: psutil.Process) -> Rss:
    workers = []
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # replaced between the listing and the reading
            workers.append(child.memory_info().rss)
    return Rss(process.memory_info().rss, workers)


def _get(client: httpx.Client, family: Family, shape: tuple[int, ...], seed: int) -> bytes:
    params: dict[str, Any] = {"shape": ",".join(map(str, shape)), "seed": seed, **family.query}
    response = client.get(
        f"/v1/generate/{family.initializer}", params=params, headers={"accept": "application/octet-stream"}
    )
    assert response.status_code == 200, (family.label, shape, response.text[:500])
    assert len(response.content) == math.prod(shape) * DTYPES[response.headers["x-jaxinit-dtype"]].itemsize
    return response.content


def _alive(server: ServerProcess) -> None:
    code = server.process.poll()
    assert code is None, f"the server exited with {code}:\n" + "".join(server.output[-30:])


@dataclass
class Run:
    """The module's server, its RSS before any family, and the figures of each family run."""

    server: ServerProcess
    process: psutil.Process
    baseline: Rss
    peak_tree: int
    peak_at: str = "baseline"
    rows: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with running_server("--whole-workers", "1", "--no-request-log") as srv:
        process = psutil.Process(srv.process.pid)
        baseline = _rss(process)
        print(f"\nbaseline                    {baseline}")
        yield Run(srv, process, baseline, baseline.tree)
        assert srv.stop() == 0, "".join(srv.output[-50:])


# One test per family, so that each is bounded in time on its own (a whole-tensor family
# compiles a few XLA programs per new shape: ~0.3-0.7 s a request on two cores); the last
# test checks the server's growth over all of them.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("family", FAMILIES, ids=[f.label.replace(" ", "-") for f in FAMILIES])
def test_distinct_shapes_keep_memory_bounded(run: Run, family: Family) -> None:
    _alive(run.server)
    index = FAMILIES.index(family)
    shapes = family.shapes(index)
    assert len(set(shapes)) == SHAPES_PER_FAMILY
    before = _rss(run.process)
    worker_peak = max(before.workers, default=0)

    def sample(where: str) -> Rss:
        nonlocal worker_peak
        now = _rss(run.process)
        worker_peak = max(worker_peak, *now.workers, 0)
        if now.tree > run.peak_tree:
            run.peak_tree, run.peak_at = now.tree, where
        assert now.tree < TREE_BOUND, (where, str(now))
        return now

    started = time.monotonic()
    with httpx.Client(base_url=run.server.http_url, timeout=120) as client:
        for i, shape in enumerate(shapes):
            seed = index * SHAPES_PER_FAMILY + i
            try:
                data = _get(client, family, shape, seed)
            except httpx.TransportError:
                _alive(run.server)  # says how it ended, if it did
                raise
            if i % CHECK_EVERY == 0 or i == len(shapes) - 1:
                expected = family.local(shape, seed)
                assert data == np.ascontiguousarray(expected).tobytes(), (family.label, shape, seed)
            if i % SAMPLE_EVERY == 0:
                sample(f"{family.label} #{i}")
        after = sample(f"{family.label} end")
        pool = client.get("/readyz").json()["whole_tensor_workers"]
    row = (
        f"{family.label:20} before  {before}\n{'':20} after   {after}   worker peak {worker_peak / MiB:.0f} MiB; "
        f"pool replaced={pool['replaced']} killed={pool['killed']}; {time.monotonic() - started:.0f} s"
    )
    run.rows.append(row)
    print("\n" + row)
    _alive(run.server)
    assert after.server - run.baseline.server <= SERVER_GROWTH_BOUND, "\n".join(run.rows)


def test_server_growth_over_all_families(run: Run) -> None:
    _alive(run.server)
    final = _rss(run.process)
    growth = final.server - run.baseline.server
    print(
        f"\nfinal                       {final}\nserver growth {growth / MiB:+.0f} MiB over {len(run.rows)} "
        f"families (bound {SERVER_GROWTH_BOUND / MiB:.0f}); tree peak {run.peak_tree / MiB:.0f} MiB at "
        f"{run.peak_at} (bound {TREE_BOUND / MiB:.0f})"
    )
    assert growth <= SERVER_GROWTH_BOUND, "\n".join(run.rows)
    assert run.peak_tree < TREE_BOUND
