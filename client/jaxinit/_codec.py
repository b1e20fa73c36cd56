"""The wire codec: the one place that knows jaxinit's dtypes and how tensors travel.

A tensor travels as its raw little-endian bytes in C order, with its shape and
dtype name alongside. Both the server and the client import this module.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "SIXTY_FOUR_BIT",
    "array_from_buffer",
    "dtype_name",
    "num_bytes",
    "numpy_dtype",
    "to_wire_bytes",
]

# Name -> numpy dtype. Every dtype JAX can hand to numpy whole bytes of. Sub-byte
# types (int4, float4_e2m1fn, ...) are left out: numpy stores them one per byte
# and no wire format for them is settled.
DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float64": np.dtype(np.float64),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "float8_e4m3b11fnuz": np.dtype(ml_dtypes.float8_e4m3b11fnuz),
    "float8_e3m4": np.dtype(ml_dtypes.float8_e3m4),
    "float8_e4m3": np.dtype(ml_dtypes.float8_e4m3),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
}
DTYPE_NAMES: tuple[str, ...] = tuple(DTYPES)
# JAX produces these only with jax_enable_x64; without it it silently truncates.
SIXTY_FOUR_BIT: frozenset[str] = frozenset({"float64", "complex128", "int64", "uint64"})

_ALIASES = {"bool_": "bool", "float": "float32", "double": "float64", "half": "float16"}


def dtype_name(dtype: Any) -> str:
    """The jaxinit name of ``dtype``: a name, a numpy/ml_dtypes/JAX dtype or scalar type.

    >>> dtype_name("bfloat16"), dtype_name(np.float32), dtype_name(np.dtype("<f8"))
    ('bfloat16', 'float32', 'float64')

    Raises:
        UnknownDtype: for anything that is not one of :data:`DTYPES`.
    """
    from jaxinit._errors import UnknownDtype

    if isinstance(dtype, str):
        name = _ALIASES.get(dtype, dtype)
        if name in DTYPES:
            return name
        raise UnknownDtype(f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPE_NAMES)}")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise UnknownDtype(
            f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPE_NAMES)}"
        ) from None
    for name, known in DTYPES.items():
        if np_dtype == known and np_dtype.kind == known.kind:
            return name
    raise UnknownDtype(f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPE_NAMES)}")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a jaxinit dtype name (see :func:`dtype_name`)."""
    return DTYPES[dtype_name(name)]


def num_bytes(shape: Sequence[int], dtype: str) -> int:
    """Size in bytes of a tensor of ``shape`` and ``dtype``."""
    return math.prod(shape) * DTYPES[dtype].itemsize


def to_wire_bytes(array: np.ndarray) -> memoryview:
    """The array's bytes as they travel: C order, little-endian, without a copy when possible."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    # Viewed as bytes first: ml_dtypes types (bfloat16, float8) cannot back a memoryview.
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def array_from_buffer(
    buffer: bytes | bytearray | memoryview | np.ndarray, shape: Sequence[int], dtype: str
) -> np.ndarray:
    """An array over wire bytes (no copy), in the machine's native byte order."""
    np_dtype = DTYPES[dtype_name(dtype)]
    if sys.byteorder == "little":
        return np.frombuffer(buffer, dtype=np_dtype).reshape(tuple(shape))
    return np.frombuffer(buffer, dtype=np_dtype.newbyteorder("<")).reshape(tuple(shape)).astype(np_dtype)
