"""The engine's routes (EMPTY, FILL, CHUNKED, WHOLE) against eager JAX, the shape arithmetic
that guards them, and the prices the service admits requests by."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import local_jax
from jaxinit.protocol.codec import DTYPES
from jaxinit.protocol.errors import InvalidArgument, JaxError, JaxinitError, TooLarge
from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, chunked, engine
from jaxinit_server.core.request import MAX_INDEX, MAX_RANK, MAX_REQUEST_ID, PrngDefaults, Resolved, resolve
from jaxinit_server.core.service import Service

DEFAULTS = PrngDefaults(threefry_partitionable=True, enable_x64=False)
SIXTY_FOUR = {"float64", "complex128", "int64", "uint64"}
PIECE = chunked.MAX_CHUNK


def _resolve(
    name: str,
    shape: Any,
    args: dict | None = None,
    dtype: str | None = None,
    *,
    seed: int = 0,
    impl: str = "threefry2x32",
    offset: Any = None,
    count: Any = None,
    x64: bool | None = None,
    request_id: str = "",
    limits: Limits | None = None,
) -> Resolved:
    params = GenerateParams(
        name,
        shape,
        args=args or {},
        dtype=dtype,
        key=Key(seed=seed, impl=impl),
        enable_x64=x64,
        request_id=request_id,
        offset=offset,
        count=count,
    )
    return resolve(params, limits or Limits(), DEFAULTS)


def _produced(resolved: Resolved) -> np.ndarray:
    generation = engine.prepare(resolved)
    try:
        pieces = [np.asarray(p).reshape(-1) for p in generation.produce()]
    finally:
        generation.close()
    assert pieces, "a generation yields at least one array"
    assert len({p.dtype for p in pieces}) == 1
    return np.concatenate(pieces)


def _x64(dtype: str | None, x64: bool | None) -> bool:
    if x64 is not None:
        return x64
    return dtype in SIXTY_FOUR or DEFAULTS.enable_x64


def _fill_reference(
    name: str, args: dict, shape: tuple[int, ...], dtype: str | None, x64: bool | None = None
) -> np.ndarray | Exception:
    """What eager JAX returns for a fill request (flat), or what it raises."""
    try:
        with jax.enable_x64(_x64(dtype, x64)):
            if name in ("zeros", "ones"):
                init = getattr(jax.nn.initializers, name)
            elif name in ("zeros_init", "ones_init"):
                init = getattr(nnx.initializers, name)()
            else:
                value = args["value"]
                value = np.asarray(value) if isinstance(value, list) else value
                kwargs = {"dtype": DTYPES[args["dtype"]]} if args.get("dtype") else {}
                init = jax.nn.initializers.constant(value, **kwargs)
            key = jax.random.key(0)
            out = init(key, shape) if dtype is None else init(key, shape, DTYPES[dtype])
            return np.asarray(out).reshape(-1)
    except Exception as exc:
        return exc


def _check_fill(
    name: str,
    args: dict,
    shape: tuple[int, ...],
    dtype: str | None,
    ranges: list[tuple[int, int] | None],
    x64: bool | None = None,
) -> None:
    expected = _fill_reference(name, args, shape, dtype, x64)
    for rng in ranges:
        offset, count = rng if rng is not None else (None, None)
        resolved = _resolve(name, shape, args, dtype, offset=offset, count=count, x64=x64)
        if isinstance(expected, Exception):
            with pytest.raises(JaxError) as info:
                _produced(resolved)
            assert info.value.message == str(expected)
            continue
        assert engine.route(resolved) == engine.FILL, (name, args, shape, dtype)
        assert engine.price(resolved).route == engine.FILL
        got = _produced(resolved)
        want = expected[resolved.start : resolved.stop]
        assert got.dtype == want.dtype, (name, args, shape, dtype, rng)
        assert got.shape == want.shape, (name, args, shape, dtype, rng)
        assert got.tobytes() == want.tobytes(), (name, args, shape, dtype, rng, got[:8], want[:8])


# --------------------------------------------------------------------------------------
# FILL: zeros, ones, zeros_init, ones_init, constant, bit-exact with eager JAX
# --------------------------------------------------------------------------------------

FILL_DTYPES = [
    "float32",
    "bfloat16",
    "float16",
    "float64",
    "int8",
    "int32",
    "uint8",
    "bool",
    "complex64",
    "int64",
    "complex128",
]
# 2_100_000 elements: three pieces of at most MAX_CHUNK (2**20) elements.
BIG = (2100, 1000)
assert 2 * PIECE < math.prod(BIG) < 3 * PIECE
BIG_RANGES: list[tuple[int, int] | None] = [
    None,
    (0, 1),
    (PIECE - 7, 20),
    (5, PIECE + 100),
    (2 * PIECE - 1, 3),
    (PIECE - 1, PIECE + 2),
    (999_999, math.prod(BIG) - 999_999),
    (math.prod(BIG) - 1, 1),
]


FILLS = ["zeros", "ones", "zeros_init", "ones_init"]


def _big_in_turn(i: int, dtype: str) -> bool:
    """Whether case ``i`` in ``dtype`` also fills a tensor of several pieces in the inner
    loop: half of the cases, taken in turn, so that each value and each dtype meets it (a
    cold run compiles an eager program per shape and dtype); every case: the release tier."""
    return (i + FILL_DTYPES.index(dtype)) % 2 == 0


def _zeros_and_ones(name: str, dtype: str, big: bool) -> None:
    for shape in [(), (7,), (2, 3, 4), (1, 1, 5)]:
        _check_fill(name, {}, shape, dtype, [None, (0, 1)])
    if big:
        _check_fill(name, {}, BIG, dtype, BIG_RANGES)


@pytest.mark.parametrize("dtype", FILL_DTYPES)
@pytest.mark.parametrize("name", FILLS)
def test_zeros_and_ones_fill_equals_eager_jax(name: str, dtype: str) -> None:
    _zeros_and_ones(name, dtype, _big_in_turn(FILLS.index(name), dtype))


@pytest.mark.release
@pytest.mark.parametrize("dtype", FILL_DTYPES)
@pytest.mark.parametrize("name", FILLS)
def test_zeros_and_ones_fill_of_several_pieces_in_every_dtype(name: str, dtype: str) -> None:
    _zeros_and_ones(name, dtype, True)


def test_fills_take_the_default_dtype_as_jax_does() -> None:
    for name in ["zeros", "ones", "zeros_init", "ones_init"]:
        _check_fill(name, {}, (3, 4), None, [None])
        _check_fill(name, {}, (3, 4), None, [None], x64=True)
    for value in [0.1, 7, True, [1, 2, 3]]:
        _check_fill("constant", {"value": value}, (4, 3), None, [None])
        _check_fill("constant", {"value": value}, (4, 3), None, [None], x64=True)
        _check_fill("constant", {"value": value, "dtype": "int32"}, (4, 3), None, [None])
        _check_fill("constant", {"value": value, "dtype": "bfloat16"}, (4, 3), "float16", [None])


# (value, shapes): each value on small shapes, then on one of more than MAX_CHUNK elements.
CONSTANTS: list[tuple[Any, list[tuple[int, ...]], tuple[int, ...]]] = [
    (0.1, [(), (5,), (3, 4)], BIG),
    (7, [(), (5,)], BIG),
    (True, [(), (2, 2)], BIG),
    (-2.75, [(), (5,)], BIG),
    (-0.0, [(), (5,)], BIG),
    (300, [(3,)], (2, PIECE + 3)),
    ([1.5, -2, 3], [(3,), (4, 3), (2, 2, 3)], (700_001, 3)),
    ([[1, 2, 3], [4, 5, 6]], [(2, 3), (4, 2, 3), (2, 2, 2, 3)], (350_001, 2, 3)),
    ([[1.5, 2.5, -3.5]], [(1, 3), (5, 3), (2, 5, 3)], (700_001, 3)),
    ([[0.25], [-8]], [(2, 1), (2, 5), (7, 2, 5)], (210_001, 2, 5)),
    ([[[2.0]], [[-1.0]], [[0.5]]], [(3, 1, 1), (2, 3, 4, 5)], (175_001, 3, 4, 1)),
    ([float(i) / 7 - 60 for i in range(1000)], [(2, 1000)], BIG),
    ([[[-1.25, 3]]], [(1, 1, 2), (4, 2), (3, 4, 2)], (1_050_001, 2)),
]


def _value_id(value: Any) -> str:
    return repr(np.shape(value)) if isinstance(value, list) else repr(value)


def _constant(value: Any, shapes: list[tuple[int, ...]], big: tuple[int, ...] | None, dtype: str) -> None:
    args = {"value": value}
    for shape in shapes:
        _check_fill("constant", args, shape, dtype, [None, (0, 1)])
    if big is None:
        return
    total = math.prod(big)
    ranges: list[tuple[int, int] | None] = [None, (PIECE - 7, 20), (5, PIECE + 100), (total - 4, 4)]
    if total > 2 * PIECE:
        ranges.append((2 * PIECE - 3, 9))
    _check_fill("constant", args, big, dtype, ranges)


CONSTANT_IDS = [_value_id(c[0]) for c in CONSTANTS]


@pytest.mark.parametrize("dtype", FILL_DTYPES)
@pytest.mark.parametrize(("value", "shapes", "big"), CONSTANTS, ids=CONSTANT_IDS)
def test_constant_fill_equals_eager_jax(
    value: Any, shapes: list[tuple[int, ...]], big: tuple[int, ...], dtype: str
) -> None:
    i = next(i for i, c in enumerate(CONSTANTS) if c[1] is shapes)
    _constant(value, shapes, big if _big_in_turn(i, dtype) else None, dtype)


@pytest.mark.release
@pytest.mark.parametrize("dtype", FILL_DTYPES)
@pytest.mark.parametrize(("value", "shapes", "big"), CONSTANTS, ids=CONSTANT_IDS)
def test_constant_fill_of_several_pieces_in_every_dtype(
    value: Any, shapes: list[tuple[int, ...]], big: tuple[int, ...], dtype: str
) -> None:
    _constant(value, [], big, dtype)


def test_large_patterns_are_not_filled() -> None:
    small = _resolve("constant", (8, 2**17), {"value": [[1.0]] * 8})  # a period of 2**20 elements
    assert engine.route(small) == engine.FILL
    large = _resolve("constant", (16, 2**17), {"value": [[1.0]] * 16})  # 2**21: made whole
    assert engine.route(large) == engine.WHOLE


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ([1, 2], (4, 3)),
        ([[1], [2], [3]], (2, 3)),
        ([[[1, 2, 3]]], (5, 3)),  # leading 1s beyond the shape's rank: JAX refuses
        ([1, 2, 3], ()),
        ([1.0], ()),
        ([], (4, 1)),
        ([[1, 2], [3, 4]], (3,)),
        ([[1, 2, 3], [4, 5, 6]], (2, 0)),  # an empty tensor: still refused
        ([1, 2, 3], (PIECE + 1, 2)),
        ([[1.0, 2.0]] * 3, (4, 2, 2)),
    ],
)
def test_constant_that_does_not_broadcast_is_refused_in_jax_words(value: Any, shape: tuple[int, ...]) -> None:
    expected = _fill_reference("constant", {"value": value}, shape, "float32")
    assert isinstance(expected, Exception), "local JAX refuses this value"
    resolved = _resolve("constant", shape, {"value": value}, "float32")
    with pytest.raises(JaxError) as info:
        _produced(resolved)
    assert info.value.message == str(expected)
    with pytest.raises(JaxError):
        engine.validate(resolved)


# --------------------------------------------------------------------------------------
# EMPTY: 0-size shapes (beside huge dimensions) and empty ranges, without XLA
# --------------------------------------------------------------------------------------


class _CompileLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.compiled: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "XLA compilation" in message or message.startswith("Compiling "):
            self.compiled.append(message[:200])


@contextlib.contextmanager
def _compile_log() -> Iterator[_CompileLog]:
    """The XLA compilations JAX logs inside the block."""
    handler = _CompileLog()
    loggers = [logging.getLogger(name) for name in ("jax._src.dispatch", "jax._src.interpreters.pxla")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _no_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every producer that would run JAX on the shape fail loudly."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("an empty answer must not run the initializer")

    monkeypatch.setattr(engine, "run", refuse)
    monkeypatch.setattr(engine, "_fill_pattern", refuse)
    monkeypatch.setattr(chunked, "chunks", refuse)


def _empty_answer(resolved: Resolved, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """``resolved``'s elements (none), checking that nothing is compiled for them."""
    assert engine.route(resolved) == engine.EMPTY
    with engine._config(resolved):
        engine._make_key(resolved.key)  # the key's own small programs, compiled beforehand
    _no_xla(monkeypatch)
    with _compile_log() as handler:
        generation = engine.prepare(resolved)
        pieces = list(generation.produce())
    assert generation.route == engine.EMPTY
    assert handler.compiled == [], handler.compiled
    got = np.concatenate([p.reshape(-1) for p in pieces])
    assert got.size == 0
    return got


