"""The determinism contract: the server's bytes equal local JAX's, over both transports.

Every initializer x every dtype x both PRNG modes, shapes of rank 0..4 with
0-size ones, every key form; requests local JAX refuses must be refused with
JAX's own message.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np
import pytest

import jaxinit
from helpers import local_jax
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES

ALL_SHAPES = [(), (0,), (7,), (0, 3), (6, 6), (3, 4, 5), (2, 3, 4, 5), (3, 0, 2)]
VARIANT_SHAPES = [(4, 5), (3, 4, 5)]
MODES = [True, False]

# Non-default factory arguments worth covering for each entry (defaults are covered too).
ARGS: dict[str, list[dict[str, Any]]] = {
    "constant": [{"value": -7}, {"value": 0.1}, {"value": [1.5, -2.0, 3.25]}],
    "variance_scaling": [
        {"scale": s, "mode": m, "distribution": d}
        for s, m, d in [
            (1.0, "fan_in", "truncated_normal"),
            (2, "fan_out", "normal"),
            (0.5, "fan_avg", "uniform"),
            (3.0, "fan_geo_avg", "uniform"),
            (1.0, "fan_geo_avg", "truncated_normal"),
        ]
    ]
    + [{"scale": 1.0, "mode": "fan_in", "distribution": "normal", "in_axis": [0, 1], "out_axis": -1, "batch_axis": 2}],
    "normal": [{}, {"stddev": 0.5}, {"stddev": 2, "dtype": "bfloat16"}],
    "uniform": [{}, {"scale": 3.0}],
    "truncated_normal": [{}, {"stddev": 1.0, "lower": -1.0, "upper": 0.5}],
    "orthogonal": [{}, {"scale": 2.0, "column_axis": 0}],
    "delta_orthogonal": [{}, {"scale": 0.5}],
    "glorot_normal": [{}, {"in_axis": -1, "out_axis": -2}],
    "he_uniform": [{}, {"batch_axis": [0]}],
}


def _cases(
    names: list[str], shapes: list[tuple[int, ...]], dtypes: list[str | None], variants: bool = False
) -> list[tuple[Any, ...]]:
    cases = []
    for name in names:
        arg_sets = ARGS.get(name, [{}]) if variants else [_DEFAULT_ARGS.get(name, {})]
        for args in arg_sets:
            for shape, dtype, mode in itertools.product(shapes, dtypes, MODES):
                cases.append((name, args, shape, dtype, mode))
    return cases


# Arguments for entries that have required ones.
_DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}
ALL_NAMES = sorted(CATALOG)
_REFERENCE: dict[str, Any] = {}


def _reference(
    name: str,
    args: dict[str, Any],
    key: Any,
    shape: tuple[int, ...],
    dtype: str | None,
    partitionable: bool,
    x64: bool | None = None,
) -> Any:
    cache_key = repr((name, args, key, shape, dtype, partitionable, x64))
    if cache_key not in _REFERENCE:
        _REFERENCE[cache_key] = local_jax(name, args, key, shape, dtype, partitionable=partitionable, x64=x64)
    return _REFERENCE[cache_key]


def _check(result: Any, expected: Any, what: str) -> None:
    if isinstance(expected, Exception):
        assert isinstance(result, jaxinit.JaxError), f"{what}: local JAX raised {expected!r}, server gave {result!r}"
        assert result.message == str(expected), what
        return
    assert not isinstance(result, Exception), f"{what}: server raised {result!r}"
    array = result.array
    assert array.dtype == expected.dtype, what
    assert array.shape == expected.shape, what
    assert array.tobytes() == expected.tobytes(), f"{what}: bytes differ"


def _run_matrix(url: str, cases: list[tuple[Any, ...]], key: Any = 42) -> int:
    checked = 0
    for partitionable in MODES:
        chosen = [c for c in cases if c[4] == partitionable]
        with jaxinit.Client(url, threefry_partitionable=partitionable) as client:
            requests = [client.request(n, key, s, d, args=a) for n, a, s, d, _ in chosen]
            results = list(client.generate_many(requests))
        assert len(results) == len(chosen)
        for (name, args, shape, dtype, _), result in zip(chosen, results, strict=True):
            expected = _reference(name, args, key, shape, dtype, partitionable)
            _check(result, expected, f"{name}({args}) {shape} {dtype} partitionable={partitionable}")
            checked += 1
    return checked


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_dtype(url: str, name: str) -> None:
    assert _run_matrix(url, _cases([name], [(3, 4, 5)], [None, *DTYPE_NAMES]))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_shape(url: str, name: str) -> None:
    """Ranks 0..4, 0-size shapes included."""
    assert _run_matrix(url, _cases([name], ALL_SHAPES, ["float32"]), key=-3)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_every_argument(url: str, name: str) -> None:
    assert _run_matrix(url, _cases([name], VARIANT_SHAPES, ["float32", "bfloat16"], variants=True), key=7)


SEEDS = [0, 42, -3, 2**31, 2**32 + 7, 2**40 + 5, -(2**63), 2**63 - 1]
KEY_FORMS: list[tuple[Any, Any]] = [
    *[(s, s) for s in SEEDS],
    (jaxinit.wrap_key_data([0, 42]), ("data", [0, 42], "threefry2x32")),
    (jaxinit.wrap_key_data([2**32 - 1, 7]), ("data", [2**32 - 1, 7], "threefry2x32")),
    (np.array([5, 6], np.uint32), ("data", [5, 6], "threefry2x32")),
    (jaxinit.key(9, impl="rbg"), ("seed", 9, "rbg")),
    (jaxinit.key(-9, impl="unsafe_rbg"), ("seed", -9, "unsafe_rbg")),
    (jaxinit.wrap_key_data([1, 2, 3, 4], impl="rbg"), ("data", [1, 2, 3, 4], "rbg")),
    (jaxinit.wrap_key_data([4, 3, 2, 1], impl="unsafe_rbg"), ("data", [4, 3, 2, 1], "unsafe_rbg")),
    (jaxinit.key(-3, impl="threefry4x32"), ("seed", -3, "threefry4x32")),
    (jaxinit.key(2**40 + 5, impl="philox2x32"), ("seed", 2**40 + 5, "philox2x32")),
    (jaxinit.wrap_key_data([8], impl="philox2x32"), ("data", [8], "philox2x32")),
    (jaxinit.wrap_key_data([8, 9], impl="philox4x32"), ("data", [8, 9], "philox4x32")),
]


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("partitionable", MODES)
def test_every_key_form(url: str, partitionable: bool, x64: bool) -> None:
    """Seeds keep jax.random.key's exact semantics (negative and large ones differ with x64)."""
    names = ["lecun_normal", "normal", "uniform", "orthogonal", "truncated_normal"]
    with jaxinit.Client(url, threefry_partitionable=partitionable, enable_x64=x64) as client:
        for (key, ref_key), name in itertools.product(KEY_FORMS, names):
            tensor = client.generate(name, key, (5, 6))
            expected = _reference(name, {}, ref_key, (5, 6), None, partitionable, x64)
            _check(tensor, expected, f"{name} key={ref_key} x64={x64} partitionable={partitionable}")
            assert tensor.provenance.threefry_partitionable is partitionable
            assert tensor.provenance.enable_x64 is x64


