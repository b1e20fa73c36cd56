"""The one module on JAX's private API: what it takes from ``jax._src`` is what the
chunked engine's arithmetic needs (checked here against public JAX and plain arithmetic;
the self-check in test_self_check.py checks the chunks themselves)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinit_server.core._jax_compat import UINT_DTYPES, compute_fans, iota_2x32_shape


def test_bits_are_drawn_in_unsigned_types_of_each_width() -> None:
    assert {bits: np.dtype(dtype) for bits, dtype in UINT_DTYPES.items()} == {
        8: np.uint8,
        16: np.uint16,
        32: np.uint32,
        64: np.uint64,
    }
    key = jax.random.key(0)
    for width, dtype in UINT_DTYPES.items():
        with jax.enable_x64(width == 64):
            assert jax.random.bits(key, (2,), dtype).dtype == np.dtype(dtype)


@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 4)])
def test_iota_gives_each_elements_flat_index_as_two_words(shape: tuple[int, ...]) -> None:
    high, low = iota_2x32_shape(shape)
    assert high.shape == low.shape == shape
    assert np.asarray(high).dtype == np.asarray(low).dtype == np.uint32
    assert not np.asarray(high).any()
    np.testing.assert_array_equal(np.asarray(low).reshape(-1), np.arange(math.prod(shape), dtype=np.uint32))


@pytest.mark.parametrize(
    ("shape", "in_axis", "out_axis", "batch_axis", "fans"),
    [
        ((3, 5), -2, -1, (), (3, 5)),
        ((3, 3, 16, 32), -2, -1, (), (3 * 3 * 16, 3 * 3 * 32)),  # a conv kernel: the receptive field counts
        ((4, 6, 8), (0, 1), -1, (), (24, 8)),
        ((7, 3, 5), -2, -1, 0, (3, 5)),  # a batch axis is left out
        ((2, 3, 4, 5), 1, (2, 3), (), (3 * 2, 20 * 2)),
    ],
)
def test_fans_are_what_variance_scaling_divides_by(
    shape: tuple[int, ...], in_axis: object, out_axis: object, batch_axis: object, fans: tuple[int, int]
) -> None:
    fan_in, fan_out = compute_fans(shape, in_axis, out_axis, batch_axis)
    assert (float(fan_in), float(fan_out)) == fans


@pytest.mark.parametrize(("mode", "which"), [("fan_in", 0), ("fan_out", 1)])
def test_the_fans_give_variance_scalings_own_values(mode: str, which: int) -> None:
    """variance_scaling(scale, mode, "uniform") is uniform(-1, 1) * sqrt(3 * scale / fan):
    the compat fans rebuild its values exactly."""
    shape, key = (3, 3, 8, 16), jax.random.key(5)
    fan = compute_fans(shape, -2, -1, ())[which]
    got = jax.random.uniform(key, shape, jnp.float32, -1, 1) * jnp.sqrt(3.0 / fan).astype(jnp.float32)
    expected = jax.nn.initializers.variance_scaling(1.0, mode, "uniform")(key, shape, jnp.float32)
    assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()
