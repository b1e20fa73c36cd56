"""The one module that touches JAX's private API (``jax._src``), and the one place where
the supported JAX versions differ; a test holds it to both.

The chunked engine replays JAX's own random-bits and fan computations; where JAX has no
public name for them, they are taken from here. A JAX release that moves or changes them
breaks this module loudly at import (not a silent fall-back), and the warm-up self-check
(``engine.self_check``) compares every chunked family with eager JAX and disables chunking
for any that differs. The supported versions are deploy/jax_versions.py's (the server's
dependency range admits them); to try another JAX, see the README ("A new JAX").

What differs between the supported versions, and how it is bridged:

- ``jax.enable_x64`` (a context manager): 0.8.3 and 0.10.2 have it; 0.4.38 and 0.6.2 have
  it as ``jax.experimental.enable_x64``.
- ``jax.monitoring``'s ``unregister_*`` functions: public in 0.8.3 and 0.10.2; 0.4.38 and
  0.6.2 have them private in ``jax._src.monitoring``.
- key implementations: threefry4x32, philox2x32 and philox4x32 are not in every JAX; what
  this one has is :data:`KEY_IMPLS` (JAX's own registry of implementations).
- dtypes: float8_e8m0fnu (and any newer ml_dtypes type) needs a JAX that knows it;
  :func:`unsupported` refuses what this one lacks, naming the version.
- ``jax_threefry_partitionable`` defaults to off before 0.5.0 and on from it: the server
  takes its default from the installed JAX's configuration (as a local process does).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax._src.nn.initializers import _compute_fans
from jax._src.random import prng as _prng

__all__ = [
    "JAX_VERSION",
    "KEY_IMPLS",
    "UINT_DTYPES",
    "compute_fans",
    "enable_x64",
    "iota_2x32_shape",
    "threefry_partitionable",
    "unregister_event_duration_listener",
    "unregister_event_listener",
    "unsupported",
]

JAX_VERSION: str = jax.__version__

# Bit width -> the unsigned dtype JAX draws bits in.
UINT_DTYPES: dict[int, Any] = _prng.UINT_DTYPES

# The key implementations this JAX has, by the names jax.random.key(impl=...) takes.
KEY_IMPLS: frozenset[str] = frozenset(_prng.prngs)


def iota_2x32_shape(shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The (high, low) 32-bit halves of each element's flat index: threefry's counters."""
    return _prng.iota_2x32_shape(shape)  # type: ignore[no-untyped-call,no-any-return]


def compute_fans(shape: Sequence[int], in_axis: Any, out_axis: Any, batch_axis: Any) -> tuple[Any, Any]:
    """(fan_in, fan_out) exactly as ``jax.nn.initializers.variance_scaling`` computes them."""
    return _compute_fans(shape, in_axis, out_axis, batch_axis)


def enable_x64(on: bool) -> contextlib.AbstractContextManager[Any]:
    """``jax.enable_x64(on)``: 64-bit types on or off inside the block, this thread only."""
    manager: Any = getattr(jax, "enable_x64", None)
    if manager is None:  # 0.4.38, 0.6.2: jax.experimental's
        manager = importlib.import_module("jax.experimental").enable_x64
    return manager(on)  # type: ignore[no-any-return]


def threefry_partitionable(on: bool) -> contextlib.AbstractContextManager[Any]:
    """``jax.threefry_partitionable(on)``: the PRNG mode inside the block, this thread only."""
    return jax.threefry_partitionable(on)  # type: ignore[no-any-return]


def _monitoring(name: str) -> Callable[[Callable[..., Any]], None]:
    public = getattr(jax.monitoring, name, None)
    if public is not None:
        return public  # type: ignore[no-any-return]
    from jax._src import monitoring  # 0.4.38, 0.6.2: private, removed by the callback itself

    return getattr(monitoring, f"_{name}_by_callback")  # type: ignore[no-any-return]


unregister_event_listener = _monitoring("unregister_event_listener")
unregister_event_duration_listener = _monitoring("unregister_event_duration_listener")


def _dtype_known(name: str) -> bool:
    """Whether this JAX makes arrays of the dtype ``name``: jax.numpy names every one it has
    (the numpy types and each ml_dtypes type it knows)."""
    return hasattr(jnp, name)


def unsupported(*, dtype: str | None = None, impl: str | None = None) -> str | None:
    """Why this JAX cannot make a tensor of ``dtype`` with a key of ``impl`` (a message that
    names the version), or None when it can."""
    if impl is not None and impl not in KEY_IMPLS:
        have = ", ".join(sorted(KEY_IMPLS))
        return (
            f"key implementation {impl} is not in JAX {JAX_VERSION}, which this server runs (it has {have}); "
            "ask a server of a newer JAX for it"
        )
    if dtype is not None and not _dtype_known(dtype):
        return f"dtype {dtype} is not in JAX {JAX_VERSION}, which this server runs; ask a server of a newer JAX for it"
    return None
