"""``jaxinit verify FILE``: files the CLI writes carry what re-derives each tensor; verify
fetches them again, pinned to the file's JAX version and backend, and compares tensor by
tensor, naming what differs and why (a changed file, other bytes, another version's
server refusing). Against the session's in-process server, over both transports."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from helpers import run_cli
from jaxinit.protocol import safetensors

OTHER = "0.0.1"
MODEL = {
    "type": "Sequential",
    "layers": [
        {"type": "Dense", "in_features": 6, "features": 4},
        {"type": "Function", "fn": "relu"},
        {"type": "Dense", "in_features": 4, "features": 3},
    ],
}


def rewrite(path: pathlib.Path, change: str, name: str = "", **meta: str) -> None:
    """Change a written file: one tensor's bytes (``bytes``: and its recorded digest too,
    ``file``: only the bytes), or metadata entries."""
    arrays, metadata = safetensors.loads(path.read_bytes())
    if change in ("bytes", "file"):
        flat = arrays[name].reshape(-1).copy()
        flat.view(np.uint8)[0] ^= 1
        arrays[name] = flat.reshape(arrays[name].shape)
    if change == "bytes":
        digests = json.loads(metadata["digests.xxh3-128"])
        from jaxinit._verify import _digest

        digests[name] = _digest(arrays[name])
        metadata["digests.xxh3-128"] = json.dumps(digests)
    metadata.update(meta)
    path.write_bytes(safetensors.dumps(arrays, metadata))


def test_a_model_written_by_the_cli_verifies_and_a_changed_one_names_the_tensor(
    url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    description = tmp_path / "mlp.json"
    description.write_text(json.dumps(MODEL))
    path = tmp_path / "mlp.safetensors"
    code, out = run_cli(
        capsys, "--url", url, "model", str(description), "--seed", "3", "--layout", "torch", "-o", str(path)
    )
    assert code == 0, out
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 0 and "all 4 tensors match" in out, out

    rewrite(path, "file", "layers_0.weight")
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 1 and "1 of 4 tensors differ" in out, out
    assert "DIFFERS  layers_0.weight: the file's bytes changed since jaxinit wrote them" in out
    assert "ok  layers_2.weight" in out

    rewrite(path, "bytes", "layers_2.bias")  # changed, and its recorded digest with it
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 1 and "DIFFERS  layers_2.bias: bytes differ" in out and "for the same requests" in out, out


def test_a_tensor_written_by_the_cli_verifies_and_another_versions_server_refuses(
    url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.safetensors"
    argv = [
        "get",
        "variance_scaling",
        "--shape",
        "3,3,4,5",
        "--seed",
        "7",
        "--arg",
        "scale=2.0",
        "--arg",
        "mode=fan_in",
        "--arg",
        "distribution=normal",
        "--dtype",
    ]
    code, out = run_cli(
        capsys, "--url", url, *argv, "bfloat16", "--fold-in", "2", "--jax-version", "local", "-o", str(path)
    )
    assert code == 0, out
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 0 and "ok  variance_scaling" in out and "all 1 tensors match" in out, out

    rewrite(path, "meta", jax_version=OTHER)  # as if written by a server of another JAX
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 1 and "VersionMismatch" in out and OTHER in out, out


def test_a_file_without_its_request_is_refused_clearly(
    url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(safetensors.dumps({"w": np.zeros(3, np.float32)}, {"jax_version": "0.10.2"}))
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 2 and "does not carry the request that made it" in out, out
