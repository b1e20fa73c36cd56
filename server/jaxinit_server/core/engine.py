"""The engine: runs a resolved request through the installed JAX, exactly as a local call.

Bit-exactness note: the initializer runs *eagerly*, op by op, as
``np.asarray(init(key, shape, dtype))`` does in a user's process. Wrapping the
whole call in one ``jax.jit`` is not equivalent: XLA then fuses e.g. the
``* stddev`` of ``normal`` into the sampler and the bits change (seen with JAX
0.10.2 on CPU for ``normal`` in every dtype and for complex ``lecun_normal``).
Eager JAX compiles and caches each op's program itself. Elementwise families are
produced in chunks that replay the same eager sequence (see :mod:`chunked`). A request
with ``jit`` asks for the compiled values (what the initializer gives inside ``nn.scan``
or a jitted ``model.init``): the chunked families make those in chunks too, each chunk one
program that traces the sampler and the scale's ops together as ``jax.jit(init)`` does (the
scale a constant XLA folds into the sampler the same way); the self-check proves them against
``jax.jit(init)`` of the whole tensor. A fill converts its value by ``jax.jit`` of the
initializer on the value's shape; the rest runs whole, as ``jax.jit(init)(key)``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxinit.protocol.codec import DTYPES, dtype_name
from jaxinit.protocol.errors import InternalError, JaxError, ServerUnavailable, TooLarge
from jaxinit.protocol.keys import KEY_IMPLS, Key
from jaxinit_server.core import _jax_compat, chunked
from jaxinit_server.core.plan import Cost, Plan
from jaxinit_server.core.registry import build
from jaxinit_server.core.request import GenerateParams, Limits, PrngDefaults, Resolved, resolve

__all__ = [
    "CHUNKED",
    "EMPTY",
    "FILL",
    "WHOLE",
    "Cost",
    "Generation",
    "check",
    "derived_keys",
    "prepare",
    "price",
    "route",
    "run",
    "self_check",
    "validate",
]

log = logging.getLogger("jaxinit_server.engine")

# The producers a request can get; :func:`route` picks exactly one, before admission.
EMPTY = "empty"  # no elements: answered without running XLA (JAX still checks the request)
CHUNKED = "chunked"  # elementwise families, made chunk by chunk (see :mod:`chunked`)
FILL = "fill"  # zeros, ones, constant: JAX converts the value once, numpy repeats it
WHOLE = "whole"  # everything else: made whole, in a worker process (see :mod:`whole`)

FILL_FAMILIES = frozenset({"zeros", "ones", "zeros_init", "ones_init", "constant"})
# The largest repeating pattern a constant is filled from (elements); larger ones run whole.
MAX_FILL_PATTERN = 2**20
PIPELINE_DEPTH = 2  # chunks made ahead of the one being sent
# Peak working set of a whole-tensor request, in multiples of the whole tensor's bytes
# (measured peaks: legacy normal 2.5x, rbg 2.0x, float64 2.5x, complex64 3.5x, orthogonal ~4x).
WHOLE_FACTOR = {"orthogonal": 5, "delta_orthogonal": 5}
WHOLE_FACTOR_COMPLEX = 4
WHOLE_FACTOR_DEFAULT = 3


# Compute is counted in floating-point operations, and what is not arithmetic (an eager
# call's dispatch, a key derived, a compile) in their equivalent at a nominal 10**11 per
# second (the default --max-whole-flops, 3 * 10**11, is a few seconds of one request).
# Measured on a quiet 2-core box, JAX 0.10: 134 M keys derived by vmapped splits in 6.6 s
# (~50 ns a key); an rbg stack of 4,096 slices, one eager call each, 15-17 s (~4 ms a
# slice); a chunked slice ~0.5 ms; jax.jit of one new shape 0.6-1.8 s.
DERIVED_KEY_FLOPS = 5 * 10**3  # one key made by a derivation step of a batch (or a split's num)
KEY_BY_KEY_FLOPS = 10**8  # one eager derivation step of one key (rbg batches: key by key)
WHOLE_SLICE_FLOPS = 5 * 10**8  # one slice of a stacked whole-tensor request: an eager call
CHUNKED_SLICE_FLOPS = 5 * 10**7  # one slice of a stacked chunked request
COMPILE_FLOPS = 10**11  # jax.jit of the initializer for a shape (priced every time: which
# worker has compiled what is not known when a request is priced)


def program(resolved: Resolved) -> tuple[Any, ...] | None:
    """What identifies ``resolved``'s jax.jit program (None: it runs eagerly): the values of
    a jitted initializer depend on these, never on the key's data or a range."""
    if not resolved.jit:
        return None
    key = resolved.key
    return (
        resolved.spec.name,
        repr(resolved.args),
        resolved.shape,
        resolved.out_dtype,
        resolved.enable_x64,
        resolved.threefry_partitionable,
        key.impl if key is not None else None,
        key.stack if key is not None else (),
    )


