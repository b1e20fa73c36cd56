"""Chunked generation: any flat range of an elementwise initializer, bit-exact.

With ``jax_threefry_partitionable`` on, the random bits at flat index i depend only
on the key and i. A key implementation whose ``random_bits`` starts its counter at
an offset (key data: the threefry key's two words, then the offset's high and low
words) lets JAX's own samplers produce elements [offset, offset + n) of the full
tensor. Each chunk then replays the eager call exactly: the jitted sampler on a
chunk, then the separate eager multiply by a scale computed by the same eager
scalar ops JAX's initializer runs (a whole-call jit would fuse them and change the
bits). Chunk sizes come from a few powers of two, so a new shape compiles nothing.

With it off (the legacy mode), JAX draws ``max_count = ceil(bit_width * size / 32)``
32-bit words as ``threefry_2x32(key, iota(max_count))``: word j is one output of the
hash of the counter pair (j, j + h) or (j - h, j), h = ceil(max_count / 2), so any
element is still a function of the key, the tensor's size and its flat index. A
second key implementation (key data: the key's two words, the offset's high and
low words, the tensor size's high and low words) draws exactly those bits for
elements [offset, offset + n); the rest is the same replay. It hashes twice as much
as the eager call for 8- to 32-bit draws (each hash's other word belongs to another
chunk), as much for 64-bit ones. Sizes of 2**32 - 1 words or more (JAX splits the
key into blocks then) run whole.

A jit request (the values of ``jax.jit(init)``, where XLA folds and fuses the scale into
the sampler) gets chunks from one compiled program per scale and chunk size: the sampler on
the offset key and the initializer's scale ops traced together, so the scale is the same
constant of the same elementwise program as in the whole tensor's (see :func:`_jit_plan`).

Only what is checked against eager JAX chunks here: threefry2x32 keys, both modes,
real float dtypes, and the normal, uniform, truncated_normal and variance-scaling
families. Everything else returns no plan and runs whole, and so does a family the
warm-up self-check found to differ from the installed JAX (jit chunks: from jax.jit(init)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import define_prng_impl, threefry2x32_p

from jaxinit.protocol.codec import DTYPES
from jaxinit_server.core._jax_compat import UINT_DTYPES, compute_fans, iota_2x32_shape
from jaxinit_server.core.request import Resolved

__all__ = [
    "FAMILIES",
    "LEGACY",
    "MAX_CHUNK",
    "Plan",
    "bucket",
    "chunkable",
    "chunks",
    "disable",
    "disabled",
    "jit",
    "plan",
    "proven",
    "require_proof",
]

MIN_CHUNK = 2**12
MAX_CHUNK = 2**20
FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
# The bits jax.random.uniform draws per element (8 where the mantissa has fewer bits).
LEGACY_BITS = {"bfloat16": 8, "float16": 16, "float32": 32, "float64": 64}
SAMPLERS = frozenset({"normal", "uniform", "truncated_normal"})
# name -> (scale, mode, distribution), as jax.nn.initializers defines them.
VARIANCE_FAMILY: dict[str, tuple[float, str, str]] = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "xavier_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "xavier_normal": (1.0, "fan_avg", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "kaiming_uniform": (2.0, "fan_in", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "kaiming_normal": (2.0, "fan_in", "truncated_normal"),
}


def _threefry2x32(k1: Any, k2: Any, x0: Any, x1: Any) -> tuple[Any, Any]:
    """JAX's threefry2x32 hash of the counter pairs (x0, x1) under the key (k1, k2)."""
    return threefry2x32_p.bind(k1, k2, x0, x1)  # type: ignore[no-untyped-call,no-any-return]


def _offset_bits(key: Any, bit_width: int, shape: tuple[int, ...]) -> Any:
    # JAX's _threefry_random_bits_partitionable, with the 64-bit counter shifted by the
    # offset carried in the key.
    k1, k2, hi, lo = key[0], key[1], key[2], key[3]
    counts_hi, counts_lo = iota_2x32_shape(shape)
    counts_lo_sum = counts_lo + lo
    counts_hi_sum = counts_hi + hi + (counts_lo_sum < counts_lo).astype(np.uint32)
    bits1, bits2 = _threefry2x32(k1, k2, counts_hi_sum, counts_lo_sum)
    dtype = UINT_DTYPES[bit_width]
    if bit_width == 64:
        bits_hi = lax.convert_element_type(bits1, dtype)
        bits_lo = lax.convert_element_type(bits2, dtype)
        return lax.shift_left(bits_hi, jnp.asarray(32, dtype=dtype)) | bits_lo
    if bit_width == 32:
        return bits1 ^ bits2
    return lax.convert_element_type(bits1 ^ bits2, dtype)


