"""Load test through the load balancer: bounded, self-stopping, every byte verified.

    python bench/load.py                          # harness topology (3 replicas + nginx), 60 s
    python bench/load.py --duration 20 --drill kill      # SIGKILL a replica mid-run, restart it
    python bench/load.py --duration 30 --drill rolling   # SIGTERM each replica in turn, restart
    python bench/load.py --grpc grpc://HOST:50051 --http http://HOST:8000   # a running deployment

A fixed mix of small and large tensors over gRPC, REST POST and the cacheable REST GET
form, from ``--concurrency`` workers, until ``--duration`` seconds or ``--requests``
requests. Each answer's SHA-256 is compared with the digest of the same tensor made by
the local JAX before the run starts. Prints req/s, p50/p95/p99 latency, bytes/s, errors
and the GET form's cache hit ratio (from nginx's X-Cache-Status), per transport.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import jaxinit
from jaxinit._http import get_url
from jaxinit.protocol.codec import to_wire_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from harness import Topology, running_topology  # noqa: E402

SEEDS = 6  # seeds per mix entry: repeats of one GET URL are what the cache serves


@dataclass(frozen=True)
class Item:
    weight: int
    initializer: str
    args: tuple[tuple[str, Any], ...]
    shape: tuple[int, ...]
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.initializer}{list(self.shape)}:{self.dtype}"


MIX = (
    Item(30, "lecun_normal", (), (256, 256), "float32"),
    Item(20, "glorot_uniform", (), (512, 512), "bfloat16"),
    Item(15, "truncated_normal", (("stddev", 0.02),), (1024, 768), "float32"),
    Item(10, "he_normal", (), (64, 3, 3, 32), "float16"),
    Item(10, "zeros", (), (4096,), "float32"),
    Item(5, "orthogonal", (), (128, 128), "float32"),
    Item(
        5,
        "variance_scaling",
        (("scale", 2.0), ("mode", "fan_avg"), ("distribution", "uniform")),
        (2048, 2048),
        "float32",
    ),  # 16 MiB: long enough streams for the drills to cut
)
MODES = ("grpc", "rest", "rest-get")


def expected_digests() -> dict[tuple[int, int], str]:
    """SHA-256 of every (mix entry, seed) tensor, made by the local JAX."""
    import jax

    out = {}
    for i, item in enumerate(MIX):
        factory = getattr(jax.nn.initializers, item.initializer)
        init = factory(**dict(item.args)) if item.initializer not in ("zeros", "ones") else factory
        for seed in range(SEEDS):
            array = np.asarray(init(jax.random.key(seed), item.shape, jax.numpy.dtype(item.dtype)))
            out[(i, seed)] = hashlib.sha256(to_wire_bytes(array)).hexdigest()
    return out


@dataclass
class Result:
    mode: str
    item: int
    seconds: float
    nbytes: int
    ok: bool
    error: str = ""
    cache: str = ""


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    started: float = 0.0
    wall: float = 0.0


class Workload:
    def __init__(self, grpc_url: str, http_url: str, digests: dict[tuple[int, int], str], retries: int) -> None:
        self.digests = digests
        self.grpc = jaxinit.AsyncClient(grpc_url, retries=retries)
        self.rest = jaxinit.AsyncClient(http_url, retries=retries)
        self.http = httpx.AsyncClient(base_url=http_url, timeout=120, limits=httpx.Limits(max_connections=64))
        self.retries = retries

    async def close(self) -> None:
        await self.grpc.close()
        await self.rest.close()
        await self.http.aclose()

    async def one(self, mode: str, index: int, seed: int) -> Result:
        item = MIX[index]
        started = time.perf_counter()
        cache = ""
        try:
            if mode == "rest-get":
                data, cache = await self._get(index, seed)
            else:
                client = self.grpc if mode == "grpc" else self.rest
                tensor = await client.generate(item.initializer, seed, item.shape, item.dtype, args=dict(item.args))
                data = bytes(to_wire_bytes(tensor.array))
        except Exception as exc:  # counted and reported, never fatal to the run
            return Result(mode, index, time.perf_counter() - started, 0, False, f"{type(exc).__name__}: {exc}"[:300])
        elapsed = time.perf_counter() - started
        if hashlib.sha256(data).hexdigest() != self.digests[(index, seed)]:
            return Result(mode, index, elapsed, len(data), False, "CORRUPT: digest differs from local JAX", cache)
        return Result(mode, index, elapsed, len(data), True, "", cache)

    async def _get(self, index: int, seed: int) -> tuple[bytes, str]:
        """The GET form through the cache; a failed or short answer is fetched again."""
        item = MIX[index]
        url = get_url(self.rest.request(item.initializer, seed, item.shape, item.dtype, args=dict(item.args)))
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.get(url, headers={"Accept": "application/octet-stream"})
                if response.status_code == 200:
                    return response.content, response.headers.get("x-cache-status", "")
                error: Exception = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                error = exc
            if attempt < self.retries:
                await asyncio.sleep(0.2 * 2**attempt)
        raise error


async def drive(
    workload: Workload,
    *,
    duration: float,
    requests: int | None,
    concurrency: int,
    seed: int,
    busy: Callable[[], bool] = lambda: False,
) -> list[Result]:
    """Requests from ``concurrency`` workers until ``duration`` has passed (and ``busy()`` is
    False: a drill still under way keeps the load on) or ``requests`` have been issued."""
    rng = random.Random(seed)
    weights = [item.weight for item in MIX]
    deadline = time.monotonic() + duration
    issued = 0
    results: list[Result] = []

    def next_job() -> tuple[str, int, int] | None:
        nonlocal issued
        if (time.monotonic() >= deadline and not busy()) or (requests is not None and issued >= requests):
            return None
        issued += 1
        return rng.choice(MODES), rng.choices(range(len(MIX)), weights)[0], rng.randrange(SEEDS)

    async def worker() -> None:
        while (job := next_job()) is not None:
            results.append(await workload.one(*job))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _drill(topology: Topology, kind: str, duration: float, events: list[str], stop: threading.Event) -> None:
    """In a thread, beside the load: kill-and-restart one replica, or restart each in turn."""
    t0 = time.monotonic()

    def note(text: str) -> None:
        events.append(f"{time.monotonic() - t0:6.1f}s {text}")

    if kind == "kill":
        if stop.wait(duration / 3):
            return
        victim = topology.replicas[0]
        victim.kill()
        note(f"SIGKILL {victim.name}")
        victim.start()
        victim.wait_ready()
        note(f"{victim.name} back")
    elif kind == "rolling":  # one after another, each back before the next goes
        for replica in topology.replicas:
            if stop.wait(duration / (2 * len(topology.replicas))):
                return
            code = replica.stop()
            note(f"SIGTERM {replica.name}: drained, exit code {code}")
            if code != 0:
                events.append(f"FAIL: {replica.name} exited {code} on SIGTERM")
            replica.start()
            replica.wait_ready()
            note(f"{replica.name} back")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {"wall_seconds": round(run.wall, 2), "events": run.events, "modes": {}}
    everything = run.results
    for mode in (*MODES, "all"):
        rs = everything if mode == "all" else [r for r in everything if r.mode == mode]
        ok = [r for r in rs if r.ok]
        latencies = [r.seconds * 1000 for r in ok]
        entry: dict[str, Any] = {
            "requests": len(rs),
            "ok": len(ok),
            "failed": len(rs) - len(ok),
            "corrupt": sum(1 for r in rs if r.error.startswith("CORRUPT")),
            "req_per_s": round(len(ok) / run.wall, 1) if run.wall else 0.0,
            "MB_per_s": round(sum(r.nbytes for r in ok) / run.wall / 1e6, 1) if run.wall else 0.0,
            "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
        }
        if mode == "rest-get":
            hits = [r.seconds * 1000 for r in ok if r.cache == "HIT"]
            misses = [r.seconds * 1000 for r in ok if r.cache != "HIT"]
            entry["cache_hit_ratio"] = round(len(hits) / len(ok), 3) if ok else 0.0
            entry["hit_p50_ms"] = round(percentile(hits, 50), 1)
            entry["miss_p50_ms"] = round(percentile(misses, 50), 1)
        out["modes"][mode] = entry
    errors: dict[str, int] = {}
    for r in everything:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    out["errors"] = errors
    return out


def report(summary: dict[str, Any]) -> str:
    lines = [f"{'mode':9} {'reqs':>6} {'fail':>5} {'req/s':>7} {'MB/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for mode, e in summary["modes"].items():
        lines.append(
            f"{mode:9} {e['requests']:>6} {e['failed']:>5} {e['req_per_s']:>7} {e['MB_per_s']:>7} "
            f"{e['p50_ms']:>8} {e['p95_ms']:>8} {e['p99_ms']:>8}"
        )
    get = summary["modes"]["rest-get"]
    lines.append(
        f"REST GET cache: hit ratio {get['cache_hit_ratio']}, p50 hit {get['hit_p50_ms']} ms, "
        f"p50 miss {get['miss_p50_ms']} ms"
    )
    every = summary["modes"]["all"]
    lines.append(
        f"verified {every['ok']} of {every['requests']} answers byte for byte against local JAX; "
        f"failed {every['failed']}, corrupt {every['corrupt']}, in {summary['wall_seconds']} s"
    )
    lines += [f"  drill: {e}" for e in summary["events"]]
    lines += [f"  error x{n}: {text}" for text, n in summary["errors"].items()]
    return "\n".join(lines)


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[tuple[str, str, Topology | None]]:
    if args.grpc or args.http:
        if not (args.grpc and args.http):
            raise SystemExit("give both --grpc and --http, or neither (then the harness starts)")
        yield args.grpc, args.http, None
        return
    server_args = [] if args.warm_up else ["--no-warm-up"]
    with running_topology(server_args=server_args) as topology:
        yield topology.grpc_url, topology.http_url, topology


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    print("computing the expected digests with local JAX ...", flush=True)
    digests = expected_digests()
    with _target(args) as (grpc_url, http_url, topology):
        if args.drill != "none" and topology is None:
            raise SystemExit("drills need the harness (leave out --grpc/--http)")
        run = Run()
        stop = threading.Event()
        drill = None
        if topology is not None and args.drill != "none":
            drill = threading.Thread(
                target=_drill, args=(topology, args.drill, args.duration, run.events, stop), daemon=True
            )

        async def main() -> list[Result]:
            workload = Workload(grpc_url, http_url, digests, args.retries)
            try:
                return await drive(
                    workload,
                    duration=args.duration,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    seed=args.seed,
                    busy=lambda: drill is not None and drill.is_alive(),
                )
            finally:
                await workload.close()

        print(
            f"load: {args.concurrency} workers, {args.duration} s, drill {args.drill}, via {grpc_url} and {http_url}",
            flush=True,
        )
        started = time.perf_counter()
        if drill is not None:
            drill.start()
        run.results = asyncio.run(main())
        run.wall = time.perf_counter() - started
        stop.set()
        if drill is not None:
            drill.join(240)
        summary = summarize(run)
        summary["config"] = {
            "duration": args.duration,
            "concurrency": args.concurrency,
            "drill": args.drill,
            "replicas": len(topology.replicas) if topology else None,
            "mix": [m.label for m in MIX],
        }
        if topology is not None:
            summary["replica_exit_codes_ok"] = not any(e.startswith("FAIL") for e in run.events)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--drill", choices=("none", "kill", "rolling"), default="none")
    p.add_argument("--retries", type=int, default=4, help="client retries per request (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replicas warm up before ready (default on)",
    )
    p.add_argument("--grpc", help="an existing deployment's gRPC URL (grpc://HOST:PORT)")
    p.add_argument("--http", help="an existing deployment's HTTP URL")
    p.add_argument("--json", type=Path, help="also write the summary here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run_load(args)
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    everything = summary["modes"]["all"]
    clean = everything["failed"] == 0 and everything["requests"] > 0 and summary.get("replica_exit_codes_ok", True)
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
