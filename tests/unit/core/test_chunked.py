"""The chunked engine against eager JAX: whole tensors, and ranges across chunk boundaries."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from helpers import local_jax
from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, chunked, engine
from jaxinit_server.core.request import PrngDefaults, resolve

DEFAULTS = PrngDefaults(threefry_partitionable=True, enable_x64=False)
FAMILIES: list[tuple[str, dict]] = [
    ("lecun_normal", {}),
    ("he_uniform", {}),
    ("glorot_normal", {"in_axis": 0, "out_axis": [1, 2]}),
    ("normal", {"stddev": 0.5}),
    ("uniform", {"scale": 2.0}),
    ("truncated_normal", {"stddev": 1.0, "lower": -1.0, "upper": 3.0}),
    ("variance_scaling", {"scale": 3, "mode": "fan_geo_avg", "distribution": "normal"}),
    ("variance_scaling", {"scale": 0.5, "mode": "fan_out", "distribution": "uniform"}),
]
# 1_100_000 elements: one full 2**20 chunk and a partial one.
SHAPES = [(11, 100, 1000), (3, 5, 7)]


def _resolved(name: str, args: dict, shape: tuple[int, ...], dtype: str, seed: int) -> object:
    return resolve(GenerateParams(name, shape, args=args, dtype=dtype, key=Key(seed=seed)), Limits(), DEFAULTS)


DTYPES = ["float32", "bfloat16", "float16", "float64"]


def _check_stream(name: str, args: dict, dtype: str, shapes: list[tuple[int, ...]]) -> None:
    for shape in shapes:
        seed = -3 if shape == SHAPES[0] else 2**40 + 5
        resolved = _resolved(name, args, shape, dtype, seed)
        generation = engine.prepare(resolved)
        if math.prod(shape) > chunked.MAX_CHUNK:
            assert generation.route == engine.CHUNKED, "this family must be chunked, not run whole"
        got = np.concatenate([a.ravel() for a in generation.produce()])
        expected = local_jax(name, args, seed, shape, dtype, partitionable=True)
        assert not isinstance(expected, Exception)
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "args"), FAMILIES)
def test_chunked_stream_equals_eager_jax(name: str, args: dict, dtype: str) -> None:
    """Every case on a small shape; the shape of two chunks in turn, so that each family
    and each dtype meets it (a cold run compiles a program per family, dtype and shape).
    Every case on both: the release tier's test below."""
    f, d = FAMILIES.index((name, args)), DTYPES.index(dtype)
    _check_stream(name, args, dtype, [SHAPES[1], SHAPES[0]] if (f + d) % 2 == 0 else [SHAPES[1]])


@pytest.mark.release
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "args"), FAMILIES)
def test_chunked_stream_every_shape(name: str, args: dict, dtype: str) -> None:
    _check_stream(name, args, dtype, SHAPES)


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (2**20 - 5, 2**20 + 7), (12345, 1_100_000), (999_999, 1_000_003)])
def test_ranges_equal_slices_of_the_whole(start: int, stop: int) -> None:
    shape = (11, 100, 1000)
    resolved = _resolved("lecun_normal", {}, shape, "float32", 7)
    with jax.threefry_partitionable(True):
        plan = chunked.plan(resolved)
        assert plan is not None
        key_data = engine._make_key(resolved.key)[1]
        got = np.concatenate(list(chunked.chunks(plan, key_data, start, stop)))
    expected = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(7), shape)).ravel()[start:stop]
    assert got.tobytes() == expected.tobytes()


def test_offsets_past_two_to_the_32_carry_into_the_high_word() -> None:
    resolved = _resolved("normal", {}, (8,), "float32", 1)
    with jax.threefry_partitionable(True):
        plan = chunked.plan(resolved)
        assert plan is not None
        key_data = engine._make_key(resolved.key)[1]
        below = np.concatenate(list(chunked.chunks(plan, key_data, 2**32 - 4, 2**32)))
        across = np.concatenate(list(chunked.chunks(plan, key_data, 2**32 - 4, 2**32 + 4)))
    assert across[:4].tobytes() == below.tobytes()
    assert len(set(across.tolist())) == 8


@pytest.mark.parametrize(
    ("name", "args", "dtype", "partitionable", "impl"),
    [
        ("orthogonal", {}, "float32", True, "threefry2x32"),
        ("lecun_normal", {}, "complex64", True, "threefry2x32"),
        ("lecun_normal", {}, "complex64", False, "threefry2x32"),
        ("lecun_normal", {}, "float32", True, "rbg"),
        ("constant", {"value": 1.0}, "float32", True, "threefry2x32"),
    ],
)
def test_what_is_not_proven_chunkable_runs_whole(
    name: str, args: dict, dtype: str, partitionable: bool, impl: str
) -> None:
    params = GenerateParams(
        name, (4, 4), args=args, dtype=dtype, key=Key(seed=0, impl=impl), threefry_partitionable=partitionable
    )
    resolved = resolve(params, Limits(), DEFAULTS)
    assert chunked.plan(resolved) is None
    assert engine.route(resolved) != engine.CHUNKED


def test_chunk_sizes_are_few() -> None:
    sizes = {chunked.bucket(n) for n in range(1, 3 * 2**20, 977)}
    assert sizes == {2**k for k in range(12, 21)}
    assert math.log2(chunked.MAX_CHUNK) == 20
