"""The determinism contract, at the core: the bytes the core streams equal local JAX's.

Every initializer x both PRNG modes, shapes of rank 0..4 with 0-size ones, every argument
set, every key form, derived, stacked and jit keys (every dtype: test_dtypes_*.py); requests
local JAX refuses must be refused with JAX's own message. Driven through ``Service.prepare`` and ``Service.generate`` in
this process (whole-tensor families through the service's worker process, as served);
that every transport carries these bytes unchanged is tests/adapters/test_parity.py.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from exactness_matrix import (
    ALL_NAMES,
    ALL_SHAPES,
    ARGS,
    DTYPE_GROUPS,
    MODES,
    VARIANT_SHAPES,
    cases,
    check,
    reference,
    run_matrix,
)
from in_core import Ask, make, make_all

import jaxinit
from jaxinit.protocol.codec import DTYPE_NAMES
from jaxinit_server.core import Service, engine


# One test per initializer and shape (or argument set), both PRNG modes in each: small
# tests, so that a failure names its case and none runs long. Every dtype: test_dtypes_*.py.
def test_the_dtype_files_cover_every_dtype_once() -> None:
    groups = [d for group in DTYPE_GROUPS.values() for d in group]
    assert len(groups) == len(set(groups)) and set(groups) == {None, *DTYPE_NAMES}


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=str)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_shape(service: Service, name: str, shape: tuple[int, ...]) -> None:
    """Ranks 0..4, 0-size shapes included."""
    assert run_matrix(service, cases([name], [shape], ["float32"]), key=-3)


@pytest.mark.parametrize(
    ("name", "args"), [(name, args) for name in sorted(ARGS) for args in ARGS[name]], ids=lambda v: str(v)
)
def test_every_argument(service: Service, name: str, args: dict[str, Any]) -> None:
    chosen = [c for c in cases([name], VARIANT_SHAPES, ["float32", "bfloat16"], variants=True) if c[1] == args]
    assert run_matrix(service, chosen, key=7)


def test_every_route_is_covered(service: Service) -> None:
    """The matrix reaches each producer: chunked, fill, whole (the worker) and empty."""
    routes = set()
    for name, args, shape, dtype, mode in cases(ALL_NAMES, ALL_SHAPES, ["float32"]):
        ask = Ask(name, -3, shape, dtype, args=args, threefry_partitionable=mode)
        try:
            routes.add(service.prepare(ask.params()).cost.route)
        except jaxinit.JaxinitError:
            continue
    assert routes == {engine.CHUNKED, engine.FILL, engine.WHOLE, engine.EMPTY}


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


@pytest.mark.parametrize("name", ["lecun_normal", "normal", "uniform", "orthogonal", "truncated_normal"])
@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("partitionable", MODES)
def test_every_key_form(service: Service, partitionable: bool, x64: bool, name: str) -> None:
    """Seeds keep jax.random.key's exact semantics (negative and large ones differ with x64)."""
    asks = [Ask(name, key, (5, 6), threefry_partitionable=partitionable, enable_x64=x64) for key, _ in KEY_FORMS]
    for (_, ref_key), tensor in zip(KEY_FORMS, make_all(service, asks), strict=True):
        expected = reference(name, {}, ref_key, (5, 6), None, partitionable, x64)
        check(tensor, expected, f"{name} key={ref_key} x64={x64} partitionable={partitionable}")
        assert not isinstance(tensor, Exception)
        assert tensor.provenance.threefry_partitionable is partitionable
        assert tensor.provenance.enable_x64 is x64


def _derived(base: Any, steps: list[tuple[Any, ...]]) -> Any:
    """``base`` (a JAX key) through ``steps``, as jax.random does them."""
    for step in steps:
        base = (
            jax.random.fold_in(base, np.uint32(step[1]))
            if step[0] == "fold_in"
            else jax.random.split(base, step[1])[step[2]]
        )
    return base


SPLIT_CHAIN = [("fold_in", 3), ("split", 4, 2), ("fold_in", 2**32 - 1), ("split", 3, 0), ("split", 1, 0)]


