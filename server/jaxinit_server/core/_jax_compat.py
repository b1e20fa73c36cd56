"""The one module that touches JAX's private API (``jax._src``); a test holds it to that.

The chunked engine replays JAX's own random-bits and fan computations; where JAX has no
public name for them, they are taken from here. A JAX release that moves or changes them
breaks this module loudly at import (not a silent fall-back), and the warm-up self-check
(``engine.self_check``) compares every chunked family with eager JAX and disables chunking
for any that differs. The tested JAX range is pinned in pyproject.toml; to try another
JAX, see the README ("A new JAX").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax._src.nn.initializers import _compute_fans
from jax._src.random import prng as _prng

__all__ = ["UINT_DTYPES", "compute_fans", "iota_2x32_shape"]

# Bit width -> the unsigned dtype JAX draws bits in.
UINT_DTYPES: dict[int, Any] = _prng.UINT_DTYPES


def iota_2x32_shape(shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The (high, low) 32-bit halves of each element's flat index: threefry's counters."""
    return _prng.iota_2x32_shape(shape)  # type: ignore[no-untyped-call,no-any-return]


def compute_fans(shape: Sequence[int], in_axis: Any, out_axis: Any, batch_axis: Any) -> tuple[Any, Any]:
    """(fan_in, fan_out) exactly as ``jax.nn.initializers.variance_scaling`` computes them."""
    return _compute_fans(shape, in_axis, out_axis, batch_axis)