def test_jax_keys_when_jax_is_installed(url: str) -> None:
    """A JAX key object, typed or legacy, is accepted and means what it means in JAX."""
    keys = [
        jax.random.key(7),
        jax.random.PRNGKey(7),
        jax.random.key(7, impl="rbg"),
        jax.random.split(jax.random.key(1))[1],
        jax.random.fold_in(jax.random.key(2), 3),
    ]
    with jaxinit.Client(url) as client:
        for key in keys:
            got = client.he_normal()(key, (8, 3), "float16")
            expected = np.asarray(jax.nn.initializers.he_normal()(key, (8, 3), jax.numpy.float16))
            assert got.tobytes() == expected.tobytes()
            assert got.dtype == expected.dtype


def test_provenance_says_what_produced_it(url: str) -> None:
    with jaxinit.Client(url) as client:
        tensor = client.generate("lecun_normal", 2**40 + 5, (3, 3))
    p = tensor.provenance
    assert (p.jax_version, p.backend) == (jax.__version__, jax.default_backend())
    assert p.key_impl == "threefry2x32"
    assert p.key_data == tuple(int(w) for w in jax.random.key_data(jax.random.key(2**40 + 5)))
    assert p.threefry_partitionable is bool(jax.config.jax_threefry_partitionable)
    assert p.enable_x64 is False
    assert '"seed":1099511627781' in p.canonical_request
    assert len(p.request_digest) == 64
