"""Time to ready: from starting ``jaxinit-server`` to its ready line, cold and warm.

    python bench/startup.py              # 3 cold and 3 warm starts, about a minute on 2 cores
    python bench/startup.py --starts 1   # one of each (CI: bench/run.py --quick runs this)

Cold: an empty compilation cache directory, as on a new machine or after an upgrade of
JAX or jaxinit (every program is compiled and the self-check computed). Warm: the same
directory again, as on a restart (programs are read back; the self-check's verdict too).
Each start is a new process, timed from ``Popen`` to the ``jaxinit-server ready`` line;
``/readyz`` is asked once at that line and must say ready. Median of the starts.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from jaxinit_server.testing import running_server

PHASES = re.compile(r"start-up: (.*)")


def start_once(cache: Path, *args: str) -> dict[str, Any]:
    """One start and stop of a server using ``cache``: seconds to ready, and its own account."""
    began = time.perf_counter()
    with running_server("--compilation-cache-dir", str(cache), "--log-level", "info", *args, timeout=300) as srv:
        seconds = time.perf_counter() - began
        ready = httpx.get(f"{srv.http_url}/readyz", timeout=30)
        if ready.status_code != 200:
            raise RuntimeError(f"ready line printed but /readyz says {ready.status_code}: {ready.text}")
        disabled = ready.json()["chunking"]["disabled"]
        srv.stop()
    account = next((m.group(1).strip() for line in srv.output if (m := PHASES.search(line))), "")
    return {"seconds": round(seconds, 3), "server_account": account, "chunking_disabled": disabled}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    times = [run["seconds"] for run in runs]
    return {"median_s": round(statistics.median(times), 3), "min_s": min(times), "max_s": max(times), "runs": runs}


def measure(starts: int, *args: str) -> dict[str, Any]:
    """``starts`` cold starts (each on a new empty cache) and ``starts`` warm ones (one cache,
    filled by a first start that is not counted)."""
    with tempfile.TemporaryDirectory(prefix="jaxinit-startup-") as tmp:
        root = Path(tmp)
        cold = [start_once(root / f"cold-{i}", *args) for i in range(starts)]
        warm_dir = root / "warm"
        start_once(warm_dir, *args)  # fills it
        warm = [start_once(warm_dir, *args) for _ in range(starts)]
        files = sum(1 for _ in warm_dir.iterdir())
    return {"server_args": list(args), "cold": summary(cold), "warm": summary(warm), "warm_cache_files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="starts of each kind (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = measure(args.starts)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