def _legacy_words(k1: Any, k2: Any, j: Any, count: Any) -> Any:
    # Word j of threefry_2x32((k1, k2), iota(count)), for uint32 arrays j < count: the
    # counters, zero-padded to even length, are split in halves x0 and x1; the pair
    # (x0[p], x1[p]) hashes to the words p and p + half.
    half = (count >> 1) + (count & 1)
    first = j < half
    partner = j + half
    x0 = jnp.where(first, j, j - half)
    x1 = jnp.where(first, jnp.where(partner < count, partner, np.uint32(0)), j)
    y0, y1 = _threefry2x32(k1, k2, x0, x1)
    return jnp.where(first, y0, y1)


def _legacy_bits(key: Any, bit_width: int, shape: tuple[int, ...]) -> Any:
    # JAX's _threefry_random_bits_original (without its nblocks branch), for flat
    # elements [offset, offset + n) of a tensor of `total`.
    k1, k2, off_hi, off_lo, total_hi, total_lo = (key[i] for i in range(6))
    n = math.prod(shape)
    dtype = UINT_DTYPES[bit_width]
    if bit_width == 64:  # 2 * total words; element i is (word i << 32) | word (total + i)
        i = lax.iota(np.uint32, n) + off_lo
        bits1, bits2 = _threefry2x32(k1, k2, i, i + total_lo)
        bits_hi = lax.convert_element_type(bits1, dtype)
        bits_lo = lax.convert_element_type(bits2, dtype)
        return lax.reshape(lax.shift_left(bits_hi, jnp.asarray(32, dtype=dtype)) | bits_lo, shape)
    if bit_width == 32:
        return lax.reshape(_legacy_words(k1, k2, lax.iota(np.uint32, n) + off_lo, total_lo), shape)
    if bit_width not in (8, 16):
        raise NotImplementedError(f"jaxinit legacy keys draw no {bit_width}-bit words")
    per = 32 // bit_width  # element i is piece i % per, from the low end, of word i // per
    log = per.bit_length() - 1
    count = (total_hi << (32 - log)) | (total_lo >> log)
    count = count + ((total_lo & (per - 1)) != 0).astype(np.uint32)
    first = (off_hi << (32 - log)) | (off_lo >> log)
    words = _legacy_words(k1, k2, lax.iota(np.uint32, -(-n // per) + 1) + first, count)
    shifts = lax.mul(np.uint32(bit_width), lax.iota(np.uint32, per))
    pieces = lax.shift_right_logical(words[:, None], shifts[None, :]) & np.uint32(np.iinfo(dtype).max)
    skip = lax.convert_element_type(off_lo & (per - 1), np.int32)
    pieces = lax.dynamic_slice(pieces.reshape(-1), (skip,), (n,))
    return lax.reshape(lax.convert_element_type(pieces, dtype), shape)


def _only_bits(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("jaxinit offset keys only draw bits")


def _bits_impl(name: str, words: int, random_bits: Any) -> Any:
    """A key implementation of ``words`` words that can only draw bits."""
    return define_prng_impl(
        key_shape=(words,), seed=_only_bits, split=_only_bits, random_bits=random_bits, fold_in=_only_bits, name=name
    )


OFFSET_IMPL = _bits_impl("jaxinit_threefry2x32_offset", 4, _offset_bits)
LEGACY_IMPL = _bits_impl("jaxinit_threefry2x32_legacy_offset", 6, _legacy_bits)


@dataclass(frozen=True)
class Plan:
    """How to make any chunk: ``sample(key, n) * scale``, as the eager initializer does.

    ``total``: the tensor's size when its bits are drawn the legacy (non-partitionable)
    way, which depends on it; None in partitionable mode.
    """

    sample: Callable[[Any, int], Any]
    scale: Any
    total: int | None = None
    # jit plans: ``compiled(key, n)`` is the chunk of n elements, sampler and scale in one
    # program as ``jax.jit(init)`` compiles them (``scale`` is None then).
    compiled: Callable[[Any, int], Any] | None = None


# Families chunked when nothing disabled them; the warm-up self-check disables one whose
# chunk differs from eager JAX (engine.self_check), and it then runs whole.
FAMILIES = frozenset(SAMPLERS | set(VARIANCE_FAMILY) | {"variance_scaling"})
# family (or LEGACY: the whole legacy mode; or jit(family / dtype / LEGACY): jit requests') -> why
_disabled: dict[str, str] = {}
LEGACY = "threefry_partitionable=false"
# A server runs every family whole from its start until the self-check (or its stored
# verdict) has proven them on this JAX (require_proof, proven); a library caller chunks.
_unproven: list[bool] = []


def require_proof() -> None:
    """Run every family whole until :func:`proven` is called (a server, before its self-check)."""
    _unproven[:] = [True]


def proven() -> None:
    """The self-check has judged the families: those it did not disable are chunked."""
    _unproven.clear()


def disable(family: str, why: str) -> None:
    """Make ``family`` run whole from now on (its chunks differed from eager JAX)."""
    _disabled[family] = why
    forget_plans()


def forget_plans() -> None:
    """Drop the remembered plans (the self-check judges fresh ones)."""
    _PLANS.clear()


def disabled() -> dict[str, str]:
    """The families whose chunking is disabled, and why."""
    return dict(_disabled)


def chunkable(resolved: Resolved, *, proving: bool = False) -> bool:
    """Whether :func:`plan` makes a plan for ``resolved`` (cheap: no JAX work, any config).

    It does unless JAX's own scale computation refuses the request. ``proving``: for the
    self-check, which judges plans before they are proven.
    """
    if _unproven and not proving:
        return False
    key = resolved.key
    total = math.prod(resolved.shape)
    if key is None or key.impl != "threefry2x32" or resolved.out_dtype not in FLOATS or total == 0:
        return False
    name = resolved.spec.name
    if name not in FAMILIES or name in _disabled:
        return False
    if resolved.jit and (jit(name) in _disabled or jit(resolved.out_dtype) in _disabled):
        return False
    if resolved.threefry_partitionable:
        return True
    # Legacy mode: JAX splits the key into blocks for 2**32 - 1 words or more.
    if resolved.jit and jit(LEGACY) in _disabled:
        return False
    return LEGACY not in _disabled and -(-LEGACY_BITS[resolved.out_dtype] * total // 32) < 2**32 - 1


def jit(what: str) -> str:
    """The name under which chunking of ``what`` (a family, a dtype or :data:`LEGACY`) is
    disabled for jit requests only: their chunks are other programs than the eager ones."""
    return f"jit:{what}"


def plan(resolved: Resolved, *, proving: bool = False) -> Plan | None:
    """A chunk plan for ``resolved``, or None when it must run whole.

    Call under the request's JAX config. Raises what JAX's own scale computation
    raises (e.g. fans of a 1-D shape); callers fall back to the whole path then.
    """
    if not chunkable(resolved, proving=proving):
        return None
    # The plan (its scale made by JAX's own eager ops) depends on nothing else; remembered,
    # a repeat skips those dispatches and gives the same scale, so the same bits.
    memo = (*resolved.call_key, resolved.jit)  # a jit plan is another program than the eager one
    if (known := _PLANS.get(memo)) is not None:
        return known
    the_plan = _plan_for(resolved)
    if the_plan is not None:
        if len(_PLANS) >= MAX_PLANS:
            with contextlib.suppress(StopIteration, RuntimeError):  # another thread's changes
                _PLANS.pop(next(iter(_PLANS)), None)
        _PLANS[memo] = the_plan
    return the_plan


_PLANS: dict[tuple[Any, ...], Plan] = {}
MAX_PLANS = 4096


def _plan_for(resolved: Resolved) -> Plan | None:
    dtype = DTYPES[resolved.out_dtype]
    the_plan = _jit_plan(resolved, dtype) if resolved.jit else _family_plan(resolved, dtype)
    if the_plan is None or resolved.threefry_partitionable:
        return the_plan
    return dataclasses.replace(the_plan, total=math.prod(resolved.shape))


def _family_plan(resolved: Resolved, dtype: Any) -> Plan | None:
    """The eager plan: the sampler, then the scale made now by JAX's own eager ops."""
    family = _family(resolved, dtype)
    if family is None:
        return None
    sample, scale_of, _ = family
    return Plan(sample, scale_of())


def _jit_plan(resolved: Resolved, dtype: Any) -> Plan | None:
    """The jit plan: one compiled program per chunk size that is the sampler and the scale's
    ops traced together, as ``jax.jit(init)`` traces them: the scale is a constant of the
    program, so XLA folds and fuses it into the sampler exactly as it does for the whole
    tensor (normal's ``* sqrt(2) * stddev`` becomes one multiply by a folded constant)."""
    family = _family(resolved, dtype)
    if family is None:
        return None
    sample, scale_of, ident = family
    program = (*ident, resolved.out_dtype, resolved.enable_x64, resolved.threefry_partitionable)
    compiled = _PROGRAMS.get(program)
    if compiled is None:
        compiled = jax.jit(lambda key, n: sample(key, n) * scale_of(), static_argnums=1)
        if len(_PROGRAMS) >= MAX_PROGRAMS:
            with contextlib.suppress(StopIteration, RuntimeError):  # another thread's changes
                _PROGRAMS.pop(next(iter(_PROGRAMS)), None)
        _PROGRAMS[program] = compiled
    return Plan(sample, None, compiled=compiled)


# jit chunk programs by what their values depend on (not the shape: a chunk's program is the
# same for every tensor of the family with the same scale); each compiles once per chunk size.
_PROGRAMS: dict[tuple[Any, ...], Callable[[Any, int], Any]] = {}
MAX_PROGRAMS = 512

_Family = tuple[Callable[[Any, int], Any], Callable[[], Any], tuple[Any, ...]]


def _family(resolved: Resolved, dtype: Any) -> _Family | None:
    """The sampler on ``n`` elements, the scale's ops (JAX's initializer's, op for op), and
    what the two depend on besides the dtype and config."""
    name, args = resolved.spec.name, resolved.args
    ident: tuple[Any, ...] = (name, repr(sorted(args.items())))
    if name == "normal":
        return (
            lambda k, n: jax.random.normal(k, (n,), dtype),
            lambda: jnp.array(args["stddev"], dtype),
            ident,
        )
    if name == "uniform":
        return (
            lambda k, n: jax.random.uniform(k, (n,), dtype),
            lambda: jnp.array(args["scale"], dtype),
            ident,
        )
    if name == "truncated_normal":
        lower, upper = args["lower"], args["upper"]
        return (
            lambda k, n: jax.random.truncated_normal(k, lower, upper, (n,), dtype),
            lambda: jnp.array(args["stddev"], dtype),
            ident,
        )
    if name == "variance_scaling":
        scale, mode, distribution = args["scale"], args["mode"], args["distribution"]
    elif name in VARIANCE_FAMILY:
        scale, mode, distribution = VARIANCE_FAMILY[name]
    else:
        return None
    return _variance_family(resolved, scale, mode, distribution, dtype)


def _variance_family(resolved: Resolved, scale: float, mode: str, distribution: str, dtype: Any) -> _Family:
    # jax.nn.initializers.variance_scaling's init, floating branches, op for op.
    args = resolved.args
    axes = [tuple(a) if isinstance(a, list) else a for a in (args["in_axis"], args["out_axis"], args["batch_axis"])]
    fan_in, fan_out = compute_fans(resolved.shape, *axes)
    if mode == "fan_in":
        denominator: float = fan_in
    elif mode == "fan_out":
        denominator = fan_out
    elif mode == "fan_avg":
        denominator = (fan_in + fan_out) / 2
    else:
        denominator = (fan_in * fan_out) ** 0.5
    ident = ("variance_scaling", scale, distribution, repr(denominator))

    def variance() -> Any:
        return jnp.array(scale / denominator, dtype=dtype)

    if distribution == "truncated_normal":
        return (
            lambda k, n: jax.random.truncated_normal(k, -2, 2, (n,), dtype),
            lambda: jnp.sqrt(variance()) / jnp.array(0.87962566103423978, dtype),
            ident,
        )
    if distribution == "normal":
        return (lambda k, n: jax.random.normal(k, (n,), dtype), lambda: jnp.sqrt(variance()), ident)
    return (lambda k, n: jax.random.uniform(k, (n,), dtype, -1), lambda: jnp.sqrt(3 * variance()), ident)


def bucket(count: int) -> int:
    """The chunk size for a tensor of ``count`` elements: a power of two, so few programs exist."""
    size = MIN_CHUNK
    while size < count and size < MAX_CHUNK:
        size *= 2
    return size


def chunks(the_plan: Plan, key_data: tuple[int, ...], start: int, stop: int) -> Iterator[np.ndarray]:
    """Elements [start, stop) of the flat tensor, chunk by chunk, as numpy arrays.

    Call under the request's JAX config, in the thread that consumes the iterator.
    """
    size = bucket(stop - start)
    total = the_plan.total
    for offset in range(start, stop, size):
        words = [key_data[0], key_data[1], offset >> 32, offset & 0xFFFFFFFF]
        if total is None:
            impl = OFFSET_IMPL
        else:
            impl = LEGACY_IMPL
            words += [total >> 32, total & 0xFFFFFFFF]
        key = jax.random.wrap_key_data(np.array(words, dtype=np.uint32), impl=impl)  # type: ignore[arg-type]
        if the_plan.compiled is not None:
            chunk = the_plan.compiled(key, size)
        else:
            chunk = the_plan.sample(key, size) * the_plan.scale
        yield np.asarray(chunk)[: min(size, stop - offset)]
