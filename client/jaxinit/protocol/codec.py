"""The wire codec: the one place that knows jaxinit's dtypes and how tensors travel.

A tensor travels as its raw little-endian bytes in C order, with its shape and
dtype name alongside. Both the server and the client import this module.
"""

from __future__ import annotations

import functools
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
    "RAW_BITS_KEY",
    "SIXTY_FOUR_BIT",
    "array_from_buffer",
    "dtype_name",
    "is_bits_type",
    "npy_dtype",
    "num_bytes",
    "numpy_dtype",
    "raw_bits_dtype",
    "to_float32",
    "to_wire_bytes",
]

# Every dtype JAX can hand to numpy whole bytes of, by name, with its size. Sub-byte
# types (int4, float4_e2m1fn, ...) are left out: numpy stores them one per byte and no
# wire format for them is settled. bfloat16 and the float8 types are numpy types only
# through ml_dtypes, an extra of the client (the server always has it, through JAX);
# without it they are raw bits (see raw_bits_dtype).
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
# The metadata key that names a raw-bits dtype's real type.
RAW_BITS_KEY = "jaxinit_dtype"


def raw_bits_dtype(name: str) -> np.dtype[Any]:
    """The numpy stand-in for bfloat16 or a float8 type where ml_dtypes is not installed.

    A void dtype of the type's size, named in its metadata: an array of it holds the
    exact bits (``tobytes()`` is what JAX makes, ``.view(ml_dtypes.bfloat16)`` is the
    typed array, ``.view(np.uint16)`` the bits), and numpy refuses any arithmetic or
    cast on it rather than compute on the bits as integers. :func:`to_float32` gives
    the exact values; safetensors files store it as its own type.

    >>> raw_bits_dtype("bfloat16"), raw_bits_dtype("bfloat16").metadata
    (dtype('V2'), mappingproxy({'jaxinit_dtype': 'bfloat16'}))
    """
    if name not in ML_DTYPES_NAMES:
        raise ValueError(f"{name} is a numpy type; raw bits stand in only for {sorted(ML_DTYPES_NAMES)}")
    return np.dtype(f"V{ITEMSIZE[name]}", metadata={RAW_BITS_KEY: name})


def _numpy_dtypes(module: Any) -> dict[str, np.dtype[Any]]:
    """Name -> numpy dtype: ``module``'s (ml_dtypes') type for each bfloat16/float8 type it
    has, raw bits for each it lacks or where it is None. ml_dtypes gained types over time
    (0.4 has no float8_e3m4, float8_e4m3 or float8_e8m0fnu; TensorFlow 2.15-2.17 pin 0.3/0.4),
    so a client beside an older one still speaks every type, the missing ones as raw bits."""
    return {
        name: (
            np.dtype(name)
            if name not in ML_DTYPES_NAMES
            else np.dtype(getattr(module, name))
            if getattr(module, name, None) is not None
            else raw_bits_dtype(name)
        )
        for name in DTYPE_NAMES
    }


DTYPES: dict[str, np.dtype[Any]] = _numpy_dtypes(ml_dtypes)
# JAX produces these only with jax_enable_x64; without it it silently truncates.
SIXTY_FOUR_BIT: frozenset[str] = frozenset({"float64", "complex128", "int64", "uint64"})

_ALIASES = {"bool_": "bool", "float": "float32", "double": "float64", "half": "float16"}


