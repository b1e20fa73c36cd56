"""A streamed model file's blocks are allocated when it is created: a disk without room
fails the call then (ENOSPC, nothing left behind), never with a bus error mid-write; a
file system that cannot allocate ahead gets the sparse file it always did."""

from __future__ import annotations

import errno
import os
import pathlib

import numpy as np
import pytest

from jaxinit import _model_file
from jaxinit._model_file import StreamedFile, streamed_file
from jaxinit._types import ModelRequest, Tensor
from jaxinit.models import raw
from jaxinit.protocol import safetensors
from jaxinit.protocol.provenance import Provenance

MODEL = raw({"path": "dense.kernel", "initializer": "normal", "shape": [64, 48]})
KERNEL = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)

needs_fallocate = pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")


def _provenance() -> Provenance:
    return Provenance(
        jaxinit_version="0",
        jax_version="0",
        jaxlib_version="0",
        backend="cpu",
        device_kind="cpu",
        key_impl="threefry2x32",
        key_data=(0, 1),
        threefry_partitionable=True,
        enable_x64=False,
        canonical_request="{}",
        request_digest="d" * 64,
    )


def _written(tmp_path: pathlib.Path) -> StreamedFile:
    written = streamed_file(tmp_path / "m.safetensors", ModelRequest(MODEL, 0))
    assert written is not None
    return written


def _write_all(written: StreamedFile) -> dict[str, np.ndarray] | None:
    place = written.place("dense.kernel", KERNEL.shape, "float32", KERNEL.nbytes, _provenance())
    assert place is not None
    place[:] = np.frombuffer(KERNEL.tobytes(), np.uint8)
    return written.finish([Tensor(KERNEL, _provenance(), "dense.kernel")], {"model_digest": "e" * 64})


@needs_fallocate
def test_the_files_blocks_are_allocated_before_its_first_byte(tmp_path: pathlib.Path) -> None:
    written = _written(tmp_path)
    written.place("dense.kernel", KERNEL.shape, "float32", KERNEL.nbytes, _provenance())
    stat = os.stat(written.temp)
    assert stat.st_blocks * 512 >= stat.st_size > KERNEL.nbytes  # not sparse: every block is there
    written.abandon()


@needs_fallocate
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_room_fails_when_the_file_is_created_and_leaves_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_model_file.os, "posix_fallocate", full)
    written = _written(tmp_path)
    with pytest.raises(OSError) as caught:
        written.place("dense.kernel", KERNEL.shape, "float32", KERNEL.nbytes, _provenance())
    assert caught.value.errno == code
    written.abandon()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", [False, True], ids=["unsupported", "no-call"])
def test_a_file_system_that_cannot_allocate_ahead_gets_the_same_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, missing: bool
) -> None:
    if missing:
        monkeypatch.delattr(_model_file.os, "posix_fallocate", raising=False)
    else:

        def unsupported(fd: int, offset: int, size: int) -> None:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(_model_file.os, "posix_fallocate", unsupported)
    arrays = _write_all(_written(tmp_path))
    assert arrays is not None and arrays["dense.kernel"].tobytes() == KERNEL.tobytes()
    loaded, _ = safetensors.loads((tmp_path / "m.safetensors").read_bytes())
    assert loaded["dense.kernel"].tobytes() == KERNEL.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
