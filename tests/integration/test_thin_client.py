"""The thin client install: numpy 1.26 with httpx and grpcio only (no JAX, no ml_dtypes) gets
the same bytes, bfloat16 and float8 included; a missing gRPC extra says which extra to install."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import jax
import ml_dtypes
import numpy as np
import pytest

from helpers import cached_venv, tracked_copy

# The release tier: virtual environments on old numpy, beside tritonclient.
pytestmark = pytest.mark.release

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The thin client's two proving environments: the oldest runtimes pyproject allows (and
# numpy 1.26, without ml_dtypes), and the newest PyPI has. Each fetches bit-exact tensors
# and a model over both transports.
ENVIRONMENTS = {
    "oldest": ["numpy==1.26.4", "protobuf==4.21.12", "grpcio==1.59.3"],
    "newest": ["--upgrade", "numpy", "protobuf", "grpcio"],
}


@pytest.fixture(scope="session", params=sorted(ENVIRONMENTS))
def thin_python(request: pytest.FixtureRequest) -> pathlib.Path:
    """A virtual environment with the client (editable, so it stays current), the [grpc]
    extra as pyproject declares it, the environment's pins, and no ml_dtypes."""
    return cached_venv(f"thin-client-{request.param}", [*ENVIRONMENTS[request.param], "-e", f"{ROOT}[grpc]"])


def test_thin_install_oldest_and_newest(server: Any, thin_python: pathlib.Path, tmp_path: pathlib.Path) -> None:
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
    assert not report["jax_loaded"] and not report["ml_dtypes_loaded"]
    if "oldest" in thin_python.parent.parent.name:
        assert (report["numpy"], report["protobuf"], report["grpcio"]) == ("1.26.4", "4.21.12", "1.59.3"), report
    else:
        import google.protobuf
        import grpc

        assert _release(report["protobuf"]) >= _release(google.protobuf.__version__), report
        assert _release(report["grpcio"]) >= _release(grpc.__version__), report
    want = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(42), (64, 32)))
    for transport in ("grpc", "http"):
        assert np.load(tmp_path / f"{transport}.npy").tobytes() == want.tobytes()
        with np.load(tmp_path / f"{transport}-model.npz") as model:
            key = jax.random.fold_in(jax.random.key(0), np.uint32(_linen_hash((1,))))
            assert model["kernel"].tobytes() == np.asarray(jax.nn.initializers.lecun_normal()(key, (8, 4))).tobytes()
        for dtype in ("bfloat16", "float8_e4m3fn"):
            # Without ml_dtypes: the array holds JAX's exact bits, refuses arithmetic on them,
            # and to_float32 gives ml_dtypes' values.
            jax_array = np.asarray(jax.nn.initializers.normal()(jax.random.key(0), (4, 8), dtype))
            assert (tmp_path / f"{transport}-{dtype}.bin").read_bytes() == jax_array.tobytes()
            values = jax_array.astype(np.float32)
            assert np.load(tmp_path / f"{transport}-{dtype}-float32.npy").tobytes() == values.tobytes()
            assert report[f"{transport}_{dtype}_dtype"] == dtype
            assert report[f"{transport}_{dtype}_arithmetic"] == "refused"
        # BF16 safetensors files (a model's and the CLI's) written without ml_dtypes, read by the package.
        from safetensors.numpy import load_file

        bf16 = load_file(str(tmp_path / f"{transport}-bf16.safetensors"))
        key = jax.random.fold_in(jax.random.key(0), np.uint32(_linen_hash((1,))))
        kernel = jax.nn.initializers.lecun_normal()(key, (8, 4), jax.numpy.bfloat16)
        assert bf16["kernel"].dtype == np.dtype(ml_dtypes.bfloat16)
        assert bf16["kernel"].tobytes() == np.asarray(kernel).tobytes()
        assert report[f"{transport}_bf16_model_dtypes"] == ["bfloat16", "bfloat16"]
        cli = load_file(str(tmp_path / f"{transport}-cli.safetensors"))
        jax_bf16 = jax.nn.initializers.normal()(jax.random.key(0), (4, 8), jax.numpy.bfloat16)
        assert cli["normal"].tobytes() == np.asarray(jax_bf16).tobytes()


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])


