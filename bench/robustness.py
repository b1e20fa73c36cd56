"""Robustness benchmark: does heavy work hurt small requests, and does memory come back?

    python bench/robustness.py --json bench/robustness.json   # about 7.5 minutes on 2 cores
    python bench/robustness.py --quick                         # 3 s windows, a smoke run

Starts one jaxinit-server with default settings on loopback and measures two things:

1. Latency under heavy load. A probe sends warm small requests (``lecun_normal``
   256x256 float32 through ``jaxinit.Client``, over gRPC and over HTTP) and
   ``GET /healthz``, one after another, for a window (~10 s), while 0, 1, 4 or 8
   heavy requests run (each in its own thread, started again when it ends). Heavy
   kinds: whole-tensor ``orthogonal``, complex64 ``normal`` and rbg-key ``normal``
   (worker processes); a 1 GiB chunked stream read to its end; a 50,000-parameter
   model plan answered as JSON. A heavy request refused with 429 is counted, not an
   error. Per window: probe p50/p99/max, every probe answer compared byte for byte
   with local JAX, and the event loop's lag (``jaxinit_event_loop_lag_seconds``:
   share of 20 ms timer turns that ran over 100 ms late). Why: the event loop and
   the small-request path must stay responsive whatever else is running.
2. Peak RSS per request class: the server process plus its children (the whole-tensor
   workers), sampled every 50 ms, for one request at a time of each class, read to
   the end and discarded. Why: a class whose peak is its tensor size (or more), or
   whose memory does not come back afterwards, is what takes a replica down. This part
   runs first, on the fresh server; its last row is what part 1's load left behind.

The heavy load runs in a child process, so that the probe's timings are not skewed by
the load generator holding this process's GIL; on a 2-core machine the generator still
competes with the server for CPU, as a co-located client would. Every loop is bounded
in count and time; errors are counted per request, never fatal. Absolute numbers from a
shared machine are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

import jaxinit

MiB = 2**20
PROBE_SHAPE = (256, 256)
PROBE_SEEDS = range(8)
PROBE_PAUSE = 0.02  # seconds between probe rounds: the probe itself stays a light load
CONCURRENCY = (1, 4, 8)
GRACE = 5.0  # seconds heavy requests in flight at a window's end get before they are cut
PLAN_PARAMS = 50_000
OCTET = {"Accept": "application/octet-stream"}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def stats_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "max_ms": max(values) * 1e3 if values else float("nan"),
    }


# --- heavy requests (run in the load process) ------------------------------------------------


class Overloaded(Exception):
    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after


def _read_stream(
    http: httpx.Client, path: str, body: dict[str, Any] | bytes, stop: Any, headers: dict[str, str] | None = None
) -> str:
    """POST, read the answer to its end and throw it away; "cut" when ``stop`` came first."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with http.stream(
        "POST", path, content=content, headers={"Content-Type": "application/json", **(headers or {})}
    ) as response:
        if response.status_code == 429:
            raise Overloaded(float(response.headers.get("retry-after", 0)) or None)
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        for _ in response.iter_raw(MiB):
            if stop.is_set():
                return "cut"
    return "ok"


@dataclass
class Clients:
    grpc: jaxinit.Client
    http: httpx.Client


def heavy_orthogonal(c: Clients, seed: int, stop: Any) -> str:
    c.grpc.generate("orthogonal", seed, (2048, 2048))
    return "ok"


def heavy_complex(c: Clients, seed: int, stop: Any) -> str:
    c.grpc.generate("normal", seed, (4096, 4096), "complex64")
    return "ok"


def heavy_rbg(c: Clients, seed: int, stop: Any) -> str:
    c.grpc.generate("normal", jaxinit.key(seed, impl="rbg"), (8192, 8192))
    return "ok"


def heavy_stream(c: Clients, seed: int, stop: Any) -> str:
    body = {"initializer": "normal", "shape": [16384, 16384], "key": {"seed": seed}}
    return _read_stream(c.http, "/v1/generate", body, stop, OCTET)