def route(resolved: Resolved) -> str:
    """The one producer for ``resolved`` (cheap: no JAX work). Decided once per request:
    :func:`price` decides it, and a :class:`~plan.Plan` carries it from there on."""
    if resolved.stop == resolved.start:
        return EMPTY
    if _stacked(resolved):
        resolved = _template(resolved)  # every slice is the same call but for its key
    if chunked.chunkable(resolved):  # a jit request's chunks are compiled as jax.jit(init) is
        return CHUNKED
    # A fill's value is converted once, eagerly or (jit) by jax.jit of the initializer on the
    # value's own shape: XLA converts e.g. an out-of-range float to int another way compiled.
    if resolved.spec.name in FILL_FAMILIES and _fill_period(resolved) is not None:
        return FILL
    return WHOLE


def price(resolved: Resolved, *, gathered: bool = False, compiled: bool = False) -> Cost:
    """The cost of ``resolved`` on its route; ``gathered``: the answer is built whole in
    memory (JSON), which adds the elements again as Python objects and text; ``compiled``:
    its jax.jit program was compiled before (where compiled programs are kept, another
    worker reads it back rather than compiling: see :func:`program`)."""
    compile_flops = 0 if compiled else COMPILE_FLOPS
    kind = route(resolved)
    itemsize = DTYPES[resolved.out_dtype].itemsize
    count = resolved.stop - resolved.start
    total = math.prod(resolved.shape)
    if _stacked(resolved) and kind != EMPTY:
        # One slice at a time: a chunked slice's pipeline, or a worker that keeps the slices
        # made so far (the whole stacked tensor) beside the working set of the next one.
        one = price(_template(resolved))
        memory = one.memory + (total * itemsize if kind == WHOLE else 0)
        memory += count * (itemsize + 64) if gathered else 0
        slices = math.prod(_stack(resolved))
        key = _the_key(resolved)
        derived, by_key = derived_keys(key)
        flops = (one.flops * slices if kind == WHOLE else count * 64) + derived * 64
        per_slice = WHOLE_SLICE_FLOPS if kind == WHOLE else CHUNKED_SLICE_FLOPS
        parts = [
            (derived * DERIVED_KEY_FLOPS + by_key * KEY_BY_KEY_FLOPS, f"deriving {derived} keys"),
            (slices * per_slice, f"{slices} slices made one call at a time"),
            (one.flops * slices if kind == WHOLE else 0, "the slices' arithmetic"),
            (compile_flops if resolved.jit and kind == WHOLE else 0, "a jax.jit compile"),  # chunks: per scale
        ]
        compute = sum(part for part, _ in parts)
        why = max(parts)[1]
        # the derived keys' data (16 bytes each, and JAX's copy), one Key per slice
        return Cost(kind, memory + slices * 64 + derived * 16, flops, compute, why)
    memory, flops = 64 * 2**10, count
    compute, why = 0, ""
    if kind == CHUNKED:
        chunk = min(chunked.bucket(count), count)
        # the chunks ahead, the one being sent, and JAX's temporaries (bits, floats) for one
        memory += chunk * (itemsize * (PIPELINE_DEPTH + 1) + 8) + chunk * 8
        flops = count * 64
        compute = min(count, chunked.MAX_CHUNK) * 64  # made while preparing: one chunk at most
    elif kind == FILL:
        memory += min(count, chunked.MAX_CHUNK) * itemsize * (PIPELINE_DEPTH + 1)
    elif kind == WHOLE:
        # The worker makes the whole tensor, whatever range is asked.
        name = resolved.spec.name
        factor = WHOLE_FACTOR.get(
            name, WHOLE_FACTOR_COMPLEX if resolved.out_dtype.startswith("complex") else WHOLE_FACTOR_DEFAULT
        )
        memory += total * itemsize * factor
        flops = total * 64
        if name in ("orthogonal", "delta_orthogonal") and resolved.shape:
            m, n = _qr_dims(resolved)
            flops = max(flops, 4 * max(m, n) * min(m, n) ** 2)
        compute, why = flops, "its arithmetic"
        if resolved.jit and compile_flops:
            compute, why = compute + compile_flops, "a jax.jit compile" if flops < compile_flops else why
    if gathered:
        memory += count * (itemsize + 64)
    if resolved.key is not None:  # split(key, num) makes all num keys to take one
        derived = sum(step[1] for step in resolved.key.derive if step[0] != "fold_in")
        memory += derived * 16
        flops += derived * 64
        compute += derived * DERIVED_KEY_FLOPS
        if derived * DERIVED_KEY_FLOPS > compute // 2:
            why = f"deriving {derived} keys"
    return Cost(kind, memory, flops, compute, why)


