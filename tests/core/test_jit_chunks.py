"""jit requests made in chunks: every chunked family, float dtype and PRNG mode gives exactly
``jax.jit(init)(key, shape, dtype)`` of the installed JAX (XLA's fused scale and all), on
shapes whose chunk boundaries fall mid-row, tiny and odd ones, ranges, stacked keys, and the
fills a jitted model holds (see tests/core/conftest.py for the service)."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from in_core import Ask, make, make_all

import jaxinit
from jaxinit_server.core import Service, chunked

FAMILIES = sorted(chunked.FAMILIES)
DTYPES = ["float16", "bfloat16", "float32"]
# (1025, 1031): two chunks of 2**20, the boundary in the middle of row 1017; the rest one
# chunk each, tiny, odd, of every rank the variance families take.
SHAPES = [(1025, 1031), (1, 1), (3, 5), (33, 129), (8, 3, 3, 17), (2, 1, 4097), (7, 1)]
ARGS: dict[str, dict[str, Any]] = {
    "normal": {"stddev": 0.02},
    "uniform": {"scale": 0.3},
    "truncated_normal": {"stddev": 0.7, "lower": -1.5, "upper": 2.0},
    "variance_scaling": {"scale": 1.5, "mode": "fan_out", "distribution": "normal"},
}
CASES = list(itertools.product(FAMILIES, DTYPES, [True, False]))


def _jitted(name: str, shape: tuple[int, ...], dtype: str, seed: int, partitionable: bool, x64: bool = False) -> bytes:
    """``jax.jit(init)(key, shape, dtype)``, as a user's jitted code makes it."""
    init = getattr(jax.nn.initializers, name)(**ARGS.get(name, {}))
    with jax.threefry_partitionable(partitionable), jax.enable_x64(x64):
        fn = jax.jit(lambda k: init(k, shape, jnp.dtype(dtype)))
        return np.asarray(fn(jax.random.key(seed))).tobytes()


def _check(service: Service, name: str, dtype: str, partitionable: bool, shapes: list[tuple[int, ...]]) -> None:
    asks = [
        Ask(name, i + 3, shape, dtype, args=ARGS.get(name), threefry_partitionable=partitionable, jit=True)
        for i, shape in enumerate(shapes)
    ]
    for ask, got in zip(asks, make_all(service, asks), strict=True):
        assert not isinstance(got, Exception), got
        assert got.route == "chunked", (ask, got.route)
        assert got.data == _jitted(name, ask.shape, dtype, ask.key, partitionable), ask


# The inner loop's cases: every family in both modes, each in a dtype taken in turn (two
# of the three per family, every one in about a third of the cases); the release tier
# takes every family, dtype, mode and shape (a cold run compiles a program for each).
TURNS = [
    (name, DTYPES[(2 * f + m) % 3], mode) for f, name in enumerate(FAMILIES) for m, mode in enumerate([True, False])
]


@pytest.mark.parametrize(("name", "dtype", "partitionable"), TURNS)
def test_jit_chunks_are_jax_jit_of_the_initializer(
    service: Service, name: str, dtype: str, partitionable: bool
) -> None:
    """One shape per case, the shapes taken in turn so that every shape meets many families."""
    _check(service, name, dtype, partitionable, [SHAPES[TURNS.index((name, dtype, partitionable)) % len(SHAPES)]])


@pytest.mark.parametrize("partitionable", [True, False])
def test_the_common_kernel_initializer_across_a_chunk_boundary(service: Service, partitionable: bool) -> None:
    """normal in float32, the boundary in the middle of a row, in both modes."""
    _check(service, "normal", "float32", partitionable, [SHAPES[0]])


def test_the_turns_cover_every_family_dtype_and_shape() -> None:
    assert {t[0] for t in TURNS} == set(FAMILIES) and {t[1] for t in TURNS} == set(DTYPES)
    assert len(TURNS) >= len(SHAPES) and all(
        {t[0] for t in TURNS if t[2] is mode} == set(FAMILIES) for mode in (True, False)
    )


@pytest.mark.release
@pytest.mark.parametrize(("name", "dtype", "partitionable"), CASES)
def test_jit_chunks_every_shape(service: Service, name: str, dtype: str, partitionable: bool) -> None:
    _check(service, name, dtype, partitionable, SHAPES)


@pytest.mark.parametrize("partitionable", [True, False])
def test_a_jit_range_is_its_slice_of_jax_jit(service: Service, partitionable: bool) -> None:
    """Ranges starting and ending mid-row, one crossing a chunk boundary."""
    shape = (1025, 1031)
    want = np.frombuffer(_jitted("lecun_normal", shape, "bfloat16", 5, partitionable), jnp.bfloat16)
    for offset, count in [(1031 * 3 + 17, 5000), (2**20 - 100, 300), (1, 1)]:
        got = make(
            service,
            Ask(
                "lecun_normal",
                5,
                shape,
                "bfloat16",
                offset=offset,
                count=count,
                threefry_partitionable=partitionable,
                jit=True,
            ),
        )
        assert got.route == "chunked"
        assert got.data == want[offset : offset + count].tobytes(), (offset, count)


def test_jit_chunks_in_float64(service: Service) -> None:
    for name in ("normal", "glorot_uniform", "he_normal"):
        got = make(service, Ask(name, 9, (33, 129), "float64", args=ARGS.get(name), enable_x64=True, jit=True))
        assert got.route == "chunked"
        assert got.data == _jitted(name, (33, 129), "float64", 9, True, x64=True)


def test_a_stacked_jit_request_is_chunked_and_each_slice_is_jax_jit(service: Service) -> None:
    """nn.scan's layers under a jitted init: each slice as jax.jit makes it, now chunked."""
    init = jax.nn.initializers.normal(0.02)
    key = jax.random.key(8)
    want = jax.jit(jax.vmap(lambda k: init(jax.random.fold_in(k, 1), (40, 33))))(jax.random.split(key, 3))
    stacked = jaxinit.fold_in(jaxinit.stacked(8, 3), 1)
    got = make(service, Ask("normal", stacked, (3, 40, 33), args={"stddev": 0.02}, jit=True))
    assert got.route == "chunked"
    assert got.data == np.asarray(want).tobytes()


@pytest.mark.parametrize(
    ("name", "args", "dtype"),
    [
        ("ones", {}, "float32"),
        ("zeros", {}, "bfloat16"),
        ("constant", {"value": 0.1}, "bfloat16"),
        ("constant", {"value": 1e10}, "int32"),  # XLA saturates compiled another way than eagerly
        ("constant", {"value": [[0.1, 0.2, 0.3]]}, "float16"),
    ],
)
def test_a_jit_fill_is_jax_jit_of_the_initializer(
    service: Service, name: str, args: dict[str, Any], dtype: str
) -> None:
    init = getattr(jax.nn.initializers, name)
    init = init(np.asarray(args["value"])) if name == "constant" else init
    shape = (5000, 3)
    want = np.asarray(jax.jit(lambda: init(None, shape, jnp.dtype(dtype)))()).tobytes()
    got = make(service, Ask(name, None, shape, dtype, args=args or None, jit=True))
    assert got.route == "fill" and got.data == want