@functools.cache
def _plan_params() -> str:
    return json.dumps([{"path": f"layer{i}.w", "initializer": "normal", "shape": [4, 3]} for i in range(PLAN_PARAMS)])


def heavy_plan(c: Clients, seed: int, stop: Any) -> str:
    body = f'{{"model": {{"params": {_plan_params()}}}, "key": {{"seed": {seed}}}}}'.encode()
    return _read_stream(c.http, "/v1/models/init", body, stop, {"Accept": "application/json"})


# kind -> (table label, one request: returns "ok" or "cut", raises on errors). Whole-tensor
# kinds go through jaxinit.Client over gRPC; the streams over HTTP, read and dropped.
HEAVY: dict[str, tuple[str, Callable[[Clients, int, Any], str]]] = {
    "orthogonal": ("whole `orthogonal` 2048x2048", heavy_orthogonal),
    "complex": ("whole `normal` complex64 4096x4096", heavy_complex),
    "rbg": ("whole `normal` rbg key 8192x8192", heavy_rbg),
    "stream": ("chunked `normal` 16384x16384 (1 GiB), HTTP", heavy_stream),
    "plan": (f"model plan, {PLAN_PARAMS:,} raw params, JSON", heavy_plan),
}


@dataclass
class HeavyStats:
    ok: int = 0
    overloaded: int = 0
    errors: int = 0
    cut: int = 0
    seconds: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    in_flight: bool = False


def _heavy_loop(
    kind: str, index: int, grpc_url: str, http_url: str, stop: Any, deadline: float, stats: HeavyStats
) -> None:
    run = HEAVY[kind][1]
    clients = Clients(jaxinit.Client(grpc_url, retries=0, timeout=300), httpx.Client(base_url=http_url, timeout=300))
    seed = 1000 * index
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            seed += 1
            stats.in_flight = True
            started = time.perf_counter()
            try:
                outcome = run(clients, seed, stop)
            except (Overloaded, jaxinit.Overloaded) as exc:
                stats.overloaded += 1
                stop.wait(min(exc.retry_after or 0.25, 1.0))  # back off as a client would
                continue
            except Exception as exc:  # counted, never fatal
                stats.errors += 1
                if len(stats.messages) < 5:
                    stats.messages.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            finally:
                stats.in_flight = False
            if outcome == "cut":
                stats.cut += 1
            else:
                stats.ok += 1
                stats.seconds.append(time.perf_counter() - started)
    finally:
        clients.grpc.close()
        clients.http.close()


def heavy_process(kind: str, n: int, grpc_url: str, http_url: str, stop: Any, conn: Any, limit_s: float) -> None:
    """The load process: ``n`` threads, each running ``kind`` back to back until ``stop``
    (or ``limit_s``); then sends its counts and exits, cutting what is still in flight."""
    deadline = time.monotonic() + limit_s
    stats = [HeavyStats() for _ in range(n)]
    threads = [
        threading.Thread(target=_heavy_loop, args=(kind, i, grpc_url, http_url, stop, deadline, stats[i]), daemon=True)
        for i in range(n)
    ]
    for thread in threads:
        thread.start()
    conn.send("started")
    stop.wait(max(0.0, deadline - time.monotonic()))
    stop.set()
    until = time.monotonic() + GRACE
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    seconds = [s for st in stats for s in st.seconds]
    conn.send(
        {
            "ok": sum(s.ok for s in stats),
            "overloaded_429": sum(s.overloaded for s in stats),
            "errors": sum(s.errors for s in stats),
            "cut": sum(s.cut for s in stats) + sum(1 for s in stats if s.in_flight),
            "p50_s": percentile(seconds, 50),
            "max_s": max(seconds) if seconds else float("nan"),
            "messages": [m for s in stats for m in s.messages][:5],
        }
    )
    conn.close()
    os._exit(0)  # threads still blocked in a call are cut: their connections close


# --- part 1: the probe ----------------------------------------------------------------------