def derived_keys(key: Key) -> tuple[int, int]:
    """Keys a stacked key's batch derivation makes from its first stack step on (every key
    of every split, not only the one kept), and how many of its steps run key by key
    (eagerly, one call per key: the implementations outside :data:`VMAP_IMPLS`)."""
    first = next((i for i, step in enumerate(key.derive) if step[0] == "stack"), len(key.derive))
    # before the first stack: one key, split eagerly (all num keys made to take one)
    made = sum(step[1] for step in key.derive[:first] if step[0] == "split")
    batch, calls = 1, 0
    for step in key.derive[first:]:
        calls += batch
        if step[0] == "fold_in":
            made += batch
        else:
            made += batch * step[1]
            if step[0] == "stack":
                batch *= step[1]
    return made, 0 if key.impl in VMAP_IMPLS else calls


# --- stacked keys: one slice per key of a batch ----------------------------------------------


def _stack(resolved: Resolved) -> tuple[int, ...]:
    """The leading axes of a stacked request, one slice per key (empty: not stacked)."""
    return () if resolved.key is None else resolved.key.stack


def _stacked(resolved: Resolved) -> bool:
    return bool(_stack(resolved))


def _the_key(resolved: Resolved) -> Key:
    assert resolved.key is not None
    return resolved.key


def _slice(resolved: Resolved, key: Key, start: int, stop: int) -> Resolved:
    """One slice of a stacked request: the initializer on the rest of the shape, with one
    key of the batch (as its raw data: wrap_key_data(key_data(k)) is k), elements [start, stop)."""
    shape = resolved.shape[len(_stack(resolved)) :]
    itemsize = DTYPES[resolved.out_dtype].itemsize
    return dataclasses.replace(
        resolved,
        shape=shape,
        key=key,
        nbytes=(stop - start) * itemsize,
        canonical="",
        digest="",
        start=start,
        stop=stop,
    )


def _template(resolved: Resolved) -> Resolved:
    """A whole slice with a stand-in key: for what does not depend on the key's value (the
    route, the price, what JAX accepts)."""
    impl = _the_key(resolved).impl
    size = math.prod(resolved.shape[len(_stack(resolved)) :])
    return _slice(resolved, Key(data=(0,) * KEY_IMPLS[impl], impl=impl), 0, size)


# Key implementations whose fold_in and split under jax.vmap give each key's own eager result
# (integer programs; the test suite compares every implementation): their batches are derived
# in one vmapped program. rbg and unsafe_rbg are derived key by key (unsafe_rbg's differ).
VMAP_IMPLS = frozenset({"threefry2x32", "threefry4x32", "philox2x32", "philox4x32"})


