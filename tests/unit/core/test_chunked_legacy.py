"""Chunks in the legacy PRNG mode (jax_threefry_partitionable=False) against eager JAX, byte for byte."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
import pytest

from jaxinit.protocol.codec import DTYPES
from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, chunked, engine
from jaxinit_server.core.request import PrngDefaults, Resolved, resolve

DEFAULTS = PrngDefaults(threefry_partitionable=False, enable_x64=False)
DTYPE_NAMES = ["float32", "bfloat16", "float16", "float64"]  # 32-, 8-, 16- and 64-bit draws
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("normal", {"stddev": 0.5}),
    ("uniform", {"scale": 2.0}),
    ("truncated_normal", {"stddev": 1.0, "lower": -1.0, "upper": 3.0}),
    ("variance_scaling", {"scale": 3, "mode": "fan_geo_avg", "distribution": "normal"}),
    ("variance_scaling", {"scale": 0.5, "mode": "fan_out", "distribution": "uniform"}),
    ("variance_scaling", {"scale": 2.0, "mode": "fan_avg", "distribution": "truncated_normal"}),
    ("lecun_normal", {}),
    ("lecun_uniform", {}),
    ("he_uniform", {}),
    ("he_normal", {}),
    ("glorot_normal", {}),
    ("glorot_uniform", {}),
]
# Sizes 1, 2, 3, 4097, 3 * 4096 + 5, and just over MAX_CHUNK, odd and even.
SHAPES = [(1, 1), (1, 2), (3, 1), (17, 241), (19, 647), (1141, 919), (2, 524289)]
assert [math.prod(s) for s in SHAPES[-2:]] == [chunked.MAX_CHUNK + 3, chunked.MAX_CHUNK + 2]


def _resolved(name: str, args: dict[str, Any], shape: tuple[int, ...], dtype: str, key: Key) -> Resolved:
    return resolve(GenerateParams(name, shape, args=args, dtype=dtype, key=key), Limits(), DEFAULTS)


def _eager(name: str, args: dict[str, Any], shape: tuple[int, ...], dtype: str, key: Any) -> np.ndarray:
    """The flat tensor a local eager JAX call makes, legacy mode (x64 for float64, as the server)."""
    with jax.threefry_partitionable(False), jax.enable_x64(dtype == "float64"):
        jax_key = key() if callable(key) else jax.random.key(key)
        init = getattr(jax.nn.initializers, name)(**args)
        return np.asarray(init(jax_key, shape, DTYPES[dtype])).reshape(-1)


def _same_bytes(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


SEEDS = (0, 1, -3, 42, 2**40 + 5, 7, 11)  # one per shape


def _check_stream(name: str, args: dict[str, Any], dtype: str, shapes: list[tuple[int, ...]]) -> None:
    for shape in shapes:
        seed = SEEDS[SHAPES.index(shape)]
        resolved = _resolved(name, args, shape, dtype, Key(seed=seed))
        assert not resolved.threefry_partitionable and chunked.chunkable(resolved)
        generation = engine.prepare(resolved)
        with jax.threefry_partitionable(False), jax.enable_x64(resolved.enable_x64):
            the_plan = chunked.plan(resolved)
            assert the_plan is not None and the_plan.total == math.prod(shape)
            direct = np.concatenate(list(chunked.chunks(the_plan, generation.key_data, 0, math.prod(shape))))
        streamed = np.concatenate([a.ravel() for a in generation.produce()])
        expected = _eager(name, args, shape, dtype, seed)
        _same_bytes(streamed, expected)
        _same_bytes(direct, expected)


# A cold run compiles one eager sampler program per sampler (normal, uniform, truncated
# normal: every family is one of them and elementwise maps), shape and dtype. The inner
# loop takes every family and dtype on a shape of 4097 elements and on one of the two just
# over a chunk, in turn, and each dtype on every shape with one family, the families in
# turn; the release tier takes every shape of every case.
EVERY_SHAPE_FAMILY = {"float32": 1, "bfloat16": 2, "float16": 0, "float64": 10}  # uniform, truncated, normal, ...


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize(("name", "args"), FAMILIES)
def test_legacy_stream_equals_eager_jax(name: str, args: dict[str, Any], dtype: str) -> None:
    f, d = FAMILIES.index((name, args)), DTYPE_NAMES.index(dtype)
    _check_stream(name, args, dtype, [SHAPES[3], SHAPES[5 + (f + d) % 2]])


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_legacy_every_shape_of_a_dtype(dtype: str) -> None:
    """Sizes 1, 2, 3, 4097, 3 * 4096 + 5 and just over a chunk, odd and even, in each draw width."""
    name, args = FAMILIES[EVERY_SHAPE_FAMILY[dtype]]
    _check_stream(name, args, dtype, SHAPES)


@pytest.mark.release
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize(("name", "args"), FAMILIES)
def test_legacy_stream_every_shape(name: str, args: dict[str, Any], dtype: str) -> None:
    _check_stream(name, args, dtype, SHAPES)


def test_the_turns_meet_every_sampler_and_both_sizes_over_a_chunk() -> None:
    assert set(EVERY_SHAPE_FAMILY) == set(DTYPE_NAMES)
    assert {"normal", "uniform", "truncated_normal"} <= {FAMILIES[i][0] for i in EVERY_SHAPE_FAMILY.values()}
    for d in range(len(DTYPE_NAMES)):
        assert {(f + d) % 2 for f in range(len(FAMILIES))} == {0, 1}
    for f in range(len(FAMILIES)):
        assert {(f + d) % 2 for d in range(len(DTYPE_NAMES))} == {0, 1}


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_legacy_ranges_equal_slices_of_the_whole(dtype: str) -> None:
    shape = (3, 699051)  # 2**21 + 1 elements: ranges of more than MAX_CHUNK cross chunk boundaries
    total = math.prod(shape)
    big = chunked.MAX_CHUNK
    ranges = [
        (0, 1),
        (1, total),
        (2, big + 6),
        (3, 2 * big + 1),
        (big - 5, big + 7),
        (total - 3, total),
        (4095, 4095 + big + 2),
        (12345, 12345 + 4097),
        (0, total),
    ]
    key = Key(seed=7, fold_in=(3, 2**32 - 1))
    resolved = _resolved("lecun_normal", {}, shape, dtype, key)
    expected = _eager(
        "lecun_normal",
        {},
        shape,
        dtype,
        lambda: jax.random.fold_in(jax.random.fold_in(jax.random.key(7), np.uint32(3)), np.uint32(2**32 - 1)),
    )
    with jax.threefry_partitionable(False), jax.enable_x64(resolved.enable_x64):
        the_plan = chunked.plan(resolved)
        assert the_plan is not None
        key_data = engine._make_key(resolved.key)[1]
        for start, stop in ranges:
            got = np.concatenate(list(chunked.chunks(the_plan, key_data, start, stop)))
            _same_bytes(got, expected[start:stop])


def _model_word(key: np.ndarray, j: int, count: int) -> int:
    """Word j of threefry_2x32(key, iota(count)), hashing the one counter pair it comes from."""
    half = (count + 1) // 2
    pair = (j, j + half if j + half < count else 0) if j < half else (j - half, j)
    out = np.asarray(jax.extend.random.threefry_2x32(key, np.array(pair, np.uint32)))
    return int(out[0 if j < half else 1])


def _model_bits(key: np.ndarray, bit_width: int, total: int, i: int) -> int:
    """Element i of JAX's legacy random bits for a tensor of ``total`` elements."""
    if bit_width == 64:
        return (_model_word(key, i, 2 * total) << 32) | _model_word(key, i + total, 2 * total)
    per = 32 // bit_width
    word = _model_word(key, i // per, -(-total // per))
    return (word >> (bit_width * (i % per))) & ((1 << bit_width) - 1)


def _legacy_bits(key: np.ndarray, bit_width: int, total: int, offset: int, n: int) -> np.ndarray:
    words = [*key, offset >> 32, offset & 0xFFFFFFFF, total >> 32, total & 0xFFFFFFFF]
    legacy_key = jax.random.wrap_key_data(np.array(words, np.uint32), impl=chunked.LEGACY_IMPL)
    return np.asarray(jax.random.bits(legacy_key, (n,), np.dtype(f"uint{bit_width}")))


@pytest.mark.parametrize("bit_width", [8, 16, 32, 64])
def test_the_word_model_is_jax_legacy_bits(bit_width: int) -> None:
    key = np.array([0x12345678, 0x9ABCDEF0], np.uint32)
    with jax.threefry_partitionable(False), jax.enable_x64(True):
        for total in (1, 2, 3, 5, 8, 13):
            jax_bits = np.asarray(jax.random.bits(jax.random.wrap_key_data(key), (total,), f"uint{bit_width}"))
            assert [int(b) for b in jax_bits] == [_model_bits(key, bit_width, total, i) for i in range(total)]
            for offset in range(total):
                got = _legacy_bits(key, bit_width, total, offset, 5)[: total - offset]
                np.testing.assert_array_equal(got, jax_bits[offset : offset + 5])


@pytest.mark.parametrize(
    ("bit_width", "total", "offset"),
    [
        (8, 4 * (2**32 - 2) - 1, 2**32 - 6),
        (8, 4 * (2**32 - 2), 4 * (2**32 - 2) - 9),
        (16, 2 * (2**32 - 2) - 1, 2**32 - 5),
        (16, 2 * (2**32 - 2) - 1, 2 * (2**32 - 2) - 9),
        (32, 2**32 - 2, 2**31 - 4),
        (32, 2**32 - 3, 2**32 - 10),
        (64, 2**31 - 1, 2**31 - 9),
    ],
)
def test_offsets_and_sizes_past_two_to_the_32(bit_width: int, total: int, offset: int) -> None:
    key = np.array([3, 0xFFFFFFFF], np.uint32)
    with jax.threefry_partitionable(False), jax.enable_x64(True):
        got = _legacy_bits(key, bit_width, total, offset, 8)
    n = min(8, total - offset)
    assert [int(b) for b in got[:n]] == [_model_bits(key, bit_width, total, offset + i) for i in range(n)]


@pytest.mark.parametrize(("dtype", "words_per_element"), [("bfloat16", 1 / 4), ("float16", 1 / 2), ("float32", 1)])
def test_sizes_jax_draws_in_blocks_run_whole(dtype: str, words_per_element: float) -> None:
    resolved = _resolved("normal", {}, (4, 4), dtype, Key(seed=0))
    largest = int((2**32 - 2) / words_per_element)  # elements in 2**32 - 2 words: one block
    with jax.threefry_partitionable(False):
        assert chunked.plan(dataclasses.replace(resolved, shape=(largest,))) is not None
        assert chunked.plan(dataclasses.replace(resolved, shape=(largest + 1,))) is None
        assert not chunked.chunkable(dataclasses.replace(resolved, shape=(largest + 1,)))
    resolved = _resolved("normal", {}, (4, 4), "float64", Key(seed=0))
    with jax.threefry_partitionable(False), jax.enable_x64(True):
        assert chunked.plan(dataclasses.replace(resolved, shape=(2**31 - 1,))) is not None
        assert chunked.plan(dataclasses.replace(resolved, shape=(2**31,))) is None


def test_legacy_bits_are_those_jax_uniform_draws() -> None:
    for name, bits in chunked.LEGACY_BITS.items():
        finfo = jax.numpy.finfo(DTYPES[name])
        assert bits == (8 if finfo.nmant < 8 else finfo.bits)


def test_partitionable_plans_carry_no_total() -> None:
    params = GenerateParams("normal", (4, 4), dtype="float32", key=Key(seed=0), threefry_partitionable=True)
    resolved = resolve(params, Limits(), DEFAULTS)
    with jax.threefry_partitionable(True):
        the_plan = chunked.plan(resolved)
    assert the_plan is not None and the_plan.total is None