def lag_histogram(http: httpx.Client) -> dict[float, float]:
    """jaxinit_event_loop_lag_seconds buckets (le -> cumulative count), +inf included."""
    text = http.get("/metrics").text
    out = {
        float(le): float(v)
        for le, v in re.findall(r'^jaxinit_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    }
    return out


def lag_delta(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    turns = delta.get(float("inf"), 0.0)
    over = turns - delta.get(0.1, 0.0)
    worst = min((le for le, v in delta.items() if v >= turns), default=float("inf")) if turns else float("nan")
    return {
        "turns": int(turns),
        "over_100ms": int(over),
        "over_100ms_fraction": over / turns if turns else 0.0,
        "worst_at_most_s": worst,
    }


def wait_quiet(http: httpx.Client, limit: float = 60.0) -> float:
    """Wait (bounded) until nothing is admitted and no whole-tensor worker is busy."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            state = http.get("/readyz").json()
            pool = state["whole_tensor_workers"]
            if state["admission"]["streams"] == 0 and pool["busy"] == 0 and pool["waiting"] == 0:
                break
        except Exception:
            pass
        time.sleep(0.2)
    return time.monotonic() - started


def probe(srv: Any, seconds: float, expected: dict[int, bytes]) -> dict[str, Any]:
    """Small requests and /healthz, one after another, for ``seconds``; /readyz on the side."""
    samples: dict[str, list[float]] = {"grpc": [], "http": [], "healthz": []}
    errors: dict[str, int] = {"grpc": 0, "http": 0, "healthz": 0}
    messages: list[str] = []
    wrong = 0
    peak = {"busy": 0, "waiting": 0, "streams": 0, "admitted_mib": 0.0}
    with (
        jaxinit.Client(srv.grpc_url, retries=0, timeout=60) as grpc_client,
        jaxinit.Client(srv.http_url, retries=0, timeout=60) as http_client,
        httpx.Client(base_url=srv.http_url, timeout=60) as http,
    ):
        clients = {"grpc": grpc_client, "http": http_client}
        end = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < end and rounds < 100_000:
            seed = PROBE_SEEDS[rounds % len(PROBE_SEEDS)]
            rounds += 1
            for name, client in clients.items():
                started = time.perf_counter()
                try:
                    tensor = client.generate("lecun_normal", seed, PROBE_SHAPE)
                    samples[name].append(time.perf_counter() - started)
                    if tensor.array.dtype != np.float32 or tensor.array.tobytes() != expected[seed]:
                        wrong += 1
                except Exception as exc:
                    errors[name] += 1
                    if len(messages) < 5:
                        messages.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            started = time.perf_counter()
            try:
                response = http.get("/healthz")
                response.raise_for_status()
                samples["healthz"].append(time.perf_counter() - started)
                state = http.get("/readyz").json()  # not timed: what the server is holding now
                pool, admission = state["whole_tensor_workers"], state["admission"]
                peak = {
                    "busy": max(peak["busy"], pool["busy"]),
                    "waiting": max(peak["waiting"], pool["waiting"]),
                    "streams": max(peak["streams"], admission["streams"]),
                    "admitted_mib": max(peak["admitted_mib"], admission["bytes"] / MiB),
                }
            except Exception as exc:
                errors["healthz"] += 1
                if len(messages) < 5:
                    messages.append(f"healthz: {type(exc).__name__}: {exc}"[:300])
            time.sleep(PROBE_PAUSE)
    probes = sum(len(v) for k, v in samples.items() if k != "healthz")
    return {
        **{k: stats_ms(v) for k, v in samples.items()},
        "errors": errors,
        "messages": messages,
        "answers_checked": probes,
        "answers_wrong": wrong,
        "all_correct": wrong == 0 and probes > 0,
        "server_peak": peak,
    }


def window(
    ctx: Any, srv: Any, http: httpx.Client, kind: str | None, n: int, seconds: float, expected: dict[int, bytes]
) -> dict[str, Any]:
    """One row of part 1: ``n`` heavy ``kind`` requests at once while the probe runs."""
    before_state = http.get("/readyz").json()
    heavy: dict[str, Any] = {}
    child = stop = receiver = None
    if kind and n:
        stop = ctx.Event()
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=heavy_process, daemon=True, args=(kind, n, srv.grpc_url, srv.http_url, stop, sender, seconds + 60)
        )
        child.start()
        if not receiver.poll(60):
            heavy["messages"] = ["the load process did not start"]
        else:
            receiver.recv()
            time.sleep(0.5)  # the heavy requests reach the server before the window opens
    before = lag_histogram(http)
    result = probe(srv, seconds, expected)
    lag = lag_delta(before, lag_histogram(http))
    if child is not None and stop is not None and receiver is not None:
        stop.set()
        heavy = receiver.recv() if receiver.poll(GRACE + 30) else {"messages": ["the load process sent no counts"]}
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)
    drain = wait_quiet(http)
    after_state = http.get("/readyz").json()
    pool_before, pool_after = before_state["whole_tensor_workers"], after_state["whole_tensor_workers"]
    return {
        "kind": kind or "none",
        "concurrency": n,
        "window_s": seconds,
        "heavy": heavy,
        "probe": result,
        "event_loop_lag": lag,
        "drain_s": round(drain, 2),
        "workers_killed": pool_after["killed"] - pool_before["killed"],
        "workers_replaced": pool_after["replaced"] - pool_before["replaced"],
        "rss_after_mib": mib(RssSampler(srv.process.pid).breakdown()),
    }


# --- part 2: peak RSS -----------------------------------------------------------------------


class RssSampler:
    """RSS of a process and all its children, summed, every ``period`` s, in a thread."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.period = period
        self.peak = self.peak_main = self.peak_children = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def breakdown(self) -> dict[str, Any]:
        """RSS in bytes: the server's own, its children's, and their sum."""
        main = children = count = 0
        try:
            with contextlib.suppress(psutil.Error):
                main = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker that just ended
                    children += child.memory_info().rss
                    count += 1
        except psutil.Error:
            pass
        return {"total": main + children, "main": main, "children": children, "processes": 1 + count}

    def current(self) -> int:
        return int(self.breakdown()["total"])

    def _run(self) -> None:
        while not self.done.wait(self.period):
            self._observe(self.breakdown())

    def _observe(self, rss: dict[str, Any]) -> None:
        with self.lock:
            self.peak = max(self.peak, rss["total"])
            self.peak_main = max(self.peak_main, rss["main"])
            self.peak_children = max(self.peak_children, rss["children"])

    def reset(self) -> None:
        with self.lock:
            self.peak = self.peak_main = self.peak_children = 0
        self._observe(self.breakdown())

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def _kserve_body(shape: list[int]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "shape", "datatype": "INT64", "shape": [len(shape)], "data": shape},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }


def _gen(shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"initializer": extra.pop("initializer", "normal"), "shape": shape, "key": {"seed": 0}, **extra}


# (label, bytes of the tensor, path, body, headers). Every answer is read to its end and dropped.
# The legacy row sends prng.threefry_partitionable=false, as jaxinit.Client(url, threefry_partitionable=False) does.
RSS_CLASSES: list[tuple[str, int, str, dict[str, Any], dict[str, str]]] = [
    ("chunked `normal` 32768x32768 (4 GiB) stream", 4 * 2**30, "/v1/generate", _gen([32768, 32768]), OCTET),
    ("whole `orthogonal` 4096x4096", 64 * MiB, "/v1/generate", _gen([4096, 4096], initializer="orthogonal"), OCTET),
    ("whole `normal` complex64 8192x8192", 512 * MiB, "/v1/generate", _gen([8192, 8192], dtype="complex64"), OCTET),
    (
        "whole `normal` rbg key 8192x8192",
        256 * MiB,
        "/v1/generate",
        {**_gen([8192, 8192]), "key": {"seed": 0, "impl": "rbg"}},
        OCTET,
    ),
    (
        "legacy (threefry_partitionable=False) `normal` 1 GiB stream",
        2**30,
        "/v1/generate",
        _gen([16384, 16384], prng={"threefry_partitionable": False}),
        OCTET,
    ),
    (
        "JSON answer at the element cap (1024x1024)",
        4 * MiB,
        "/v1/generate",
        _gen([1024, 1024]),
        {"Accept": "application/json"},
    ),
    ("KServe binary answer, 1 GiB", 2**30, "/v2/models/normal/infer", _kserve_body([16384, 16384]), {}),
    (
        "model `.npz`, one 8192x8192 param (256 MiB)",
        256 * MiB,
        "/v1/models/init",
        {"model": {"params": [{"path": "w", "initializer": "normal", "shape": [8192, 8192]}]}, "key": {"seed": 0}},
        {"Accept": "application/x-npz"},
    ),
]


def settle(sampler: RssSampler, seconds: float = 1.0) -> dict[str, Any]:
    """Median RSS (total, main, children) over ``seconds`` of idle."""
    values = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        values.append(sampler.breakdown())
        time.sleep(0.1)
    return {k: int(statistics.median(v[k] for v in values)) for k in values[0]}


def fill_pool(srv: Any, workers: int = 2) -> None:
    """Whole-tensor workers killed (a caller gone) or replaced (too big) are started again
    only by the next whole-tensor request; start them now, so that a worker's start-up
    is not counted as a request's memory."""

    def one(_: int) -> None:
        with contextlib.suppress(Exception), jaxinit.Client(srv.grpc_url, retries=0, timeout=120) as client:
            client.generate("orthogonal", 0, (64, 64))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(130)


def mib(breakdown: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v / MiB, 1) if k != "processes" else v) for k, v in breakdown.items()}


