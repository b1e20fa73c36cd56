"""The registry: every catalog entry bound to the installed JAX (or Flax) callable, and
the arguments as the wire carries them turned into what that callable takes, so the values
are JAX's own, byte for byte."""

from __future__ import annotations

from typing import Any

import jax
import jax.nn.initializers as jinit
import numpy as np
import pytest
from flax import nnx

from jaxinit.protocol.catalog import CATALOG, bind_arguments, lookup
from jaxinit.protocol.codec import DTYPES
from jaxinit_server.core.registry import BUILDERS, build

KEY = jax.random.key(7)
SHAPE = (4, 6)


def _library(name: str) -> Any:
    spec = CATALOG[name]
    return getattr(nnx.initializers if spec.source == "flax.nnx.initializers" else jinit, name)


def test_the_table_is_the_catalog() -> None:
    assert set(BUILDERS) == set(CATALOG)
    for name, builder in BUILDERS.items():
        if CATALOG[name].source == "jax.nn.initializers":
            assert builder is getattr(jinit, name), name  # the library's own callable, not a copy


# Arguments for the factories that have no complete defaults.
REQUIRED: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.5},
    "variance_scaling": {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"},
}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_makes_what_the_library_makes(name: str) -> None:
    spec = CATALOG[name]
    args = bind_arguments(spec, REQUIRED.get(name, {}))
    init = build(spec, args)
    library = _library(name)
    want = library if spec.kind == "initializer" else library(**REQUIRED.get(name, {}))
    shape = (3, 3, 4, 6) if name == "delta_orthogonal" else SHAPE  # it takes only 3-5 dimensions
    got, expected = np.asarray(init(KEY, shape, jax.numpy.float32)), np.asarray(want(KEY, shape, jax.numpy.float32))
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


def test_initializers_are_returned_as_they_are() -> None:
    assert build(lookup("zeros"), {}) is jinit.zeros
    assert build(lookup("ones"), {}) is jinit.ones
    # Flax's zeros_init() and ones_init() return JAX's zeros and ones.
    assert build(lookup("zeros_init"), {}) is nnx.initializers.zeros_init() is jinit.zeros
    assert build(lookup("ones_init"), {}) is nnx.initializers.ones_init() is jinit.ones


def test_axes_lists_become_tuples_as_jax_defaults_are() -> None:
    wire = {"scale": 1.0, "mode": "fan_in", "distribution": "normal", "in_axis": [0, 1], "out_axis": -1}
    init = build(lookup("variance_scaling"), bind_arguments(lookup("variance_scaling"), wire))
    shape = (3, 5, 8)
    expected = jinit.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=-1)(KEY, shape)
    assert np.asarray(init(KEY, shape)).tobytes() == np.asarray(expected).tobytes()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_dtype_names_become_the_dtype(dtype: str) -> None:
    spec = lookup("normal")
    init = build(spec, bind_arguments(spec, {"stddev": 0.5, "dtype": dtype}))
    with jax.enable_x64(dtype == "float64"):
        got = np.asarray(init(KEY, SHAPE))  # the factory's dtype: no dtype in the call
        expected = np.asarray(jinit.normal(0.5, dtype=DTYPES[dtype])(KEY, SHAPE))
    assert got.dtype == DTYPES[dtype] and got.tobytes() == expected.tobytes()


def test_a_nested_list_value_is_an_array() -> None:
    """JAX's constant broadcasts an array; a Python list on the wire means np.asarray(list)."""
    spec = lookup("constant")
    init = build(spec, bind_arguments(spec, {"value": [[1, 2, 3]]}))
    got = np.asarray(init(KEY, (2, 3), jax.numpy.float32))
    expected = np.asarray(jinit.constant(np.asarray([[1, 2, 3]]))(KEY, (2, 3), jax.numpy.float32))
    assert got.tobytes() == expected.tobytes()
    np.testing.assert_array_equal(got, [[1, 2, 3], [1, 2, 3]])
