"""Small whole-tensor requests, warm: what a caller waits for a request the whole-tensor
worker makes (orthogonal, complex, an rbg key), against the same requests served by
another checkout's code.

    python bench/whole_small.py                  # this checkout alone
    python bench/whole_small.py --baseline DIR   # and DIR's code (e.g. `git archive REV | tar -x -C DIR`)

Each server runs with no result cache (every request is made) and one whole-tensor
worker, is warmed with a round of every kind, then both take the same requests, one
server after the other request by request, so that both see the same machine. Seeds
differ per request (the key is an argument: no program is compiled after the warm-up).
Writes bench/whole_small.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jaxinit
from jaxinit_server.testing import running_server

ROOT = Path(__file__).resolve().parent.parent
KINDS: dict[str, tuple[str, Any, tuple[int, ...], str]] = {
    "orthogonal 16x16": ("orthogonal", None, (16, 16), "float32"),
    "normal complex64 8x8": ("normal", None, (8, 8), "complex64"),
    "normal rbg key 8x8": ("normal", "rbg", (8, 8), "float32"),
}
FLAGS = ("--cache-bytes", "0", "--whole-workers", "1")


def _ask(client: jaxinit.Client, kind: str, seed: int) -> float:
    name, impl, shape, dtype = KINDS[kind]
    key = jaxinit.key(seed, impl=impl) if impl else seed
    start = time.perf_counter()
    client.generate(name, key, shape, dtype)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="a checkout whose client/ and server/ serve the baseline")
    parser.add_argument("-n", type=int, default=200, help="requests of each kind per server")
    options = parser.parse_args(argv)
    servers = {"this checkout": {}}
    if options.baseline:
        base = options.baseline.resolve()
        path = os.pathsep.join([str(base / "client"), str(base / "server")])
        servers[f"baseline ({base.name})"] = {"PYTHONPATH": path}
    times: dict[str, dict[str, list[float]]] = {label: {kind: [] for kind in KINDS} for label in servers}
    with contextlib.ExitStack() as stack:
        clients = {}
        for label, env in servers.items():
            srv = stack.enter_context(running_server(*FLAGS, env=env))
            clients[label] = stack.enter_context(jaxinit.Client(srv.grpc_url))
            for kind in KINDS:  # the warm-up: every program compiled (or read from the cache)
                _ask(clients[label], kind, 10**6)
        for i in range(options.n):
            for kind in KINDS:
                for label, client in clients.items():
                    times[label][kind].append(_ask(client, kind, i))
    result: dict[str, Any] = {"n": options.n, "flags": FLAGS, "ms": {}}
    print(f"Small whole-tensor requests over gRPC, warm, {options.n} of each kind per server (ms)\n")
    print("| request | " + " | ".join(f"{label} p50 / p90" for label in servers) + " |")
    print("|---|" + "---:|" * len(servers))
    for kind in KINDS:
        cells = []
        for label in servers:
            values = sorted(times[label][kind])
            p50, p90 = statistics.median(values) * 1e3, values[int(0.9 * (len(values) - 1))] * 1e3
            result["ms"].setdefault(kind, {})[label] = {"p50": round(p50, 2), "p90": round(p90, 2)}
            cells.append(f"{p50:.1f} / {p90:.1f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    (ROOT / "bench" / "whole_small.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
