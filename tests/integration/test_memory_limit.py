"""With default settings, no mix of admitted requests takes a replica past the memory limit
the shipped compose and k8s files give it (6 GiB): the worst mix of every request class,
sent at once, while the server's process tree (server and whole-tensor workers) is
sampled. Requests the server refuses (429 / 413) are part of the point: admission is
what keeps the mix inside the limit.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from jaxinit_server.testing import ServerProcess, running_server

# The release tier: the worst request mix at once, multi-GiB.
pytestmark = pytest.mark.release

ROOT = Path(__file__).resolve().parents[2]
SAFETY = 10 * 2**30  # the test kills the server past this, so the machine is never at risk


def _replica_limit() -> int:
    """The memory limit of one replica in the shipped files (they must agree)."""
    compose = re.search(r"mem_limit:\s*(\d+)g", (ROOT / "docker-compose.yml").read_text())
    k8s = re.search(r"limits:.*memory:\s*(\d+)Gi", (ROOT / "deploy/k8s/deployment.yaml").read_text())
    assert compose and k8s and compose.group(1) == k8s.group(1)
    return int(compose.group(1)) * 2**30


class _Sampler(threading.Thread):
    """The RSS of a process and all its children, every 20 ms; the peak is kept."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def tree_rss(self) -> int:
        total = 0
        for proc in (self.root, *self.root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self.done.wait(0.02):
            rss = self.tree_rss()
            self.peak = max(self.peak, rss)
            if rss > SAFETY:
                self.root.kill()


def _drain(response: httpx.Response) -> int:
    return sum(len(chunk) for chunk in response.iter_bytes())


@pytest.mark.timeout(1800)
def test_the_worst_admitted_mix_stays_inside_a_replicas_memory_limit() -> None:
    limit = _replica_limit()
    with running_server() as srv:  # default settings, as a replica runs them
        sampler = _Sampler(srv.process.pid)
        baseline = sampler.tree_rss()
        sampler.start()
        outcomes: list[tuple[str, int]] = []
        lock = threading.Lock()

        def send(name: str, method: str, path: str, **kwargs: object) -> Callable[[], None]:
            def run() -> None:
                # As the jaxinit client does: a 429 is waited out (Retry-After) and retried,
                # so every request runs, in whatever mix admission lets in at once.
                deadline = time.monotonic() + 900
                with httpx.Client(timeout=httpx.Timeout(900, connect=60)) as client:
                    while True:
                        try:
                            with client.stream(method, f"{srv.http_url}{path}", **kwargs) as response:  # type: ignore[arg-type]
                                if response.status_code == 200:
                                    _drain(response)
                                else:
                                    response.read()
                                code = response.status_code
                                retry = float(response.headers.get("retry-after", "1"))
                        except httpx.HTTPError:
                            code, retry = -1, 0
                        if code != 429 or time.monotonic() > deadline:
                            break
                        time.sleep(retry)
                with lock:
                    outcomes.append((name, code))

            return run

        v2 = {
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            "inputs": [
                {"name": "shape", "datatype": "INT64", "shape": [2], "data": [16384, 16384]},
                {"name": "seed", "datatype": "INT64", "shape": [1], "data": [0]},
            ],
        }
        npz = {
            "model": {
                "params": [
                    {"path": "a.w", "initializer": "normal", "shape": [8192, 8192]},
                    {"path": "b.w", "initializer": "normal", "shape": [8192, 8192]},
                ]
            },
            "key": {"seed": 0},
        }
        jobs = [
            # whole-tensor requests at the largest size each class admits (~2.4 GiB priced)
            *(
                send(
                    f"complex64 normal #{i}",
                    "POST",
                    "/v1/generate",
                    json={"initializer": "normal", "shape": [9000, 9000], "dtype": "complex64", "key": {"seed": i}},
                )
                for i in range(2)
            ),
            *(
                send(
                    f"rbg normal #{i}",
                    "POST",
                    "/v1/generate",
                    json={"initializer": "normal", "shape": [14500, 14500], "key": {"seed": i, "impl": "rbg"}},
                )
                for i in range(2)
            ),
            *(
                send(f"orthogonal #{i}", "GET", "/v1/generate/orthogonal", params={"shape": "4096,4096", "seed": i})
                for i in range(2)
            ),
            # 4 GiB chunked streams, legacy mode too, JSON at the cap, KServe binary, an .npz
            *(
                send(f"4 GiB stream #{i}", "GET", "/v1/generate/normal", params={"shape": "32768,32768", "seed": i})
                for i in range(4)
            ),
            send(
                "4 GiB legacy stream",
                "GET",
                "/v1/generate/normal",
                params={"shape": "32768,32768", "seed": 9, "threefry_partitionable": "false"},
            ),
            *(
                send(
                    f"JSON at the cap #{i}",
                    "GET",
                    "/v1/generate/normal",
                    params={"shape": "1024,1024", "seed": i},
                    headers={"Accept": "application/json"},
                )
                for i in range(2)
            ),
            send("KServe binary 1 GiB", "POST", "/v2/models/normal/infer", json=v2),
            send("model .npz 512 MiB", "POST", "/v1/models/init", json=npz, headers={"Accept": "application/x-npz"}),
        ]
        threads = [threading.Thread(target=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(1200)
        sampler.done.set()
        sampler.join()
        alive = srv.process.poll() is None
        print(
            f"\nbaseline {baseline / 2**30:.2f} GiB, peak {sampler.peak / 2**30:.2f} GiB "
            f"(limit {limit / 2**30:.0f} GiB); outcomes: {sorted(outcomes)}"
        )
        assert alive, "".join(srv.output[-50:])
        assert sampler.peak < limit, f"peak {sampler.peak / 2**30:.2f} GiB over the {limit / 2**30:.0f} GiB limit"
        assert len(outcomes) == len(jobs) and all(code == 200 for _, code in outcomes), sorted(outcomes)
        assert httpx.get(f"{srv.http_url}/healthz", timeout=30).status_code == 200
        _check_stop(srv)


def _check_stop(srv: ServerProcess) -> None:
    started = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - started < 60
