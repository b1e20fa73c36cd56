"""Issue 23's memory scenarios against a real server process (release tier: GiB of
tensors made on two cores): slow readers of distinct large tensors and a disk cache of
thousands of entries under a burst of distinct requests stay within the documented
bound (what the cache counts, plus what admission admits) under an 8 GiB address-space
limit, with a bounded number of threads; the process lives, and answers stay exact."""

from __future__ import annotations

import concurrent.futures
import pathlib
import time

import httpx
import numpy as np
import psutil
import pytest

from helpers import local_jax
from jaxinit_server.testing import running_server

pytestmark = pytest.mark.release
MiB = 2**20
LIMIT_AS = 8 * 2**30


def _state(url: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(url + "/readyz", timeout=30).json()  # type: ignore[no-any-return]


def test_slow_readers_of_distinct_large_tensors_stay_within_the_bound(tmp_path: pathlib.Path) -> None:
    """Eight readers of distinct 192 MiB tensors, one after another, each taking 64 KiB and
    then no more (under --stall-seconds): each tensor is made whole into the 256 MiB cache
    if it fits, and evicting one a reader still holds keeps its bytes counted, so the next
    is streamed alone, priced by admission by its chunks. RSS grows by at most the cache
    plus what admission holds, not eight tensors."""
    cache = 256 * MiB
    with running_server("--no-warm-up", "--cache-bytes", str(cache), "--max-tensor-bytes", str(256 * MiB)) as srv:
        process = psutil.Process(srv.process.pid)
        process.rlimit(psutil.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))
        idle = process.memory_info().rss
        readers = []
        try:
            for seed in range(8):
                client = httpx.Client(base_url=srv.http_url, timeout=120)
                body = {"initializer": "normal", "shape": [49152, 1024], "key": {"seed": 100 + seed}}
                stream = client.stream(
                    "POST", "/v1/generate", json=body, headers={"accept": "application/octet-stream"}
                )
                response = stream.__enter__()
                assert response.status_code == 200
                next(response.iter_raw(64 * 1024))
                readers.append((client, stream))
                deadline = time.monotonic() + 300
                while _state(srv.http_url)["results"]["flights"]:  # made whole and cached: the next evicts it
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            state = _state(srv.http_url)
            grown = process.memory_info().rss - idle
            bound = state["results"]["capacity_bytes"] + state["admission"]["bytes"] + 300 * MiB
            assert state["results"]["held_bytes"] <= cache
            assert grown <= bound, (grown / MiB, state)
        finally:
            for client, stream in readers:
                stream.__exit__(None, None, None)
                client.close()
        with httpx.Client(base_url=srv.http_url, timeout=60) as client:
            small = client.post(
                "/v1/generate",
                json={"initializer": "normal", "shape": [8, 8], "key": {"seed": 1}},
                headers={"accept": "application/octet-stream"},
            )
        assert small.content == np.asarray(local_jax("normal", {}, 1, (8, 8), None)).tobytes()
        assert srv.process.poll() is None


def test_a_disk_cache_of_many_entries_under_a_burst_of_distinct_requests(tmp_path: pathlib.Path) -> None:
    """20,000 entries on disk and 320 distinct 256 KiB requests from 16 callers: the threads
    stay few (one disk writer, its readers, the JAX pool), every answer exact, the process
    alive and under its address-space limit."""
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    for i in range(20_000):
        (directory / f"{i:064x}.bin").write_bytes(b"\0" * 1024)
        (directory / f"{i:064x}.json").write_text("{}")
    with running_server("--no-warm-up", "--cache-dir", str(directory), "--cache-dir-bytes", str(64 * MiB)) as srv:
        process = psutil.Process(srv.process.pid)
        process.rlimit(psutil.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))
        most_threads = [process.num_threads()]

        def one(seed: int) -> bytes:
            with httpx.Client(base_url=srv.http_url, timeout=120) as client:
                body = {"initializer": "uniform", "shape": [256, 256], "key": {"seed": seed}}
                response = client.post("/v1/generate", json=body, headers={"accept": "application/octet-stream"})
            assert response.status_code == 200, response.text
            most_threads.append(process.num_threads())
            return response.content

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(320)))
        for seed in (0, 77, 319):
            assert answers[seed] == np.asarray(local_jax("uniform", {}, seed, (256, 256), None)).tobytes()
        assert max(most_threads) < 80, max(most_threads)
        assert srv.process.poll() is None
        state = _state(srv.http_url)["results"]
        assert state["disk"]["bytes"] <= 64 * MiB
