"""A model's .safetensors written as its tensors arrive: each at its offset in a temporary
file, renamed once complete; nothing under the target's name otherwise."""

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
from jaxinit.protocol.errors import InvalidArgument, ProtocolError
from jaxinit.protocol.provenance import Provenance

MODEL = raw(
    {"path": "norm.bias", "initializer": "zeros", "shape": [3]},
    {"path": "dense.kernel", "initializer": "normal", "shape": [2, 3]},
)


def _provenance(keyed: bool) -> Provenance:
    return Provenance(
        jaxinit_version="0",
        jax_version="0",
        jaxlib_version="0",
        backend="cpu",
        device_kind="cpu",
        key_impl="threefry2x32" if keyed else "",
        key_data=(0, 1) if keyed else (),
        threefry_partitionable=True,
        enable_x64=False,
        canonical_request="{}",
        request_digest="d" * 64,
    )


def _written(tmp_path: pathlib.Path, model: dict[str, object] = MODEL) -> StreamedFile:
    written = streamed_file(tmp_path / "m.safetensors", ModelRequest(model, 0))
    assert written is not None
    return written


def test_tensors_land_at_their_offsets_and_the_file_is_renamed_once_complete(tmp_path: pathlib.Path) -> None:
    written = _written(tmp_path)
    bias = np.zeros(3, np.float32)
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensors = []
    for name, array, keyed in (("norm.bias", bias, False), ("dense.kernel", kernel, True)):
        place = written.place(name, array.shape, "float32", array.nbytes, _provenance(keyed))
        assert place is not None
        place[:] = np.frombuffer(array.tobytes(), np.uint8)
        tensors.append(Tensor(array, _provenance(keyed), name))
        assert not (tmp_path / "m.safetensors").exists()  # only the temporary file so far
    metadata = {"model_digest": "e" * 64}
    arrays = written.finish(tensors, metadata)
    assert arrays is not None and list(arrays) == ["norm.bias", "dense.kernel"]
    assert arrays["dense.kernel"].tobytes() == kernel.tobytes()
    data = (tmp_path / "m.safetensors").read_bytes()
    loaded, meta = safetensors.loads(data)
    assert meta == metadata and loaded["dense.kernel"].tobytes() == kernel.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    st = pytest.importorskip("safetensors.numpy")
    assert st.load(data)["dense.kernel"].tobytes() == kernel.tobytes()  # (padded: the first uses no key)


def test_a_tensor_other_than_the_expansion_lists_is_refused_and_nothing_is_left(tmp_path: pathlib.Path) -> None:
    written = _written(tmp_path)
    assert written.place("norm.bias", (3,), "float32", 12, _provenance(False)) is not None
    with pytest.raises(ProtocolError, match="'other' float32\\[2, 3\\] where this client's expansion"):
        written.place("other", (2, 3), "float32", 24, _provenance(True))
    written.abandon()
    assert list(tmp_path.iterdir()) == []


def test_npz_and_unknown_descriptions_are_written_whole(tmp_path: pathlib.Path) -> None:
    assert streamed_file(tmp_path / "m.npz", ModelRequest(MODEL, 0)) is None
    assert streamed_file(None, ModelRequest(MODEL, 0)) is None
    # A description this client's expansion cannot list (a newer server's): written whole.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_model_file, "expand", _refuses)
        assert streamed_file(tmp_path / "m.safetensors", ModelRequest(MODEL, 0)) is None


def _refuses(*args: object, **kwargs: object) -> object:
    raise InvalidArgument("no module type NotAModuleThisClientKnows")


# -- the file's blocks are allocated when it is created: a disk without room fails the call
# then (ENOSPC, nothing left behind), never with a bus error mid-write; a file system that
# cannot allocate ahead gets the sparse file it always did.

SPACE_MODEL = raw({"path": "dense.kernel", "initializer": "normal", "shape": [64, 48]})
SPACE_KERNEL = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)

needs_fallocate = pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")


def _write_all(written: StreamedFile) -> dict[str, np.ndarray] | None:
    place = written.place("dense.kernel", SPACE_KERNEL.shape, "float32", SPACE_KERNEL.nbytes, _provenance(True))
    assert place is not None
    place[:] = np.frombuffer(SPACE_KERNEL.tobytes(), np.uint8)
    return written.finish([Tensor(SPACE_KERNEL, _provenance(True), "dense.kernel")], {"model_digest": "e" * 64})


@needs_fallocate
def test_the_files_blocks_are_allocated_before_its_first_byte(tmp_path: pathlib.Path) -> None:
    written = _written(tmp_path, SPACE_MODEL)
    written.place("dense.kernel", SPACE_KERNEL.shape, "float32", SPACE_KERNEL.nbytes, _provenance(True))
    stat = os.stat(written.temp)
    assert stat.st_blocks * 512 >= stat.st_size > SPACE_KERNEL.nbytes  # not sparse: every block is there
    written.abandon()


@needs_fallocate
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_room_fails_when_the_file_is_created_and_leaves_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_model_file.os, "posix_fallocate", full)
    written = _written(tmp_path, SPACE_MODEL)
    with pytest.raises(OSError) as caught:
        written.place("dense.kernel", SPACE_KERNEL.shape, "float32", SPACE_KERNEL.nbytes, _provenance(True))
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
    arrays = _write_all(_written(tmp_path, SPACE_MODEL))
    assert arrays is not None and arrays["dense.kernel"].tobytes() == SPACE_KERNEL.tobytes()
    loaded, _ = safetensors.loads((tmp_path / "m.safetensors").read_bytes())
    assert loaded["dense.kernel"].tobytes() == SPACE_KERNEL.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