@pytest.mark.parametrize("partitionable", MODES)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg", "threefry4x32", "philox2x32", "philox4x32"])
def test_split_and_fold_in_chains_mean_what_jax_random_does(service: Service, impl: str, partitionable: bool) -> None:
    """A key derived by fold_in and split steps in any order (as nn.scan and
    nnx.split_rngs derive a stacked layer's key) is jax.random's key, for every key
    implementation and both PRNG modes; the provenance holds the derived key's data."""
    key = jaxinit.key(11, impl=impl)
    for step in SPLIT_CHAIN:
        key = jaxinit.fold_in(key, step[1]) if step[0] == "fold_in" else jaxinit.split(key, step[1])[step[2]]
    assert key.fold_in == (3,) and len(key.derive) == 4
    tensor = make(service, Ask("normal", key, (4, 5), threefry_partitionable=partitionable))
    with jax.threefry_partitionable(partitionable):
        jax_key = _derived(jax.random.key(11, impl=impl), SPLIT_CHAIN)
        want = np.asarray(jax.nn.initializers.normal()(jax_key, (4, 5)))
        data = np.asarray(jax.random.key_data(jax_key)).ravel().tolist()
    assert tensor.array.tobytes() == want.tobytes()
    assert list(tensor.provenance.key_data) == data


def _stacked_reference(init: Any, base: Any, steps: list[tuple[Any, ...]], shape: tuple[int, ...]) -> np.ndarray:
    """What a stacked key means, spelled out with jax.random: a stack step is every key of
    split(key, num), the later steps applied to each, the slices stacked in order."""
    if not steps:
        return np.asarray(init(base, shape))
    step, rest = steps[0], steps[1:]
    if step[0] == "stack":
        return np.stack([_stacked_reference(init, k, rest, shape) for k in jax.random.split(base, step[1])])
    return _stacked_reference(init, _derived(base, [step]), rest, shape)


STACK_CHAIN = [("fold_in", 5), ("stack", 3), ("fold_in", 2**31 + 7), ("split", 4, 3), ("stack", 2), ("fold_in", 1)]


@pytest.mark.parametrize("partitionable", MODES)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg", "threefry4x32", "philox2x32", "philox4x32"])
def test_stacked_keys_make_one_slice_per_key(service: Service, impl: str, partitionable: bool) -> None:
    """A stack step makes the key a batch (all of jax.random.split(key, num)), each later
    step applied to every key of it: the tensor is the slices made with each key, stacked
    on leading axes, in every key implementation and both PRNG modes. A range of it is
    those bytes. The provenance holds the data of the key the first stack step splits."""
    key = jaxinit.Key(seed=9, impl=impl, derive=tuple(STACK_CHAIN))
    assert key.stack == (3, 2)
    init = jax.nn.initializers.lecun_normal()
    with jax.threefry_partitionable(partitionable):
        want = _stacked_reference(init, jax.random.key(9, impl=impl), STACK_CHAIN, (6, 5))
        head = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(9, impl=impl), 5))).ravel()
    tensor, part = make_all(
        service,
        [
            Ask("lecun_normal", key, (3, 2, 6, 5), threefry_partitionable=partitionable),
            Ask("lecun_normal", key, (3, 2, 6, 5), threefry_partitionable=partitionable, offset=41, count=77),
        ],
    )
    assert not isinstance(tensor, Exception) and not isinstance(part, Exception)
    assert tensor.array.shape == (3, 2, 6, 5)
    assert tensor.data == want.tobytes()
    assert list(tensor.provenance.key_data) == head.tolist()
    assert part.data == want.reshape(-1)[41:118].tobytes()


@pytest.mark.parametrize("name", ["orthogonal", "normal", "truncated_normal", "glorot_uniform", "zeros"])
def test_stacked_keys_are_jax_vmap_of_the_initializer(service: Service, name: str) -> None:
    """What nn.scan and nnx.vmap do to initialise stacked layers, jax.vmap of the initializer
    over split keys, is the stacked key's tensor, for chunked families, whole ones (a QR
    per slice) and keyless ones; large enough that the chunked route streams its slices."""
    init = getattr(jax.nn.initializers, name)
    init = init if name == "zeros" else init()
    shape = (4, 300, 600) if name == "normal" else (4, 12, 8)
    want = np.asarray(
        jax.vmap(lambda k: init(jax.random.fold_in(k, 3), shape[1:], jax.numpy.float32))(
            jax.random.split(jax.random.key(2), 4)
        )
    )
    got = make(service, Ask(name, jaxinit.fold_in(jaxinit.stacked(jaxinit.key(2), 4), 3), shape))
    assert got.array.shape == want.shape and got.data == want.tobytes()


