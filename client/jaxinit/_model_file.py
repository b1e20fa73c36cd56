"""A model's ``.safetensors`` file written as its bytes arrive (``init_model(path=...)``).

Every tensor's name, shape and dtype is known before the first byte (the model's
expansion, which the client shares with the server), so the file's header and every
tensor's place in it are too: the file is created at its full size under a temporary
name beside the target (its blocks allocated then, where the file system can: see
:func:`reserve`), its header written first, and each tensor's bytes land at their offset
as they come off the wire (the assembler's buffer *is* the file's mapped bytes: no copy
of the model is assembled in memory). Tensors laid out for PyTorch come
transposed by the server, one tensor at a time, so their bytes too go straight to the
file. Once every tensor is there and checked, the header is rewritten with what only the
answer tells (the model digest, from each tensor's request digest) and the file is
renamed to its name; a failure removes it, so no partial file ever has the target's name.

The file is not forced to disk (no msync/fsync): the rename is what keeps a partial file
from ever having the target's name, and every reader of the file sees the whole of it
from then on. What a power loss leaves is that of any ordinary file write (safetensors'
own ``save_file``, ``np.save``, ``torch.save``): a caller that needs the bytes on disk
syncs the file itself (``os.fsync``). Forcing it here made every call wait for a
synchronous write-back of the whole file.

The arrays returned are a private (copy-on-write) mapping of the finished file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import mmap
import os
import secrets
from collections.abc import Sequence

import numpy as np

from jaxinit._types import ModelRequest, Tensor
from jaxinit._verify import DIGEST_HEX, refetch_entries
from jaxinit.protocol import safetensors
from jaxinit.protocol.codec import ITEMSIZE, array_from_buffer
from jaxinit.protocol.errors import JaxinitError, ProtocolError
from jaxinit.protocol.expansion import expand, file_metadata, outputs
from jaxinit.protocol.provenance import Provenance

__all__ = ["StreamedFile", "padded_header", "reserve", "streamed_file"]

# The header is sized from the first tensor's provenance: exact when that tensor uses a key
# (its PRNG settings are the file's); else the settings of the first that does may spell
# longer ("false" for "true"), so a little room is kept (spaces, which the format allows).
_SLACK = 16


def padded_header(entries: Sequence[tuple[str, str, Sequence[int]]], metadata: dict[str, str], size: int) -> bytes:
    """The safetensors header of ``entries`` padded with spaces to exactly ``size`` bytes.

    Raises:
        ValueError: it needs more than ``size``.
    """
    head = safetensors.header(entries, metadata)
    if len(head) > size:
        raise ValueError(f"a header of {len(head)} bytes does not fit the {size} kept for it")
    text = head[8:] + b" " * (size - len(head))
    return len(text).to_bytes(8, "little") + text


def streamed_file(path: str | os.PathLike[str] | None, request: ModelRequest) -> StreamedFile | None:
    """A :class:`StreamedFile` for ``path`` when it is a ``.safetensors`` file whose tensors
    the client can list up front; None: the model is written whole once it has arrived
    (a ``.npz``, or a description this client's expansion does not know)."""
    if path is None or not os.fspath(path).endswith(".safetensors") or os.name == "nt":
        return None  # (Windows renames no file that is mapped: written whole there)
    try:
        outs = outputs(
            expand(
                request.model,
                mode=request.mode,
                fix_rng_separator=request.fix_rng_separator,
                param_dtype=request.param_dtype,
            ),
            request.layout,
        )
        entries = [(o.name, o.dtype, tuple(o.shape)) for o in outs]
        for _, dtype, _ in entries:
            safetensors.st_dtype(dtype)
    except JaxinitError:
        return None  # the server's answer says what is wrong, or it knows more than this client
    return StreamedFile(os.fspath(path), request, entries)


class StreamedFile:
    """One attempt at writing a model's file as its tensors arrive (see the module's doc)."""

    def __init__(self, path: str, request: ModelRequest, entries: list[tuple[str, str, tuple[int, ...]]]) -> None:
        self.path = path
        self.request = request
        self.entries = entries
        self.sizes = [math.prod(shape) * ITEMSIZE[dtype] for _, dtype, shape in entries]
        self.starts = _starts(self.sizes)
        self.placed = 0  # tensors given their place so far
        self._index = {name: i for i, (name, _, _) in enumerate(entries)}
        self._next = 0  # the first tensor the next may be
        self.temp = ""
        self._map: mmap.mmap | None = None
        self._head_size = 0

    @property
    def complete(self) -> bool:
        """Every tensor has been given its place (and so was written there)."""
        return self._map is not None and self.placed == len(self.entries)

    def place(
        self, name: str, shape: tuple[int, ...], dtype: str, total_bytes: int, provenance: Provenance
    ) -> np.ndarray | None:
        """The file's bytes where tensor ``name`` goes (a :data:`Placement`). Raises
        ProtocolError when it is not the tensor the model's expansion lists next."""
        index = self._index.get(name, -1)
        if index < self._next or self.entries[index] != (name, dtype, tuple(shape)):
            expected = self.entries[self._next] if self._next < len(self.entries) else "no more tensors"
            raise ProtocolError(
                f"the server sent {name!r} {dtype}{list(shape)} where this client's expansion of the model has "
                f"{expected} (client and server of different versions?)"
            )
        if self._map is None:
            self._open(provenance)
        assert self._map is not None
        self._next = index + 1  # (a tensor refused in its place is skipped: the model fails anyway)
        self.placed += 1
        if not total_bytes:
            return np.empty(0, np.uint8)
        return np.frombuffer(self._map, np.uint8, count=total_bytes, offset=self._head_size + self.starts[index])

    def _open(self, first: Provenance) -> None:
        guess = {  # the digests: as long as any
            **self._metadata(first, first, "0" * 64),
            **refetch_entries({n: "0" * DIGEST_HEX for n, _, _ in self.entries}, model_request=self.request.to_json()),
        }
        self._head_size = len(safetensors.header(self.entries, guess)) + (0 if first.key_impl else _SLACK)
        head = padded_header(self.entries, guess, self._head_size)
        directory, base = os.path.split(os.path.abspath(self.path))
        self.temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.partial")
        size = self._head_size + sum(self.sizes)
        fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.ftruncate(fd, size)
            reserve(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            self.abandon()
            raise
        os.close(fd)
        self._map[: len(head)] = head

    def _metadata(self, first: Provenance, keyed: Provenance, digest: str) -> dict[str, str]:
        return file_metadata(
            dataclasses.asdict(first),
            mode=self.request.mode,
            layout=self.request.layout,
            root=self.request.key,
            threefry_partitionable=keyed.threefry_partitionable,
            enable_x64=keyed.enable_x64,
            model_digest=digest,
            jit=bool(self.request.jit),
        )

    def finish(self, tensors: list[Tensor], metadata: dict[str, str]) -> dict[str, np.ndarray] | None:
        """The header rewritten with ``metadata`` and the file given its name (not synced to
        disk: see the module's doc); the arrays, a private mapping of it (the tensors' own
        arrays are the file's mapped bytes). None, with the file removed, when the header
        does not fit the room kept for it (the caller writes the model whole instead)."""
        assert self._map is not None and self.complete
        try:
            head = padded_header(self.entries, metadata, self._head_size)
        except ValueError:
            self.abandon()
            return None
        try:
            self._map[: self._head_size] = head
            os.replace(self.temp, self.path)  # (no msync: see the module's doc)
        except BaseException:
            self.abandon()
            raise
        self.temp = ""
        with open(self.path, "rb") as file:
            private = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        view = np.frombuffer(private, np.uint8)
        arrays = {}
        for (name, dtype, shape), start, size in zip(self.entries, self.starts, self.sizes, strict=True):
            begin = self._head_size + start
            arrays[name] = array_from_buffer(view[begin : begin + size], shape, dtype)
        del tensors  # (their arrays keep the writable mapping alive until they go)
        self._map = None
        return arrays

    def abandon(self) -> None:
        """Remove the partial file (idempotent)."""
        if self._map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._map.close()  # (still exported to an array: closed when that goes)
            self._map = None
        if self.temp:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
            self.temp = ""


def reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now (``posix_fallocate``), where the system can.

    A disk without room then fails the call here, with ``ENOSPC``, before a byte is written,
    rather than with a bus error (SIGBUS, which ends the process) when a write into the
    mapping finds no block; and on ext4, a file whose blocks are allocated replaces another
    by a rename without the rename itself first starting the write-back of every page it
    has not yet given blocks (``auto_da_alloc``). Where the file system cannot (or the
    platform has no such call), the file stays sparse, as before.

    Raises:
        OSError: no room (``ENOSPC``, ``EDQUOT``), or a file larger than the system allows.
    """
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None or not size:
        return
    try:
        allocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise


def _starts(sizes: list[int]) -> list[int]:
    starts, offset = [], 0
    for size in sizes:
        starts.append(offset)
        offset += size
    return starts
