"""The framed multi-tensor body (``application/vnd.jaxinit.tensors``): many tensors in one
HTTP response, each framed as the gRPC stream frames it (its header, its bytes, their
digest; or an error in its place).

A body is a sequence of frames, each a 5-byte prefix (one ASCII byte naming the kind,
then the payload's length as a big-endian uint32, as gRPC prefixes a message) and the
payload:

- ``h`` (:data:`HEADER`): a tensor's header, a JSON object with the fields of the proto's
  ``TensorHeader`` (``shape``, ``dtype``, ``byte_order``, ``total_bytes``, ``offset``,
  ``count``, ``digest_algorithm``, ``model_bytes``, ``cache``, ``region``, ``provenance``)
  and its ``name`` (the gRPC chunk's ``request_id``: ``"Dense_0.kernel"``);
- ``d`` (:data:`DATA`): the next bytes of that tensor, little-endian, in order (none when
  the header names a shared-memory ``region``);
- ``s`` (:data:`DIGEST`): the digest of the tensor's bytes (``digest_algorithm``'s, raw):
  the tensor is complete;
- ``e`` (:data:`ERROR`): a tensor that could not be made, in its place: a JSON object
  ``{"name", "code", "type", "message"}`` (``code``: the gRPC status name, ``type``: the
  domain error's class); the tensors after it follow;
- ``z`` (:data:`END`): the last frame. Empty when every frame before it was sent; else the
  error that ended the stream early, as ``e``'s object. A body without it was cut off.

>>> body = frame(HEADER, b'{"name":"w"}') + prefix(DATA, 4) + b"abcd" + frame(END, b"")
>>> reader = FrameReader()
>>> [(kind, bytes(payload)) for part in (body[:24], body[24:]) for kind, payload in reader.feed(part)]
[('h', b'{"name":"w"}'), ('d', b'ab'), ('d', b'cd'), ('z', b'')]
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

from jaxinit.protocol.errors import JaxinitError, ProtocolError, mapping_for

__all__ = [
    "DATA",
    "DIGEST",
    "END",
    "ERROR",
    "HEADER",
    "MAX_META_BYTES",
    "FrameReader",
    "error_payload",
    "frame",
    "json_payload",
    "prefix",
]

HEADER = "h"
DATA = "d"
DIGEST = "s"
ERROR = "e"
END = "z"
KINDS = frozenset((HEADER, DATA, DIGEST, ERROR, END))
PREFIX = struct.Struct(">cI")
# The most a frame other than a data frame may hold: a header with its provenance (whose
# canonical request may be long) or an error message.
MAX_META_BYTES = 64 * 2**20


def prefix(kind: str, length: int) -> bytes:
    """The 5 bytes before a payload of ``length`` bytes."""
    return PREFIX.pack(kind.encode("ascii"), length)


def frame(kind: str, payload: bytes) -> bytes:
    """A whole frame: its prefix, then ``payload``."""
    return prefix(kind, len(payload)) + payload


def error_payload(error: JaxinitError, name: str = "") -> bytes:
    """An ``e`` (or ``z``) frame's JSON: the error, as the gRPC stream's ``Error`` says it."""
    fields = {"name": name, "code": mapping_for(error).grpc_code, "type": type(error).__name__}
    return json.dumps({**fields, "message": error.message}, separators=(",", ":")).encode()


def json_payload(kind: str, payload: bytes) -> dict[str, Any]:
    """A header's or an error's JSON object. Raises ProtocolError."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"a {kind!r} frame that is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"a {kind!r} frame that is not a JSON object")
    return value


class FrameReader:
    """Frames out of a body that arrives in arbitrary pieces. Data frames come out as they
    arrive, in as many pieces as the body brings them (never held whole); the others whole."""

    def __init__(self) -> None:
        self._head = b""  # a prefix not yet complete
        self._kind = ""
        self._left = 0  # bytes of the current frame's payload still to come
        self._meta = bytearray()  # a non-data payload being gathered

    @property
    def between(self) -> bool:
        """No frame is partly read."""
        return not self._head and not self._kind

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[str, memoryview | bytes]]:
        """The frames (kind, payload) ``data`` completes; data frames' pieces as they come."""
        view = memoryview(data)
        while view:
            if not self._kind:
                need = PREFIX.size - len(self._head)
                self._head += bytes(view[:need])
                view = view[need:]
                if len(self._head) < PREFIX.size:
                    return
                raw, self._left = PREFIX.unpack(self._head)
                self._head = b""
                kind = raw.decode("ascii", "replace")
                if kind not in KINDS:
                    raise ProtocolError(f"an unknown frame kind {raw!r} in the tensor stream")
                if kind != DATA and self._left > MAX_META_BYTES:
                    raise ProtocolError(f"a {kind!r} frame of {self._left} bytes, over {MAX_META_BYTES}")
                self._kind = kind
                if self._left == 0:
                    self._kind = ""
                    if kind != DATA:
                        yield kind, b""
                    continue
            piece, view = view[: self._left], view[self._left :]
            self._left -= len(piece)
            if self._kind == DATA:
                yield DATA, piece
                if not self._left:
                    self._kind = ""
                continue
            self._meta += piece
            if not self._left:
                kind, payload = self._kind, bytes(self._meta)
                self._kind, self._meta = "", bytearray()
                yield kind, payload
