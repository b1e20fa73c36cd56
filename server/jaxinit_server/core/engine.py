"""The engine: runs a resolved request through the installed JAX, exactly as a local call.

Bit-exactness note: the initializer runs *eagerly*, op by op, as
``np.asarray(init(key, shape, dtype))`` does in a user's process. Wrapping the
whole call in one ``jax.jit`` is not equivalent: XLA then fuses e.g. the
``* stddev`` of ``normal`` into the sampler and the bits change (seen with JAX
0.10.2 on CPU for ``normal`` in every dtype and for complex ``lecun_normal``).
Eager JAX compiles and caches each op's program itself. Elementwise families are
produced in chunks that replay the same eager sequence (see :mod:`chunked`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxinit._codec import DTYPES, dtype_name
from jaxinit._errors import InternalError, JaxError, TooLarge
from jaxinit._keys import Key
from jaxinit_server.core import chunked
from jaxinit_server.core.registry import build
from jaxinit_server.core.request import Resolved

__all__ = ["Generation", "check", "prepare", "run"]

class Generation:
    """A request ready to produce its bytes: either the whole array already made,
    or a chunk plan that makes any range of it (see :mod:`chunked`)."""

    __slots__ = ("array", "key_data", "plan", "resolved")  # array: exactly the elements to send

    def __init__(
        self,
        resolved: Resolved,
        key_data: tuple[int, ...],
        *,
        array: np.ndarray | None = None,
        plan: chunked.Plan | None = None,
    ) -> None:
        self.resolved = resolved
        self.key_data = key_data
        self.array = array
        self.plan = plan

    def produce(self) -> Iterator[np.ndarray]:
        """The requested elements in C order, as one or more arrays (blocking)."""
        resolved = self.resolved
        if self.array is not None:
            yield self.array
            return
        assert self.plan is not None
        with _config(resolved):
            yield from chunked.chunks(self.plan, self.key_data, resolved.start, resolved.stop)


def _config(resolved: Resolved) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(jax.threefry_partitionable(resolved.threefry_partitionable))
    stack.enter_context(jax.enable_x64(resolved.enable_x64))
    return stack


def prepare(resolved: Resolved, *, chunking: bool = True) -> Generation:
    """Make ``resolved`` ready to stream (blocking; call from a worker thread).

    Elementwise requests get a chunk plan (nothing generated yet); the rest run
    whole, here.

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
        TooLarge: XLA ran out of memory.
    """
    if chunking:
        with _config(resolved):
            try:
                the_plan = chunked.plan(resolved)
            except Exception:  # the whole path below raises JAX's own error, verbatim
                the_plan = None
            if the_plan is not None:
                key_data = _make_key(resolved.key)[1]
                if resolved.stop - resolved.start <= chunked.MAX_CHUNK:  # one chunk at most: make it now
                    pieces = list(chunked.chunks(the_plan, key_data, resolved.start, resolved.stop))
                    flat = pieces[0] if pieces else np.empty(0, DTYPES[resolved.out_dtype])
                    return Generation(resolved, key_data, array=flat)
                return Generation(resolved, key_data, plan=the_plan)
    array, key_data = run(resolved)
    if resolved.is_range:
        array = array.reshape(-1)[resolved.start : resolved.stop]
    return Generation(resolved, key_data, array=array)


def check(resolved: Resolved) -> None:
    """Trace ``resolved`` without making its values: raises what JAX would refuse.

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
    """
    try:
        with _config(resolved):
            jax.eval_shape(_call(resolved), _make_key(resolved.key)[0])
    except Exception as exc:
        raise JaxError(str(exc)) from exc


def run(resolved: Resolved) -> tuple[np.ndarray, tuple[int, ...]]:
    """The whole tensor for ``resolved``, exactly as eager JAX makes it, and the key data used.

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
        TooLarge: XLA ran out of memory.
    """
    try:
        with _config(resolved):
            key, key_data = _make_key(resolved.key)
            array = np.asarray(_call(resolved)(key))
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
    return array, key_data


def _call(resolved: Resolved) -> Callable[[Any], Any]:
    """``key -> init(key, shape[, dtype])`` for ``resolved``, as a user's process calls it."""
    init = build(resolved.spec, resolved.args)
    shape, dtype = resolved.shape, resolved.dtype
    if dtype is None:  # the factory's dtype default applies, as in JAX
        return lambda key: init(key, shape)
    return lambda key: init(key, shape, DTYPES[dtype])


def _make_key(key: Key | None) -> tuple[Any, tuple[int, ...]]:
    """The JAX key for ``key`` under the current config, and its key data."""
    if key is None:
        return None, ()
    if key.seed is not None:
        jax_key = jax.random.key(key.seed, impl=key.impl)
    else:
        words = np.asarray(key.data, dtype=np.uint32)
        jax_key = jax.random.wrap_key_data(words, impl=key.impl)  # type: ignore[arg-type]
    for x in key.fold_in:  # as flax does: fold_in(key, jnp.uint32(h))
        jax_key = jax.random.fold_in(jax_key, np.uint32(x))
    data = np.asarray(jax.random.key_data(jax_key)).astype(np.uint32).ravel()
    return jax_key, tuple(int(w) for w in data)
