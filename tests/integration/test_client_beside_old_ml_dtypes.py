"""The client installed beside ml_dtypes 0.4.1 and numpy < 2.1 (TensorFlow 2.15-2.17's pins),
on the oldest Python the client declares where this machine has it: it imports, and over
HTTP float32, bfloat16 and float8 arrive with JAX's bytes (a float8 type 0.4 lacks as raw
bits); the CLI's bfloat16 ``.npy`` reads back with ``to_float32(..., dtype=)``. It used to
die at import: ``module 'ml_dtypes' has no attribute 'float8_e3m4'``."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import jax
import ml_dtypes
import numpy as np
import pytest

from helpers import ROOT, cached_venv

pytestmark = pytest.mark.release

PINS = ["ml_dtypes==0.4.1", "numpy<2.1"]


def floor_python() -> str:
    """A Python of the version the client's requires-python names as its floor, else this one."""
    found = re.search(r'^requires-python = ">=(\d+\.\d+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "the client's pyproject.toml names no Python floor"
    floor = found.group(1)
    pyenv = os.path.expanduser(f"~/.pyenv/versions/{floor}.*/bin/python{floor}")
    candidates = [shutil.which(f"python{floor}"), *sorted(glob.glob(pyenv))]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and probe.stdout.strip() == floor:
            return candidate
    return sys.executable


def test_the_client_beside_ml_dtypes_0_4_fetches_exact_bytes(server: Any, tmp_path: pathlib.Path) -> None:
    python = cached_venv("client-ml-dtypes-0.4", [*PINS, "-e", str(ROOT)], python=floor_python())
    result = subprocess.run(
        [str(python), str(ROOT / "tests" / "external" / "old_ml_dtypes_client.py"), server.http_url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ml_dtypes"] == "0.4.1" and tuple(map(int, report["numpy"].split(".")[:2])) < (2, 1), report
    for dtype in ("float32", "bfloat16", "float8_e4m3fn", "float8_e3m4"):
        want = np.asarray(jax.nn.initializers.normal()(jax.random.key(0), (4, 8), getattr(jax.numpy, dtype)))
        assert (tmp_path / f"{dtype}.bin").read_bytes() == want.tobytes(), dtype
        assert report[f"{dtype}_name"] == dtype
        if dtype != "float32":
            got = np.load(tmp_path / f"{dtype}-float32.npy")
            assert got.tobytes() == want.astype(np.float32).tobytes(), dtype
    # ml_dtypes 0.4's own types where it has them; raw bits (numpy's void) where it has not.
    assert report["bfloat16_type"] == "ml_dtypes.bfloat16"
    assert report["float8_e4m3fn_type"] == "ml_dtypes.float8_e4m3fn"
    assert report["float8_e3m4_type"] == "numpy.void"
    assert report["cli_npy_dtype"] == "|V2"
    bf16 = np.asarray(jax.nn.initializers.normal()(jax.random.key(0), (4, 8), jax.numpy.bfloat16))
    assert np.load(tmp_path / "cli-bfloat16-float32.npy").tobytes() == bf16.astype(np.float32).tobytes()
    assert bf16.dtype == np.dtype(ml_dtypes.bfloat16)
