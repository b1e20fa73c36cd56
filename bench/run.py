"""jaxinit benchmark suite: the service against local JAX and against the bare transport.

    python bench/run.py            # full sizes, about 3 minutes on 2 cores
    python bench/run.py --quick    # small sizes, one cold and one warm start (CI runs this)

Starts a jaxinit-server (and a bare protocol server, bench/bare.py) on loopback,
measures one thing at a time so nothing competes for the 2 cores, and prints ratios
taken side by side in the same run; absolute times on a shared machine are noise.
Targets are those of the engine and performance issues; each line says whether it was met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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

import model_transports  # bench/model_transports.py, beside this script
import numpy as np
import psutil
from model import model_rows  # bench/model.py, beside this script
from startup import measure as time_to_ready  # bench/startup.py, beside this script

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
    with jaxinit.Client(srv.grpc_url, shared_memory=False) as client:
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
    """Warm small requests, interleaved so that drift hits all alike: uncached (a new seed each
    time: the engine runs), cache hits (the same request again), the bare transport."""
    import jax

    fn = jax.jit(lambda k: jax.nn.initializers.lecun_normal()(k, shape))
    key = jax.random.key(1)
    for _ in range(10):
        np.asarray(fn(key))
    local = [timed(lambda: np.asarray(fn(key))) for _ in range(n)]
    local_p50 = percentile(local, 50)
    out: dict[str, Any] = {"local_jit": {"p50_ms": local_p50 * 1e3, "p99_ms": percentile(local, 99) * 1e3}}
    for index, (name, url, bare_url) in enumerate(
        (("grpc", srv.grpc_url, bare.grpc_url), ("rest", srv.http_url, bare.http_url))
    ):
        seeds = iter(range(10**6 * (index + 1), 10**6 * (index + 2)))  # never asked before
        samples: dict[str, list[float]] = {"uncached": [], "hit": [], "bare": []}
        with jaxinit.Client(url, shared_memory=False) as client, jaxinit.Client(bare_url) as bare_client:
            init, bare_init = client.lecun_normal(), bare_client.lecun_normal()
            for _ in range(10):
                init(1, shape), init(next(seeds), shape), bare_init(1, shape)
            for _ in range(n):
                samples["uncached"].append(timed(lambda init=init, seeds=seeds: init(next(seeds), shape)))
                samples["hit"].append(timed(lambda init=init: init(1, shape)))
                samples["bare"].append(timed(lambda bare_init=bare_init: bare_init(1, shape)))
        p50 = {k: percentile(v, 50) for k, v in samples.items()}
        budget = p50["bare"] + local_p50 + 0.5e-3
        out[name] = {
            **{f"{k}_p50_ms": v * 1e3 for k, v in p50.items()},
            **{f"{k}_p99_ms": percentile(v, 99) * 1e3 for k, v in samples.items()},
            "hit_ratio_vs_bare": p50["hit"] / p50["bare"],
            "hit_target": "<= 1.2",
            "hit_met": p50["hit"] / p50["bare"] <= 1.2,
            "uncached_over_bare_ms": (p50["uncached"] - p50["bare"]) * 1e3,
            "uncached_budget_ms": budget * 1e3,
            "uncached_target": "<= bare + local jit + 0.5 ms",
            "uncached_met": p50["uncached"] <= budget,
        }
    return out


def small_breakdown(shape: tuple[int, ...], n: int) -> dict[str, Any]:
    """Where a warm small request's time goes, in this process: the engine alone (JAX's eager
    replay), the service core for a new request and for a cached one (no transport)."""
    from jaxinit.protocol.keys import Key
    from jaxinit_server.core import GenerateParams, Service
    from jaxinit_server.core import engine as core_engine

    async def run() -> dict[str, float]:
        service = Service(whole_workers=1)
        seeds = iter(range(5 * 10**6, 6 * 10**6))

        def engine_only() -> None:
            resolved = service.prepare(GenerateParams("lecun_normal", shape, key=Key(seed=next(seeds))))
            for _ in core_engine.prepare(resolved).produce():
                pass

        async def core(seed: int) -> None:
            resolved = service.prepare(GenerateParams("lecun_normal", shape, key=Key(seed=seed)))
            tensor = await service.generate(resolved)
            async for _ in tensor.chunks(2**20):
                pass

        for _ in range(20):
            engine_only()
            await core(next(seeds))
            await core(1)
        samples: dict[str, list[float]] = {"engine": [], "core_uncached": [], "core_hit": []}
        for _ in range(n):
            samples["engine"].append(timed(engine_only))
            start = time.perf_counter()
            await core(next(seeds))
            samples["core_uncached"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await core(1)
            samples["core_hit"].append(time.perf_counter() - start)
        service.close()
        return {f"{k}_p50_ms": percentile(v, 50) * 1e3 for k, v in samples.items()}

    return asyncio.run(run())


def large(srv: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """One large lecun_normal into a numpy array: local JAX (eager, and jitted, whose bytes
    are the same for it), the service's streams (new request, cache hit, parallel=2) and
    same-host shared memory (new request, cache hit)."""
    import jax

    init = jax.nn.initializers.lecun_normal()
    key = jax.random.key(2)
    jitted = jax.jit(lambda k: init(k, shape))
    local_first = timed(lambda: np.asarray(init(key, shape)))
    local_again = min(timed(lambda: np.asarray(init(key, shape))) for _ in range(2))
    np.asarray(jitted(key))
    local_jit = min(timed(lambda: np.asarray(jitted(key))) for _ in range(3))
    assert np.asarray(jitted(key)).tobytes() == np.asarray(init(key, shape)).tobytes()
    out: dict[str, Any] = {"local_first_s": local_first, "local_again_s": local_again, "local_jit_s": local_jit}
    seeds = iter(range(7 * 10**6, 8 * 10**6))
    for name, url in (("grpc", srv.grpc_url), ("rest", srv.http_url)):
        with jaxinit.Client(url, shared_memory=False) as client:
            init_remote = client.lecun_normal()
            init_remote(next(seeds), (64, 64))
            first = min(timed(lambda f=init_remote: f(next(seeds), shape)) for _ in range(2))
            seed = next(seeds)
            init_remote(seed, shape)
            hit = min(timed(lambda f=init_remote, seed=seed: f(seed, shape)) for _ in range(2))
            parallel = timed(lambda c=client: c.generate("lecun_normal", next(seeds), shape, parallel=2))
        with jaxinit.Client(url, shared_memory=True) as client:
            shm_init = client.lecun_normal()
            assert client.generate("lecun_normal", next(seeds), (64, 64)).shared_memory
            shm_first = min(timed(lambda f=shm_init: f(next(seeds), shape)) for _ in range(2))
            seed = next(seeds)
            shm_init(seed, shape)
            shm_hit = min(timed(lambda f=shm_init, seed=seed: f(seed, shape)) for _ in range(2))
        out[name] = {
            "stream_s": first,
            "stream_hit_s": hit,
            "parallel2_s": parallel,
            "shared_memory_s": shm_first,
            "shared_memory_hit_s": shm_hit,
            "stream_ratio_vs_local_jit": first / local_jit,
            "stream_ratio_vs_local_eager": first / local_again,
            "stream_target": "<= 1.0 x local jit",
            "stream_met": first / local_jit <= 1.0,
            "shared_memory_ratio_vs_local_jit": shm_first / local_jit,
            "shared_memory_ratio_vs_stream": shm_first / first,
            "shared_memory_target": "<= 0.5 x local jit",
            "shared_memory_met": shm_first / local_jit <= 0.5,
        }
    return out


def fan_out(srv: Any, shape: tuple[int, ...], callers: int) -> dict[str, Any]:
    """``callers`` concurrent identical requests of one large tensor never asked before, vs one
    caller of another: gRPC and REST streams, and shared memory."""
    seeds = iter(range(9 * 10**6, 10 * 10**6))

    async def wave(url: str, count: int, shared: bool) -> float:
        clients = [jaxinit.AsyncClient(url, shared_memory=shared) for _ in range(count)]
        try:
            for client in clients:  # connected, and the shared-memory offer read
                await client.lecun_normal()(1, (4, 4))
            seed = next(seeds)
            start = time.perf_counter()
            results = await asyncio.gather(*(c.lecun_normal()(seed, shape) for c in clients))
            elapsed = time.perf_counter() - start
            assert all(r.tobytes() == results[0].tobytes() for r in results)
            return elapsed
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    out: dict[str, Any] = {"callers": callers, "tensor_mib": math.prod(shape) * 4 / 2**20}
    for name, url, shared in (
        ("grpc", srv.grpc_url, False),
        ("rest", srv.http_url, False),
        ("shared_memory_grpc", srv.grpc_url, True),
        ("shared_memory_rest", srv.http_url, True),
    ):
        one = asyncio.run(wave(url, 1, shared))
        many = asyncio.run(wave(url, callers, shared))
        out[name] = {
            "one_s": one,
            "many_s": many,
            "ratio": many / one,
            "target": "<= 1.5",
            "met": many / one <= 1.5,
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
    """``clients`` concurrent callers of new 64x64 tensors, each on a connection of its own
    (grpcio otherwise multiplexes every channel of a process to one target over one TCP
    connection: one caller to the server, with one caller's share of its streams)."""
    import grpc.aio

    out: dict[str, Any] = {}
    for name, url in (("grpc", srv.grpc_url), ("rest", srv.http_url)):

        async def run(url: str = url) -> tuple[int, int, dict[str, int]]:
            ok = errors = 0
            kinds: dict[str, int] = {}
            deadline = time.perf_counter() + seconds

            async def worker(index: int) -> None:
                nonlocal ok, errors
                own = [("grpc.use_local_subchannel_pool", 1)]
                channel = grpc.aio.insecure_channel(srv.grpc_target, options=own) if url == srv.grpc_url else None
                async with jaxinit.AsyncClient(url, shared_memory=False, channel=channel) as client:
                    init = client.lecun_normal()
                    seed = (index + 1) * 10**7 + (0 if url == srv.grpc_url else 10**9)  # none asked twice
                    while time.perf_counter() < deadline:
                        seed += 1
                        try:
                            await init(seed, (64, 64))
                            ok += 1
                        except jaxinit.JaxinitError as exc:
                            errors += 1
                            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1

            await asyncio.gather(*(worker(i) for i in range(clients)))
            return ok, errors, kinds

        start = time.perf_counter()
        ok, errors, kinds = asyncio.run(run())
        elapsed = time.perf_counter() - start
        out[name] = {
            "clients": clients,
            "seconds": elapsed,
            "requests": ok,
            "errors": errors,
            "error_kinds": kinds,
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
        with running_server(
            "--log-level",
            "error",
            "--max-tensor-bytes",
            str(5 * 2**30),
            "--shared-memory",
            "--cache-bytes",
            str(2**30),
        ) as srv:
            results["server"] = jaxinit.Client(srv.http_url).list_initializers()["server"]
            results["1_new_shape_latency"] = new_shape_latency(srv, shapes)
            results["2_warm_small_256x256"] = warm_small(srv, bare, small, 20 if q else 300)
            results["3_large"] = large(srv, (256, 256) if q else (8192, 8192))
            results["4_memory"] = memory(srv, (1024, 1024) if q else (32768, 32768))
            results["5_concurrency_64x64"] = concurrency(srv, 4 if q else 32, 1.0 if q else 10.0)
            results["6_fan_out"] = fan_out(srv, (256, 256) if q else (8192, 8192), 8)
            results["9_model"] = model_rows(srv.grpc_url, srv.http_url, quick=q)
            results["10_model_http_vs_grpc"] = model_transports.measure(srv, q)
        results["7_small_breakdown_256x256"] = small_breakdown(small, 20 if q else 300)
    finally:
        bare.stop()
    # Time to ready, cold (empty compilation cache) and warm (a restart): bench/startup.py
    # (quick: one start of each, without the warm-up requests).
    results["8_time_to_ready"] = time_to_ready(1, "--no-warm-up") if q else time_to_ready(3)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