def rss_row(
    label: str,
    nbytes: int,
    seconds: float,
    status: str,
    read: int,
    baseline: dict[str, Any],
    peak: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    return {
        "class": label,
        "tensor_bytes": nbytes,
        "seconds": round(seconds, 2),
        "status": status,
        "bytes_read": read,
        "baseline_mib": baseline["total"] / MiB,
        "peak_mib": peak["total"] / MiB,
        "growth_mib": (peak["total"] - baseline["total"]) / MiB,
        "growth_server_mib": (peak["main"] - baseline["main"]) / MiB,
        "growth_workers_mib": (peak["children"] - baseline["children"]) / MiB,
        "after_mib": after["total"] / MiB,
        "baseline": mib(baseline),
        "after": mib(after),
        "back": after["total"] - baseline["total"] <= 64 * MiB,
    }


def peak_rss(srv: Any, http: httpx.Client, back_within: float) -> list[dict[str, Any]]:
    """One request of each class at a time, on the idle server; the first row: idle."""
    with RssSampler(srv.process.pid) as sampler:
        wait_quiet(http)
        idle = settle(sampler, 2.0)
        rows = [rss_row("idle", 0, 2.0, "ok", 0, idle, idle, idle)]
        for label, nbytes, path, body, headers in RSS_CLASSES:
            wait_quiet(http)
            baseline = settle(sampler, 1.0)
            sampler.reset()
            started = time.perf_counter()
            status, read = "ok", 0
            try:
                with http.stream("POST", path, json=body, headers=headers) as response:
                    for chunk in response.iter_raw(MiB):
                        read += len(chunk)
                    if response.status_code != 200:
                        status = f"HTTP {response.status_code}"
                if status == "ok" and read < nbytes:
                    status = f"short: {read} bytes"
            except Exception as exc:
                status = f"{type(exc).__name__}: {exc}"[:200]
            seconds = time.perf_counter() - started
            time.sleep(0.2)  # a last sample after the answer ended
            peak = {"total": sampler.peak, "main": sampler.peak_main, "children": sampler.peak_children}
            # Memory coming back: wait (bounded) for RSS to return within 64 MiB of the baseline.
            until = time.monotonic() + back_within
            after = sampler.breakdown()
            while after["total"] - baseline["total"] > 64 * MiB and time.monotonic() < until:
                time.sleep(0.5)
                after = sampler.breakdown()
            rows.append(rss_row(label, nbytes, seconds, status, read, baseline, peak, after))
            if after["processes"] < baseline["processes"]:  # a worker replaced: start it now, not in the next row
                fill_pool(srv)
            r = rows[-1]
            print(
                f"  {label}: {status}, {seconds:.1f} s, peak +{r['growth_mib']:.0f} MiB "
                f"(server +{r['growth_server_mib']:.0f}, workers +{r['growth_workers_mib']:.0f}), "
                f"after {r['after_mib']:.0f} MiB",
                flush=True,
            )
    return rows


def left_behind(srv: Any, http: httpx.Client, before: dict[str, Any], within: float) -> dict[str, Any]:
    """Idle RSS after part 1's load, against ``before`` (idle before it): waits (bounded)
    for it to come back, e.g. for the server's idle garbage collection (every 5 s)."""
    wait_quiet(http)
    fill_pool(srv)
    wait_quiet(http)
    sampler = RssSampler(srv.process.pid)
    started = time.monotonic()
    lowest = sampler.breakdown()
    while lowest["total"] - before["total"] > 64 * MiB and time.monotonic() - started < within:
        time.sleep(0.5)
        now = sampler.breakdown()
        lowest = now if now["total"] < lowest["total"] else lowest
    return rss_row(
        f"idle, after part 1's load (lowest in {time.monotonic() - started:.0f} s)",
        0,
        time.monotonic() - started,
        "ok",
        0,
        before,
        lowest,
        lowest,
    )


# --- report ---------------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _cell(s: dict[str, float]) -> str:
    return "–" if not s["n"] else f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} / {s['max_ms']:.0f}"