def test_the_compile_log_sees_xla_work() -> None:
    """The check above is not vacuous: a non-empty request of a new shape compiles."""
    resolved = _resolve("orthogonal", (41, 23), dtype="float32", seed=3)
    with engine._config(resolved):
        engine._make_key(resolved.key)
    with _compile_log() as handler:
        assert _produced(resolved).size == 41 * 23
    assert handler.compiled


def _abstract_reference(name: str, args: dict, shape: tuple[int, ...], dtype: str) -> Any:
    """What JAX says of this request without making it: its result type, or its refusal."""
    with jax.enable_x64(dtype in SIXTY_FOUR):
        value = args.get("value")
        kwargs = {"value": np.asarray(value) if isinstance(value, list) else value} if name == "constant" else {}
        init = getattr(jax.nn.initializers, name)
        init = init if name in ("zeros", "ones") else init(**kwargs)
        try:
            return jax.eval_shape(lambda k: init(k, shape, DTYPES[dtype]), jax.random.key(0))
        except Exception as exc:
            return exc


def _largest(itemsize: int, *dims: int) -> int:
    """The largest last dimension a 0-size shape with ``dims`` before it may have."""
    return MAX_INDEX // (itemsize * math.prod(max(d, 1) for d in dims))


HUGE_EMPTY = [
    ("zeros", {}, (2**40, 0), "float32"),
    ("normal", {}, (0, 2**31, 3), "float32"),
    ("normal", {}, (2**58, 0), "float32"),  # 2**60 bytes of non-zero dimensions: accepted
    ("normal", {}, (0, _largest(4)), "float32"),  # 2**61 - 1: the largest float32 one
    ("uniform", {}, (_largest(2), 0), "bfloat16"),
    ("normal", {}, (0, 2**31, _largest(4, 2**31)), "float32"),
    ("ones", {}, (0, 2**31, _largest(8, 2**31)), "float64"),
    ("zeros", {}, (_largest(1), 0), "int8"),
    ("constant", {"value": 1.5}, (0, 2**31, 2**29), "float32"),
    ("constant", {"value": [1.0, 2.0]}, (_largest(4, 2), 0, 2), "float32"),
    ("orthogonal", {}, (_largest(4), 0), "float32"),
    ("lecun_normal", {}, (_largest(4), 0), "float32"),  # JAX divides by the 0 fan
    ("truncated_normal", {}, (3, 0, 2**50), "bfloat16"),
    ("normal", {}, (0, 2**31, 3), "complex64"),
]


