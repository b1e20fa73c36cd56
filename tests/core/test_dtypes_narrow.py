"""Every initializer in complex and 8-bit floats, byte for byte against local JAX (the
matrix: tests/exactness_matrix.py): each pair in one PRNG mode, taken in turn, so that
each initializer and each dtype meets both; every pair in both modes in the release tier.

The modes differ only in the random bits, which these dtypes draw as bfloat16 and float32
do (8 bits for the 8-bit floats, 32 or 64 for complex: test_dtypes_floats.py takes every
initializer in both modes in those); the float8 programs are a cold run's most expensive
to compile (a second or more each, in the whole-tensor worker)."""

from __future__ import annotations

import pytest
from exactness_matrix import ALL_NAMES, DTYPE_GROUPS, every_dtype, mode_in_turn

from jaxinit_server.core import Service

NARROW = DTYPE_GROUPS["narrow"]


@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_dtype(service: Service, name: str, dtype: str | None) -> None:
    every_dtype(service, name, dtype, modes=[mode_in_turn(name, dtype, NARROW)])


@pytest.mark.release
@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_dtype_in_both_modes(service: Service, name: str, dtype: str | None) -> None:
    every_dtype(service, name, dtype)