@pytest.mark.parametrize("partitionable", MODES)
def test_jit_values_are_jax_jit_of_the_initializer(service: Service, partitionable: bool) -> None:
    """``jit`` asks for what jax.jit(init) gives (inside nn.scan, a jitted model.init):
    XLA fuses normal's scale into the sampler and some bits differ from the eager call's.
    Both are exact, each to its own JAX call; only the jit request says jit in its
    canonical form, so eager digests stay as they were. A stacked key composes with it."""
    init = jax.nn.initializers.normal(0.01)
    key = jax.random.key(8)
    with jax.threefry_partitionable(partitionable):
        eager = np.asarray(init(key, (64, 64)))
        compiled = np.asarray(jax.jit(lambda k: init(k, (64, 64)))(key))
        stacked = np.asarray(
            jax.jit(jax.vmap(lambda k: init(jax.random.fold_in(k, 1), (8, 8))))(jax.random.split(key, 3))
        )
    assert eager.tobytes() != compiled.tobytes()  # else this test shows nothing
    args = {"stddev": 0.01}
    got, plain, batch = make_all(
        service,
        [
            Ask("normal", 8, (64, 64), args=args, threefry_partitionable=partitionable, jit=True),
            Ask("normal", 8, (64, 64), args=args, threefry_partitionable=partitionable),
            Ask(
                "normal",
                jaxinit.fold_in(jaxinit.stacked(8, 3), 1),
                (3, 8, 8),
                args=args,
                threefry_partitionable=partitionable,
                jit=True,
            ),
        ],
    )
    assert not isinstance(got, Exception) and not isinstance(plain, Exception) and not isinstance(batch, Exception)
    assert got.data == compiled.tobytes()
    assert plain.data == eager.tobytes()
    assert batch.data == stacked.tobytes()
    assert '"jit":true' in got.provenance.canonical_request and "jit" not in plain.provenance.canonical_request


def test_jit_applies_to_keyless_initializers_too(service: Service) -> None:
    """A constant's value is converted by XLA under jit: an out-of-range float into int32
    saturates one way eagerly and another way compiled. jit asks for the compiled one."""
    init = jax.nn.initializers.constant(1e10)
    eager = np.asarray(init(None, (3,), jax.numpy.int32))
    compiled = np.asarray(jax.jit(lambda: init(None, (3,), jax.numpy.int32))())
    got = make(service, Ask("constant", None, (3,), "int32", args={"value": 1e10}, jit=True))
    plain = make(service, Ask("constant", None, (3,), "int32", args={"value": 1e10}))
    assert got.data == compiled.tobytes() and plain.data == eager.tobytes()


def test_jax_keys_when_jax_is_installed(service: Service) -> None:
    """A JAX key object, typed or legacy, is accepted and means what it means in JAX."""
    keys = [
        jax.random.key(7),
        jax.random.PRNGKey(7),
        jax.random.key(7, impl="rbg"),
        jax.random.split(jax.random.key(1))[1],
        jax.random.fold_in(jax.random.key(2), 3),
    ]
    for key, got in zip(keys, make_all(service, [Ask("he_normal", k, (8, 3), "float16") for k in keys]), strict=True):
        expected = np.asarray(jax.nn.initializers.he_normal()(key, (8, 3), jax.numpy.float16))
        check(got, expected, f"{key}")


def test_provenance_says_what_produced_it(service: Service) -> None:
    tensor = make(service, Ask("lecun_normal", 2**40 + 5, (3, 3)))
    p = tensor.provenance
    assert (p.jax_version, p.backend) == (jax.__version__, jax.default_backend())
    assert p.key_impl == "threefry2x32"
    assert p.key_data == tuple(int(w) for w in jax.random.key_data(jax.random.key(2**40 + 5)))
    assert p.threefry_partitionable is bool(jax.config.jax_threefry_partitionable)
    assert p.enable_x64 is False
    assert '"seed":1099511627781' in p.canonical_request
    assert len(p.request_digest) == 64
