from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest

import jaxinit
from jaxinit.protocol.codec import DTYPES, array_from_buffer, dtype_name, to_wire_bytes
from jaxinit.protocol.keys import KEY_IMPLS, Key, as_key


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


def test_key_impls_are_every_one_jax_offers() -> None:
    from jax._src.random import prng  # the only place that lists them all

    assert {name: (words,) for name, words in KEY_IMPLS.items()} == {
        name: impl.key_shape for name, impl in prng.prngs.items()
    }
    for impl, words in KEY_IMPLS.items():
        assert jax.random.key_data(jax.random.key(0, impl=impl)).shape == (words,)


def test_key_forms() -> None:
    assert as_key(5) == Key(seed=5)
    assert as_key(np.int64(-5)) == Key(seed=-5)
    assert as_key(np.array([1, 2], np.uint32)) == Key(data=(1, 2))
    assert as_key(jax.random.key(3, impl="rbg")).impl == "rbg"
    assert as_key(jax.random.PRNGKey(3)) == Key(data=(0, 3))
    with pytest.raises(jaxinit.InvalidArgument, match="batch"):
        as_key(jax.random.split(jax.random.key(0)))
    with pytest.raises(jaxinit.InvalidArgument, match="int64"):
        jaxinit.key(2**63)
    with pytest.raises(jaxinit.InvalidArgument, match="4 uint32 words"):
        jaxinit.wrap_key_data([1, 2], impl="rbg")
    with pytest.raises(jaxinit.InvalidArgument):
        as_key(True)
