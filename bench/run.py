"""jaxinit benchmark suite: the service against local JAX and against the bare transport.

    python bench/run.py            # full sizes, about 3 minutes on 2 cores
    python bench/run.py --quick    # small sizes, seconds (CI runs this)

Starts a jaxinit-server (and a bare protocol server, bench/bare.py) on loopback,
measures one thing at a time so nothing competes for the 2 cores, and prints ratios
taken side by side in the same run; absolute times on a shared machine are noise.
Targets are those of the engine issue; each line says whether it was met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import jaxinit
from jaxinit_server.testing import running_server

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Bare:
    """bench/bare.py in a subprocess."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare.py"), ",".join(map(str, shape))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"grpc=(\S+) http=(\S+)", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"bare server did not start: {line!r}")
        self.grpc_url, self.http_url = f"grpc://{match.group(1)}", match.group(2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def new_shape_latency(srv: Any, shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """Service vs a local JAX process's first call, for shapes neither has seen."""
    import jax

    init = jax.nn.initializers.lecun_normal()
    key = jax.random.key(0)
    np.asarray(init(key, (333, 444)))  # local JAX imported and warm on another shape
    with jaxinit.Client(srv.grpc_url) as client:
        client.lecun_normal()(0, (333, 444))
        service = [timed(lambda s=s: client.lecun_normal()(0, s)) for s in shapes]
    local_shapes = [(a + 7, b + 7) for a, b in shapes]  # unseen by this process too
    local = [timed(lambda s=s: np.asarray(init(key, s))) for s in local_shapes]
    ratio = statistics.median(service) / statistics.median(local)
    return {
        "service_median_s": statistics.median(service),
        "local_median_s": statistics.median(local),
        "ratio": ratio,
        "target": "<= 0.1",
        "met": ratio <= 0.1,
    }


def warm_small(srv: Any, bare: Bare, shape: tuple[int, ...], n: int) -> dict[str, Any]:
    import jax

    out: dict[str, Any] = {}
    for name, url, bare_url in (("grpc", srv.grpc_url, bare.grpc_url), ("rest", srv.http_url, bare.http_url)):
        samples: dict[str, list[float]] = {}
        for label, target in (("service", url), ("bare", bare_url)):
            with jaxinit.Client(target) as client:
                init = client.lecun_normal()
                for _ in range(10):
                    init(1, shape)
                samples[label] = [timed(lambda init=init: init(1, shape)) for _ in range(n)]
        p50 = {k: percentile(v, 50) for k, v in samples.items()}
        p99 = {k: percentile(v, 99) for k, v in samples.items()}
        ratio = p50["service"] / p50["bare"]
        out[name] = {
            "p50_ms": p50["service"] * 1e3,
            "p99_ms": p99["service"] * 1e3,
            "bare_p50_ms": p50["bare"] * 1e3,
            "bare_p99_ms": p99["bare"] * 1e3,
            "ratio_vs_bare": ratio,
            "target": "<= 1.5",
            "met": ratio <= 1.5,
        }
    fn = jax.jit(lambda k: jax.nn.initializers.lecun_normal()(k, shape))
    key = jax.random.key(1)
    for _ in range(10):
        np.asarray(fn(key))
    local = [timed(lambda: np.asarray(fn(key))) for _ in range(n)]
    out["local_jit"] = {"p50_ms": percentile(local, 50) * 1e3, "p99_ms": percentile(local, 99) * 1e3}
    return out


def large(srv: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    import jax

    init = jax.nn.initializers.lecun_normal()
    key = jax.random.key(2)
    local_first = timed(lambda: np.asarray(init(key, shape)))
    local_again = timed(lambda: np.asarray(init(key, shape)))
    out: dict[str, Any] = {"local_first_s": local_first, "local_again_s": local_again}
    for name, url in (("grpc", srv.grpc_url), ("rest", srv.http_url)):
        with jaxinit.Client(url) as client:
            first = timed(lambda client=client: client.lecun_normal()(2, shape))
            again = timed(lambda client=client: client.lecun_normal()(2, shape))
            parallel = timed(lambda client=client: client.generate("lecun_normal", 2, shape, parallel=2))
        out[name] = {
            "first_s": first,
            "again_s": again,
            "parallel2_s": parallel,
            "ratio_vs_local_first": first / local_first,
            "ratio_vs_local_again": again / local_again,
            "parallel2_ratio_vs_local_again": parallel / local_again,
            "target": "<= 1.0",
            "met": again / local_again <= 1.0,
        }
    return out


def memory(srv: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """Server peak RSS while one tensor streams, read without keeping it client-side."""
    import grpc

    from jaxinit.v1 import jaxinit_pb2 as pb
    from jaxinit.v1 import jaxinit_pb2_grpc as pb_grpc

    process = psutil.Process(srv.process.pid)
    idle = process.memory_info().rss
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    received = 0
    start = time.perf_counter()
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            request = pb.GenerateRequest(initializer="normal", shape=shape, key=pb.Key(seed=3))
            for chunk in pb_grpc.InitializersStub(channel).Generate(request, timeout=600):
                received += len(chunk.data.data)
    finally:
        done.set()
        sampler.join()
    growth = (peak - idle) / 2**20
    return {
        "tensor_gib": received / 2**30,
        "seconds": time.perf_counter() - start,
        "idle_rss_mib": idle / 2**20,
        "peak_rss_mib": peak / 2**20,
        "growth_mib": growth,
        "target": "growth < 300 MiB",
        "met": growth < 300,
    }


def concurrency(srv: Any, clients: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, url in (("grpc", srv.grpc_url), ("rest", srv.http_url)):

        async def run(url: str = url) -> tuple[int, int]:
            ok = errors = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal ok, errors
                async with jaxinit.AsyncClient(url) as client:
                    init = client.lecun_normal()
                    seed = 0
                    while time.perf_counter() < deadline:
                        seed += 1
                        try:
                            await init(seed, (64, 64))
                            ok += 1
                        except jaxinit.JaxinitError:
                            errors += 1

            await asyncio.gather(*(worker() for _ in range(clients)))
            return ok, errors

        start = time.perf_counter()
        ok, errors = asyncio.run(run())
        elapsed = time.perf_counter() - start
        out[name] = {
            "clients": clients,
            "seconds": elapsed,
            "requests": ok,
            "errors": errors,
            "req_per_s": ok / elapsed,
            "met": errors == 0,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    q = args.quick
    shapes = [(64 + 3 * i, 64 - i) for i in range(3)] if q else [(1000 + 7 * i, 1000 - 5 * i) for i in range(20)]
    results: dict[str, Any] = {"mode": "quick" if q else "full", "cpus": os.cpu_count()}
    small = (256, 256)
    bare = Bare(small)
    try:
        with running_server("--log-level", "error", "--max-tensor-bytes", str(5 * 2**30)) as srv:
            results["server"] = jaxinit.Client(srv.http_url).list_initializers()["server"]
            results["1_new_shape_latency"] = new_shape_latency(srv, shapes)
            results["2_warm_small_256x256"] = warm_small(srv, bare, small, 20 if q else 300)
            results["3_large"] = large(srv, (256, 256) if q else (8192, 8192))
            results["4_memory"] = memory(srv, (1024, 1024) if q else (32768, 32768))
            results["5_concurrency_64x64"] = concurrency(srv, 4 if q else 32, 1.0 if q else 10.0)
    finally:
        bare.stop()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