@pytest.mark.parametrize(
    ("name", "args", "shape", "dtype"), HUGE_EMPTY, ids=[f"{c[0]}-{c[3]}-{len(c[2])}d" for c in HUGE_EMPTY]
)
def test_zero_size_shapes_beside_huge_dimensions(
    name: str, args: dict, shape: tuple[int, ...], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = _resolve(name, shape, args, dtype)
    assert resolved.nbytes == 0
    assert engine.price(resolved).route == engine.EMPTY
    expected = _abstract_reference(name, args, shape, dtype)
    if isinstance(expected, Exception):
        with pytest.raises(JaxError) as info:
            _empty_answer(resolved, monkeypatch)
        assert info.value.message == str(expected)
        return
    got = _empty_answer(resolved, monkeypatch)
    assert got.dtype == np.dtype(expected.dtype) == DTYPES[dtype]


@pytest.mark.parametrize("dtype", ["int8", "bfloat16", "float32", "float64", "complex64", "complex128", "bool"])
def test_the_exact_boundary_of_zero_size_shapes(dtype: str) -> None:
    itemsize = DTYPES[dtype].itemsize
    largest = MAX_INDEX // itemsize
    assert largest * itemsize <= MAX_INDEX < (largest + 1) * itemsize
    for shape in [(largest, 0), (0, largest), (3, 0, largest // 3)]:
        resolved = _resolve("zeros", shape, dtype=dtype)
        assert (resolved.start, resolved.stop, resolved.nbytes) == (0, 0, 0)
        assert engine.route(resolved) == engine.EMPTY
    for shape, axis in [((largest + 1, 0), 0), ((0, largest + 1), 1), ((3, 0, largest // 3 + 1), 2)]:
        with pytest.raises(InvalidArgument) as info:
            _resolve("zeros", shape, dtype=dtype)
        assert f"dimension {axis}" in info.value.message and len(info.value.message) < 300
    # A product over several dimensions: 2**31 * d * itemsize against 2**63.
    d = largest // 2**31
    _resolve("zeros", (0, 2**31, d), dtype=dtype)
    with pytest.raises(InvalidArgument, match="dimension 2"):
        _resolve("zeros", (0, 2**31, d + 1), dtype=dtype)


def test_float32_boundary_is_two_to_the_61() -> None:
    assert _largest(4) == 2**61 - 1
    _resolve("normal", (2**60 // 4, 0), dtype="float32")  # 2**60 bytes: well inside
    _resolve("normal", (2**61 - 1, 0), dtype="float32")
    with pytest.raises(InvalidArgument, match="dimension 0"):
        _resolve("normal", (2**61, 0), dtype="float32")  # 2**63 bytes


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "offset"),
    [
        ("normal", (1000, 1000), "float32", 12345),
        ("normal", (1000, 1000), "float32", 10**6),
        ("uniform", (7, 9), "bfloat16", 0),
        ("orthogonal", (4096, 4096), "float32", 0),
        ("orthogonal", (64, 64), "float64", 4095),
        ("constant", (PIECE + 5, 3), "int8", PIECE),
        ("zeros", (2**30,), "float32", 2**29),
        ("lecun_normal", (3, 4), "complex64", 5),
        ("lecun_normal", (30, 40), "float32", 11),
    ],
)
def test_an_empty_range_of_a_tensor_is_empty(
    name: str, shape: tuple[int, ...], dtype: str, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = {"value": [1, 2, 3]} if name == "constant" else {}
    resolved = _resolve(name, shape, args, dtype, offset=offset, count=0)
    assert (resolved.start, resolved.stop, resolved.nbytes) == (offset, offset, 0)
    cost = engine.price(resolved)
    assert cost.route == engine.EMPTY and cost.memory < 2**20
    got = _empty_answer(resolved, monkeypatch)
    assert got.dtype == DTYPES[dtype]


@pytest.mark.parametrize(
    ("name", "shape", "args", "count"),
    [
        ("orthogonal", (0,), {}, None),
        ("orthogonal", (0, 0), {}, None),
        ("orthogonal", (2, 0), {}, None),
        ("orthogonal", (0, 3), {}, None),
        ("delta_orthogonal", (0, 0), {}, None),
        ("delta_orthogonal", (3, 3, 0, 4), {}, None),
        ("lecun_normal", (0,), {}, None),
        ("lecun_normal", (0, 0), {}, None),
        ("lecun_normal", (3, 0), {}, None),
        ("lecun_normal", (5,), {}, 0),
        ("glorot_uniform", (3, 0, 4), {}, None),
        ("he_normal", (0, 5), {}, None),
        ("normal", (0,), {}, None),
        ("truncated_normal", (), {}, 0),
        ("uniform", (0, 2, 0), {}, None),
        ("orthogonal", (6,), {}, 0),
        ("variance_scaling", (4, 0), {"scale": 1.0, "mode": "fan_out", "distribution": "normal"}, None),
        ("constant", (0, 3), {"value": [1.0, 2.0]}, None),
        ("constant", (0, 3), {"value": [1.0, 2.0, 3.0]}, None),
        ("zeros", (0,), {}, None),
        ("ones", (), {}, 0),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "complex64"])
def test_empty_requests_get_what_local_jax_does(
    name: str, shape: tuple[int, ...], args: dict, count: int | None, dtype: str
) -> None:
    expected = local_jax(name, args, 0, shape, dtype, partitionable=True, x64=False)
    resolved = _resolve(name, shape, args, dtype, count=count)
    assert engine.route(resolved) == engine.EMPTY
    if isinstance(expected, Exception):
        with pytest.raises(JaxError):
            _produced(resolved)
        with pytest.raises(JaxError):
            engine.validate(resolved)
        return
    got = _produced(resolved)
    assert got.size == 0 and got.dtype == expected.dtype


# --------------------------------------------------------------------------------------
# Shape arithmetic in resolve
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((2**63,), 0),
        ((2**64,), 0),
        ((10**30,), 0),
        ((0, 2**63), 1),
        ((2**64, 0), 0),
        ((0, 0, 10**30), 2),
        ((3, 2**63 - 1), 1),
        ((2**60, 2), 1),
        ((2**62, 2), 0),
        ((2**30, 2**30, 2), 2),
        ((0, 2**32, 2**32), 2),
        ((1, 1, 1, 1, 1, 1, 1, 2**62), 7),
        ((2**21,) * 3, 2),
        ((2**61, 0), 0),
    ],
)
@pytest.mark.parametrize("name", ["zeros", "normal", "orthogonal"])
def test_shapes_past_two_to_the_63_bytes_are_refused(shape: tuple[int, ...], axis: int, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _resolve(name, list(shape), dtype="float32")
    assert not isinstance(info.value, JaxError)
    message = info.value.message
    assert f"dimension {axis}" in message, message
    assert len(message) < 300, message


def test_ten_to_the_thirty_beside_zeros_and_rank_limits() -> None:
    with pytest.raises(InvalidArgument) as info:
        _resolve("zeros", [0] * 40 + [10**30] + [0] * 23)
    assert "dimension 40" in info.value.message and len(info.value.message) < 300
    resolved = _resolve("zeros", [1] * MAX_RANK, dtype="int8")
    assert resolved.shape == (1,) * MAX_RANK
    assert _produced(resolved).tobytes() == b"\0"
    for rank in (MAX_RANK + 1, 1000, 10**5):
        with pytest.raises(InvalidArgument) as info:
            _resolve("zeros", [1] * rank)
        assert str(MAX_RANK) in info.value.message and len(info.value.message) < 300
    with pytest.raises(InvalidArgument):
        _resolve("zeros", [0] * (MAX_RANK + 1))


def test_numpy_dimensions_and_malformed_ones() -> None:
    resolved = _resolve("zeros", (np.int64(0), np.uint64(2**61 - 1)), dtype="float32")
    assert resolved.shape == (0, 2**61 - 1) and all(type(d) is int for d in resolved.shape)
    assert engine.route(resolved) == engine.EMPTY
    huge: list[Any] = [(np.uint64(2**63), 0), (0, np.uint64(2**64 - 1))]
    for shape in huge:
        with pytest.raises(InvalidArgument) as info:
            _resolve("zeros", shape, dtype="float32")
        assert len(info.value.message) < 300
    malformed: list[Any] = [(2, -1), (True, 2), (2.0, 3), ("3",), "33", None, 7, (10**400,), [[2]]]
    for shape in malformed:
        with pytest.raises(InvalidArgument) as info:
            _resolve("zeros", shape)
        assert len(info.value.message) < 300


def test_request_ids_are_capped() -> None:
    assert _resolve("zeros", (2,), request_id="r" * MAX_REQUEST_ID).request_id == "r" * MAX_REQUEST_ID
    for request_id in ["r" * (MAX_REQUEST_ID + 1), "x" * 10**6]:
        with pytest.raises(InvalidArgument) as info:
            _resolve("zeros", (2,), request_id=request_id)
        assert len(info.value.message) < 300


# --------------------------------------------------------------------------------------
# Pricing
# --------------------------------------------------------------------------------------


def test_a_chunked_request_costs_a_few_chunks_whatever_its_size() -> None:
    huge = engine.price(_resolve("normal", (2**30,), dtype="float32"))  # 4 GiB
    medium = engine.price(_resolve("normal", (2**24,), dtype="float32"))  # 64 MiB
    assert huge.route == medium.route == engine.CHUNKED
    assert huge.memory == medium.memory < 100 * 2**20
    assert huge.flops > medium.flops
    ranged = engine.price(_resolve("normal", (2**30,), dtype="float32", offset=2**29, count=2**25))
    assert ranged.memory == huge.memory
    small = engine.price(_resolve("normal", (100,), dtype="float32"))
    assert small.memory < huge.memory


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "impl"),
    [
        ("orthogonal", (512, 256), "float32", "threefry2x32"),
        ("normal", (2**20,), "complex64", "threefry2x32"),
        ("lecun_normal", (1024, 1024), "float32", "rbg"),
        ("delta_orthogonal", (3, 3, 64, 64), "float32", "threefry2x32"),
    ],
)
def test_a_whole_request_is_priced_on_the_whole_tensor(
    name: str, shape: tuple[int, ...], dtype: str, impl: str
) -> None:
    full = _resolve(name, shape, dtype=dtype, impl=impl)
    assert engine.route(full) == engine.WHOLE
    one = _resolve(name, shape, dtype=dtype, impl=impl, offset=math.prod(shape) // 2, count=1)
    assert engine.route(one) == engine.WHOLE
    whole, single = engine.price(full), engine.price(one)
    assert whole.route == single.route == engine.WHOLE
    assert single.memory == whole.memory >= math.prod(shape) * DTYPES[dtype].itemsize
    assert single.flops == whole.flops


def test_orthogonal_flops_grow_like_n_cubed() -> None:
    small = engine.price(_resolve("orthogonal", (4096, 4096), dtype="float32"))
    large = engine.price(_resolve("orthogonal", (8192, 8192), dtype="float32"))
    assert 7.5 < large.flops / small.flops < 8.5
    assert small.flops >= 4 * 4096**3
    tall = engine.price(_resolve("orthogonal", (8192, 1024), dtype="float32"))
    assert tall.flops < small.flops  # a QR of 8192 x 1024: ~4 * 8192 * 1024**2


def test_gathered_answers_cost_more() -> None:
    for resolved in [
        _resolve("normal", (2**20,), dtype="float32"),
        _resolve("zeros", (1000, 1000)),
        _resolve("orthogonal", (256, 256)),
        _resolve("normal", (2**20,), offset=5, count=1000),
    ]:
        plain, gathered = engine.price(resolved), engine.price(resolved, gathered=True)
        assert gathered.route == plain.route
        assert gathered.memory >= plain.memory + (resolved.stop - resolved.start) * DTYPES[resolved.out_dtype].itemsize
        assert gathered.flops == plain.flops


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    svc = Service(Limits(), whole_workers=1)  # no warm_up: no worker process is started
    try:
        yield svc
    finally:
        svc.close()


def test_service_refuses_whole_requests_over_its_flops(service: Service) -> None:
    resolved = _resolve("orthogonal", (8192, 8192), dtype="float32")
    with pytest.raises(TooLarge) as info:
        service.price(resolved)
    assert "--max-whole-flops" in info.value.message
    # The same with a range of one element: the worker makes the whole tensor anyway.
    one = _resolve("orthogonal", (8192, 8192), dtype="float32", offset=0, count=1)
    with pytest.raises(TooLarge, match="--max-whole-flops"):
        service.price(one)
    assert service.price(_resolve("orthogonal", (1024, 1024), dtype="float32")).route == engine.WHOLE


def test_service_refuses_whole_requests_over_its_memory(service: Service) -> None:
    resolved = _resolve("normal", (2**27,), dtype="complex64")  # 1 GiB, made whole
    assert engine.route(resolved) == engine.WHOLE
    with pytest.raises(TooLarge) as info:
        service.price(resolved)
    assert "--max-inflight-bytes" in info.value.message
    with pytest.raises(TooLarge, match="--max-inflight-bytes"):
        service.price(_resolve("normal", (2**27,), dtype="complex64", offset=2**26, count=1))


def test_service_prices_chunked_and_gathered_requests(service: Service) -> None:
    resolved = _resolve("normal", (2**30,), dtype="float32")  # 4 GiB, streamed in chunks
    assert service.price(resolved).route == engine.CHUNKED
    with pytest.raises(TooLarge, match="--max-inflight-bytes"):
        service.price(resolved, gathered=True)  # built whole in memory, as JSON would be
    assert service.price(_resolve("zeros", (2**30,))).route == engine.FILL


# --------------------------------------------------------------------------------------
# Property: resolve refuses in its own words, and empty answers are empty
# --------------------------------------------------------------------------------------

EDGES = [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**61, 2**62 - 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]
DIMS = st.one_of(
    st.sampled_from([0, 0, 1]),
    st.integers(2, 9),
    st.sampled_from(EDGES),
    st.sampled_from(EDGES).flatmap(lambda e: st.integers(e - 3, e + 3)),
)
# Half the shapes have a 0 dimension somewhere (the EMPTY route beside huge dimensions).
SHAPES = st.one_of(
    st.lists(DIMS, min_size=0, max_size=6),
    st.tuples(st.lists(DIMS, min_size=0, max_size=5), st.integers(0, 5)).map(
        lambda t: [*t[0][: t[1]], 0, *t[0][t[1] :]]
    ),
)
PROPERTY_DTYPES = ["bool", "int8", "bfloat16", "float16", "float32", "int32", "float64", "complex64", "complex128"]
PROPERTY_FAMILIES: list[tuple[str, dict]] = [
    ("zeros", {}),
    ("ones", {}),
    ("normal", {}),
    ("uniform", {}),
    ("lecun_normal", {}),
    ("orthogonal", {}),
    ("constant", {"value": 2.5}),
    ("constant", {"value": [1, 2]}),
    ("truncated_normal", {}),
]
RANGE_VALUES = st.one_of(st.none(), st.integers(0, 4), st.sampled_from(EDGES), st.integers(-2, -1))
RANGES = st.one_of(st.just((None, None)), st.tuples(RANGE_VALUES, RANGE_VALUES))  # (offset, count)


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    family=st.sampled_from(PROPERTY_FAMILIES),
    shape=SHAPES,
    dtype=st.sampled_from(PROPERTY_DTYPES),
    offset_count=RANGES,
)
def test_resolve_refuses_in_its_own_words(
    family: tuple[str, dict], shape: list[int], dtype: str, offset_count: tuple[int | None, int | None]
) -> None:
    name, args = family
    offset, count = offset_count
    try:
        resolved = _resolve(name, shape, args, dtype, offset=offset, count=count)
    except (InvalidArgument, TooLarge) as exc:
        event(f"refused: {type(exc).__name__}")
        assert isinstance(exc, JaxinitError)
        assert len(exc.message) < 300, exc.message
        return
    assert resolved.shape == tuple(shape)
    assert 0 <= resolved.start <= resolved.stop <= math.prod(shape)
    assert resolved.nbytes == (resolved.stop - resolved.start) * DTYPES[resolved.out_dtype].itemsize
    kind = engine.route(resolved)
    assert kind in (engine.EMPTY, engine.CHUNKED, engine.FILL, engine.WHOLE)
    assert engine.price(resolved).route == kind
    event(f"route: {kind}")
    if kind != engine.EMPTY:
        return
    # JAX, asked abstractly (no XLA on these shapes), accepts or refuses it: so must jaxinit.
    expected = _abstract_reference(name, args, tuple(shape), dtype)
    if isinstance(expected, Exception):
        event("empty: JAX refuses")
        with pytest.raises(JaxError):
            _produced(resolved)
        return
    event("empty: answered")
    got = _produced(resolved)
    assert got.size == 0 and got.dtype == DTYPES[dtype] == np.dtype(expected.dtype)
