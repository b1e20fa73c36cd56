"""The registry: each catalog entry bound to the installed JAX (or Flax) callable.

Names are looked up in this explicit table; a request string never reaches
getattr, eval or import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import jax.nn.initializers as jinit
import numpy as np

from jaxinit.protocol.catalog import CATALOG, InitializerSpec
from jaxinit.protocol.codec import DTYPES

__all__ = ["BUILDERS", "build"]


def _zeros_init() -> Any:
    # flax.nnx.initializers.zeros_init: `return zeros` (flax/nnx/initializers.py)
    return jinit.zeros


def _ones_init() -> Any:
    # flax.nnx.initializers.ones_init: `return ones`
    return jinit.ones


BUILDERS: dict[str, Callable[..., Any]] = {
    "constant": jinit.constant,
    "delta_orthogonal": jinit.delta_orthogonal,
    "glorot_normal": jinit.glorot_normal,
    "glorot_uniform": jinit.glorot_uniform,
    "he_normal": jinit.he_normal,
    "he_uniform": jinit.he_uniform,
    "kaiming_normal": jinit.kaiming_normal,
    "kaiming_uniform": jinit.kaiming_uniform,
    "lecun_normal": jinit.lecun_normal,
    "lecun_uniform": jinit.lecun_uniform,
    "normal": jinit.normal,
    "ones": jinit.ones,
    "ones_init": _ones_init,
    "orthogonal": jinit.orthogonal,
    "truncated_normal": jinit.truncated_normal,
    "uniform": jinit.uniform,
    "variance_scaling": jinit.variance_scaling,
    "xavier_normal": jinit.xavier_normal,
    "xavier_uniform": jinit.xavier_uniform,
    "zeros": jinit.zeros,
    "zeros_init": _zeros_init,
}
assert set(BUILDERS) == set(CATALOG), set(BUILDERS) ^ set(CATALOG)


def build(spec: InitializerSpec, args: dict[str, Any]) -> Callable[..., Any]:
    """The JAX ``init(key, shape, dtype)`` for a catalog entry and bound arguments."""
    builder = BUILDERS[spec.name]
    if spec.kind == "initializer":
        return builder
    kwargs = {}
    for arg in spec.arguments:
        value = args[arg.name]
        if arg.type == "axes" and isinstance(value, list):
            value = tuple(value)  # as JAX's own defaults are
        elif arg.type == "dtype" and value is not None:
            value = DTYPES[value]
        elif arg.type == "array" and isinstance(value, list):
            # A nested list on the wire means np.asarray(list): JAX's constant takes
            # arrays and scalars, not Python lists.
            value = np.asarray(value)
        kwargs[arg.name] = value
    return cast("Callable[..., Any]", builder(**kwargs))