def _batch_keys(key: Key) -> tuple[tuple[int, ...], list[Key]]:
    """A stacked key's slices' keys, in C order of its stack axes, and the data of the key
    its first stack step splits (the provenance's key data). Under the current config."""
    first = next(i for i, step in enumerate(key.derive) if step[0] == "stack")
    jax_key, head_data = _make_key(_head(key))
    if key.impl in VMAP_IMPLS:
        batch = jax_key[None]
        for step in key.derive[first:]:
            if step[0] == "fold_in":
                batch = jax.vmap(lambda k, x=step[1]: jax.random.fold_in(k, np.uint32(x)))(batch)
            elif step[0] == "split":
                batch = jax.vmap(lambda k, n=step[1], i=step[2]: jax.random.split(k, n)[i])(batch)
            else:
                batch = jax.vmap(lambda k, n=step[1]: jax.random.split(k, n))(batch).reshape(-1)
        words = np.asarray(jax.random.key_data(batch)).astype(np.uint32).reshape(batch.shape[0], -1)
    else:
        keys = [jax_key]
        for step in key.derive[first:]:
            if step[0] == "fold_in":
                keys = [jax.random.fold_in(k, np.uint32(step[1])) for k in keys]
            elif step[0] == "split":
                keys = [jax.random.split(k, step[1])[step[2]] for k in keys]
            else:
                keys = [part for k in keys for part in jax.random.split(k, step[1])]
        words = np.asarray(jax.random.key_data(jax.numpy.stack(keys))).astype(np.uint32).reshape(len(keys), -1)
    return head_data, [Key(data=tuple(int(w) for w in row), impl=key.impl) for row in words.tolist()]


def _head(key: Key) -> Key:
    """A stacked key up to its first stack step: the key whose split makes the batch."""
    first = next(i for i, step in enumerate(key.derive) if step[0] == "stack")
    return Key(seed=key.seed, data=key.data, impl=key.impl, fold_in=key.fold_in, derive=key.derive[:first])


def _slices(resolved: Resolved, keys: list[Key]) -> list[Resolved]:
    """The slices the range [start, stop) of a stacked request touches, each with its range."""
    size = math.prod(resolved.shape[len(_stack(resolved)) :])
    out = []
    for i, key in enumerate(keys):
        lo, hi = max(resolved.start, i * size), min(resolved.stop, (i + 1) * size)
        if lo < hi:
            out.append(_slice(resolved, key, lo - i * size, hi - i * size))
    return out


def _prepare_stacked(resolved: Resolved, kind: str, stop: threading.Event | None = None) -> Generation:
    """A stacked request on the chunked route (or empty): its slices one after another
    (``stop``: checked between slices while it is made now)."""
    if kind == EMPTY:  # no slice to make: the batch is not derived (only its head, for the provenance)
        check(_template(resolved))
        with _config(resolved):
            head_data = _make_key(_head(_the_key(resolved)))[1]
        return Generation(resolved, head_data, route=kind, array=np.empty(0, DTYPES[resolved.out_dtype]))
    with _config(resolved):
        head_data, keys = _batch_keys(_the_key(resolved))
    subs = _slices(resolved, keys)

    def pieces() -> Iterator[np.ndarray]:
        for sub in subs:
            if stop is not None and stop.is_set():
                raise ServerUnavailable("the request was cancelled")
            generation = _prepare(sub, kind)
            try:
                yield from generation.produce()
            finally:
                generation.close()

    if resolved.stop - resolved.start <= chunked.MAX_CHUNK:  # small: make it now
        return Generation(resolved, head_data, route=kind, array=np.concatenate(list(pieces())))
    return Generation(resolved, head_data, route=kind, pieces=pieces)


def _qr_dims(resolved: Resolved) -> tuple[int, int]:
    """The matrix JAX's orthogonal initializer factorizes: (rows, columns)."""
    shape = resolved.shape
    if resolved.spec.name == "delta_orthogonal":
        return (shape[-1], shape[-2]) if len(shape) >= 2 else (1, 1)
    axis = resolved.args.get("column_axis", -1)
    if not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
        return 1, 1  # JAX refuses it
    columns = shape[axis]
    return math.prod(shape) // max(columns, 1), columns


