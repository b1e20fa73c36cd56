"""The thin client install: numpy 1.26 with httpx and grpcio only (no JAX, no ml_dtypes) gets
the same bytes; missing extras say which extra to install."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "thin-client-numpy-1.26"


@pytest.fixture(scope="session")
def thin_python() -> pathlib.Path:
    """A virtual environment with the client and numpy 1.26 and no ml_dtypes, made once
    (the client is installed editable, so it stays current)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    # Rebuilt when the project's dependencies change: the marker holds pyproject's hash.
    stamp = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not marker.exists() or marker.read_text() != stamp:
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        # The base install and the [grpc] extra, as pyproject declares them, on numpy 1.26.
        subprocess.run([*pip, "numpy==1.26.4", "-e", f"{ROOT}[grpc]"], check=True, timeout=900, env=env)
        marker.write_text(stamp)
    return python


def test_thin_install_on_numpy_1_26(server: Any, thin_python: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [
            str(thin_python),
            str(ROOT / "tests" / "external" / "thin_client.py"),
            server.grpc_url,
            server.http_url,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["numpy"].startswith("1.26") and not report["jax_loaded"] and not report["ml_dtypes_loaded"]
    want = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(42), (64, 32)))
    for transport in ("grpc", "http"):
        assert np.load(tmp_path / f"{transport}.npy").tobytes() == want.tobytes()
        with np.load(tmp_path / f"{transport}-model.npz") as model:
            key = jax.random.fold_in(jax.random.key(0), np.uint32(_linen_hash((1,))))
            assert model["kernel"].tobytes() == np.asarray(jax.nn.initializers.lecun_normal()(key, (8, 4))).tobytes()
        assert "pip install 'jaxinit[dtypes]'" in report[f"{transport}_bfloat16"]


def _linen_hash(path: tuple[Any, ...]) -> int:
    from jaxinit.models import linen_fold_in

    return linen_fold_in(path)


def test_missing_grpc_extra_says_which_extra() -> None:
    code = (
        "import sys; sys.modules['grpc'] = None\n"
        "import jaxinit\n"
        "try:\n    jaxinit.Client('grpc://127.0.0.1:1')\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'jaxinit[grpc]'" in result.stdout, result.stderr


def test_the_dtypes_extra_resolves_on_the_pip_a_venv_ships(tmp_path: pathlib.Path) -> None:
    """pip 23 (Python 3.11's bundled pip) matches an extra only as the wheel's metadata
    spells it: ``[dtypes]`` (and the alias ``[ml-dtypes]``) must bring ml_dtypes there too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)  # pip as bundled
    source = tmp_path / "src"  # the tracked files only: pip copies a local tree whole
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for extra in ("dtypes", "ml-dtypes"):
        report = tmp_path / f"{extra}.json"
        command = [str(venv / "bin" / "pip"), "install", "--dry-run", "--quiet", "--report", str(report)]
        subprocess.run([*command, f"{source}[{extra}]"], check=True, timeout=600, env=env)
        names = {
            item["metadata"]["name"].replace("-", "_").lower() for item in json.loads(report.read_text())["install"]
        }
        assert "ml_dtypes" in names, (extra, sorted(names))
