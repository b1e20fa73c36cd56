"""The safetensors file format, written as a stream and read back, JAX- and torch-free.

Why not the ``safetensors`` package: its numpy API has no bfloat16 or float8, and
it needs every tensor in memory before the first byte is written. The format is
an 8-byte little-endian header length, a JSON header (dtype, shape, byte range
of each tensor; string metadata under ``__metadata__``), then the bytes. Knowing
every shape up front, the server writes the header first and streams the
tensors after it. Tests check both directions against the ``safetensors``
package itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxinit.protocol.codec import ITEMSIZE, array_from_buffer, dtype_name, to_wire_bytes
from jaxinit.protocol.errors import InvalidArgument, ProtocolError

__all__ = ["ST_DTYPES", "dumps", "header", "loads", "st_dtype"]

# jaxinit dtype -> safetensors dtype name (as safetensors 0.8 and torch read them).
ST_DTYPES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}
_FROM_ST = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100_000_000  # as the safetensors package caps it


def st_dtype(dtype: str) -> str:
    """The safetensors name of a jaxinit dtype.

    Raises:
        InvalidArgument: the format has no name for it.
    """
    name = ST_DTYPES.get(dtype_name(dtype))
    if name is None:
        raise InvalidArgument(f"safetensors has no dtype for {dtype}; ask for .npz or single tensors instead")
    return name


def header(entries: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes before the data, for tensors ``(name, dtype, shape)`` stored in this order.

    >>> header([("w", "float32", (2,))])[8:].decode().rstrip()
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    """
    doc: dict[str, Any] = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in entries:
        size = math.prod(shape) * ITEMSIZE[dtype_name(dtype)]
        doc[name] = {"dtype": st_dtype(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the package writes it
    return len(text).to_bytes(8, "little") + text


def dumps(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A whole safetensors file in memory."""
    entries = [(name, dtype_name(a.dtype), a.shape) for name, a in tensors.items()]
    parts = [header(entries, metadata)]
    parts += [to_wire_bytes(a).tobytes() for a in tensors.values()]
    return b"".join(parts)


def loads(data: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (in file order) and metadata of a safetensors file.

    Raises:
        ProtocolError: the bytes are not a well-formed safetensors file.
    """
    view = memoryview(data)
    if len(view) < 8:
        raise ProtocolError("not a safetensors file: shorter than its 8-byte header length")
    size = int.from_bytes(view[:8], "little")
    if size > min(MAX_HEADER, len(view) - 8):
        raise ProtocolError(f"not a safetensors file: header length {size} is past the end")
    try:
        doc = json.loads(bytes(view[8 : 8 + size]))
    except ValueError as exc:
        raise ProtocolError(f"not a safetensors file: header is not JSON ({exc})") from None
    metadata = doc.pop("__metadata__", None) or {}
    body = view[8 + size :]
    tensors: dict[str, np.ndarray] = {}
    expected = 0
    for name, info in sorted(doc.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, stop = info["data_offsets"]
        dtype = _FROM_ST.get(info["dtype"])
        if dtype is None:
            raise ProtocolError(f"safetensors dtype {info['dtype']} of {name!r} is not one jaxinit reads")
        shape = tuple(info["shape"])
        if start != expected or stop - start != math.prod(shape) * ITEMSIZE[dtype] or stop > len(body):
            raise ProtocolError(f"safetensors entry {name!r} has inconsistent data_offsets {info['data_offsets']}")
        tensors[name] = array_from_buffer(body[start:stop], shape, dtype)
        expected = stop
    order = [name for name in doc if name in tensors]
    return {name: tensors[name] for name in order}, dict(metadata)