def test_a_too_old_runtime_is_named_in_one_sentence() -> None:
    from jaxinit._grpc import check_versions

    check_versions("4.21.0", "1.59.0")
    with pytest.raises(ImportError) as info:
        check_versions("3.20.3", "1.85.1rc1")
    message = str(info.value)
    assert "protobuf 3.20.3 (needs >= 4.21)" in message and "grpcio" not in message.split(":")[0]
    assert "pip install -U 'grpcio>=1.59' 'protobuf>=4.21'" in message and "http://" in message
    with pytest.raises(ImportError, match=r"protobuf 4.20.1 \(needs >= 4.21\) and grpcio 1.48.2 \(needs >= 1.59\)"):
        check_versions("4.20.1", "1.48.2")


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
    assert "pip install 'grpcio>=1.59' 'protobuf>=4.21'" in result.stdout, result.stderr


def test_the_dtypes_extra_resolves_on_the_pip_a_venv_ships(tmp_path: pathlib.Path) -> None:
    """pip 23 (Python 3.11's bundled pip) matches an extra only as the wheel's metadata
    spells it: ``[dtypes]`` (and the alias ``[ml-dtypes]``) must bring ml_dtypes there too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)  # pip as bundled
    source = tracked_copy(tmp_path / "checkout")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for extra in ("dtypes", "ml-dtypes"):
        report = tmp_path / f"{extra}.json"
        command = [str(venv / "bin" / "pip"), "install", "--dry-run", "--quiet", "--report", str(report)]
        subprocess.run([*command, f"{source}[{extra}]"], check=True, timeout=600, env=env)
        names = {
            item["metadata"]["name"].replace("-", "_").lower() for item in json.loads(report.read_text())["install"]
        }
        assert "ml_dtypes" in names, (extra, sorted(names))


def _dry_run(tmp_path: pathlib.Path, *requirements: str) -> dict[str, str]:
    """What pip (this interpreter's, in a fresh venv) would install for ``requirements`` in one command."""
    venv = tmp_path / "dry"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [str(venv / "bin" / "pip"), "install", "--dry-run", "--quiet", "--report", str(report), *requirements]
    subprocess.run(command, check=True, timeout=600, env=env)
    items = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in items}


@pytest.mark.parametrize(
    ("neighbour", "floor"),
    [("tensorflow==2.18.0", (2, 18)), ("tritonclient[grpc,http]", (2, 73))],
)
def test_one_command_resolves_beside_tensorflow_and_tritonclient(
    tmp_path: pathlib.Path, neighbour: str, floor: tuple[int, ...]
) -> None:
    """``pip install <neighbour> 'jaxinit[grpc]'`` neither fails nor backtracks the neighbour
    to an old release (tritonclient pins protobuf < 7, TensorFlow 2.18 < 6)."""
    resolved = _dry_run(tmp_path, neighbour, f"{ROOT}[grpc]")
    name = neighbour.split("[")[0].split("=")[0]
    assert _release(resolved[name]) >= floor, resolved.get(name)
    assert "jaxinit" in resolved and _release(resolved["protobuf"]) >= (4, 21), resolved


@pytest.mark.parametrize("order", ["jaxinit-then-tritonclient", "tritonclient-then-jaxinit"])
def test_tritonclient_and_jaxinit_in_either_order_keep_grpc_working(
    server: Any, tmp_path: pathlib.Path, order: str
) -> None:
    """jaxinit[grpc] first, then tritonclient 2.73 (which brings protobuf below 7: the order
    that used to break every grpc:// call), and the other way round. Both stay at their
    versions, and the thin client still fetches bit-exact tensors and a model over gRPC."""
    installs = [["-e", f"{ROOT}[grpc]"], ["tritonclient[grpc,http]==2.73.0"]]
    python = cached_venv(order, *(installs if order.startswith("jaxinit") else installs[::-1]))
    versions = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('tritonclient'), m.version('protobuf'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert versions[0] == "2.73.0" and _release(versions[1]) < (7, 0), versions
    script = str(ROOT / "tests" / "external" / "thin_client.py")
    result = subprocess.run(
        [str(python), script, server.grpc_url, server.http_url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    want = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(42), (64, 32)))
    assert np.load(tmp_path / "grpc.npy").tobytes() == want.tobytes()
    with np.load(tmp_path / "grpc-model.npz") as model:
        key = jax.random.fold_in(jax.random.key(0), np.uint32(_linen_hash((1,))))
        assert model["kernel"].tobytes() == np.asarray(jax.nn.initializers.lecun_normal()(key, (8, 4))).tobytes()
