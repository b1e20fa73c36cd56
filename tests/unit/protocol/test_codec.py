"""The wire codec: every dtype's bytes as they travel, its names, and the raw-bits stand-in
for bfloat16 and float8 without ml_dtypes (exact against ml_dtypes)."""

from __future__ import annotations

import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol.codec import (
    DTYPES,
    ML_DTYPES_NAMES,
    array_from_buffer,
    dtype_name,
    raw_bits_dtype,
    to_float32,
    to_wire_bytes,
)


@pytest.mark.parametrize("name", list(DTYPES))
def test_every_dtype_round_trips_through_the_wire(name: str) -> None:
    array = (np.arange(6) % 2).astype(DTYPES[name]).reshape(2, 3)
    wire = to_wire_bytes(array)
    assert bytes(wire) == array.tobytes()
    back = array_from_buffer(bytes(wire), (2, 3), name)
    assert back.dtype == array.dtype and back.tobytes() == array.tobytes()
    scalar = np.asarray(array[0, 1])
    assert bytes(to_wire_bytes(scalar)) == scalar.tobytes()


def test_wire_bytes_are_little_endian() -> None:
    big = np.arange(3, dtype=">f4")
    assert bytes(to_wire_bytes(big)) == np.arange(3, dtype="<f4").tobytes()


def test_dtype_names_from_every_spelling() -> None:
    assert dtype_name(jax.numpy.bfloat16) == dtype_name(ml_dtypes.bfloat16) == "bfloat16"
    assert dtype_name(np.dtype("float16")) == "float16"
    assert dtype_name(jax.numpy.float8_e4m3fn) == "float8_e4m3fn"
    with pytest.raises(jaxinit.UnknownDtype):
        dtype_name("int4")


@pytest.mark.parametrize("name", sorted(ML_DTYPES_NAMES))
def test_raw_bits_give_every_value_exactly_as_ml_dtypes_does(name: str) -> None:
    """Without ml_dtypes a bfloat16/float8 array is raw bits: every bit pattern's float32
    value equals ml_dtypes' (the all-patterns sweep: 65,536 for bfloat16, 256 for float8)."""
    typed = np.dtype(getattr(ml_dtypes, name))
    bits = np.arange(256**typed.itemsize, dtype=np.uint16 if typed.itemsize == 2 else np.uint8)
    want = bits.view(typed).astype(np.float32)
    raw = bits.view(raw_bits_dtype(name))
    for got in (to_float32(raw), to_float32(bits.view(typed))):
        assert got.dtype == np.float32
        assert np.array_equal(np.isnan(got), np.isnan(want))
        finite = ~np.isnan(want)
        assert got[finite].tobytes() == want[finite].tobytes()  # -0.0 and inf included, bit for bit
    assert dtype_name(raw.dtype) == dtype_name(raw[3:].copy().reshape(1, -1).dtype) == name


def test_raw_bits_refuse_arithmetic_and_casts_rather_than_compute_on_the_bits() -> None:
    raw = np.array([0x3FC0], dtype=np.uint16).view(raw_bits_dtype("bfloat16"))
    for misuse in (lambda: raw + 1, lambda: raw.sum(), lambda: raw.astype(np.float32), lambda: float(raw[0])):
        with pytest.raises((TypeError, ValueError)):
            misuse()
    assert raw.view(ml_dtypes.bfloat16)[0] == 1.5
    with pytest.raises(jaxinit.InvalidArgument, match="float64"):
        to_float32(np.zeros(2))
    with pytest.raises(ValueError, match="numpy type"):
        raw_bits_dtype("float32")


def test_without_ml_dtypes_only_named_raw_bits_are_bfloat16_or_float8() -> None:
    """A plain |V1 (as .npy stores any float8) is no float8 type in particular: refused."""
    code = (
        "import sys; sys.modules['ml_dtypes'] = None\n"
        "import numpy as np\n"
        "from jaxinit.protocol.codec import dtype_name, raw_bits_dtype\n"
        "from jaxinit.protocol.errors import UnknownDtype\n"
        "assert dtype_name(raw_bits_dtype('float8_e5m2')) == 'float8_e5m2'\n"
        "for plain in ('V1', 'V2'):\n"
        "    try:\n"
        "        dtype_name(np.dtype(plain)); print('accepted', plain)\n"
        "    except UnknownDtype:\n"
        "        print('refused', plain)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["refused", "V1", "refused", "V2"], out.stderr
