"""The wire codec: the one place that knows jaxinit's dtypes and how tensors travel.

A tensor travels as its raw little-endian bytes in C order, with its shape and
dtype name alongside. Both the server and the client import this module.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    import ml_dtypes
except ImportError:  # a thin client install: numpy's own types only
    ml_dtypes = None  # type: ignore[assignment]

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "ITEMSIZE",
    "SIXTY_FOUR_BIT",
    "array_from_buffer",
    "dtype_name",
    "num_bytes",
    "numpy_dtype",
    "to_wire_bytes",
]

# Every dtype JAX can hand to numpy whole bytes of, by name, with its size. Sub-byte
# types (int4, float4_e2m1fn, ...) are left out: numpy stores them one per byte and no
# wire format for them is settled. bfloat16 and the float8 types are numpy types only
# through ml_dtypes, an extra of the client (the server always has it, through JAX).
ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e4m3b11fnuz": 1,
    "float8_e3m4": 1,
    "float8_e4m3": 1,
    "float8_e8m0fnu": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
}
DTYPE_NAMES: tuple[str, ...] = tuple(ITEMSIZE)
ML_DTYPES_NAMES: frozenset[str] = frozenset(
    name for name in DTYPE_NAMES if name == "bfloat16" or name.startswith("float8")
)
# Name -> numpy dtype, for the names this install can represent.
DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in DTYPE_NAMES if name not in ML_DTYPES_NAMES}
if ml_dtypes is not None:
    DTYPES.update({name: np.dtype(getattr(ml_dtypes, name)) for name in sorted(ML_DTYPES_NAMES)})
DTYPES = {name: DTYPES[name] for name in DTYPE_NAMES if name in DTYPES}  # in the table's order
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
    from jaxinit.protocol.errors import UnknownDtype

    if isinstance(dtype, str):
        name = _ALIASES.get(dtype, dtype)
        if name in ITEMSIZE:
            return name
        raise UnknownDtype(f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPE_NAMES)}")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise UnknownDtype(f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPE_NAMES)}") from None
    for name, known in DTYPES.items():
        if np_dtype == known and np_dtype.kind == known.kind:
            return name
    raise UnknownDtype(f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPE_NAMES)}")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a jaxinit dtype name (see :func:`dtype_name`).

    Raises:
        ImportError: a bfloat16/float8 name where ml_dtypes is not installed.
    """
    name = dtype_name(name)
    np_dtype = DTYPES.get(name)
    if np_dtype is None:
        raise ImportError(f"{name} arrays need ml_dtypes: pip install 'jaxinit[dtypes]'")
    return np_dtype


def num_bytes(shape: Sequence[int], dtype: str) -> int:
    """Size in bytes of a tensor of ``shape`` and ``dtype``."""
    return math.prod(shape) * ITEMSIZE[dtype]


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
    np_dtype = numpy_dtype(dtype)
    if sys.byteorder == "little":
        return np.frombuffer(buffer, dtype=np_dtype).reshape(tuple(shape))
    return np.frombuffer(buffer, dtype=np_dtype.newbyteorder("<")).reshape(tuple(shape)).astype(np_dtype)