def dtype_name(dtype: Any) -> str:
    """The jaxinit name of ``dtype``: a name, a numpy/ml_dtypes/JAX dtype or scalar type.

    >>> dtype_name("bfloat16"), dtype_name(np.float32), dtype_name(np.dtype("<f8"))
    ('bfloat16', 'float32', 'float64')
    >>> dtype_name(raw_bits_dtype("float8_e4m3fn"))
    'float8_e4m3fn'

    Raises:
        UnknownDtype: for anything that is not one of :data:`DTYPES`.
    """
    from jaxinit.protocol.errors import UnknownDtype, did_you_mean
    from jaxinit.protocol.values import quote

    if isinstance(dtype, str):
        name = _ALIASES.get(dtype, dtype)
        if name in ITEMSIZE:
            return name
        hint = did_you_mean(dtype, DTYPE_NAMES)
        raise UnknownDtype(f"unknown dtype {quote(dtype)};{hint} known dtypes: {', '.join(DTYPE_NAMES)}")
    try:
        np_dtype = np.dtype(dtype)
    except (TypeError, ValueError, KeyError):  # a JSON object numpy reads as fields: {"type": ...}
        raise UnknownDtype(f"unknown dtype {quote(dtype)}; known dtypes: {', '.join(DTYPE_NAMES)}") from None
    raw = (np_dtype.metadata or {}).get(RAW_BITS_KEY) if np_dtype.kind == "V" else None
    if raw is not None:
        if raw in ML_DTYPES_NAMES and np_dtype.itemsize == ITEMSIZE[raw]:
            return str(raw)
        raise UnknownDtype(f"unknown dtype {quote(dtype)} (raw bits named {raw!r})")
    for name, known in DTYPES.items():
        if known.kind == "V" and known.metadata is not None and RAW_BITS_KEY in known.metadata:
            continue  # raw bits match by their metadata only: a plain |V1 is no float8 in particular
        if np_dtype == known and np_dtype.kind == known.kind:
            return name
    raise UnknownDtype(f"unknown dtype {quote(dtype)}; known dtypes: {', '.join(DTYPE_NAMES)}")


def is_bits_type(dtype: Any) -> bool:
    """Whether ``dtype`` is bfloat16 or a float8 type: numpy has no such type of its own,
    so .npy stores them as void and JSON as float32 (ml_dtypes' float8_e5m2 even says
    kind "f", so ``dtype.kind`` cannot tell).

    >>> is_bits_type("bfloat16"), is_bits_type(np.float16)
    (True, False)
    """
    return dtype_name(dtype) in ML_DTYPES_NAMES


def npy_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype a ``.npy`` file stores for ``dtype``: bfloat16 and float8 as plain void of
    their size (numpy has no code for them, and ml_dtypes' float8_e5m2 would write "<f1",
    which no numpy reads back), anything else as itself.

    >>> npy_dtype("bfloat16"), npy_dtype("float32")
    (dtype('V2'), dtype('float32'))
    """
    name = dtype_name(dtype)
    return np.dtype(f"V{ITEMSIZE[name]}") if name in ML_DTYPES_NAMES else DTYPES[name]


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a jaxinit dtype name (see :func:`dtype_name`): for bfloat16
    and float8, ml_dtypes' type where it is installed, else :func:`raw_bits_dtype`."""
    return DTYPES[dtype_name(name)]


# Each float8 type's layout: (exponent bits, mantissa bits, bias, how it spells
# inf/NaN): "ieee" (all-ones exponent: inf or NaN), "fn" (no inf; all-ones exponent
# and mantissa: NaN), "fnuz" (no inf, no -0; 0x80: NaN), "e8m0" (unsigned powers of
# two; 0xff: NaN). As ml_dtypes defines them (a test compares all 256 values).
_FLOAT8 = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
    "float8_e4m3b11fnuz": (4, 3, 11, "fnuz"),
    "float8_e3m4": (3, 4, 3, "ieee"),
    "float8_e4m3": (4, 3, 7, "ieee"),
    "float8_e8m0fnu": (8, 0, 127, "e8m0"),
}


