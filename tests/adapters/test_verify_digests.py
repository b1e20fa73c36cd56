"""The digests a file carries for ``jaxinit verify``: written as xxh3-128 (the protocol's own
digest, named in ``digest_algorithm``), and files of earlier clients (SHA-256, no
``digest_algorithm``) still verify; a changed byte is found under either, and a digest this
client does not know is refused by name. Against the session's in-process server."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest
import xxhash

import jaxinit
from helpers import run_cli
from jaxinit.protocol import safetensors

MODEL = {
    "type": "Sequential",
    "layers": [
        {"type": "Dense", "in_features": 5, "features": 4},
        {"type": "Function", "fn": "relu"},
        {"type": "Dense", "in_features": 4, "features": 2},
    ],
}


def model_file(url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> pathlib.Path:
    """A torch-layout model file written by ``jaxinit model`` (init_model(path=...): streamed)."""
    description = tmp_path / "mlp.json"
    description.write_text(json.dumps(MODEL))
    path = tmp_path / "mlp.safetensors"
    code, out = run_cli(
        capsys, "--url", url, "model", str(description), "--seed", "5", "--layout", "torch", "-o", str(path)
    )
    assert code == 0, out
    return path


def as_earlier_client(path: pathlib.Path, *, interim: bool = False) -> None:
    """Rewrite a file as an earlier client wrote it: SHA-256 digests in ``digests``; or
    (``interim``) as 0.3's first xxh3 files: xxh3-128 digests in ``digests``, named by a
    ``digest_algorithm`` entry."""
    arrays, metadata = safetensors.loads(path.read_bytes())
    xxh3 = metadata.pop("digests.xxh3-128")
    if interim:
        metadata.update(digests=xxh3, digest_algorithm="xxh3-128")
    else:
        metadata["digests"] = json.dumps({n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in arrays.items()})
    path.write_bytes(safetensors.dumps(arrays, metadata))


def flip(path: pathlib.Path, name: str) -> None:
    """Change one byte of tensor ``name`` in place, leaving the metadata as written."""
    data = bytearray(path.read_bytes())
    head = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8 : 8 + head])[name]["data_offsets"]
    data[8 + head + start] ^= 1
    path.write_bytes(bytes(data))


def test_a_written_file_names_its_digest_and_each_is_xxh3_of_the_bytes_as_written(
    url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = model_file(url, tmp_path, capsys)
    arrays, metadata = safetensors.loads(path.read_bytes())
    want = {n: xxhash.xxh3_128(a.tobytes()).hexdigest() for n, a in arrays.items()}
    assert json.loads(metadata["digests.xxh3-128"]) == want
    # No "digests" entry: a client that knows only SHA-256 (before 0.3) skips the written
    # digests, where it would have compared its SHA-256 with them and called the file changed.
    assert "digests" not in metadata and "digest_algorithm" not in metadata

    flip(path, "layers_2.weight")
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 1 and "1 of 4 tensors differ" in out, out
    assert "DIFFERS  layers_2.weight: the file's bytes changed since jaxinit wrote them (xxh3-128 " in out
    assert "ok  layers_0.weight" in out


def test_a_file_of_an_earlier_client_sha256_verifies_and_a_changed_byte_is_found(
    url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = model_file(url, tmp_path, capsys)
    as_earlier_client(path)
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 0 and "all 4 tensors match" in out, out

    flip(path, "layers_0.bias")
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 1 and "1 of 4 tensors differ" in out, out
    assert "DIFFERS  layers_0.bias: the file's bytes changed since jaxinit wrote them (sha256 " in out


def test_a_tensor_file_of_either_form_verifies(
    url: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.safetensors"
    argv = ["--url", url, "get", "lecun_normal", "--shape", "6,4", "--seed", "2", "-o", str(path)]
    code, out = run_cli(capsys, *argv)
    assert code == 0, out
    arrays, metadata = safetensors.loads(path.read_bytes())
    assert json.loads(metadata["digests.xxh3-128"]) == {
        "lecun_normal": xxhash.xxh3_128(arrays["lecun_normal"].tobytes()).hexdigest()
    }
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 0 and "all 1 tensors match" in out, out

    for interim in (True, False):
        as_earlier_client(path, interim=interim)
        code, out = run_cli(capsys, "--url", url, "verify", str(path))
        assert code == 0 and "all 1 tensors match" in out, out
        path.write_bytes(safetensors.dumps(arrays, metadata))
    as_earlier_client(path)
    flip(path, "lecun_normal")
    code, out = run_cli(capsys, "--url", url, "verify", str(path))
    assert code == 1 and "changed since jaxinit wrote them (sha256 " in out, out


def test_a_digest_this_client_does_not_know_is_refused_by_name(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "future.safetensors"
    metadata = {
        "request": "{}",
        "digest_algorithm": "blake9",
        "digests": json.dumps({"w": "00"}),
        "jax_version": "0.10.2",
    }
    path.write_bytes(safetensors.dumps({"w": np.zeros(3, np.float32)}, metadata))
    code, out = run_cli(capsys, "--url", "http://127.0.0.1:9", "verify", str(path))  # refused before any call
    assert code == 2 and "'blake9'" in out and "xxh3-128" in out and "sha256" in out, out


def test_the_digests_read_are_the_preferred_ones_the_file_has() -> None:
    from jaxinit._verify import _written

    every = {"digests.blake9": '{"w":"1"}', "digests.xxh3-128": '{"w":"2"}', "digests": '{"w":"3"}'}
    assert _written(every) == ("xxh3-128", {"w": "2"})  # a newer file may carry several
    assert _written({"digests": '{"w":"3"}'}) == ("sha256", {"w": "3"})
    assert _written({"digests": '{"w":"4"}', "digest_algorithm": "xxh3-128"}) == ("xxh3-128", {"w": "4"})
    assert _written({}) == ("xxh3-128", {})  # nothing written: only the server's answer is compared
    with pytest.raises(jaxinit.InvalidArgument, match="'blake9', which this client does not know"):
        _written({"digests.blake9": "{}"})
    with pytest.raises(jaxinit.InvalidArgument, match="xxh3-128 digests are not a JSON object"):
        _written({"digests.xxh3-128": "[1]"})
