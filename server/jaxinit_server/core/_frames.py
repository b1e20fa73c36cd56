"""Frames on the pipes between the server and its whole-tensor workers: an 8-byte
little-endian length, then a pickle (only the server's own processes write them)."""

from __future__ import annotations

import os
import pickle
import struct
from typing import IO, Any

__all__ = ["read_frame", "rss_bytes", "write_frame"]

LENGTH = struct.Struct("<Q")


def write_frame(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(LENGTH.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    head = _read_exactly(stream, LENGTH.size)
    return pickle.loads(_read_exactly(stream, LENGTH.unpack(head)[0]))


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    """``n`` bytes (an unbuffered pipe may return fewer per read: read until they are all
    there); EOFError when the pipe closes first."""
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise EOFError("the pipe closed")
        data += more
    return data


def rss_bytes() -> int:
    """This process's resident set size (Linux), or 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
