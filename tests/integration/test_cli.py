"""The ``jaxinit`` command against a real server: files numpy/safetensors load bit-exact."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Any

import httpx
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax_models import MLP, flax_params
from prometheus_client.parser import text_string_to_metric_families

from jaxinit.cli import main
from jaxinit.protocol import __version__ as jaxinit_version
from jaxinit.protocol import safetensors as _safetensors


def _local(name: str, seed: int, shape: tuple[int, ...], dtype: Any = None, **args: Any) -> np.ndarray:
    init = getattr(jax.nn.initializers, name)(**args)
    return np.asarray(init(jax.random.key(seed), shape, dtype) if dtype else init(jax.random.key(seed), shape))


def test_get_writes_every_format_bit_exact(
    server: Any, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    want = _local("lecun_normal", 0, (784, 256))
    for suffix in (".npy", ".npz", ".safetensors", ".bin"):
        out = tmp_path / f"w{suffix}"
        code = main(
            [
                "--url",
                server.grpc_url,
                "get",
                "lecun_normal",
                "--shape",
                "784,256",
                "--seed",
                "0",
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        assert code == 0, capsys.readouterr().err
        if suffix == ".npy":
            got = np.load(out)
        elif suffix == ".npz":
            with np.load(out) as files:
                got = files["lecun_normal"]
        elif suffix == ".safetensors":
            got = safetensors.numpy.load_file(str(out))["lecun_normal"]
        else:
            got = np.frombuffer(out.read_bytes(), np.float32).reshape(784, 256)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), suffix
    assert "wrote" in capsys.readouterr().out


def test_get_with_arguments_dtype_and_http(server: Any, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "h.safetensors"
    code = main(
        [
            "--url",
            server.http_url,
            "get",
            "variance_scaling",
            "--shape",
            "3,3,16,32",
            "--seed",
            "7",
            "--dtype",
            "bfloat16",
            "--arg",
            "scale=2.0",
            "--arg",
            "mode=fan_out",
            "--arg",
            "distribution=uniform",
            "--name",
            "conv",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    tensors, metadata = _safetensors.loads(out.read_bytes())
    want = _local(
        "variance_scaling", 7, (3, 3, 16, 32), ml_dtypes.bfloat16, scale=2.0, mode="fan_out", distribution="uniform"
    )
    assert tensors["conv"].dtype == want.dtype and tensors["conv"].tobytes() == want.tobytes()
    assert json.loads(metadata["request"])["args"]["mode"] == "fan_out"


def _get_form_calls(server: Any) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "jaxinit_requests_total" and s.labels.get("method") == "generate_get"
    )


def test_get_cacheable_uses_the_get_form(server: Any, tmp_path: pathlib.Path) -> None:
    before = _get_form_calls(server)
    out = tmp_path / "g.npy"
    code = main(
        [
            "--url",
            server.http_url,
            "--cacheable",
            "get",
            "truncated_normal",
            "--shape",
            "40,30",
            "--seed",
            "5",
            "--arg",
            "stddev=0.02",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert np.load(out).tobytes() == _local("truncated_normal", 5, (40, 30), stddev=0.02).tobytes()
    deadline = time.monotonic() + 10  # a call is counted once its last byte is sent
    while _get_form_calls(server) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _get_form_calls(server) == before + 1


def test_model_command(server: Any, tmp_path: pathlib.Path) -> None:
    description = tmp_path / "mlp.json"
    description.write_text(json.dumps(MLP))
    out = tmp_path / "mlp.safetensors"
    assert (
        main(["--url", server.grpc_url, "model", str(description), "--seed", "3", "-o", str(out), "--no-progress"]) == 0
    )
    loaded = safetensors.numpy.load_file(str(out))
    want = flax_params("mlp", "linen", 3)
    assert sorted(loaded) == sorted(want)
    assert all(loaded[k].tobytes() == v.tobytes() for k, v in want.items())


def test_progress_bar_when_asked(
    server: Any, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import jaxinit._client

    monkeypatch.setattr(jaxinit._client, "PROGRESS_MIN_BYTES", 2**20)  # the 32 MiB default, lowered
    small = ["--url", server.grpc_url, "get", "normal", "--shape", "8,8", "--seed", "0", "-o", str(tmp_path / "s.bin")]
    small.append("--progress")
    assert main(small) == 0
    assert "normal" not in capsys.readouterr().err  # below the threshold: no bar at all
    assert (
        main(
            [
                "--url",
                server.grpc_url,
                "get",
                "normal",
                "--shape",
                "1024,1024",
                "--seed",
                "1",
                "-o",
                str(tmp_path / "n.bin"),
                "--progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "normal" in err and "4.00M" in err  # tqdm's bar, sized from the header: 4 MiB


def test_list_and_describe(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", server.http_url, "list"]) == 0
    listed = capsys.readouterr().out
    assert "lecun_normal" in listed and "variance_scaling" in listed
    assert main(["--url", server.http_url, "describe", "variance_scaling"]) == 0
    described = capsys.readouterr().out
    assert "mode: choice, one of fan_in, fan_out, fan_avg, fan_geo_avg" in described


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["get", "lecun_norml", "--shape", "2,2", "--seed", "0", "-o", "x.npy"], 2, "unknown initializer"),
        (["get", "normal", "--shape", "2,2", "--seed", "0", "-o", "x.txt"], 2, "cannot tell the format"),
        (["get", "normal", "--shape", "2,2", "--seed", "0", "--arg", "sigma=1", "-o", "x.npy"], 2, "unexpected"),
        (["model", "missing.json", "--seed", "0", "-o", "m.safetensors"], 1, "missing.json"),
        (["get", "lecun_norml", "--shape", "2,2", "--seed", "0", "-o", "x.npy"], 2, "Did you mean lecun_normal"),
        (["describe", "lecun_norml"], 2, "Did you mean lecun_normal"),
        (["model", "m.json", "--seed", "0", "-o", "m.npy"], 2, "end it in .safetensors, .npz"),
    ],
)
def test_errors_are_clear(
    server: Any,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = [] if argv[0] == "describe" else ["--no-progress"]
    assert main(["--url", server.grpc_url, *argv, *extra]) == code
    assert message in capsys.readouterr().err


def test_console_script_and_unreachable_server(tmp_path: pathlib.Path) -> None:
    script = pathlib.Path(sys.executable).parent / "jaxinit"
    if not script.exists():
        pytest.skip("the console script is installed by pip install -e . (make setup)")
    result = subprocess.run(
        [
            str(script),
            "--url",
            "grpc://127.0.0.1:1",
            "--timeout",
            "5",
            "get",
            "zeros",
            "--shape",
            "2",
            "--seed",
            "0",
            "-o",
            str(tmp_path / "z.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ServerUnavailable" in result.stderr


def test_stdout_version_help_and_a_closed_pipe(server: Any, tmp_path: pathlib.Path) -> None:
    """``-o -`` writes the bytes to stdout (the report to stderr), ``--version`` and the
    examples in ``--help`` are there, and a reader that goes away ends it quietly."""
    run = [sys.executable, "-m", "jaxinit.cli", "--url", server.http_url]
    raw = subprocess.run(
        [*run, "get", "normal", "--shape", "3,2", "--seed", "4", "--format", "bin", "-o", "-"],
        capture_output=True,
        timeout=120,
    )
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == _local("normal", 4, (3, 2)).tobytes() and b"wrote stdout" in raw.stderr
    npy = subprocess.run(
        [*run, "get", "normal", "--shape", "3,2", "--seed", "4", "-o", "-"], capture_output=True, timeout=120
    )
    assert npy.stdout.startswith(b"\x93NUMPY")
    model = subprocess.run(
        [*run, "model", "-", "--seed", "0", "--format", "safetensors", "-o", "-"],
        input=json.dumps(MLP).encode(),
        capture_output=True,
        timeout=120,
    )
    arrays, _ = _safetensors.loads(model.stdout)
    for name, want in flax_params("mlp", "linen", 0).items():
        assert arrays[name].tobytes() == want.tobytes(), name
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"jaxinit {jaxinit_version}"
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "examples:" in helped and "-o -" in helped
    piped = subprocess.run(
        ["bash", "-c", f"{' '.join(run)} get normal --shape 4096,256 --seed 0 --format bin -o - | head -c 10"],
        capture_output=True,
        timeout=120,
    )
    assert len(piped.stdout) == 10 and b"Traceback" not in piped.stderr and b"BrokenPipe" not in piped.stderr


def test_no_grpc_suggests_the_http_gateway() -> None:
    code = "import sys; sys.modules['grpc'] = None\nfrom jaxinit.cli import main\nsys.exit(main(['list']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--url http://" in result.stderr, result.stderr
