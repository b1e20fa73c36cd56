"""Frames on the pipes to the whole-tensor workers: an 8-byte little-endian length, then a
pickle; a pipe that ends mid-frame is EOFError, never a half-read value."""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading
from typing import Any

import numpy as np
import pytest

from jaxinit.protocol.keys import Key
from jaxinit_server.core import _frames
from jaxinit_server.core._frames import read_frame, rss_bytes, write_frame
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, resolve


def test_a_frame_is_its_length_little_endian_then_the_pickle() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"ok": True, "nbytes": 3})
    data = stream.getvalue()
    (length,) = struct.unpack("<Q", data[:8])
    assert _frames.LENGTH.size == 8 and length == len(data) - 8
    assert pickle.loads(data[8:]) == {"ok": True, "nbytes": 3}


def test_frames_read_back_in_order() -> None:
    resolved = resolve(
        GenerateParams("orthogonal", (4, 4), key=Key(seed=3), offset=2, count=5),
        Limits(),
        PrngDefaults(threefry_partitionable=True, enable_x64=False),
    )
    values: list[Any] = [resolved, {"ready": True, "pid": 7}, np.arange(5, dtype=np.float32), None, b"\0" * 100_000]
    stream = io.BytesIO()
    for value in values:
        write_frame(stream, value)
    stream.seek(0)
    back = [read_frame(stream) for _ in values]
    assert back[0] == resolved and back[0].canonical == resolved.canonical  # a job survives the pipe whole
    assert back[1:2] == values[1:2] and back[3:] == values[3:]
    assert back[2].tobytes() == values[2].tobytes()
    with pytest.raises(EOFError):
        read_frame(stream)  # nothing more: the writer closed


@pytest.mark.parametrize("cut", [0, 3, 8, 9])
def test_a_pipe_that_ends_mid_frame_is_eof(cut: int) -> None:
    stream = io.BytesIO()
    write_frame(stream, {"key_data": (1, 2)})
    with pytest.raises(EOFError, match="pipe closed"):
        read_frame(io.BytesIO(stream.getvalue()[:cut]))


def test_frames_cross_a_real_pipe() -> None:
    """What the pool does: a writer on one end, a buffered reader on the other, frames far
    larger than the pipe's buffer."""
    read_fd, write_fd = os.pipe()
    big = bytes(range(256)) * 2**12  # 1 MiB: many pipe buffers
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:

        def write() -> None:
            write_frame(writer, {"ok": True})
            write_frame(writer, big)
            writer.close()

        thread = threading.Thread(target=write)
        thread.start()
        assert read_frame(reader) == {"ok": True}
        assert read_frame(reader) == big
        with pytest.raises(EOFError):
            read_frame(reader)
        thread.join()


class _ShortReads(io.RawIOBase):
    """A raw pipe as the kernel may hand it over: at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step = data, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n < 0 else n
        out, self._data = self._data[: min(n, self._step)], self._data[min(n, self._step) :]
        return out


def test_a_short_read_of_a_raw_pipe_is_not_the_end() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"message": "x" * 5000})
    assert read_frame(_ShortReads(stream.getvalue(), 4096)) == {"message": "x" * 5000}


def test_rss_is_this_processes_resident_size() -> None:
    before = rss_bytes()
    assert before > 10 * 2**20  # a Python with numpy and JAX loaded
    with open("/proc/self/status") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(before - vm_rss) < 64 * 2**20


def test_rss_is_zero_where_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("/proc/self/statm")

    monkeypatch.setattr("builtins.open", missing)
    assert rss_bytes() == 0
