"""Every initializer in complex and 8-bit floats, both PRNG modes, byte for byte against
local JAX (the matrix: tests/exactness_matrix.py)."""

from __future__ import annotations

import pytest
from exactness_matrix import ALL_NAMES, DTYPE_GROUPS, every_dtype

from jaxinit_server.core import Service


@pytest.mark.parametrize("dtype", DTYPE_GROUPS["narrow"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_dtype(service: Service, name: str, dtype: str | None) -> None:
    every_dtype(service, name, dtype)