def _fill_period(resolved: Resolved) -> int | None:
    """Elements after which a fill repeats, or None when its pattern is too large."""
    if resolved.spec.name != "constant":
        return 1
    value_shape = np.shape(resolved.args.get("value"))  # type: ignore[arg-type]
    while value_shape and value_shape[0] == 1:
        value_shape = value_shape[1:]  # leading 1s broadcast to nothing
    if not value_shape:
        return 1
    if len(value_shape) > len(resolved.shape):
        return None  # JAX refuses it (whole path: JAX's own message)
    period = math.prod(resolved.shape[-len(value_shape) :])
    return period if period <= MAX_FILL_PATTERN else None


class Generation:
    """A request ready to produce its bytes in this process (blocking): the elements made
    already, or a producer that makes them piece by piece (a chunk plan, a fill pattern, a
    worker's pipe). The server hands it out as a :class:`~source.Source`."""

    __slots__ = ("__weakref__", "_close", "_pieces", "array", "key_data", "resolved", "route")

    def __init__(
        self,
        resolved: Resolved,
        key_data: tuple[int, ...],
        *,
        route: str,
        array: np.ndarray | None = None,
        pieces: Callable[[], Iterator[np.ndarray]] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.resolved = resolved
        self.key_data = key_data
        self.route = route
        self.array = array  # exactly the elements to send, flat, when made already
        self._pieces = pieces
        self._close = close

    def produce(self) -> Iterator[np.ndarray]:
        """The requested elements in C order, as one or more flat arrays (blocking)."""
        if self.array is not None:
            yield self.array
            return
        assert self._pieces is not None
        yield from self._pieces()

    def config(self) -> contextlib.ExitStack:
        """The JAX configuration it runs under (a context; thread-local, so entered around
        each step of its producer, whichever thread of the pool runs it)."""
        return _config(self.resolved)

    def close(self) -> None:
        """Stop producing and let go of what it holds (idempotent)."""
        if self._close is not None:
            self._close()


def _config(resolved: Resolved) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(_jax_compat.threefry_partitionable(resolved.threefry_partitionable))
    stack.enter_context(_jax_compat.enable_x64(resolved.enable_x64))
    return stack


def _routed(what: Plan | Resolved) -> tuple[Resolved, str]:
    """A request and its route: the plan's, or (a bare request, as tests and the warm-up
    give) the one :func:`price` decides."""
    if isinstance(what, Plan):
        return what.resolved, what.cost.route
    return what, price(what).route


def prepare(what: Plan | Resolved, *, stop: threading.Event | None = None) -> Generation:
    """Make a request ready to stream, in this process (blocking; call from a worker thread).
    ``stop``: set when the answer is no longer wanted; a stacked request stops between slices.

    Chunked and fill requests get a producer (nothing generated yet, unless the answer
    fits one chunk: then it is made now); empty ones are checked by JAX and answered
    without XLA; whole ones run here (the server sends those to :mod:`whole` instead).

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
        TooLarge: XLA ran out of memory.
    """
    resolved, kind = _routed(what)
    return _prepare(resolved, kind, stop)


def _prepare(resolved: Resolved, kind: str, stop: threading.Event | None = None) -> Generation:
    dtype = DTYPES[resolved.out_dtype]
    if stop is not None and stop.is_set():
        raise ServerUnavailable("the request was cancelled")
    if _stacked(resolved) and kind != WHOLE:
        return _prepare_stacked(resolved, kind, stop)
    if kind == EMPTY:
        check(resolved)
        with _config(resolved):
            key_data = _make_key(resolved.key)[1]
        return Generation(resolved, key_data, route=kind, array=np.empty(0, dtype))
    if kind == CHUNKED:
        with _config(resolved):
            plan = _plan(resolved)
            key_data = _make_key(resolved.key)[1]

        def pieces() -> Iterator[np.ndarray]:
            with _config(resolved):
                yield from chunked.chunks(plan, key_data, resolved.start, resolved.stop)

        if resolved.stop - resolved.start <= chunked.MAX_CHUNK:  # one chunk at most: make it now
            only = pieces()
            array = next(only)
            only.close()  # type: ignore[attr-defined]
            return Generation(resolved, key_data, route=kind, array=array)
        return Generation(resolved, key_data, route=kind, pieces=pieces)
    if kind == FILL:
        pattern, key_data = _fill_pattern(resolved)

        def fill() -> Iterator[np.ndarray]:
            period, step = len(pattern), chunked.MAX_CHUNK
            for start in range(resolved.start, resolved.stop, step):
                n = min(step, resolved.stop - start)
                if period == 1:
                    yield np.full(n, pattern[0], dtype=pattern.dtype)
                else:
                    yield np.resize(np.roll(pattern, -(start % period)), n)

        if resolved.stop - resolved.start <= chunked.MAX_CHUNK:
            return Generation(resolved, key_data, route=kind, array=next(fill()))
        return Generation(resolved, key_data, route=kind, pieces=fill)
    array, key_data = run(resolved)
    return Generation(resolved, key_data, route=WHOLE, array=array.reshape(-1)[resolved.start : resolved.stop])


def _plan(resolved: Resolved) -> chunked.Plan:
    """The chunk plan that :func:`route` promised. JAX refusing the request (e.g. fans of a
    1-D shape) is its JaxError; any other failure is jaxinit's, never a silent fall-back:
    the family's chunking is disabled (loudly) and the caller told to retry, which then
    runs it whole, priced as such."""
    try:
        the_plan = chunked.plan(resolved)
    except Exception as exc:
        check(resolved)  # raises JaxError when JAX itself refuses the request
        the_plan, why = None, f"its chunk plan failed: {type(exc).__name__}: {exc}"
    else:
        why = "it made no chunk plan"
    if the_plan is None:
        name = resolved.spec.name
        chunked.disable(name, why)
        log.error("chunking disabled for %s: %s", name, why)
        raise ServerUnavailable(f"{name} could not be made in chunks here ({why}); it now runs whole: retry")
    return the_plan


def _fill_pattern(resolved: Resolved) -> tuple[np.ndarray, tuple[int, ...]]:
    """One period of a fill, flat, as JAX converts its value, and the key data.

    JAX's ``jnp.full(shape, value, dtype)`` is ``convert(value)`` broadcast to ``shape``;
    JAX converts the value here (on the value's own small shape), and numpy repeats it.
    """
    shape = resolved.shape
    value_shape: tuple[int, ...] = ()
    if resolved.spec.name == "constant":
        value_shape = tuple(np.shape(resolved.args["value"]))
        if not _broadcasts_to(value_shape, shape):
            check(resolved)  # JAX's own words for a value that does not broadcast
    try:
        with _config(resolved):
            key, key_data = _make_key(resolved.key)
            if resolved.jit:  # convert, then broadcast: the same converted value for any shape
                value = np.asarray(_jitted(dataclasses.replace(resolved, shape=value_shape))(key))
            else:
                value = np.asarray(_call(resolved, value_shape)(key))
    except Exception as exc:
        raise JaxError(str(exc)) from exc
    if value_shape:
        while value.ndim and value.shape[0] == 1:
            value = value[0]
        value = np.broadcast_to(value, shape[len(shape) - value.ndim :])
    if dtype_name(value.dtype) != resolved.out_dtype:
        raise InternalError(f"JAX returned {value.dtype}, expected {resolved.out_dtype}")
    return np.ascontiguousarray(value).reshape(-1), key_data


def _broadcasts_to(value_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether an array of ``value_shape`` broadcasts to exactly ``shape`` (numpy's rule; not
    np.broadcast_shapes, which takes at most 32 dimensions where JAX and numpy arrays take 64)."""
    if len(value_shape) > len(shape):
        return False
    tail = shape[len(shape) - len(value_shape) :]
    return all(v in (1, s) for v, s in zip(value_shape, tail, strict=True))


def validate(what: Plan | Resolved) -> None:
    """Raise what JAX would refuse for ``resolved``, as cheaply as its route allows: a chunk
    plan computes JAX's own scale (and fans), zeros and ones take every shape and dtype,
    and the rest are traced (:func:`check`).

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
    """
    resolved, kind = _routed(what)
    if _stacked(resolved):
        resolved = _template(resolved)  # every slice is the same call but for its key
    if kind == CHUNKED:
        with _config(resolved):
            try:
                if chunked.plan(resolved) is not None:
                    return
            except Exception:
                pass  # check() says it in JAX's words
    elif kind == FILL and resolved.spec.name != "constant":
        return
    check(resolved)


def check(resolved: Resolved) -> None:
    """Trace ``resolved`` without making its values: raises what JAX would refuse.

    Raises:
        JaxError: JAX refused the request; its message, verbatim.
    """
    if _stacked(resolved):
        resolved = _template(resolved)
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
    if _stacked(resolved):
        with _config(resolved):
            head_data, keys = _batch_keys(_the_key(resolved))
        whole = np.empty((len(keys), *resolved.shape[len(_stack(resolved)) :]), DTYPES[resolved.out_dtype])
        for i, key in enumerate(keys):
            whole[i] = run(_slice(resolved, key, 0, whole[i].size))[0]
        return whole.reshape(resolved.shape), head_data
    try:
        with _config(resolved):
            key, key_data = _make_key(resolved.key)
            array = np.asarray(_jitted(resolved)(key) if resolved.jit else _call(resolved)(key))
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
            f"JAX returned {array.dtype}{list(array.shape)}, expected {resolved.out_dtype}{list(resolved.shape)}"
        )
    return array, key_data


_JITTED: collections.OrderedDict[tuple[Any, ...], Callable[[Any], Any]] = collections.OrderedDict()
MAX_JITTED = 64  # compiled initializers kept (jax.jit caches per function object)


def _jitted(resolved: Resolved) -> Callable[[Any], Any]:
    """``jax.jit`` of the initializer call, one per (initializer, arguments, shape, dtype,
    PRNG settings), so that repeats and a stacked request's slices compile once."""
    what = resolved.call_key
    fn = _JITTED.get(what)
    if fn is None:
        fn = _JITTED[what] = jax.jit(_call(resolved))
        while len(_JITTED) > MAX_JITTED:
            _JITTED.popitem(last=False)
    _JITTED.move_to_end(what)
    return fn


def _call(resolved: Resolved, shape: tuple[int, ...] | None = None) -> Callable[[Any], Any]:
    """``key -> init(key, shape[, dtype])`` for ``resolved`` (or another ``shape``), as a
    user's process calls it."""
    init = build(resolved.spec, resolved.args)
    shape = resolved.shape if shape is None else shape
    dtype = resolved.dtype
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
    for step in key.steps:
        if step[0] == "fold_in":  # as flax does: fold_in(key, jnp.uint32(h))
            jax_key = jax.random.fold_in(jax_key, np.uint32(step[1]))
        else:  # ("split", num, i): as nn.scan and nnx.split_rngs derive a layer's key
            jax_key = jax.random.split(jax_key, step[1])[step[2]]
    data = np.asarray(jax.random.key_data(jax_key)).astype(np.uint32).ravel()
    return jax_key, tuple(int(w) for w in data)


# The self-check's tensor: 4,800 elements, of which elements [100, 4196) are one chunk
# whose counters start off zero.
CHECK_SHAPE, CHECK_START, CHECK_COUNT = (48, 100), 100, 4096


def self_check() -> dict[str, str]:
    """Compare chunks with what eager JAX makes here, and disable chunking (loudly) wherever
    they differ or fail, so that it runs whole. Every family in the default mode (float32: its
    sampler and scale); the legacy mode's own bit drawing (32- and 8-bit draws) on one family,
    disabling the whole legacy mode if it differs (every family draws its bits the same way).
    Then the same for jit chunks against ``jax.jit(init)`` (:func:`_jit_check`).
    Blocking (compiles a few programs, most of which warm-up needs anyway): run at warm-up.
    Returns what is disabled."""
    chunked.forget_plans()
    # fan_in and fan_avg with each distribution are the named families; this adds fan_out.
    for name in sorted(chunked.FAMILIES - set(chunked.disabled())):
        problem = _chunk_problem(name, CHECK_VARIANTS.get(name, {}), "float32", True)
        if problem is not None:
            _disable(name, problem)
    # On a family that passed in the default mode, so that a difference is the legacy mode's.
    passed = [name for name in ("normal", "uniform", "truncated_normal") if name not in chunked.disabled()]
    if passed and chunked.LEGACY not in chunked.disabled():
        for dtype in ("float32", "bfloat16"):
            problem = _chunk_problem(passed[0], {}, dtype, False)
            if problem is not None:
                _disable(chunked.LEGACY, problem)
                break
    _jit_check()
    return chunked.disabled()


CHECK_VARIANTS = {"variance_scaling": {"scale": 1.5, "mode": "fan_out", "distribution": "normal"}}


def _jit_check() -> None:
    """The self-check of jit chunks, against ``jax.jit(init)`` of the whole tensor: each family
    that passed eagerly (float32, default mode), disabling its jit chunks (``jit(name)``) if
    they differ; each sampler in the other float dtypes, where XLA computes in float32 and
    rounds where a fusion ends, disabling jit chunks of that dtype (``jit(dtype)``) if one
    differs; and the legacy mode's bit drawing (32- and 8-bit), disabling ``jit(LEGACY)``."""
    for name in sorted(chunked.FAMILIES - set(chunked.disabled())):
        problem = _chunk_problem(name, CHECK_VARIANTS.get(name, {}), "float32", True, jit=True)
        if problem is not None:
            _disable(chunked.jit(name), problem)
    off = chunked.disabled()
    samplers = [name for name in sorted(chunked.SAMPLERS) if name not in off and chunked.jit(name) not in off]
    for dtype in ("bfloat16", "float16"):
        for name in samplers:
            problem = _chunk_problem(name, {}, dtype, True, jit=True)
            if problem is not None:
                _disable(chunked.jit(dtype), problem)
                break
    if samplers and chunked.LEGACY not in chunked.disabled():
        for dtype in ("float32", "bfloat16"):
            problem = _chunk_problem(samplers[0], {}, dtype, False, jit=True)
            if problem is not None:
                _disable(chunked.jit(chunked.LEGACY), problem)
                break


def _disable(what: str, problem: str) -> None:
    chunked.disable(what, problem)
    log.error("chunking disabled for %s, which now runs whole: %s", what, problem)


def _chunk_problem(
    name: str, args: dict[str, Any], dtype: str, partitionable: bool, *, jit: bool = False
) -> str | None:
    """Why a chunk of ``name`` is not eager JAX's bytes (``jit``: jax.jit(init)'s), or None when it is."""
    where = f"{dtype}, threefry_partitionable={partitionable}{', jit' if jit else ''}"
    params = GenerateParams(
        name, CHECK_SHAPE, args=args, dtype=dtype, key=Key(seed=7), offset=CHECK_START, count=CHECK_COUNT, jit=jit
    )
    try:
        resolved = resolve(params, Limits(), PrngDefaults(partitionable, False))
        with _config(resolved):
            plan = chunked.plan(resolved, proving=True)
            if plan is None:
                return f"no chunk plan ({where})"
            key_data = _make_key(resolved.key)[1]
            pieces = chunked.chunks(plan, key_data, resolved.start, resolved.stop)
            got = b"".join(np.ascontiguousarray(piece).tobytes() for piece in pieces)
        whole, _ = run(resolved)
        want = np.ascontiguousarray(whole.reshape(-1)[resolved.start : resolved.stop]).tobytes()
    except Exception as exc:  # a JAX that moved or changed what chunking replays
        return f"the self-check failed ({where}): {type(exc).__name__}: {exc}"[:500]
    reference = "jax.jit(init)" if jit else "eager JAX"
    return None if got == want else f"a chunk differs from {reference} ({where})"
