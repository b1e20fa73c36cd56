"""The benchmark suite in quick mode, so that it cannot rot. Its timings are not judged here."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The release tier: the benchmark starts its own server processes.
pytestmark = pytest.mark.release


def test_bench_quick_mode_runs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=480,  # row 9 (the model rows, bench/model.py) adds about a minute on a loaded machine
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["mode"] == "quick"
    expected = {"1_new_shape_latency", "2_warm_small_256x256", "3_large", "4_memory", "5_concurrency_64x64"}
    assert expected | {"6_fan_out", "7_small_breakdown_256x256", "9_model"} <= set(results)
    model = results["9_model"]
    assert model["model"]["leaves"] == 2 * 9 + 3
    assert model["service"]["jit"]["exact_vs_jax_jit_model_init"] == 1.0
    assert set(model["met"]) == set(model["targets"])
    assert results["4_memory"]["tensor_gib"] == 1024 * 1024 * 4 / 2**30
    for transport in ("grpc", "rest"):
        assert results["5_concurrency_64x64"][transport]["errors"] == 0
        assert results["5_concurrency_64x64"][transport]["requests"] > 0
