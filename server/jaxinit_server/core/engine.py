"""The engine: runs a resolved request through the installed JAX, exactly as a local call.

Bit-exactness note: the initializer runs *eagerly*, op by op, as
``np.asarray(init(key, shape, dtype))`` does in a user's process. Wrapping the
whole call in one ``jax.jit`` is not equivalent: XLA then fuses e.g. the
``* stddev`` of ``normal`` into the sampler and the bits change (seen with JAX
0.10.2 on CPU for ``normal`` in every dtype and for complex ``lecun_normal``).
Eager JAX compiles and caches each op's program itself.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxinit._codec import DTYPES, dtype_name
from jaxinit._errors import InternalError, JaxError, TooLarge
from jaxinit._keys import Key
from jaxinit_server.core.registry import build
from jaxinit_server.core.request import Resolved

__all__ = ["Generated", "run"]

class Generated:
    """An array JAX produced and the key data it was produced with."""

    __slots__ = ("array", "key_data")

    def __init__(self, array: np.ndarray, key_data: tuple[int, ...]) -> None:
        self.array = array
        self.key_data = key_data


def run(resolved: Resolved) -> Generated:
    """Produce the tensor for ``resolved`` (blocking; call from a worker thread).

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
        TooLarge: XLA ran out of memory.
    """
    try:
        with jax.threefry_partitionable(resolved.threefry_partitionable), jax.enable_x64(
            resolved.enable_x64
        ):
            key, key_data = _make_key(resolved.key)
            init = build(resolved.spec, resolved.args)
            if resolved.dtype is None:  # the factory's dtype default applies, as in JAX
                out = init(key, resolved.shape)
            else:
                out = init(key, resolved.shape, DTYPES[resolved.dtype])
            array = np.asarray(out)
    except Exception as exc:
        # The request was validated, so what JAX raises here is JAX refusing this
        # request (1-D fans, unsupported dtypes, bad axes: ValueError, TypeError,
        # NotImplementedError, ...), and the user gets its words. Running out of
        # memory is a size problem; any other runtime failure of XLA is ours.
        if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc):
            raise TooLarge(f"out of memory producing {resolved.nbytes} bytes") from exc
        if isinstance(exc, jax.errors.JaxRuntimeError):
            raise
        raise JaxError(str(exc)) from exc
    if array.shape != resolved.shape or dtype_name(array.dtype) != resolved.out_dtype:
        raise InternalError(
            f"JAX returned {array.dtype}{list(array.shape)}, expected "
            f"{resolved.out_dtype}{list(resolved.shape)}"
        )
    return Generated(array, key_data)


def _make_key(key: Key | None) -> tuple[Any, tuple[int, ...]]:
    """The JAX key for ``key`` under the current config, and its key data."""
    if key is None:
        return None, ()
    if key.seed is not None:
        jax_key = jax.random.key(key.seed, impl=key.impl)
    else:
        words = np.asarray(key.data, dtype=np.uint32)
        jax_key = jax.random.wrap_key_data(words, impl=key.impl)  # type: ignore[arg-type]
    data = np.asarray(jax.random.key_data(jax_key)).astype(np.uint32).ravel()
    return jax_key, tuple(int(w) for w in data)
