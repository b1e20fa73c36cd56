"""The codec beside an older ml_dtypes (TensorFlow 2.15-2.17 pin 0.3/0.4, which lack
float8_e3m4, float8_e4m3 and float8_e8m0fnu): each type the installed ml_dtypes has is its
type, each it lacks is raw bits, and nothing fails at import. And ``to_float32(array, dtype=)``
reads the plain-void ``.npy`` files the CLI and the REST API write, without ml_dtypes."""

from __future__ import annotations

import importlib.util
import io
import sys
import types
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol import codec
from jaxinit.protocol.errors import InvalidArgument

# What ml_dtypes 0.4.1 offers of jaxinit's bfloat16/float8 types (0.3.x: the same less float8_e4m3b11fnuz's alias).
OLD_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz")
MISSING = sorted(codec.ML_DTYPES_NAMES - set(OLD_ML_DTYPES))


def old_ml_dtypes() -> types.ModuleType:
    """A stand-in for ml_dtypes 0.4: the real module's types, less those added since."""
    module = types.ModuleType("ml_dtypes")
    module.__version__ = "0.4.1"  # type: ignore[attr-defined]
    for name in OLD_ML_DTYPES:
        setattr(module, name, getattr(ml_dtypes, name))
    module.finfo = ml_dtypes.finfo  # type: ignore[attr-defined]
    return module


@pytest.fixture
def old_codec(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh copy of the codec module imported beside the stand-in (the real one stays as it is)."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", old_ml_dtypes())
    spec = importlib.util.spec_from_file_location("codec_beside_old_ml_dtypes", codec.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_missing_types_are_the_ones_tensorflow_era_ml_dtypes_lacks() -> None:
    assert MISSING == ["float8_e3m4", "float8_e4m3", "float8_e8m0fnu"]


def test_types_an_old_ml_dtypes_has_are_its_own_and_the_rest_raw_bits(old_codec: Any) -> None:
    for name in OLD_ML_DTYPES:
        assert old_codec.DTYPES[name] == np.dtype(getattr(ml_dtypes, name)), name
        assert old_codec.dtype_name(getattr(ml_dtypes, name)) == name
    for name in MISSING:
        assert old_codec.DTYPES[name] == old_codec.raw_bits_dtype(name), name
        assert old_codec.DTYPES[name].metadata == {old_codec.RAW_BITS_KEY: name}
        assert old_codec.dtype_name(old_codec.DTYPES[name]) == name
        assert old_codec.is_bits_type(name) and old_codec.npy_dtype(name) == np.dtype("V1")
    assert set(old_codec.DTYPES) == set(codec.DTYPES)


@pytest.mark.parametrize("name", MISSING)
def test_a_missing_type_arrives_as_raw_bits_with_ml_dtypes_values(old_codec: Any, name: str) -> None:
    """Every one of the 256 bit patterns: the wire bytes unchanged, the values ml_dtypes (new) gives."""
    wire = np.arange(256, dtype=np.uint8).tobytes()
    array = old_codec.array_from_buffer(wire, (16, 16), name)
    assert array.dtype == old_codec.raw_bits_dtype(name) and array.tobytes() == wire
    assert bytes(old_codec.to_wire_bytes(array)) == wire
    want = np.frombuffer(wire, dtype=getattr(ml_dtypes, name)).astype(np.float32).reshape(16, 16)
    assert_same_values(old_codec.to_float32(array), want)
    with pytest.raises(TypeError):
        array + array  # noqa: B018 - raw bits refuse arithmetic


def test_a_type_the_old_ml_dtypes_has_is_still_a_typed_array(old_codec: Any) -> None:
    wire = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16).tobytes()
    array = old_codec.array_from_buffer(wire, (2,), "bfloat16")
    assert array.dtype == np.dtype(ml_dtypes.bfloat16) and array.astype(np.float32).tolist() == [1.5, -2.0]


def test_no_ml_dtypes_at_all_is_raw_bits_everywhere() -> None:
    table = codec._numpy_dtypes(None)
    for name in codec.ML_DTYPES_NAMES:
        assert table[name] == codec.raw_bits_dtype(name)
    assert table["float32"] == np.dtype(np.float32)


def assert_same_values(got: np.ndarray, want: np.ndarray) -> None:
    """Bit for bit (-0.0 and inf included) where ``want`` is a number, NaN where it is NaN."""
    assert got.dtype == np.float32 and np.array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    assert got[finite].tobytes() == want[finite].tobytes()


def _npy_round_trip(array: np.ndarray) -> np.ndarray:
    """What ``np.load`` gives for the ``.npy`` the CLI writes for ``array`` (plain void for bfloat16/float8)."""
    buffer = io.BytesIO()
    np.save(buffer, array.view(codec.npy_dtype(array.dtype)))
    buffer.seek(0)
    return np.load(buffer)  # type: ignore[no-any-return]


def test_to_float32_reads_a_bfloat16_npy_without_ml_dtypes() -> None:
    """All 65,536 bfloat16 bit patterns: the .npy's plain |V2, or its uint16 view, read as bfloat16."""
    typed = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)
    loaded = _npy_round_trip(typed)
    assert loaded.dtype == np.dtype("V2") and loaded.dtype.metadata is None
    want = typed.astype(np.float32)
    assert_same_values(jaxinit.to_float32(loaded, dtype="bfloat16"), want)
    assert_same_values(jaxinit.to_float32(loaded.view(np.uint16), dtype="bfloat16"), want)
    assert_same_values(jaxinit.to_float32(typed, dtype=ml_dtypes.bfloat16), want)  # saying what it is already


@pytest.mark.parametrize("name", sorted(codec.ML_DTYPES_NAMES - {"bfloat16"}))
def test_to_float32_reads_a_float8_npy_without_ml_dtypes(name: str) -> None:
    typed = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name))
    loaded = _npy_round_trip(typed)
    assert loaded.dtype == np.dtype("V1")
    assert_same_values(jaxinit.to_float32(loaded, dtype=name), typed.astype(np.float32))


def test_to_float32_refuses_a_dtype_the_array_contradicts() -> None:
    bf16 = np.array([1.5], dtype=ml_dtypes.bfloat16)
    with pytest.raises(InvalidArgument, match="the array is bfloat16, not float8_e5m2"):
        jaxinit.to_float32(bf16, dtype="float8_e5m2")
    with pytest.raises(InvalidArgument, match="float8_e4m3fn is 1 byte"):
        jaxinit.to_float32(bf16.view("V2"), dtype="float8_e4m3fn")
    with pytest.raises(InvalidArgument, match="bfloat16 is 2 byte"):
        jaxinit.to_float32(np.zeros(2, np.uint32), dtype="bfloat16")
    raw = bf16.view(np.uint16).view(codec.raw_bits_dtype("bfloat16"))
    with pytest.raises(InvalidArgument, match="the array is bfloat16, not float8_e5m2"):
        jaxinit.to_float32(raw, dtype="float8_e5m2")
    with pytest.raises(InvalidArgument, match="not int32"):
        jaxinit.to_float32(np.zeros(2, np.int32), dtype="int32")