def latency_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| heavy load | n | heavy ok / 429 / err / cut | gRPC 256² p50 / p99 / max ms | "
        "HTTP 256² p50 / p99 / max ms | /healthz p50 / p99 / max ms | loop lag > 100 ms | probes correct (n) |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    for row in rows:
        h, p, lag = row["heavy"], row["probe"], row["event_loop_lag"]
        label = HEAVY[row["kind"]][0] if row["kind"] in HEAVY else "none"
        heavy = (
            f"{h.get('ok', 0)} / {h.get('overloaded_429', 0)} / {h.get('errors', 0)} / {h.get('cut', 0)}"
            if row["concurrency"]
            else "–"
        )
        worst = lag["worst_at_most_s"]
        worst_text = "" if worst != worst else f" (max ≤ {worst:g} s)"
        errors = sum(p["errors"].values())
        correct = (f"yes ({p['answers_checked']})" if p["all_correct"] else f"NO ({p['answers_wrong']} wrong)") + (
            f", {errors} errors" if errors else ""
        )
        lines.append(
            f"| {label} | {row['concurrency']} | {heavy} | {_cell(p['grpc'])} | {_cell(p['http'])} | "
            f"{_cell(p['healthz'])} | {100 * lag['over_100ms_fraction']:.1f}%{worst_text} | {correct} |"
        )
    return "\n".join(lines)


