"""The core's exactness matrix, shared by tests/core's files: requests driven through
``Service.prepare`` and ``Service.generate`` in this process (tests/in_core.py) and compared
byte for byte with local JAX (``helpers.local_jax``), both PRNG modes in each case.

The dtype matrix is split over three files by dtype group (test_dtypes_*.py), so that
``make test``'s processes share it; :data:`DTYPE_GROUPS` covers every dtype once.
"""

from __future__ import annotations

import itertools
from typing import Any

from in_core import Ask, make_all

from helpers import local_jax
from jaxinit.protocol.catalog import CATALOG
from jaxinit.protocol.codec import DTYPE_NAMES, dtype_name, to_wire_bytes
from jaxinit.protocol.errors import JaxError
from jaxinit_server.core import Service

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


def cases(
    names: list[str],
    shapes: list[tuple[int, ...]],
    dtypes: list[str | None],
    variants: bool = False,
    modes: list[bool] = MODES,
) -> list[tuple[Any, ...]]:
    cases = []
    for name in names:
        arg_sets = ARGS.get(name, [{}]) if variants else [DEFAULT_ARGS.get(name, {})]
        for args in arg_sets:
            for shape, dtype, mode in itertools.product(shapes, dtypes, modes):
                cases.append((name, args, shape, dtype, mode))
    return cases


# Arguments for entries that have required ones.
DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.3},
    "variance_scaling": {"scale": 1.5, "mode": "fan_avg", "distribution": "truncated_normal"},
}
ALL_NAMES = sorted(CATALOG)
_REFERENCE: dict[str, Any] = {}


def reference(
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


def check(result: Any, expected: Any, what: str) -> None:
    if isinstance(expected, Exception):
        assert isinstance(result, JaxError), f"{what}: local JAX raised {expected!r}, the core gave {result!r}"
        assert result.message == str(expected), what
        return
    assert not isinstance(result, Exception), f"{what}: the core raised {result!r}"
    assert result.dtype == dtype_name(expected.dtype), what
    assert result.array.dtype == expected.dtype, what
    assert result.array.shape == expected.shape, what
    assert result.data == bytes(to_wire_bytes(expected)), f"{what}: bytes differ"


def run_matrix(service: Service, cases: list[tuple[Any, ...]], key: Any = 42) -> int:
    asks = [Ask(n, key, s, d, args=a, threefry_partitionable=p) for n, a, s, d, p in cases]
    results = make_all(service, asks)
    assert len(results) == len(cases)
    for (name, args, shape, dtype, partitionable), result in zip(cases, results, strict=True):
        expected = reference(name, args, key, shape, dtype, partitionable)
        check(result, expected, f"{name}({args}) {shape} {dtype} partitionable={partitionable}")
    return len(cases)


# The dtypes of the matrix (None: the initializer's default) in three groups of about
# equal work, one file each: the common floats; complex and 8-bit floats; integers and bool.
DTYPE_GROUPS: dict[str, list[str | None]] = {
    "floats": [None, "float32", "float16", "bfloat16", "float64"],
    "narrow": [d for d in DTYPE_NAMES if d.startswith(("complex", "float8"))],
    "integers": [d for d in DTYPE_NAMES if d.startswith(("int", "uint")) or d == "bool"],
}


def every_dtype(service: Service, name: str, dtype: str | None, modes: list[bool] = MODES) -> None:
    """One initializer in one dtype, in ``modes`` (both PRNG modes), against local JAX."""
    assert run_matrix(service, cases([name], [(3, 4, 5)], [dtype], modes=modes))


def mode_in_turn(name: str, dtype: str | None, group: list[str | None]) -> bool:
    """One PRNG mode for (name, dtype), taken in turn: every initializer meets both modes
    over a dtype group, and every dtype of the group both over the initializers."""
    return MODES[(ALL_NAMES.index(name) + group.index(dtype)) % 2]