@functools.cache
def _float8_table(name: str) -> np.ndarray:
    """The float32 value of each of the 256 bit patterns of a float8 type."""
    exp_bits, man_bits, bias, style = _FLOAT8[name]
    values = []
    for byte in range(256):
        if style == "e8m0":
            values.append(math.nan if byte == 0xFF else math.ldexp(1.0, byte - bias))
            continue
        sign = -1.0 if byte >> 7 else 1.0
        exponent = (byte >> man_bits) & ((1 << exp_bits) - 1)
        mantissa = byte & ((1 << man_bits) - 1)
        top = exponent == (1 << exp_bits) - 1
        if (style == "fnuz" and byte == 0x80) or (style == "fn" and top and mantissa == (1 << man_bits) - 1):
            values.append(math.nan)
        elif style == "ieee" and top:
            values.append(sign * math.inf if mantissa == 0 else math.nan)
        elif exponent == 0:
            values.append(sign * math.ldexp(mantissa, 1 - bias - man_bits))
        else:
            values.append(sign * math.ldexp((1 << man_bits) + mantissa, exponent - bias - man_bits))
    return np.array(values, dtype=np.float32)


def to_float32(array: np.ndarray, dtype: Any = None) -> np.ndarray:
    """The exact float32 values of a bfloat16 or float8 array, with or without ml_dtypes.

    Every bfloat16 and float8 value is a float32 value, so nothing is rounded (NaNs stay
    NaN). float16 and float32 arrays widen as numpy does.

    >>> bits = np.array([0x3FC0, 0xC000], dtype=np.uint16).view(raw_bits_dtype("bfloat16"))
    >>> to_float32(bits)
    array([ 1.5, -2. ], dtype=float32)

    ``dtype`` names the type of an array that does not carry it: a ``.npy`` file of
    bfloat16 or float8 (from the CLI, ``Accept: application/x-npy`` or ``np.save``) holds
    plain void (``|V2``, ``|V1``), since ``.npy`` has no code for them; its bits, or a
    ``uint16``/``uint8`` view of them, are read as ``dtype``:

    >>> plain = np.array([0x3FC0, 0xC000], dtype=np.uint16).view("V2")  # what np.load gives
    >>> to_float32(plain, dtype="bfloat16")
    array([ 1.5, -2. ], dtype=float32)

    Raises:
        InvalidArgument: a dtype whose values are not all float32 values; a ``dtype`` the
            array's own type contradicts, or whose size is not the array's item size.
    """
    from jaxinit.protocol.errors import InvalidArgument

    if dtype is None:
        name = dtype_name(array.dtype)
    else:
        name = dtype_name(dtype)
        if name in ML_DTYPES_NAMES and _plain_bits(array.dtype):
            if array.dtype.itemsize != ITEMSIZE[name]:
                raise InvalidArgument(
                    f"to_float32: {name} is {ITEMSIZE[name]} byte(s) an element, the array's {array.dtype} is "
                    f"{array.dtype.itemsize}"
                )
        elif dtype_name(array.dtype) != name:
            raise InvalidArgument(
                f"to_float32: the array is {dtype_name(array.dtype)}, not {name}; dtype= names the type of "
                "plain bits (a .npy file's |V2/|V1, or uint16/uint8) only"
            )
    if name in ("float32", "float16"):
        return np.asarray(array, dtype=np.float32)
    if name not in ML_DTYPES_NAMES:
        raise InvalidArgument(f"to_float32 takes bfloat16, float8 and float16 arrays, not {name}")
    if name == "bfloat16":
        bits = np.ascontiguousarray(array).view(np.uint16).astype(np.uint32)
        return (bits << 16).view(np.float32)
    return _float8_table(name)[np.ascontiguousarray(array).view(np.uint8)]


def _plain_bits(dtype: np.dtype[Any]) -> bool:
    """Whether ``dtype`` holds bits that name no type: plain void (no raw-bits name), or
    unsigned/signed integers viewed from them."""
    if dtype.type is np.void:  # not ml_dtypes' types, which say kind "V" too
        return dtype.fields is None and RAW_BITS_KEY not in (dtype.metadata or {})
    return dtype.kind in "ui"


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