def rss_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| request (one at a time) | seconds | baseline, MiB | peak − baseline, MiB (server / workers) | "
        "RSS after, MiB (server + workers) | status |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in rows:
        back = "" if r["back"] else " **not back**"
        after = r["after"]
        lines.append(
            f"| {r['class']} | {r['seconds']:.1f} | {r['baseline_mib']:.0f} | {r['growth_mib']:.0f} "
            f"({r['growth_server_mib']:.0f} / {r['growth_workers_mib']:.0f}) | {after['total']:.0f} "
            f"({after['main']:.0f} + {after['children']:.0f}){back} | {r['status']} |"
        )
    return "\n".join(lines)


def notes(latency: list[dict[str, Any]], rss: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in latency:
        where = f"{row['kind']} x{row['concurrency']}"
        p = row["probe"]
        for name in ("grpc", "http", "healthz"):
            if p[name]["n"] and p[name]["max_ms"] > 100:
                out.append(f"{where}: {name} probe max {p[name]['max_ms']:.0f} ms (> 100 ms)")
        if sum(p["errors"].values()):
            out.append(f"{where}: probe errors {p['errors']}: {p['messages'][:2]}")
        if not p["all_correct"]:
            out.append(f"{where}: {p['answers_wrong']} probe answers differ from local JAX")
        if row["heavy"].get("errors"):
            out.append(f"{where}: {row['heavy']['errors']} heavy errors: {row['heavy'].get('messages', [])[:2]}")
        if row["heavy"].get("messages") and not row["heavy"].get("errors"):
            out.append(f"{where}: {row['heavy']['messages']}")
    for r in rss:
        if r["status"] != "ok":
            out.append(f"RSS {r['class']}: {r['status']}")
        if not r["back"]:
            out.append(
                f"RSS {r['class']}: {r['after_mib']:.0f} MiB after, baseline {r['baseline_mib']:.0f} MiB "
                f"(after: {r['after']}, baseline: {r['baseline']})"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s windows: a smoke run")
    parser.add_argument("--window", type=float, help="seconds per load window (default 10, --quick 3)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    seconds = args.window or (3.0 if args.quick else 10.0)
    wall = time.perf_counter()

    import jax

    from jaxinit_server.testing import running_server

    init = jax.nn.initializers.lecun_normal()
    expected = {s: np.asarray(init(jax.random.key(s), PROBE_SHAPE)).tobytes() for s in PROBE_SEEDS}
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "window_s": seconds,
        "machine": {
            "nproc": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "jax": jax.__version__,
        "server_flags": "defaults",
    }
    ctx = multiprocessing.get_context("spawn")
    latency: list[dict[str, Any]] = []
    with running_server() as srv, httpx.Client(base_url=srv.http_url, timeout=600) as http:
        meta["server"] = http.get("/v1/initializers").json().get("server")
        with jaxinit.Client(srv.grpc_url) as c, jaxinit.Client(srv.http_url) as h:  # warm the probe's path
            for s in PROBE_SEEDS:
                c.generate("lecun_normal", s, PROBE_SHAPE)
                h.generate("lecun_normal", s, PROBE_SHAPE)
        # Part 2 runs first, on the fresh server: its baselines are not what part 1 left.
        print("part 2: peak RSS per request class", flush=True)
        rss = peak_rss(srv, http, back_within=3.0 if args.quick else 6.0)
        meta["machine"]["loadavg_after_part2"] = os.getloadavg()
        fill_pool(srv)
        wait_quiet(http)
        before = settle(RssSampler(srv.process.pid), 1.0)
        print(f"part 1: probe latency under load, {seconds:g} s windows", flush=True)
        plan: list[tuple[str | None, int]] = [(None, 0)] + [(k, n) for k in HEAVY for n in CONCURRENCY]
        for kind, n in plan:
            row = window(ctx, srv, http, kind, n, seconds, expected)
            latency.append(row)
            p = row["probe"]
            print(
                f"  {row['kind']} x{n}: grpc {_cell(p['grpc'])}, http {_cell(p['http'])}, "
                f"healthz {_cell(p['healthz'])} ms, heavy {row['heavy'] or '-'}, "
                f"RSS after {row['rss_after_mib']}",
                flush=True,
            )
        rss.append(left_behind(srv, http, before, within=6.0 if args.quick else 15.0))
    meta["machine"]["loadavg_at_end"] = os.getloadavg()
    meta["wall_seconds"] = round(time.perf_counter() - wall, 1)
    found = notes(latency, rss)
    print("\n### Small-request latency under heavy load\n")
    print(latency_table(latency))
    print("\n### Peak RSS per request class (server + whole-tensor workers)\n")
    print(rss_table(rss))
    print(
        f"\nwall {meta['wall_seconds']} s; {meta['machine']['nproc']} cores, {meta['machine']['memory_gib']} GiB; "
        f"jax {meta['jax']}; load average at start {meta['machine']['loadavg_at_start']}"
    )
    for line in found:
        print(f"note: {line}")
    if args.json:
        document = {"meta": meta, "latency_under_load": latency, "peak_rss": rss, "notes": found}
        args.json.write_text(json.dumps(finite(document), indent=2) + "\n")
    return 0 if all(row["probe"]["all_correct"] for row in latency) else 1


if __name__ == "__main__":
    raise SystemExit(main())
